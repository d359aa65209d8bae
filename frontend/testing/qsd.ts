// A real qemu-storage-daemon exporting one image over NBD on a unix socket,
// for the frontend's tests and benchmark. Spawned directly (never daemonized),
// so stop() reaches the real process.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { NbdClient } from "../../lib/nbd/client.js";

export interface QsdOptions {
  image: string;
  format: "raw" | "qcow2";
  socketPath: string;
  exportName: string;
  /** Extra options of the file blockdev, e.g. ["aio=io_uring", "cache.direct=on"]. */
  fileOptions?: string[];
}

export class Qsd {
  output = "";
  private readonly exited: Promise<void>;

  private constructor(
    readonly opts: QsdOptions,
    readonly child: ChildProcess,
  ) {
    child.stdout?.on("data", (d) => (this.output += d));
    child.stderr?.on("data", (d) => (this.output += d));
    this.exited = new Promise((resolve) => child.once("exit", () => resolve()));
  }

  static args(o: QsdOptions): string[] {
    const file = ["driver=file", "node-name=file0", `filename=${o.image}`, ...(o.fileOptions ?? [])].join(",");
    return [
      "--blockdev", file,
      "--blockdev", `driver=${o.format},node-name=fmt0,file=file0`,
      "--nbd-server", `addr.type=unix,addr.path=${o.socketPath}`,
      "--export", `type=nbd,id=exp0,node-name=fmt0,name=${o.exportName},writable=on`,
    ];
  }

  /** Starts the daemon and waits until its export answers NBD_OPT_LIST. */
  static async start(opts: QsdOptions, timeoutMs = 15_000): Promise<Qsd> {
    const q = new Qsd(opts, spawn("qemu-storage-daemon", Qsd.args(opts), { stdio: ["ignore", "pipe", "pipe"] }));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (q.child.exitCode !== null) throw new Error(`qemu-storage-daemon exited: ${q.output}`);
      if (existsSync(opts.socketPath)) {
        try {
          await NbdClient.list({ socketPath: opts.socketPath, timeoutMs: 1_000 });
          return q;
        } catch {
          // not ready yet
        }
      }
      if (Date.now() > deadline) {
        await q.stop();
        throw new Error(`qemu-storage-daemon not ready within ${timeoutMs} ms: ${q.output}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGTERM");
    const t = setTimeout(() => this.child.kill("SIGKILL"), 5_000);
    await this.exited;
    clearTimeout(t);
  }
}
