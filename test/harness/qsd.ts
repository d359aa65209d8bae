// A real qemu-storage-daemon exporting one image over NBD on a unix socket, with
// a QMP monitor, for tests and benchmarks (frontend tests, test/bench, test/guest).
// Spawned directly (never daemonized), so stop() reaches the real process; killed
// if the test process exits without stopping it.
import { existsSync } from "node:fs";
import { chmod, mkdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { NbdClient } from "../../lib/nbd/client.js";
import { QmpClient } from "../../node-agent/qsd/qmp-client.js";
import { killOnExit } from "./reaper.js";
import { Proc, sleep } from "./processes.js";

export interface QsdOptions {
  /** Directory for the sockets, and for the image unless `image` is given. Created when missing. */
  dir: string;
  /** Image path; created with qemu-img when missing. Default DIR/disk.FORMAT. */
  image?: string;
  /** Default qcow2. */
  format?: "qcow2" | "raw";
  /** Size of an image created here, default 64. */
  sizeMiB?: number;
  /** Default vol0. */
  exportName?: string;
  /** NBD unix socket; default DIR/EXPORT.nbd.sock. */
  socket?: string;
  /** Extra options of the file blockdev, e.g. ["aio=io_uring", "cache.direct=on"]. */
  fileOptions?: string[];
  /**
   * Let every user connect to the NBD socket: chmod it 0777, and DIR 0755 when
   * others cannot enter it. Needed when QEMU runs under libvirt (as libvirt-qemu).
   * Default false.
   */
  worldConnectable?: boolean;
  /** Until the export answers NBD_OPT_LIST; default 15000 ms. */
  timeoutMs?: number;
}

export class Qsd {
  private constructor(
    readonly image: string,
    readonly format: "qcow2" | "raw",
    readonly exportName: string,
    /** NBD unix socket. */
    readonly socket: string,
    readonly qmpSocket: string,
    readonly proc: Proc,
  ) {}

  /** Starts the daemon (creating the image when missing) and waits until its export answers NBD_OPT_LIST. */
  static async start(o: QsdOptions): Promise<Qsd> {
    const format = o.format ?? "qcow2";
    const exportName = o.exportName ?? "vol0";
    const timeoutMs = o.timeoutMs ?? 15_000;
    await mkdir(o.dir, { recursive: true });
    const image = o.image ?? join(o.dir, `disk.${format}`);
    if (!existsSync(image)) await execa("qemu-img", ["create", "-q", "-f", format, image, `${o.sizeMiB ?? 64}M`]);
    const socket = o.socket ?? join(o.dir, `${exportName}.nbd.sock`);
    const qmpSocket = join(o.dir, `${exportName}.qsd-qmp.sock`);
    const file = ["driver=file", "node-name=file0", `filename=${image}`, ...(o.fileOptions ?? [])].join(",");
    const proc = Proc.start("qemu-storage-daemon", "qemu-storage-daemon", [
      "--blockdev", file,
      "--blockdev", `driver=${format},node-name=disk0,file=file0`,
      "--nbd-server", `addr.type=unix,addr.path=${socket}`,
      "--export", `type=nbd,id=exp0,node-name=disk0,name=${exportName},writable=on`,
      "--chardev", `socket,id=qmp0,path=${qmpSocket},server=on,wait=off`,
      "--monitor", "chardev=qmp0",
    ]);
    killOnExit(proc.child);
    const qsd = new Qsd(image, format, exportName, socket, qmpSocket, proc);
    try {
      await qsd.waitReady(timeoutMs);
      if (o.worldConnectable) {
        await chmod(socket, 0o777);
        if (((await stat(o.dir)).mode & 0o005) !== 0o005) await chmod(o.dir, 0o755);
      }
    } catch (err) {
      await qsd.stop();
      throw err;
    }
    return qsd;
  }

  /** nbd+unix:///EXPORT?socket=PATH */
  get uri(): string {
    return `nbd+unix:///${this.exportName}?socket=${this.socket}`;
  }

  /** stdout and stderr so far. */
  get output(): string {
    return this.proc.output;
  }

  get pid(): number | undefined {
    return this.proc.child.pid;
  }

  /** A new connection to the daemon's monitor (one client at a time); close it when done. */
  qmp(): Promise<QmpClient> {
    return QmpClient.connect({ path: this.qmpSocket });
  }

  /** SIGTERM, then SIGKILL after 5 s; resolves once the process exited. */
  async stop(): Promise<void> {
    await this.proc.kill("SIGTERM", 5_000);
  }

  private async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.proc.running) throw new Error(`qemu-storage-daemon exited:\n${this.output}`);
      if (existsSync(this.socket) && existsSync(this.qmpSocket)) {
        try {
          await NbdClient.list({ socketPath: this.socket, timeoutMs: 1_000 });
          return;
        } catch {
          // not ready yet
        }
      }
      if (Date.now() > deadline) throw new Error(`qemu-storage-daemon not ready within ${timeoutMs} ms:\n${this.output}`);
      await sleep(20);
    }
  }
}
