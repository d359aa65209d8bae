// An NbdBackend over a Buffer in memory: for tests of the server core and of
// clients, and as the simplest example of the backend contract.
import type { NbdBackend, NbdRequest } from "./backend.js";
import { TxFlag, type BlockSizes } from "./protocol.js";

export class MemoryBackend implements NbdBackend {
  readonly data: Buffer;
  readonly txFlags: number;
  readonly blockSizes: Partial<BlockSizes> | undefined;
  /** Requests the backend has answered, and flushes among them. */
  calls = 0;
  flushes = 0;

  constructor(
    readonly size: number,
    opts: { readOnly?: boolean; txFlags?: number; delayMs?: number; blockSizes?: Partial<BlockSizes> } = {},
  ) {
    this.data = Buffer.alloc(size);
    this.txFlags =
      opts.txFlags ??
      TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | (opts.readOnly ? TxFlag.READ_ONLY : 0);
    this.delayMs = opts.delayMs ?? 0;
    this.blockSizes = opts.blockSizes;
  }

  private readonly delayMs: number;

  read(req: NbdRequest): void {
    // A copy: a later write must not change bytes still queued for sending.
    const out = Buffer.from(this.data.subarray(req.offset, req.offset + req.length));
    this.later(() => req.done(0, out));
  }

  write(req: NbdRequest): void {
    let at = req.offset;
    for (const part of req.data ?? []) {
      part.copy(this.data, at);
      at += part.length;
    }
    this.later(() => req.done(0));
  }

  flush(req: NbdRequest): void {
    this.flushes++;
    this.later(() => req.done(0));
  }

  trim(req: NbdRequest): void {
    this.data.fill(0, req.offset, req.offset + req.length);
    this.later(() => req.done(0));
  }

  writeZeroes(req: NbdRequest): void {
    this.data.fill(0, req.offset, req.offset + req.length);
    this.later(() => req.done(0));
  }

  private later(fn: () => void): void {
    this.calls++;
    if (this.delayMs > 0) setTimeout(fn, this.delayMs);
    else queueMicrotask(fn);
  }
}
