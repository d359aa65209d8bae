// One replica as the frontend sees it: several NBD connections to the same
// export (QEMU 7.2's NBD server works on at most 16 requests at once per
// connection). Requests fill the first connection up to those 16 before the
// next is used (then the least loaded): a turn's requests leave in one write
// and come back in one read, which cost fewer syscalls per 4k request than
// spreading them; a FLUSH goes to every connection, since the backend does
// not promise that one connection's flush covers the others.
import { EventEmitter } from "node:events";
import type { Logger } from "pino";
import type { NbdCompletion } from "../lib/nbd/client.js";
import { NbdClient, type ExportInfo } from "../lib/nbd/client.js";
import { Cmd, Errno } from "../lib/nbd/protocol.js";
import type { ReplicaAddress } from "./args.js";

export interface ReplicaEvents {
  /** The last usable connection went away. */
  unhealthy: [];
  /** Number of congested connections changed from 0 (true) or to 0 (false). */
  congestion: [congested: boolean];
}

/** Completes `target` once `count` sub-requests completed; the first error wins. */
export class Gather implements NbdCompletion {
  private error = 0;
  private header: Buffer | undefined;

  constructor(
    private pending: number,
    private readonly target: NbdCompletion,
  ) {}

  nbdDone(error: number, _data: Buffer[] | undefined, replyHeader: Buffer | undefined): void {
    if (error !== 0 && this.error === 0) this.error = error;
    // A copy: the received header is a slice of a receive arena, reused once this call returns.
    if (this.header === undefined && replyHeader !== undefined) this.header = Buffer.from(replyHeader);
    if (--this.pending === 0) this.target.nbdDone(this.error, undefined, this.header);
  }
}

/** Requests per connection before the next is used: QEMU 7.2 works on 16 at once per connection. */
const FILL = 16;

/** Default: a connection with requests in flight and no reply for this long is dropped. */
export const STALL_TIMEOUT_MS = 8_000;

export interface OpenOptions {
  log?: Logger;
  /** A connection with requests in flight and no reply for this long is dropped (0: never; default STALL_TIMEOUT_MS). */
  stallTimeoutMs?: number;
  /** Send buffer of unix connections (lib/socket-buffer.ts); unset keeps the system default. */
  sendBufferBytes?: number;
}

export class Replica extends EventEmitter<ReplicaEvents> {
  private congestedCount = 0;
  private readonly watchdog: NodeJS.Timeout | undefined;

  private constructor(
    readonly address: ReplicaAddress,
    readonly conns: NbdClient[],
    private readonly log: Logger | undefined,
    stallTimeoutMs: number,
  ) {
    super();
    // A frozen or cut-off host answers nothing and resets nothing: without this its
    // requests would wait forever, and the volume's writes with them. A connection with
    // requests in flight and no reply within the timeout is dropped; its requests fail
    // (EIO), which records the replica out-of-sync like any failure.
    if (stallTimeoutMs > 0) {
      const seen = new Map<NbdClient, { completed: number; since: number }>();
      const tick = Math.min(1_000, Math.max(10, stallTimeoutMs / 4));
      this.watchdog = setInterval(() => {
        const now = Date.now();
        for (const c of this.conns) {
          const last = seen.get(c);
          if (c.inFlight === 0 || !c.usable || last?.completed !== c.completed) {
            seen.set(c, { completed: c.completed, since: now });
          } else if (now - last.since >= stallTimeoutMs) {
            this.log?.error({ replica: this.address.spec, inFlight: c.inFlight, ms: now - last.since }, "replica stopped answering; dropping the connection");
            c.destroy(new Error(`no reply from replica ${this.address.spec} for ${now - last.since} ms`));
          }
        }
      }, tick);
      this.watchdog.unref();
    }
    for (const c of conns) {
      c.on("close", (err) => this.onConnectionClosed(c, err));
      c.on("congestion", (on) => {
        const before = this.congestedCount;
        this.congestedCount += on ? 1 : -1;
        if ((before === 0) !== (this.congestedCount === 0)) this.emit("congestion", this.congestedCount > 0);
      });
    }
  }

  /**
   * Opens `connections` connections to the replica's export; all must succeed. A unix
   * connection gets `sendBufferBytes` as its send buffer (lib/socket-buffer.ts).
   */
  static async open(address: ReplicaAddress, connections: number, opts: OpenOptions = {}): Promise<Replica> {
    const { log, stallTimeoutMs = STALL_TIMEOUT_MS, sendBufferBytes } = opts;
    const opened = await Promise.allSettled(
      Array.from({ length: connections }, () =>
        NbdClient.connect({ socketPath: address.socketPath, host: address.host, port: address.port, exportName: address.exportName, sendBufferBytes }),
      ),
    );
    const conns = opened.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    const failed = opened.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) {
      for (const c of conns) c.destroy();
      throw failed.reason;
    }
    const sizes = new Set(conns.map((c) => c.size));
    if (sizes.size !== 1) throw new Error(`replica ${address.spec} reported different sizes on different connections`);
    return new Replica(address, conns, log, stallTimeoutMs);
  }

  get info(): ExportInfo {
    return this.conns[0]!.info;
  }

  get healthy(): boolean {
    return this.conns.some((c) => c.usable);
  }

  /**
   * The first usable connection with fewer than FILL requests in flight, else the least
   * loaded one. Filling one connection first keeps a turn's requests together, so they
   * leave in one write and their replies come back in one read.
   */
  pick(): NbdClient | undefined {
    let best: NbdClient | undefined;
    let bestLoad = Infinity;
    const cs = this.conns;
    for (let i = 0; i < cs.length; i++) {
      const c = cs[i]!;
      if (!c.usable) continue;
      const load = c.inFlight;
      if (load < FILL) return c;
      if (load < bestLoad) {
        best = c;
        bestLoad = load;
      }
    }
    return best;
  }

  /** Usable connections (for a FLUSH to each). */
  usableConnections(): NbdClient[] {
    return this.conns.filter((c) => c.usable);
  }

  /** FLUSH on every usable connection; `done` gets the first error. */
  flushAll(flags: number, done: NbdCompletion): void {
    const cs = this.usableConnections();
    if (cs.length === 0) return done.nbdDone(Errno.EIO, undefined, undefined);
    const g = new Gather(cs.length, done);
    for (const c of cs) c.submit(Cmd.FLUSH, flags, 0, 0, undefined, g);
  }

  /** Flushes and soft-disconnects every connection. */
  async close(): Promise<void> {
    clearInterval(this.watchdog);
    await Promise.all(
      this.conns.map(async (c) => {
        if (c.usable) await c.flush().catch((err) => this.log?.warn({ err, replica: this.address.spec }, "flush before disconnect failed"));
        await c.close();
      }),
    );
  }

  /** Drops every connection at once (the replica is gone or replaced). */
  destroy(): void {
    clearInterval(this.watchdog);
    for (const c of this.conns) c.destroy();
  }

  private onConnectionClosed(c: NbdClient, err: Error | undefined): void {
    if (c.congested) {
      this.congestedCount--;
      if (this.congestedCount === 0) this.emit("congestion", false);
    }
    if (err) this.log?.warn({ err: err.message, replica: this.address.spec }, "replica connection lost");
    if (!this.healthy) this.emit("unhealthy");
  }
}
