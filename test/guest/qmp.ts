// A minimal QMP client (QEMU and qemu-storage-daemon monitors) over a unix socket.
import { connect, type Socket } from "node:net";
import { sleep } from "../harness/processes.js";

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
  }
}

export class Qmp {
  readonly events: QmpEvent[] = [];
  private buf = "";
  private pending: Array<{ command: string; resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];
  private greeted!: Promise<void>;
  private closed = false;

  private constructor(private readonly sock: Socket) {}

  /** Connects (retrying while the socket does not exist yet) and negotiates capabilities. */
  static async connect(path: string, timeoutMs = 10_000): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path);
          s.once("connect", () => resolve(s));
          s.once("error", reject);
        });
        const q = new Qmp(sock);
        q.attach();
        await q.greeted;
        await q.execute("qmp_capabilities");
        return q;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`QMP ${path}: ${String(err)}`);
        await sleep(50);
      }
    }
  }

  private attach(): void {
    let greet!: () => void;
    let fail!: (e: Error) => void;
    this.greeted = new Promise<void>((res, rej) => ((greet = res), (fail = rej)));
    this.sock.setEncoding("utf8");
    this.sock.on("data", (chunk: string) => {
      this.buf += chunk;
      let i: number;
      while ((i = this.buf.indexOf("\n")) >= 0) {
        const line = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as Record<string, unknown>;
        if ("QMP" in msg) greet();
        else if ("event" in msg) this.events.push(msg as unknown as QmpEvent);
        else if ("return" in msg || "error" in msg) {
          const p = this.pending.shift();
          if (!p) continue;
          if ("error" in msg) {
            const e = msg.error as { class: string; desc: string };
            p.reject(new QmpError(p.command, e.class, e.desc));
          } else p.resolve(msg.return);
        }
      }
    });
    const onGone = (err?: Error) => {
      this.closed = true;
      const e = err ?? new Error("QMP connection closed");
      fail(e);
      for (const p of this.pending.splice(0)) p.reject(e);
    };
    this.sock.on("error", onGone);
    this.sock.on("close", () => onGone());
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`QMP ${command}: connection closed`));
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ command, resolve: resolve as (v: unknown) => void, reject });
      this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n");
    });
  }

  /** Resolves with the first event named `name` (already received or still to come). */
  async waitEvent(name: string, timeoutMs = 30_000, since = 0): Promise<QmpEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const e = this.events.slice(since).find((ev) => ev.event === name);
      if (e) return e;
      if (this.closed) throw new Error(`QMP closed before event ${name}`);
      if (Date.now() > deadline) throw new Error(`QMP event ${name} not seen within ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  close(): void {
    this.closed = true;
    this.sock.destroy();
  }
}
