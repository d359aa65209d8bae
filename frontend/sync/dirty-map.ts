// Which regions of a volume were written while one of its replicas was out of
// sync: the resync copies only those. The map lives in a file so that it
// survives a frontend restart, and a region is on disk as dirty BEFORE the write
// that dirtied it is acknowledged (markDirty resolves after fdatasync). Clearing
// (after a region was copied) is persisted lazily: a stale dirty bit only costs
// one extra copy, a lost one would lose data.
//
// File: one 4 KiB header page, then the bitmap (bit r = region r), written in
// place a page at a time. Bits only go 0 -> 1 between resyncs, and a page is
// always written from the in-memory map (a superset of what is on disk), so a
// torn page write can only drop bits whose write has not been acknowledged yet.
// A header that does not match (other volume size, region size or tracked
// generation), or no file at all when one was expected, means "unknown": the
// caller must copy everything.
//
// A map may carry a token (header bytes 40-71): it names a map that tracks a new
// replica from empty while its agent copies the bulk of it (TrackReplica). The
// controller records the token; a map with another one does not cover that copy.
import { open, rename, rm, type FileHandle } from "node:fs/promises";

const MAGIC = "STOWDIRT";
const VERSION = 1;
const PAGE = 4096;
const HEADER = PAGE;

export interface DirtyMapOptions {
  sizeBytes: number;
  /** Bytes per region (a power of two, at least 4 KiB). */
  regionBytes: number;
  /** The volume generation this map tracks changes since. */
  generation: number;
}

export type OpenState = "created" | "loaded" | "mismatch";

export function regionCount(sizeBytes: number, regionBytes: number): number {
  return Math.ceil(sizeBytes / regionBytes);
}

function encodeHeader(o: DirtyMapOptions): Buffer {
  const h = Buffer.alloc(HEADER);
  h.write(MAGIC, 0, "latin1");
  h.writeUInt32LE(VERSION, 8);
  h.writeUInt32LE(o.regionBytes, 12);
  h.writeBigUInt64LE(BigInt(o.sizeBytes), 16);
  h.writeBigUInt64LE(BigInt(o.generation), 24);
  return h;
}

/** Header byte 32: 1 when the map stands for a full copy (nothing was known about the replica). */
const FULL_AT = 32;
/** Header bytes 40-71: the tracking token (latin1, zero-padded; empty: none). */
const TOKEN_AT = 40;
const TOKEN_MAX = 32;

function headerMatches(h: Buffer, o: DirtyMapOptions): boolean {
  return (
    h.length >= 32 &&
    h.toString("latin1", 0, 8) === MAGIC &&
    h.readUInt32LE(8) === VERSION &&
    h.readUInt32LE(12) === o.regionBytes &&
    h.readBigUInt64LE(16) === BigInt(o.sizeBytes) &&
    h.readBigUInt64LE(24) === BigInt(o.generation)
  );
}

export class DirtyMap {
  readonly regions: number;
  private dirtyCount = 0;
  /** Pages changed in memory and not yet written. */
  private readonly pending = new Set<number>();
  private flushing: Promise<void> | undefined;
  private flushAgain = false;
  private closed = false;
  /** fdatasync calls so far (tests check that concurrent marks share them). */
  syncs = 0;

  private constructor(
    readonly path: string,
    readonly options: DirtyMapOptions,
    private readonly file: FileHandle,
    private readonly bits: Uint8Array,
    /** Every region was marked because nothing was known (see markAll): the copy is a full one. */
    public full: boolean,
    /** The tracking token ("" when none; see setToken). */
    private tokenValue: string,
  ) {
    this.regions = regionCount(options.sizeBytes, options.regionBytes);
    for (const byte of bits) this.dirtyCount += popcount(byte);
  }

  /**
   * Opens the map at `path`. "created": there was none (nothing is dirty);
   * "loaded": it matches; "mismatch": it exists but tracks something else, and
   * was replaced by an empty one (the caller must treat every region as dirty).
   */
  static async open(path: string, o: DirtyMapOptions): Promise<{ map: DirtyMap; state: OpenState }> {
    if (!Number.isSafeInteger(o.sizeBytes) || o.sizeBytes <= 0) throw new RangeError(`bad volume size ${o.sizeBytes}`);
    if (o.regionBytes < PAGE || (o.regionBytes & (o.regionBytes - 1)) !== 0) throw new RangeError(`region size ${o.regionBytes} must be a power of two >= ${PAGE}`);
    const bitmapBytes = Math.ceil(regionCount(o.sizeBytes, o.regionBytes) / 8);
    const bits = new Uint8Array(Math.ceil(bitmapBytes / PAGE) * PAGE);
    let state: OpenState = "created";
    let full = false;
    let token = "";
    const existing = await open(path, "r").catch(() => undefined);
    if (existing) {
      try {
        const h = Buffer.alloc(HEADER);
        const { bytesRead } = await existing.read(h, 0, HEADER, 0);
        if (bytesRead === HEADER && headerMatches(h, o)) {
          await existing.read(bits, 0, bits.length, HEADER);
          state = "loaded";
          full = h[FULL_AT] === 1;
          token = h.toString("latin1", TOKEN_AT, TOKEN_AT + TOKEN_MAX).replace(/\0+$/, "");
        } else {
          state = "mismatch";
        }
      } finally {
        await existing.close();
      }
    }
    if (state !== "loaded") {
      // A fresh file, complete before it takes the name.
      const tmp = `${path}.tmp`;
      const f = await open(tmp, "w");
      await f.write(encodeHeader(o), 0, HEADER, 0);
      await f.write(bits, 0, bits.length, HEADER);
      await f.datasync();
      await f.close();
      await rename(tmp, path);
    }
    const file = await open(path, "r+");
    return { map: new DirtyMap(path, o, file, bits, full, token), state };
  }

