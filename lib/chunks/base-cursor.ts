// Walking a base manifest by image position, for incremental.ts: which entry holds a
// byte, and where the base's chunk boundaries are (including those inside zero runs).
import type { Manifest } from "./manifest.js";

/**
 * Walks the base manifest's entries by position (forwards, and back a little),
 * with offsets computed on the way: no table of offsets for a large image.
 */
export class BaseCursor {
  private i = 0;
  start = 0;
  private len: number;
  private readonly n: number;
  private readonly size: number;

  constructor(
    private readonly m: Manifest,
    /** A zero run's boundaries are every `step` bytes from its start. */
    private readonly step: number,
  ) {
    this.n = m.entryCount;
    this.size = m.header.size;
    this.len = this.n ? m.entryLength(0) : 0;
  }

  get end(): number {
    return this.start + this.len;
  }

  get zero(): boolean {
    return this.m.isZeroRun(this.i);
  }

  id(): Buffer {
    return this.m.entryId(this.i);
  }

  /** Moves to the entry holding byte `x` (< the base's size). */
  seek(x: number): void {
    while (x < this.start && this.i > 0) {
      this.i--;
      this.len = this.m.entryLength(this.i);
      this.start -= this.len;
    }
    while (x >= this.start + this.len && this.i < this.n - 1) {
      this.start += this.len;
      this.i++;
      this.len = this.m.entryLength(this.i);
    }
  }

  /** Whether byte `x` is in one of the base's zero runs. */
  inZeroRun(x: number): boolean {
    if (x >= this.size) return false;
    this.seek(x);
    return this.zero;
  }

  /** Whether a chunk of the base starts at `q` (the base's end does not count). */
  isBoundary(q: number): boolean {
    if (q >= this.size) return false;
    this.seek(q);
    return q === this.start || (this.zero && (q - this.start) % this.step === 0);
  }

  /** The last boundary at or before `x` (< the base's size). */
  boundaryAtOrBefore(x: number): number {
    this.seek(x);
    return this.zero ? this.start + Math.floor((x - this.start) / this.step) * this.step : this.start;
  }

  /** The first boundary after `q` (< the base's size), or the base's end. */
  nextBoundaryAfter(q: number): number {
    this.seek(q);
    return this.zero ? Math.min(this.end, this.start + (Math.floor((q - this.start) / this.step) + 1) * this.step) : this.end;
  }
}
