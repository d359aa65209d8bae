// One client connection of the NBD server: handshake, then the transmission
// phase. Requests are parsed straight out of the received chunks (headers and
// WRITE payloads are slices, never copies, unless a header straddles two
// chunks), validated, and handed to the backend; replies leave through a
// BatchWriter. Nothing a client sends can throw out of here: a broken request
// gets an error reply, a broken stream gets a hard disconnect.
import type { Socket } from "node:net";
import type { Logger } from "pino";
import { arenaOf, releaseArena, retainSlice, type Arena } from "./arena.js";
import type { ArenaReader } from "./arena-reader.js";
import { NbdRequest, type NbdBackend, type NbdReplySink } from "./backend.js";
import { BatchWriter } from "./batch-writer.js";
import { Cmd, CmdFlag, DOS_PAYLOAD_LIMIT, Errno, readU64, REQUEST_HEADER_SIZE, REQUEST_MAGIC, SIMPLE_REPLY_SIZE, TxFlag, writeSimpleReply } from "./protocol.js";
import { ServerHandshake, type ExportDescriptor } from "./server-handshake.js";

export interface ConnectionLimits {
  /** Requests in flight before the connection stops reading (default 256). */
  maxInFlight: number;
  /** READ+WRITE payload bytes in flight before it stops reading (default 64 MiB). */
  maxInFlightBytes: number;
}

/** Why a connection is not reading: any bit set pauses it. */
export const Pause = { IN_FLIGHT: 1, REPLIES: 2, BACKEND: 4 } as const;

const enum Rx {
  HEADER,
  PAYLOAD,
  DISCARD,
}

export class NbdServerConnection implements NbdReplySink {
  private phase: "handshake" | "transmission" | "draining" | "closed" = "handshake";
  private readonly writer: BatchWriter;
  private readonly handshake: ServerHandshake;
  private shuttingDown = false;
  private pauseMask = 0;
  private inFlight = 0;
  private inFlightBytes = 0;
  // Receive state.
  private rx = Rx.HEADER;
  private carry: Buffer | null = null;
  private carryLen = 0;
  private rxReq: NbdRequest | null = null;
  private rxRemaining = 0;
  private rxError = 0;
  private readonly closedPromise: Promise<void>;

  constructor(
    readonly socket: Socket,
    private readonly exp: ExportDescriptor,
    private readonly backend: NbdBackend,
    private readonly limits: ConnectionLimits,
    private readonly log: Logger | undefined,
    /** The socket's arena reader, if it reads into arenas (it starts recycling after the handshake). */
    private readonly reader?: ArenaReader,
  ) {
    this.writer = new BatchWriter(socket);
    this.writer.onCongestion = (c) => this.setPause(Pause.REPLIES, c);
    this.handshake = new ServerHandshake(exp, (b) => this.writer.push(b));
    this.closedPromise = socket.destroyed ? Promise.resolve() : new Promise((resolve) => socket.once("close", () => resolve()));
    if (socket.destroyed) this.phase = "closed";
    socket.on("error", (err) => this.log?.debug({ err: err.message }, "nbd client connection error"));
    socket.on("close", () => (this.phase = "closed"));
    // Sockets adopted into arena reading (arena-reader.ts) call onData directly instead.
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    this.writer.push(ServerHandshake.greeting());
  }

  get closed(): Promise<void> {
    return this.closedPromise;
  }

  /** Pauses or resumes reading for one reason (Pause.*). */
  setPause(reason: number, on: boolean): void {
    const before = this.pauseMask;
    this.pauseMask = on ? before | reason : before & ~reason;
    if (before === 0 && this.pauseMask !== 0) this.socket.pause();
    else if (before !== 0 && this.pauseMask === 0) this.socket.resume();
  }

