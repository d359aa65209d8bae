// An NBD server for ONE named export in front of an NbdBackend: listens on a
// unix socket (or takes accepted sockets from elsewhere), tracks connections,
// pauses their intake while the backend is congested, and shuts down cleanly
// (ESHUTDOWN for new work, finish what is in flight, then close).
import { chmod, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import type { Logger } from "pino";
import { setSendBuffer } from "../socket-buffer.js";
import { adoptAccepted, ArenaReader } from "./arena-reader.js";
import type { NbdBackend } from "./backend.js";
import { DEFAULT_BLOCK_SIZES, DOS_PAYLOAD_LIMIT, TxFlag, type BlockSizes } from "./protocol.js";
import { NbdServerConnection, Pause, type ConnectionLimits } from "./server-connection.js";
import type { ExportDescriptor } from "./server-handshake.js";

export type { NbdBackend } from "./backend.js";
export { NbdRequest } from "./backend.js";

export interface NbdServerOptions {
  /** The export's name (the empty name selects it too, as the default export). */
  name: string;
  description?: string;
  backend: NbdBackend;
  log?: Logger;
  limits?: Partial<ConnectionLimits>;
  /** Bytes a client socket may queue for sending before its intake pauses (default 8 MiB). */
  replyHighWaterMark?: number;
  /** SO_SNDBUF for accepted unix sockets (lib/socket-buffer.ts); unset keeps the system default. */
  sendBufferBytes?: number;
}

/** Transmission flags the server core can honour; anything else a backend reports is dropped. */
const PASSED_FLAGS =
  TxFlag.READ_ONLY | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.ROTATIONAL | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.CAN_MULTI_CONN;

/** What the server advertises for a backend: the defaults, tightened by the backend, max payload ≤ 32 MiB. */
export function describeExport(name: string, description: string, backend: NbdBackend): ExportDescriptor {
  const b = backend.blockSizes ?? {};
  const blockSizes: BlockSizes = {
    minimum: Math.max(DEFAULT_BLOCK_SIZES.minimum, b.minimum ?? 1),
    preferred: Math.max(DEFAULT_BLOCK_SIZES.preferred, b.preferred ?? 0),
    maximum: Math.min(DOS_PAYLOAD_LIMIT, b.maximum ?? DEFAULT_BLOCK_SIZES.maximum),
  };
  return { name, description, size: backend.size, txFlags: TxFlag.HAS_FLAGS | (backend.txFlags & PASSED_FLAGS), blockSizes };
}

export class NbdServer {
  readonly connections = new Set<NbdServerConnection>();
  readonly export: ExportDescriptor;
  private readonly limits: ConnectionLimits;
  private listener: Server | undefined;
  private listenPath: string | undefined;
  private backendBusy = false;
  private stopping = false;

  constructor(private readonly opts: NbdServerOptions) {
    this.export = describeExport(opts.name, opts.description ?? "", opts.backend);
    this.limits = { maxInFlight: 256, maxInFlightBytes: 64 * 1024 * 1024, ...opts.limits };
  }

  /** Serves one connected socket (already accepted elsewhere); `reader` if it reads into arenas. */
  handle(socket: Socket, reader?: ArenaReader): NbdServerConnection {
    const c = new NbdServerConnection(socket, this.export, this.opts.backend, this.limits, this.opts.log, reader);
    this.connections.add(c);
    void c.closed.then(() => this.connections.delete(c));
    if (this.backendBusy) c.setPause(Pause.BACKEND, true);
    if (this.stopping) void c.shutdown();
    return c;
  }

  /** Listens on a unix socket, replacing a stale socket file, and sets its mode. */
  async listenUnix(path: string, mode = 0o666): Promise<void> {
    await rm(path, { force: true });
    const hwm = this.opts.replyHighWaterMark ?? 8 * 1024 * 1024;
    const sendBuffer = this.opts.sendBufferBytes;
    const serve = (accepted: Socket) => {
      let conn: NbdServerConnection | undefined;
      // No chunk can arrive before `conn` is set: reading starts on a later loop turn.
      const reader = new ArenaReader((chunk) => conn!.onData(chunk));
      const socket = adoptAccepted(accepted, reader, { writableHighWaterMark: hwm });
      conn = this.handle(socket, reader);
    };
    // The accepted socket is paused until served, so its buffer is set before any byte moves.
    const server = createServer({ highWaterMark: hwm, pauseOnConnect: true }, (accepted) => {
      if (!sendBuffer) return serve(accepted);
      void setSendBuffer(accepted, sendBuffer).then((ok) => {
        if (!ok) this.opts.log?.debug("could not raise a client socket's send buffer; keeping the system default");
        if (accepted.destroyed) return;
        serve(accepted);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (err) => this.opts.log?.error({ err }, "nbd listener error"));
    this.listener = server;
    this.listenPath = path;
    await chmod(path, mode);
  }

  /** While true, no connection reads new requests (the backend cannot take more). */
  setBackendBusy(busy: boolean): void {
    if (busy === this.backendBusy) return;
    this.backendBusy = busy;
    for (const c of this.connections) c.setPause(Pause.BACKEND, busy);
  }

  /**
   * Stops listening, lets every connection finish its requests in flight (new ones get
   * ESHUTDOWN), and closes them; after `timeoutMs` the rest are dropped.
   */
  async shutdown(timeoutMs = 10_000): Promise<void> {
    this.stopping = true;
    const listening = this.listener
      ? new Promise<void>((resolve) => this.listener!.close(() => resolve()))
      : Promise.resolve();
    const drained = Promise.all([...this.connections].map((c) => c.shutdown()));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)));
    await Promise.race([drained, timedOut]);
    clearTimeout(timer);
    for (const c of this.connections) c.destroy();
    await listening;
    if (this.listenPath) await rm(this.listenPath, { force: true });
  }
}
