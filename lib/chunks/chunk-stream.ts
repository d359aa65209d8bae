// Turns an image (a file path or an async iterable of buffers) into a sequence of
// chunks, reusing two working buffers (the next read fills one while the other is
// chunked): no allocation per byte or per read, only a view per chunk. All-zero chunks are flagged so the store records them as zero
// runs instead of storing them; a long zero run is recognized with one memcmp
// per `max` bytes instead of rolling the hash over it.
import { open } from "node:fs/promises";
import type { Chunker } from "./chunker.js";

/**
 * An image read by offset, with the ranges known to read as zeros: those are never
 * read, and long ones are not even looked at (segment-pipeline.ts). What a full
 * backup has from an NBD export and its block status (holes, zero clusters).
 */
export interface RangeSource {
  size: number;
  /** Ranges that read as zeros: sorted, not overlapping. */
  zeros: readonly { offset: number; length: number }[];
  /** Exactly `length` bytes at `offset`. */
  read: (offset: number, length: number) => Promise<Uint8Array>;
}

export type ImageSource = string | AsyncIterable<Uint8Array> | RangeSource;

export const isRangeSource = (s: ImageSource): s is RangeSource => typeof s === "object" && "read" in s && "zeros" in s;

/** Largest read() of a RangeSource, and how many are in flight at most. */
const RANGE_READ = 1024 * 1024;
const RANGE_READS_IN_FLIGHT = 8;

export interface ChunkView {
  /** The chunk's bytes; valid only until the iterator is advanced. */
  data: Buffer;
  /** Byte offset of the chunk in the image. */
  offset: number;
  zero: boolean;
}

const DEFAULT_READ_SIZE = 8 * 1024 * 1024;

/** Reads the source's next bytes into buf[at..at+len): all of them, fewer only at its end. */
export type Fill = (buf: Buffer, at: number, len: number) => Promise<number>;

/**
 * Sequential reads of a source: a file from its start, an async iterable, or a
 * range source (whose reader may also skip ahead: `skipTo`, over known zeros).
 */
export async function openSource(source: ImageSource): Promise<{ fill: Fill; close: () => Promise<void>; skipTo?: (pos: number) => void }> {
  if (typeof source !== "string") {
    if (isRangeSource(source)) return { ...rangeFill(source), close: async () => {} };
    return { fill: iterableFill(source), close: async () => {} };
  }
  const fh = await open(source, "r");
  let filePos = 0;
  const fill: Fill = async (b, at, len) => {
    let n = 0;
    while (n < len) {
      const { bytesRead } = await fh.read(b, at + n, len - n, filePos);
      if (bytesRead === 0) break;
      n += bytesRead;
      filePos += bytesRead;
    }
    return n;
  };
  return { fill, close: () => fh.close() };
}

function rangeFill(src: RangeSource): { fill: Fill; skipTo: (pos: number) => void } {
  let pos = 0;
  let zi = 0; // the first zero range that ends after pos
  const fill: Fill = async (buf, at, len) => {
    const end = Math.min(pos + len, src.size);
    const reads: { off: number; len: number; into: number }[] = [];
    while (zi < src.zeros.length && src.zeros[zi]!.offset + src.zeros[zi]!.length <= pos) zi++;
    for (let x = pos, z = zi; x < end; ) {
      const zr = src.zeros[z];
      if (zr && zr.offset <= x) {
        const e = Math.min(zr.offset + zr.length, end);
        buf.fill(0, at + x - pos, at + e - pos);
        x = e;
        z++;
        continue;
      }
      const e = Math.min(end, zr ? zr.offset : end, x + RANGE_READ);
      reads.push({ off: x, len: e - x, into: at + x - pos });
      x = e;
    }
    // A few reads in flight, each copied into place as it lands.
    let next = 0;
    const worker = async () => {
      while (next < reads.length) {
        const r = reads[next++]!;
        const data = await src.read(r.off, r.len);
        if (data.length !== r.len) throw new Error(`image source: read(${r.off}, ${r.len}) returned ${data.length} bytes`);
        buf.set(data, r.into);
      }
    };
    await Promise.all(Array.from({ length: Math.min(RANGE_READS_IN_FLIGHT, reads.length) }, worker));
    const n = end - pos;
    pos = end;
    return Math.max(0, n);
  };
  const skipTo = (to: number) => {
    if (to < pos) throw new Error(`image source: cannot skip back from ${pos} to ${to}`);
    pos = Math.min(to, src.size);
  };
  return { fill, skipTo };
}

function iterableFill(source: AsyncIterable<Uint8Array>): Fill {
  const it = source[Symbol.asyncIterator]();
  let piece: Uint8Array | undefined;
  let used = 0;
  return async (buf, at, len) => {
    let n = 0;
    while (n < len) {
      if (!piece || used === piece.length) {
        const r = await it.next();
        if (r.done) break;
        piece = r.value;
        used = 0;
        continue;
      }
      const take = Math.min(len - n, piece.length - used);
      buf.set(piece.subarray(used, used + take), at + n);
      used += take;
      n += take;
    }
    return n;
  };
}

export async function* chunkStream(source: ImageSource, chunker: Chunker, readSize = DEFAULT_READ_SIZE): AsyncGenerator<ChunkView> {
  const max = chunker.params.max;
  const zeros = Buffer.alloc(max);
  // The shortcut below is exact only if the chunker cuts a window of zeros at `max`.
  const zeroCut = chunker.cut(zeros, 0, max);
  readSize = Math.max(readSize, max);
  // Two buffers: the next read fills one while the other is chunked. Each holds the
  // previous one's unchunked tail (less than `max`) just before `max`, then the read.
  const bufs = [Buffer.allocUnsafe(max + readSize), Buffer.allocUnsafe(max + readSize)];
  const { fill, close } = await openSource(source);
  let reading: Promise<number> | undefined;
  try {
    let cur = 0;
    let buf = bufs[0]!;
    let pos = max;
    let offset = 0;
    reading = fill(buf, max, readSize);
    for (;;) {
      const got = await reading!;
      reading = undefined;
      const end = max + got;
      const eof = got < readSize;
      const other = bufs[cur ^ 1]!;
      if (!eof) reading = fill(other, max, readSize);
      while (end - pos >= max || (eof && pos < end)) {
        let len: number;
        let zero: boolean;
        if (buf[pos] === 0 && zeroCut === max && end - pos >= max && buf.compare(zeros, 0, max, pos, pos + max) === 0) {
          len = max;
          zero = true;
        } else {
          len = chunker.cut(buf, pos, end);
          zero = buf[pos] === 0 && buf.compare(zeros, 0, len, pos, pos + len) === 0;
        }
        yield { data: buf.subarray(pos, pos + len), offset, zero };
        pos += len;
        offset += len;
      }
      if (eof) return;
      const tail = end - pos;
      buf.copy(other, max - tail, pos, end);
      cur ^= 1;
      buf = other;
      pos = max - tail;
    }
  } finally {
    // A consumer that stops early leaves a read in flight: let it land before closing.
    await reading?.catch(() => 0);
    await close();
  }
}