  /**
   * Server shutdown: refuse further options and requests (ESHUTDOWN), finish what is in
   * flight, then close. Resolves when the socket is closed.
   */
  shutdown(): Promise<void> {
    this.shuttingDown = true;
    this.handshake.shuttingDown = true;
    if (this.phase === "handshake") this.writer.end();
    else this.maybeEnd();
    return this.closedPromise;
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Feeds received bytes. */
  onData(chunk: Buffer): void {
    if (this.phase === "transmission") return this.parse(chunk);
    if (this.phase !== "handshake") return;
    const step = this.handshake.feed(chunk);
    if (step === "close") {
      this.log?.debug({ reason: this.handshake.closeReason }, "nbd handshake ended");
      this.phase = "draining";
      this.writer.end();
    } else if (step === "transmission") {
      this.phase = "transmission";
      // From here on every slice kept past this call is referenced (see arena.ts).
      this.reader?.startRecycling();
      if (this.handshake.leftover.length > 0) this.parse(this.handshake.leftover);
    }
  }

  private parse(chunk: Buffer): void {
    const n = chunk.length;
    let pos = 0;
    while (pos < n && this.phase === "transmission") {
      if (this.rx === Rx.HEADER) {
        let h: Buffer;
        if (this.carryLen === 0 && n - pos >= REQUEST_HEADER_SIZE) {
          h = chunk.subarray(pos, pos + REQUEST_HEADER_SIZE);
          pos += REQUEST_HEADER_SIZE;
        } else {
          // A header split across chunks gets its own buffer: the request keeps it.
          const c = (this.carry ??= Buffer.allocUnsafe(REQUEST_HEADER_SIZE));
          const take = Math.min(REQUEST_HEADER_SIZE - this.carryLen, n - pos);
          chunk.copy(c, this.carryLen, pos, pos + take);
          this.carryLen += take;
          pos += take;
          if (this.carryLen < REQUEST_HEADER_SIZE) return;
          h = c;
          this.carry = null;
          this.carryLen = 0;
        }
        this.onHeader(h);
      } else {
        const take = Math.min(this.rxRemaining, n - pos);
        if (this.rx === Rx.PAYLOAD) {
          const part = chunk.subarray(pos, pos + take);
          const req = this.rxReq!;
          req.data!.push(part);
          hold(req, part);
        }
        pos += take;
        this.rxRemaining -= take;
        if (this.rxRemaining === 0) {
          const req = this.rxReq!;
          this.rxReq = null;
          const err = this.rxError;
          this.rx = Rx.HEADER;
          this.received(req, err);
        }
      }
    }
  }

  private onHeader(h: Buffer): void {
    if (h.readUInt32BE(0) !== REQUEST_MAGIC) return this.hardClose("bad request magic");
    const type = h.readUInt16BE(6);
    const length = h.readUInt32BE(24);
    const req = new NbdRequest(this, h, type, h.readUInt16BE(4), readU64(h, 16), length, h.readUInt32BE(8), h.readUInt32BE(12));
    if (type === Cmd.DISC) {
      this.phase = "draining";
      return this.maybeEnd();
    }
    if (type === Cmd.WRITE && length > 0) {
      // The payload must be consumed either way; past the size the spec never calls a
      // denial of service (and past what we advertise), drop the connection instead.
      if (length > DOS_PAYLOAD_LIMIT && length > this.exp.blockSizes.maximum) return this.hardClose(`write payload of ${length} bytes`);
      hold(req, h);
      this.rxError = this.validate(req);
      this.rx = this.rxError === 0 ? Rx.PAYLOAD : Rx.DISCARD;
      if (this.rxError === 0) req.data = [];
      this.rxReq = req;
      this.rxRemaining = length;
      return;
    }
    hold(req, h);
    this.received(req, this.validate(req));
  }

  /**
   * A request is complete (header and payload): count it, answer or dispatch it, and stop
   * reading past the in-flight limits. Counting only complete requests means intake never
   * pauses inside a payload, where it would wait forever.
   */
  private received(req: NbdRequest, err: number): void {
    this.inFlight++;
    if (req.type === Cmd.READ || req.type === Cmd.WRITE) this.inFlightBytes += req.length;
    if (err !== 0) this.finish(req, err, undefined, undefined);
    else this.dispatch(req);
    if (this.inFlight >= this.limits.maxInFlight || this.inFlightBytes >= this.limits.maxInFlightBytes) this.setPause(Pause.IN_FLIGHT, true);
  }

  /** The spec's error for a request, or 0. Order: unsupported command/flag, read-only, range. */
  private validate(req: NbdRequest): number {
    if (this.shuttingDown) return Errno.ESHUTDOWN;
    const tx = this.exp.txFlags;
    const { minimum, maximum } = this.exp.blockSizes;
    let allowed = tx & TxFlag.SEND_FUA ? CmdFlag.FUA : 0;
    let rangeError: number = Errno.EINVAL;
    switch (req.type) {
      case Cmd.READ:
        if (req.length > maximum) return Errno.EINVAL;
        break;
      case Cmd.WRITE:
        if (tx & TxFlag.READ_ONLY) return Errno.EPERM;
        if (req.length > maximum) return Errno.EINVAL;
        rangeError = Errno.ENOSPC;
        break;
      case Cmd.FLUSH:
        if (!(tx & TxFlag.SEND_FLUSH) || req.flags & ~allowed) return Errno.EINVAL;
        return 0;
      case Cmd.TRIM:
        if (!(tx & TxFlag.SEND_TRIM)) return Errno.EINVAL;
        if (tx & TxFlag.READ_ONLY) return Errno.EPERM;
        break;
      case Cmd.WRITE_ZEROES:
        if (!(tx & TxFlag.SEND_WRITE_ZEROES)) return Errno.EINVAL;
        if (tx & TxFlag.READ_ONLY) return Errno.EPERM;
        allowed |= CmdFlag.NO_HOLE;
        rangeError = Errno.ENOSPC;
        break;
      default:
        return Errno.EINVAL;
    }
    if (req.flags & ~allowed) return Errno.EINVAL;
    if (req.offset + req.length > this.exp.size) return rangeError;
    if (minimum > 1 && (req.offset % minimum !== 0 || req.length % minimum !== 0)) return Errno.EINVAL;
    return 0;
  }

  private dispatch(req: NbdRequest): void {
    if (req.length === 0 && req.type !== Cmd.FLUSH) return this.finish(req, 0, [], undefined);
    const b = this.backend;
    try {
      switch (req.type) {
        case Cmd.READ:
          return b.read(req);
        case Cmd.WRITE:
          return b.write(req);
        case Cmd.FLUSH:
          return b.flush(req);
        case Cmd.TRIM:
          return b.trim(req);
        case Cmd.WRITE_ZEROES:
          return b.writeZeroes(req);
      }
    } catch (err) {
      this.log?.error({ err, type: req.type }, "nbd backend threw");
      this.finish(req, Errno.EIO, undefined, undefined);
    }
  }

  finish(req: NbdRequest, error: number, data: Buffer[] | undefined, replyHeader: Buffer | undefined): void {
    if (req.finished) return;
    req.finished = true;
    const held = req.held;
    if (held !== undefined) {
      req.held = undefined;
      for (let i = 0; i < held.length; i++) releaseArena(held[i]!);
    }
    this.inFlight--;
    if (req.type === Cmd.READ || req.type === Cmd.WRITE) this.inFlightBytes -= req.length;
    if (this.phase === "closed") return;
    const isRead = req.type === Cmd.READ && error === 0;
    if (isRead) {
      let total = 0;
      if (data !== undefined) for (let i = 0; i < data.length; i++) total += data[i]!.length;
      if (total !== req.length) {
        this.log?.error({ expected: req.length, got: total }, "nbd backend returned a short read");
        error = Errno.EIO;
      }
    }
    const h = replyHeader ?? Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
    writeSimpleReply(h, 0, error, req.cookieHi, req.cookieLo);
    const w = this.writer;
    w.push(h);
    if (isRead && error === 0) for (let i = 0; i < data!.length; i++) w.push(data![i]!);
    if (this.pauseMask & Pause.IN_FLIGHT && this.inFlight < this.limits.maxInFlight && this.inFlightBytes < this.limits.maxInFlightBytes)
      this.setPause(Pause.IN_FLIGHT, false);
    if (this.phase === "draining" || this.shuttingDown) this.maybeEnd();
  }

  /** After DISC or on shutdown: close once nothing is in flight. */
  private maybeEnd(): void {
    if (this.inFlight === 0 && this.phase !== "closed") {
      this.phase = "draining";
      this.writer.end();
    }
  }

  private hardClose(reason: string): void {
    this.log?.warn({ reason }, "nbd client broke the protocol; disconnecting");
    this.phase = "closed";
    this.socket.destroy();
  }
}

/** References the arena `b` is in (if any) until `req` is answered; one reference per arena. */
function hold(req: NbdRequest, b: Buffer): void {
  const held = req.held;
  if (held !== undefined && held[held.length - 1] === arenaOf(b)) return;
  const a: Arena | undefined = retainSlice(b);
  if (a === undefined) return;
  if (held === undefined) req.held = [a];
  else held.push(a);
}
