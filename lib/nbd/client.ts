// An NBD client over a unix socket or TCP: fixed newstyle handshake with
// NBD_OPT_GO for one named export, then many requests in flight on one
// connection. Built for forwarding: request slots live in typed arrays with a
// free list, a forwarded request header is edited in place (only the cookie
// changes), read payloads come back as slices of the received chunks, and all
// writes of one event-loop turn leave in one corked write (BatchWriter).
// Received data lands in large arenas (arena-reader.ts), so a big read reply
// arrives in few, adjacent slices; arenas are reused once nothing references
// them (arena.ts), and a completion that keeps a slice must reference it.
import { EventEmitter } from "node:events";
import { connect as netConnect, type Socket } from "node:net";
import { setSendBuffer } from "../socket-buffer.js";
import { releaseArena, retainSlice, type Arena } from "./arena.js";
import { ArenaReader } from "./arena-reader.js";
import { BatchWriter } from "./batch-writer.js";
import { abortHandshake, ByteQueue, exchangeGreeting, listExports, negotiateGo, queryInfo, type ExportInfo, type HandshakeIO } from "./client-handshake.js";
import { NbdDisconnectedError, NbdError, NbdProtocolError } from "./errors.js";
import { Cmd, CmdFlag, Errno, REQUEST_HEADER_SIZE, SIMPLE_REPLY_MAGIC, SIMPLE_REPLY_SIZE, TxFlag, writeRequestHeader } from "./protocol.js";

export type { ExportInfo } from "./client-handshake.js";

/** Receives the outcome of one submitted request. Must not throw. */
export interface NbdCompletion {
  /**
   * `data`: a READ's payload as slices of received chunks. `replyHeader`: the 16-byte simple
   * reply as received; the callee may overwrite it in place (to forward it) — nothing else
   * reads it afterwards. Both may be slices of a receive arena: valid during this call only,
   * unless the callee references them (retainSlice, or pushing them to a BatchWriter).
   */
  nbdDone(error: number, data: Buffer[] | undefined, replyHeader: Buffer | undefined): void;
}

export interface NbdAddress {
  /** Unix socket path; or host and port for TCP. */
  socketPath?: string;
  host?: string;
  port?: number;
}

export interface NbdConnectOptions extends NbdAddress {
  exportName: string;
  /** Connect plus handshake must finish within this (default 10 s). */
  timeoutMs?: number;
  /** Bytes the socket may queue before the client reports congestion (default 4 MiB). */
  writeHighWaterMark?: number;
  /** SO_SNDBUF for a unix socket (lib/socket-buffer.ts); unset, or TCP, keeps the system's. */
  sendBufferBytes?: number;
}

const EMPTY = Buffer.alloc(0);

/** Opens the socket and runs `handshake` over it; the socket is destroyed if that fails. */
async function openAndNegotiate<T>(
  opts: NbdAddress & { timeoutMs?: number; writeHighWaterMark?: number },
  onChunk: (b: Buffer, q: ByteQueue) => void,
  handshake: (io: HandshakeIO, socket: Socket) => Promise<T>,
): Promise<{ socket: Socket; result: T; queue: ByteQueue; reader: ArenaReader }> {
  const queue = new ByteQueue();
  const onread = new ArenaReader((chunk) => onChunk(chunk, queue));
  const common = { onread, writableHighWaterMark: opts.writeHighWaterMark ?? 4 * 1024 * 1024 };
  let socket: Socket;
  if (opts.socketPath) socket = netConnect({ path: opts.socketPath, ...common });
  else if (opts.host && opts.port) socket = netConnect({ host: opts.host, port: opts.port, noDelay: true, ...common });
  else throw new NbdProtocolError("an NBD address needs a socket path, or a host and port");
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const onError = (err: Error) => queue.fail(err);
  const onClose = () => queue.fail(new NbdDisconnectedError("connection closed during the NBD handshake"));
  socket.on("error", onError);
  socket.on("close", onClose);
  const timer = setTimeout(() => socket.destroy(new NbdProtocolError(`NBD connect and handshake timed out after ${timeoutMs} ms`)), timeoutMs);
  try {
    const io: HandshakeIO = { read: (n) => queue.read(n), write: (b) => void socket.write(b) };
    const result = await handshake(io, socket);
    return { socket, result, queue, reader: onread };
  } catch (err) {
    socket.destroy();
    throw err;
  } finally {
    clearTimeout(timer);
    socket.off("error", onError);
    socket.off("close", onClose);
  }
}

