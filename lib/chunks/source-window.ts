// The new image's bytes for incremental.ts: read through the caller's read() (over
// NBD) only as far as the chunker needs them, in reads ending on 64 KiB multiples,
// with ranges known to be zeros filled in instead of read.
import { StowageError } from "../errors.js";

export interface Span {
  start: number;
  end: number;
}

/** read() returned a different number of bytes than asked for. */
export class ShortReadError extends StowageError {
  constructor(
    readonly offset: number,
    readonly wanted: number,
    readonly got: number,
  ) {
    super(`incremental write: read(${offset}, ${wanted}) returned ${got} bytes`, { resource: "image", name: String(offset) });
  }
}

export const READ_ALIGN = 64 * 1024;

/**
 * A window of the new image's bytes, filled through read() only as far as asked:
 * up to the end of the dirty range being chunked (at most maxRead at a time), and
 * past it one 64 KiB block at a time.
 */
export class SourceWindow {
  buf = Buffer.alloc(0);
  /** Image offsets of the window: buf[0] is byte `start`. */
  start = 0;
  end = 0;
  readBytes = 0;
  reads = 0;

  constructor(
    private readonly read: (offset: number, length: number) => Promise<Uint8Array>,
    /** Ranges known to be zeros: filled in, not read. */
    private readonly zeros: Span[],
    private readonly size: number,
    private readonly maxRead: number,
  ) {}

  /** Extends the window past its end, keeping it from `p` on; reads through `dirtyEnd` eagerly. */
  async more(p: number, dirtyEnd: number): Promise<void> {
    if (p < this.start || p > this.end) this.start = this.end = p;
    let want = this.end + 1;
    if (this.end < dirtyEnd) want = Math.max(want, Math.min(dirtyEnd, this.end + this.maxRead));
    want = Math.min(this.size, Math.ceil(want / READ_ALIGN) * READ_ALIGN);
    if (want <= this.end) throw new Error(`incremental write: read past the image's end (${this.end} of ${this.size})`);
    const keep = this.end - p;
    const need = keep + want - this.end;
    if (this.buf.length < need) {
      const next = Buffer.allocUnsafe(Math.max(need, this.buf.length * 2));
      this.buf.copy(next, 0, p - this.start, this.end - this.start);
      this.buf = next;
    } else this.buf.copyWithin(0, p - this.start, this.end - this.start);
    const from = this.end;
    this.start = p;
    this.end = p; // while filling: a failed read leaves an empty window
    await this.fill(from, want, keep);
    this.end = want;
  }

  /** Puts image bytes [from, to) at buf[at]: zeros where known, read() elsewhere. */
  private async fill(from: number, to: number, at: number): Promise<void> {
    let zi = lowerBound(this.zeros, from);
    for (let x = from; x < to; ) {
      const z = this.zeros[zi];
      if (z && z.start <= x) {
        const e = Math.min(z.end, to);
        this.buf.fill(0, at + x - from, at + e - from);
        x = e;
        zi++;
        continue;
      }
      const e = Math.min(to, z ? z.start : to);
      const data = await this.read(x, e - x);
      if (data.length !== e - x) throw new ShortReadError(x, e - x, data.length);
      this.reads++;
      this.readBytes += data.length;
      this.buf.set(data, at + x - from);
      x = e;
    }
  }

  /** Makes [p, to) available. */
  async ensure(p: number, to: number, dirtyEnd: number): Promise<void> {
    if (p < this.start) this.start = this.end = p;
    while (this.end < to) await this.more(p, Math.max(dirtyEnd, to));
  }

  /** Bytes [p, p + len) of the image: valid until the window next moves. */
  view(p: number, len: number): Buffer {
    return this.buf.subarray(p - this.start, p - this.start + len);
  }
}

/** Index of the first span that ends after `x`. */
function lowerBound(spans: Span[], x: number): number {
  let lo = 0;
  let hi = spans.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (spans[mid]!.end <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