  static async remove(path: string): Promise<void> {
    await rm(path, { force: true });
  }

  /** The tracking token ("" when the map has none). */
  get token(): string {
    return this.tokenValue;
  }

  /**
   * Names the map (TrackReplica): on disk before this resolves, so a token the
   * controller records always names a map that exists. Only an empty map that
   * is not a full copy gets one: it tracks a replica from a known point.
   */
  async setToken(token: string): Promise<void> {
    if (!/^[0-9a-z-]{1,32}$/.test(token)) throw new RangeError(`bad tracking token ${JSON.stringify(token)}`);
    if (this.full) throw new Error("a map standing for a full copy cannot track");
    const b = Buffer.alloc(TOKEN_MAX);
    b.write(token, 0, "latin1");
    await this.file.write(b, 0, TOKEN_MAX, TOKEN_AT);
    await this.file.datasync();
    this.syncs++;
    this.tokenValue = token;
  }

  get count(): number {
    return this.dirtyCount;
  }

  get dirtyBytes(): number {
    let total = this.dirtyCount * this.options.regionBytes;
    // The last region may be short.
    const last = this.regions - 1;
    if (this.isDirty(last)) total -= this.regions * this.options.regionBytes - this.options.sizeBytes;
    return total;
  }

  /** Regions [first, last] that a request at offset/length touches. */
  span(offset: number, length: number): [number, number] {
    if (offset < 0 || length < 0 || offset >= this.options.sizeBytes || offset + length > this.options.sizeBytes) {
      throw new RangeError(`${offset}+${length} is outside the volume (${this.options.sizeBytes} bytes)`);
    }
    const first = Math.floor(offset / this.options.regionBytes);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / this.options.regionBytes);
    return [first, last];
  }

  /** True when every region of offset/length is dirty on disk already (nothing to wait for). */
  covers(offset: number, length: number): boolean {
    if (this.flushing || this.pending.size > 0) return false;
    const [first, last] = this.span(offset, length);
    for (let r = first; r <= last; r++) if (!this.isDirty(r)) return false;
    return true;
  }

  isDirty(region: number): boolean {
    return (this.bits[region >> 3]! & (1 << (region & 7))) !== 0;
  }

  /** Marks the regions of a write dirty; resolves once that is on disk. */
  async markDirty(offset: number, length: number): Promise<void> {
    const [first, last] = this.span(offset, length);
    let changed = false;
    for (let r = first; r <= last; r++) {
      if (this.isDirty(r)) continue;
      this.bits[r >> 3]! |= 1 << (r & 7);
      this.dirtyCount++;
      this.pending.add((r >> 3) >> 12);
      changed = true;
    }
    // Already dirty (and on disk, or being written by the flush this waits for).
    if (!changed && !this.flushing) return;
    await this.flush();
  }

  /** Marks whole regions dirty (any number, one sync); resolves once that is on disk. */
  async markRegions(regions: Iterable<number>): Promise<void> {
    for (const r of regions) {
      if (r < 0 || r >= this.regions || this.isDirty(r)) continue;
      this.bits[r >> 3]! |= 1 << (r & 7);
      this.dirtyCount++;
      this.pending.add((r >> 3) >> 12);
    }
    await this.flush();
  }

  /** Marks a region copied; persisted with the next flush. */
  clear(region: number): void {
    if (!this.isDirty(region)) return;
    this.bits[region >> 3]! &= ~(1 << (region & 7));
    this.dirtyCount--;
    this.pending.add((region >> 3) >> 12);
  }

  /** Dirty regions from `from` on, in order. */
  *dirtyRegions(from = 0): Generator<number> {
    for (let byte = from >> 3; byte * 8 < this.regions; byte++) {
      const b = this.bits[byte]!;
      if (b === 0) continue;
      for (let bit = 0; bit < 8; bit++) {
        const r = byte * 8 + bit;
        if (r >= from && r < this.regions && (b & (1 << bit)) !== 0) yield r;
      }
    }
  }

  /** Marks every region dirty, on disk, and the map as standing for a full copy. */
  async markAll(): Promise<void> {
    if (!this.full) {
      this.full = true;
      await this.file.write(Buffer.from([1]), 0, 1, FULL_AT);
    }
    await this.markDirty(0, this.options.sizeBytes);
  }

  /**
   * Writes every changed page and syncs. Concurrent callers share flushes: a
   * caller that arrives during one waits for the next, which covers its change.
   */
  flush(): Promise<void> {
    if (this.flushing) {
      this.flushAgain = true;
      return this.flushing;
    }
    this.flushing = (async () => {
      try {
        do {
          this.flushAgain = false;
          const pages = [...this.pending].sort((a, b) => a - b);
          this.pending.clear();
          if (pages.length === 0) continue;
          if (this.closed) throw new Error("dirty map is closed");
          for (const p of pages) await this.file.write(this.bits, p * PAGE, PAGE, HEADER + p * PAGE);
          await this.file.datasync();
          this.syncs++;
        } while (this.flushAgain || this.pending.size > 0);
      } finally {
        this.flushing = undefined;
      }
    })();
    return this.flushing;
  }

  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    await this.file.close();
  }
}

function popcount(b: number): number {
  let n = 0;
  for (let x = b; x; x &= x - 1) n++;
  return n;
}