class PromiseCompletion implements NbdCompletion {
  constructor(
    private readonly resolve: (b: Buffer) => void,
    private readonly reject: (e: Error) => void,
  ) {}
  nbdDone(error: number, data: Buffer[] | undefined, replyHeader: Buffer | undefined): void {
    // Only a connection loss completes a request without a reply header.
    if (error !== 0) this.reject(replyHeader === undefined ? new NbdDisconnectedError() : new NbdError(error));
    else if (data === undefined) this.resolve(EMPTY);
    else if (data.length > 1) this.resolve(Buffer.concat(data));
    else {
      retainSlice(data[0]!); // never released: the caller may keep the buffer for good
      this.resolve(data[0]!);
    }
  }
}

export interface NbdClientEvents {
  /** The connection is gone; every request in flight has completed with EIO. */
  close: [err: Error | undefined];
  /** The socket's write queue crossed its high-water mark (true) or drained (false). */
  congestion: [congested: boolean];
}

export class NbdClient extends EventEmitter<NbdClientEvents> {
  private readonly writer: BatchWriter;
  private phase: "transmission" | "closing" | "closed" = "transmission";
  // Request slots: the cookie sent is (generation, slot), so a stale or forged reply is caught.
  private cap = 0;
  private gens = new Uint32Array(0);
  private types = new Uint8Array(0);
  private readLens = new Uint32Array(0);
  private dones: (NbdCompletion | undefined)[] = [];
  private freeSlots = new Uint32Array(0);
  private freeTop = 0;
  private inFlightCount = 0;
  /** Requests completed so far (a stall watchdog compares it over time). */
  completed = 0;
  private idleWaiters: (() => void)[] = [];
  // Receive state: a reply header split across chunks, and the READ payload being collected.
  private carry: Buffer | null = null;
  private carryLen = 0;
  private rxSlot = -1;
  private rxRemaining = 0;
  private rxParts: Buffer[] = [];
  private rxHeader: Buffer | null = null;
  /** Arenas referenced for rxHeader and rxParts while a reply spans reads. */
  private rxHeld: Arena[] = [];

  private constructor(
    private readonly socket: Socket,
    readonly info: ExportInfo,
  ) {
    super();
    this.writer = new BatchWriter(socket);
    this.writer.onCongestion = (c) => this.emit("congestion", c);
    this.grow(64);
    socket.on("error", (err) => this.teardown(err));
    socket.on("close", () => this.teardown(undefined));
    if (socket.destroyed) queueMicrotask(() => this.teardown(undefined));
  }

  /** Connects, negotiates `exportName` with NBD_OPT_GO, and enters the transmission phase. */
  static async connect(opts: NbdConnectOptions): Promise<NbdClient> {
    let client: NbdClient | undefined;
    const { socket, result, queue, reader } = await openAndNegotiate(
      opts,
      (b, q) => (client ? client.onChunk(b) : q.push(b)),
      async (io) => negotiateGo(io, opts.exportName, (await exchangeGreeting(io)).noZeroes),
    );
    client = new NbdClient(socket, result);
    const early = queue.drain();
    if (early.length > 0) client.onChunk(early);
    // Handshake slices stay pinned; replies from here on follow the reference rule.
    reader.startRecycling();
    if (opts.socketPath && opts.sendBufferBytes) await setSendBuffer(socket, opts.sendBufferBytes);
    return client;
  }

  /** NBD_OPT_LIST, then NBD_OPT_ABORT. */
  static async list(opts: NbdAddress & { timeoutMs?: number }): Promise<{ name: string; description: string }[]> {
    const { socket, result } = await openAndNegotiate(opts, (b, q) => q.push(b), async (io) => {
      await exchangeGreeting(io);
      const names = await listExports(io);
      await abortHandshake(io);
      return names;
    });
    socket.destroy();
    return result;
  }

  /** NBD_OPT_INFO for one export, then NBD_OPT_ABORT. */
  static async query(opts: NbdConnectOptions): Promise<ExportInfo> {
    const { socket, result } = await openAndNegotiate(opts, (b, q) => q.push(b), async (io) => {
      await exchangeGreeting(io);
      const info = await queryInfo(io, opts.exportName);
      await abortHandshake(io);
      return info;
    });
    socket.destroy();
    return result;
  }

  get size(): number {
    return this.info.size;
  }
  get inFlight(): number {
    return this.inFlightCount;
  }
  get congested(): boolean {
    return this.writer.congested;
  }
  /** False once closing started or the connection failed. */
  get usable(): boolean {
    return this.phase === "transmission";
  }

