// The contract between the NBD server core and whatever serves the data: the
// server validates each request (range, flags, read-only, size limits) and
// hands only valid ones to an NbdBackend, which answers each NbdRequest once.
//
// Built so a forwarding backend copies nothing: a request carries its 28-byte
// header exactly as received (the backend may rewrite it in place and send the
// same bytes on), a WRITE's payload is a list of slices of the received
// chunks, and a backend may hand back the 16-byte reply header it received so
// the server rewrites that in place instead of building a new one.
//
// `header` and `data` may be slices of a receive arena (arena.ts): the server
// references them until the request is answered, so a backend may use them
// until it calls done() and must not keep them after that; one that forwards
// them pushes them to a BatchWriter, which takes its own references.
import type { Arena } from "./arena.js";
import type { NbdCompletion } from "./client.js";
import { CmdFlag, type BlockSizes } from "./protocol.js";

export interface NbdBackend {
  /** Export size in bytes. */
  readonly size: number;
  /**
   * What the backend supports, as transmission flags: READ_ONLY, SEND_FLUSH, SEND_FUA,
   * SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN, ROTATIONAL. Others are ignored.
   */
  readonly txFlags: number;
  /** Constraints the backend needs; the server advertises and enforces them. */
  readonly blockSizes?: Partial<BlockSizes>;
  read(req: NbdRequest): void;
  /** `req.data` holds the payload. */
  write(req: NbdRequest): void;
  flush(req: NbdRequest): void;
  trim(req: NbdRequest): void;
  /** `req.flags` may carry NO_HOLE. */
  writeZeroes(req: NbdRequest): void;
}

/** What the request's connection does with a backend's answer. */
export interface NbdReplySink {
  finish(req: NbdRequest, error: number, data: Buffer[] | undefined, replyHeader: Buffer | undefined): void;
}

/** One command in flight. It is its own completion, so a forwarding backend allocates nothing. */
export class NbdRequest implements NbdCompletion {
  /** WRITE payload as slices of received chunks; its total length is `length`. */
  data: Buffer[] | undefined = undefined;
  finished = false;
  /** Arenas the server references for `header` and `data` until the request is answered. */
  held: Arena[] | undefined = undefined;

  constructor(
    private readonly sink: NbdReplySink,
    /** The request header as received; a forwarding backend may overwrite its cookie in place. */
    readonly header: Buffer,
    readonly type: number,
    readonly flags: number,
    readonly offset: number,
    readonly length: number,
    /** The client's cookie, kept apart from `header` because a backend may overwrite it there. */
    readonly cookieHi: number,
    readonly cookieLo: number,
  ) {}

  get fua(): boolean {
    return (this.flags & CmdFlag.FUA) !== 0;
  }

  /** Answers the request: `error` is an Errno value; a READ passes its data (exactly `length` bytes). */
  done(error: number, data?: Buffer | Buffer[]): void {
    this.sink.finish(this, error, data === undefined ? undefined : Buffer.isBuffer(data) ? [data] : data, undefined);
  }

  nbdDone(error: number, data: Buffer[] | undefined, replyHeader: Buffer | undefined): void {
    this.sink.finish(this, error, data, replyHeader);
  }
}
