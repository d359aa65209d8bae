// Chunkers: where the next chunk of a byte stream ends. Two kinds share one
// interface, so the store and the benchmark can put them side by side:
//
//   cdc    content-defined (FastCDC-style): a gear hash rolls over the bytes and a
//          chunk ends where its top bits are zero. The cut depends only on the last
//          32 bytes, so inserting or deleting bytes moves only the boundaries near
//          the edit and the rest of the image still deduplicates. Normalized
//          chunking: below the average size a harder mask (more bits) is tested,
//          above it an easier one, which narrows the size spread around the
//          average (the normalization level: how many bits harder and easier).
//          Nothing is hashed in the first `min` bytes of a chunk.
//   fixed  every chunk is `avg` bytes: aligns with qcow2 clusters and finds the same
//          within one VM's history, but nothing after an insertion.
import { GEAR_SEED, gearTable } from "./gear.js";

export type ChunkerKind = "cdc" | "fixed";

export interface ChunkerParams {
  kind: ChunkerKind;
  /** Bytes; cdc: smallest chunk but the last. */
  min: number;
  /**
   * Bytes; cdc: a power of two, 2^bits of the cut mask: past `min`, a cut comes
   * on average every `avg` bytes (normalization 0), so chunks of random data
   * average about `min + avg`; fixed: the chunk size.
   */
  avg: number;
  /** Bytes; cdc: largest chunk. */
  max: number;
  /** cdc: the gear table's seed (part of the format). */
  seed: number;
  /**
   * cdc: bits the mask is made harder for a chunk's first `avg` bytes and easier
   * past them (FastCDC's normalized chunking); 0: one mask. Absent: 2, what stores made
   * before it was a parameter use (their manifests do not name it).
   */
  normalization?: number;
}

/**
 * One mask, a cut every 32 KiB on average past the first 16 KiB: 48 KiB chunks on
 * random data, 57 KB on the benchmark's Debian images. Against the normalized
 * 16/64/256 KiB chunker used before (81 KB there): 2.5% fewer bytes stored for a
 * full and a 1% change, 5.6% fewer over five images, at the same speed
 * (test/bench/dedup.ts and backup.ts; README.md "Chunking").
 */
export const CDC_DEFAULTS: ChunkerParams = { kind: "cdc", min: 16 * 1024, avg: 32 * 1024, max: 256 * 1024, seed: GEAR_SEED, normalization: 0 };
export const FIXED_DEFAULTS: ChunkerParams = { kind: "fixed", min: 64 * 1024, avg: 64 * 1024, max: 64 * 1024, seed: 0 };

export function chunkerParams(kind: ChunkerKind): ChunkerParams {
  return { ...(kind === "cdc" ? CDC_DEFAULTS : FIXED_DEFAULTS) };
}

export interface Chunker {
  readonly params: ChunkerParams;
  /**
   * Length of the chunk that starts at `buf[start]`, given the bytes up to `end`.
   * The caller passes at least `params.max` bytes, or all that is left at the end
   * of the stream; the answer is then final. Given fewer, an answer shorter than
   * `end - start` is final too (more bytes cannot move an earlier cut), and the
   * caller may ask again with more bytes and `resume` = the previous `end`, so
   * that the bytes already scanned are not scanned again (incremental.ts).
   */
  cut(buf: Uint8Array, start: number, end: number, resume?: number): number;
}

/** Mask of the top `bits` bits of a 32-bit word, as an int32. */
const topBits = (bits: number): number => (bits === 0 ? 0 : (~0 << (32 - bits)) | 0);

class CdcChunker implements Chunker {
  private readonly gear: Int32Array;
  private readonly maskHard: number;
  private readonly maskEasy: number;

  constructor(readonly params: ChunkerParams) {
    const { min, avg, max } = params;
    const bits = Math.log2(avg);
    if (!Number.isInteger(bits) || bits < 8 || bits > 28) throw new RangeError(`cdc average ${avg} must be a power of two between 256 B and 256 MiB`);
    if (!(min >= 64 && min < avg && avg < max)) throw new RangeError(`cdc sizes must satisfy 64 <= min < avg < max (got ${min}, ${avg}, ${max})`);
    const n = normalizationOf(params);
    if (!(Number.isInteger(n) && n >= 0 && n <= 4 && bits - n >= 1)) throw new RangeError(`cdc normalization ${params.normalization} must be a whole number of bits from 0 to 4, less than log2(avg)`);
    ({ gear: this.gear, maskHard: this.maskHard, maskEasy: this.maskEasy } = cdcTables(params));
  }

  cut(buf: Uint8Array, start: number, end: number, resume = start): number {
    const { min, avg, max } = this.params;
    return cdcCut(this.gear, this.maskHard, this.maskEasy, min, avg, max, buf, start, end, resume);
  }
}

const normalizationOf = (params: ChunkerParams): number => params.normalization ?? 2;

/** The gear table and the masks of a cdc chunker: with its sizes, the arguments of cdcCut(). */
export function cdcTables(params: ChunkerParams): { gear: Int32Array; maskHard: number; maskEasy: number } {
  const bits = Math.log2(params.avg);
  const n = normalizationOf(params);
  return { gear: gearTable(params.seed), maskHard: topBits(bits + n), maskEasy: topBits(bits - n) };
}

/**
 * The cdc cut (see Chunker.cut). Self-contained, with no reference outside itself:
 * the chunk workers run its source text (chunk-workers.ts).
 */
export function cdcCut(gear: Int32Array, maskHard: number, maskEasy: number, min: number, avg: number, max: number, buf: Uint8Array, start: number, end: number, resume: number): number {
  const n = end - start;
  if (n <= min) return n;
  const limit = n < max ? n : max;
  const normalEnd = start + (limit < avg ? limit : avg);
  const hardEnd = start + limit;
  let h = 0;
  let i = start + min;
  if (resume > i) {
    // The hash depends only on the last 32 bytes (older ones are shifted out):
    // rebuild it from those, without testing for a cut there again.
    for (let j = Math.max(i, resume - 32); j < resume; j++) h = ((h << 1) + gear[buf[j]!]!) | 0;
    i = resume;
  }
  for (; i < normalEnd; i++) {
    h = ((h << 1) + gear[buf[i]!]!) | 0;
    if ((h & maskHard) === 0) return i + 1 - start;
  }
  for (; i < hardEnd; i++) {
    h = ((h << 1) + gear[buf[i]!]!) | 0;
    if ((h & maskEasy) === 0) return i + 1 - start;
  }
  return limit;
}

class FixedChunker implements Chunker {
  constructor(readonly params: ChunkerParams) {
    if (!(params.avg > 0 && params.min === params.avg && params.max === params.avg)) throw new RangeError("fixed chunker: min, avg and max must be the chunk size");
  }

  cut(_buf: Uint8Array, start: number, end: number): number {
    return Math.min(end - start, this.params.avg);
  }
}

export function createChunker(params: ChunkerParams = CDC_DEFAULTS): Chunker {
  return params.kind === "cdc" ? new CdcChunker(params) : new FixedChunker(params);
}