  /**
   * Sends one request; `done` is called exactly once (synchronously with EIO if the
   * connection is unusable). With `header` (a 28-byte request header whose fields already
   * match the arguments), only its cookie is rewritten in place and the same bytes are sent.
   */
  submit(type: number, flags: number, offset: number, length: number, payload: readonly Buffer[] | undefined, done: NbdCompletion, header?: Buffer): void {
    if (this.phase !== "transmission") {
      done.nbdDone(Errno.EIO, undefined, undefined);
      return;
    }
    if (this.freeTop === 0) this.grow(this.cap * 2);
    const slot = this.freeSlots[--this.freeTop]!;
    const gen = this.gens[slot]!;
    this.types[slot] = type;
    this.readLens[slot] = type === Cmd.READ ? length : 0;
    this.dones[slot] = done;
    this.inFlightCount++;
    if (header !== undefined) {
      header.writeUInt32BE(gen, 8);
      header.writeUInt32BE(slot, 12);
    } else {
      header = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
      writeRequestHeader(header, 0, flags, type, gen, slot, offset, length);
    }
    const w = this.writer;
    w.push(header);
    if (payload !== undefined) for (let i = 0; i < payload.length; i++) w.push(payload[i]!);
  }

  read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length, true);
    return this.call(Cmd.READ, 0, offset, length, undefined);
  }

  async write(offset: number, data: Buffer | readonly Buffer[], opts: { fua?: boolean } = {}): Promise<void> {
    const parts = Buffer.isBuffer(data) ? [data] : data;
    const length = parts.reduce((n, p) => n + p.length, 0);
    this.check(offset, length, true, TxFlag.READ_ONLY);
    await this.call(Cmd.WRITE, opts.fua ? CmdFlag.FUA : 0, offset, length, parts);
  }

  async flush(): Promise<void> {
    await this.call(Cmd.FLUSH, 0, 0, 0, undefined);
  }

  async trim(offset: number, length: number, opts: { fua?: boolean } = {}): Promise<void> {
    this.check(offset, length, false, TxFlag.READ_ONLY);
    await this.call(Cmd.TRIM, opts.fua ? CmdFlag.FUA : 0, offset, length, undefined);
  }

  async writeZeroes(offset: number, length: number, opts: { fua?: boolean; noHole?: boolean } = {}): Promise<void> {
    this.check(offset, length, false, TxFlag.READ_ONLY);
    const flags = (opts.fua ? CmdFlag.FUA : 0) | (opts.noHole ? CmdFlag.NO_HOLE : 0);
    await this.call(Cmd.WRITE_ZEROES, flags, offset, length, undefined);
  }

  /** Resolves when no request is in flight. */
  idle(): Promise<void> {
    if (this.inFlightCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Soft disconnect: waits for requests in flight, sends NBD_CMD_DISC, and closes. */
  async close(timeoutMs = 10_000): Promise<void> {
    if (this.phase === "closed") return;
    const closed = new Promise<void>((resolve) => this.socket.once("close", () => resolve()));
    const timer = setTimeout(() => this.socket.destroy(), timeoutMs);
    if (this.phase === "transmission") {
      this.phase = "closing";
      await Promise.race([this.idle(), closed]);
      const disc = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
      writeRequestHeader(disc, 0, 0, Cmd.DISC, 0, 0, 0, 0);
      this.writer.push(disc);
      this.writer.end();
    }
    await closed;
    clearTimeout(timer);
  }

  /** Hard disconnect. */
  destroy(err?: Error): void {
    this.socket.destroy(err);
  }

  private call(type: number, flags: number, offset: number, length: number, payload: readonly Buffer[] | undefined): Promise<Buffer> {
    return new Promise((resolve, reject) => this.submit(type, flags, offset, length, payload, new PromiseCompletion(resolve, reject)));
  }

  private check(offset: number, length: number, payload: boolean, forbiddenFlag = 0): void {
    const { size, blockSizes, txFlags } = this.info;
    if (forbiddenFlag && txFlags & forbiddenFlag) throw new NbdError(Errno.EPERM, "the export is read-only");
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size)
      throw new NbdError(Errno.EINVAL, `range ${offset}+${length} is outside the export (${size} bytes)`);
    if (payload && length > blockSizes.maximum) throw new NbdError(Errno.EINVAL, `${length} bytes exceeds the maximum payload ${blockSizes.maximum}`);
    if (offset % blockSizes.minimum !== 0 || length % blockSizes.minimum !== 0)
      throw new NbdError(Errno.EINVAL, `range ${offset}+${length} is not aligned to ${blockSizes.minimum} bytes`);
  }

  private grow(cap: number): void {
    const old = this.cap;
    const gens = new Uint32Array(cap);
    gens.set(this.gens);
    const types = new Uint8Array(cap);
    types.set(this.types);
    const readLens = new Uint32Array(cap);
    readLens.set(this.readLens);
    const free = new Uint32Array(cap);
    free.set(this.freeSlots.subarray(0, this.freeTop));
    for (let s = cap - 1; s >= old; s--) free[this.freeTop++] = s;
    this.gens = gens;
    this.types = types;
    this.readLens = readLens;
    this.freeSlots = free;
    this.dones.length = cap;
    this.cap = cap;
  }

  private onChunk(b: Buffer): void {
    const n = b.length;
    let pos = 0;
    while (pos < n) {
      if (this.rxSlot < 0) {
        let h: Buffer;
        if (this.carryLen === 0 && n - pos >= SIMPLE_REPLY_SIZE) {
          h = b.subarray(pos, pos + SIMPLE_REPLY_SIZE);
          pos += SIMPLE_REPLY_SIZE;
        } else {
          const c = (this.carry ??= Buffer.allocUnsafe(SIMPLE_REPLY_SIZE));
          const take = Math.min(SIMPLE_REPLY_SIZE - this.carryLen, n - pos);
          b.copy(c, this.carryLen, pos, pos + take);
          this.carryLen += take;
          pos += take;
          if (this.carryLen < SIMPLE_REPLY_SIZE) return;
          h = c;
          this.carry = null;
          this.carryLen = 0;
        }
        if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) return this.protocolError(`bad reply magic 0x${h.readUInt32BE(0).toString(16)}`);
        const error = h.readUInt32BE(4);
        const gen = h.readUInt32BE(8);
        const slot = h.readUInt32BE(12);
        if (slot >= this.cap || this.dones[slot] === undefined || this.gens[slot] !== gen) return this.protocolError(`reply for unknown cookie ${gen}:${slot}`);
        const readLen = this.readLens[slot]!;
        if (error === 0 && readLen > 0) {
          this.rxSlot = slot;
          this.rxRemaining = readLen;
          this.rxHeader = h;
          this.hold(h);
          continue;
        }
        this.complete(slot, error, undefined, h);
      } else {
        const take = Math.min(this.rxRemaining, n - pos);
        const part = b.subarray(pos, pos + take);
        this.rxParts.push(part);
        this.hold(part);
        pos += take;
        this.rxRemaining -= take;
        if (this.rxRemaining === 0) {
          const slot = this.rxSlot;
          const parts = this.rxParts;
          const h = this.rxHeader!;
          this.rxSlot = -1;
          this.rxParts = [];
          this.rxHeader = null;
          this.complete(slot, 0, parts, h);
          const held = this.rxHeld;
          for (let i = 0; i < held.length; i++) releaseArena(held[i]!);
          held.length = 0;
        }
      }
    }
  }

  /** References the arena `b` is in while a reply spans reads; one reference per arena. */
  private hold(b: Buffer): void {
    const held = this.rxHeld;
    const a = retainSlice(b);
    if (a === undefined) return;
    if (held.length > 0 && held[held.length - 1] === a) releaseArena(a);
    else held.push(a);
  }

  private complete(slot: number, error: number, data: Buffer[] | undefined, header: Buffer | undefined): void {
    const done = this.dones[slot]!;
    this.dones[slot] = undefined;
    this.completed++;
    this.gens[slot] = (this.gens[slot]! + 1) >>> 0;
    this.freeSlots[this.freeTop++] = slot;
    if (--this.inFlightCount === 0 && this.idleWaiters.length > 0) {
      const ws = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of ws) w();
    }
    done.nbdDone(error, data, header);
  }

  private protocolError(message: string): void {
    this.socket.destroy(new NbdProtocolError(message));
  }

  private teardown(err: Error | undefined): void {
    if (this.phase === "closed") return;
    this.phase = "closed";
    this.socket.destroy();
    for (let slot = 0; slot < this.cap; slot++) if (this.dones[slot] !== undefined) this.complete(slot, Errno.EIO, undefined, undefined);
    this.emit("close", err);
  }
}
