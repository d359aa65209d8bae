// Storing an image on top of a base manifest B (the previous backup of the same
// volume), given which byte ranges may have changed since B (from a QEMU dirty
// bitmap) and random access to the new image (over NBD). Only the changed ranges,
// and a little around them, are read; everything else is B's entries, reused
// without reading or hashing.
//
// Where chunks go. Around each changed range the new bytes are chunked again with
// B's chunker, starting at B's last chunk boundary at or before the range, until a
// boundary of the new chunks falls on one of B's boundaries past the range's end;
// from there B's entries are reused as they are. Content-defined boundaries depend
// only on the bytes near them, so on unchanged data the two sequences meet again
// within a chunk or two; fixed-size ones meet at once. If they have not met
// `resyncChunks` chunks after the range, the next chunk is cut short at B's next
// boundary (a shorter chunk than a full write would make, nothing worse). So the
// result restores to the new image exactly; it is, in practice, the manifest a
// full write would produce, and when it is not, only near a forced cut.
//
// B's boundaries include those inside its zero runs: a zero run is merged from
// zero chunks, and the chunkers cut a run of zeros every `max` bytes (the zero
// shortcut of chunk-stream.ts relies on the same), so a run starting at S has
// boundaries at S + k*max. That lets a small write in a large empty region start
// next to it instead of at the region's start. B's end is not a boundary when the
// image grew: its last chunk was cut by the end of the data, not by its content.
// For the same reason, once past a changed range and inside one of B's zero runs,
// the new chunks are zero chunks of `max` bytes up to the run's end (whatever their
// phase against B's), so they are appended without reading, and chunking resumes
// within `max` bytes of the run's end.
//
// Safety against a concurrent GC and crashes is the write session's
// (write-session.ts): reused chunks are touched like found ones, and one that has
// gone meanwhile (B deleted and collected) is read from the new image and stored
// again, so the manifest is committed only when every chunk it names exists.
import { InvalidArgumentError } from "../errors.js";
import { BaseCursor } from "./base-cursor.js";
import { createChunker } from "./chunker.js";
import type { Layout, StoreConfig } from "./layout.js";
import { readManifest } from "./manifests.js";
import { READ_ALIGN, SourceWindow, type Span } from "./source-window.js";
import { WriteSession } from "./write-session.js";
import type { WriteStats } from "./writer.js";

export { ShortReadError } from "./source-window.js";

export interface ByteRange {
  offset: number;
  length: number;
}

export interface IncrementalWriteOptions {
  /** Bytes of the new image; past the base's size everything counts as changed. */
  size: number;
  /** Ranges that may differ from the base: sorted, not overlapping. Parts past `size` are ignored. */
  changed: Iterable<ByteRange>;
  /** Exactly `length` bytes of the new image at `offset` (offset + length <= size). */
  read: (offset: number, length: number) => Promise<Uint8Array>;
  /**
   * Ranges of the new image known to read as zeros (NBD block status with the zero
   * flag): never read, and long ones never even scanned. Sorted, not overlapping.
   * Only a hint about reading: which ranges changed is still `changed`'s (a range
   * discarded since the base is changed, and zero).
   */
  zeros?: Iterable<ByteRange>;
  /** Default: the store's level. */
  zstdLevel?: number;
  labels?: Record<string, string>;
  /** Chunk files being written at once (default 16). */
  concurrency?: number;
  /** Chunks past a changed range's end to wait for the boundaries to meet before cutting at the base's (default 16). */
  resyncChunks?: number;
  /** Largest read, bytes (default 8 MiB); reads end on 64 KiB multiples of the image. */
  maxRead?: number;
}

export interface IncrementalStats extends WriteStats {
  base: string;
  /** Bytes inside the changed ranges (clipped to the image, growth included). */
  changedBytes: number;
  /** Bytes obtained through read(), and in how many calls. */
  readBytes: number;
  reads: number;
  /** Bytes of the image taken from the base's entries without reading them (data and zero runs). */
  reusedBytes: number;
  /** Bytes chunked anew (changed ranges, the rest of the chunks around them); reusedBytes + rechunkedBytes = size. */
  rechunkedBytes: number;
  /** Chunks cut at a base boundary because the boundaries had not met (see resyncChunks). */
  forcedCuts: number;
  /** Base chunks no longer in the store, read from the new image and stored again. */
  missingBaseChunks: number;
}

export async function writeIncremental(layout: Layout, config: StoreConfig, name: string, baseName: string, opts: IncrementalWriteOptions): Promise<IncrementalStats> {
  const t0 = performance.now();
  const { size } = opts;
  if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError(`invalid image size ${size}`);
  const base = await readManifest(layout, baseName);
  const params = base.header.chunker; // the base's: only the same chunker's boundaries can meet
  const chunker = createChunker(params);
  const max = params.max;
  const zeroCut = chunker.cut(Buffer.alloc(max), 0, max);
  const dirty = dirtyRanges(opts.changed, size, base.header.size);
  const zeros = clippedRanges(opts.zeros ?? [], size, "zero");
  const resyncChunks = opts.resyncChunks ?? 16;
  const cursor = new BaseCursor(base, max);
  const src = new SourceWindow(opts.read, zeros, size, Math.max(opts.maxRead ?? 8 * 1024 * 1024, READ_ALIGN));
  const extra = { changedBytes: dirty.reduce((n, r) => n + r.end - r.start, 0), reusedBytes: 0, rechunkedBytes: 0, forcedCuts: 0, missingBaseChunks: 0 };

  const session = await WriteSession.start(layout, name, { zstdLevel: opts.zstdLevel ?? config.zstdLevel, concurrency: opts.concurrency ?? 16, indexOnly: config.indexOnly });

  const addBytes = async (data: Buffer) => {
    if (isZero(data)) session.addZero(data.length);
    else await session.addData(data);
  };

  /** Appends the base's entries over [from, to); both are base boundaries (or `to` is the end). */
  const reuse = async (from: number, to: number) => {
    for (let x = from; x < to; ) {
      cursor.seek(x);
      const end = Math.min(cursor.end, to);
      if (cursor.zero) {
        session.addZero(end - x);
        extra.reusedBytes += end - x;
      } else if (x === cursor.start && end === cursor.end && session.reuse(cursor.id(), end - x)) {
        extra.reusedBytes += end - x;
      } else {
        // Gone from the store (or, defensively, a partial entry): the bytes are the new image's.
        if (x === cursor.start && end === cursor.end) extra.missingBaseChunks++;
        await src.ensure(x, end, end);
        await addBytes(src.view(x, end - x));
      }
      x = end;
    }
  };

  /** Length of the chunk the chunker cuts at `p`, reading only as far as it needs. */
  const cutAt = async (p: number, dirtyEnd: number): Promise<number> => {
    const end = Math.min(p + max, size);
    let scanned = p; // image offset up to which a cut was looked for in vain
    for (;;) {
      const have = Math.min(src.end, end);
      if (have > p && src.start <= p) {
        const off = p - src.start;
        const buf = src.buf;
        if (have === end) {
          if (zeroCut === max && end - p === max && buf[off] === 0 && isZero(buf.subarray(off, off + max))) return max;
          return chunker.cut(buf, off, off + end - p, off + scanned - p);
        }
        // A cut found before the bytes run out is final: more bytes cannot move it.
        const n = chunker.cut(buf, off, off + have - p, off + scanned - p);
        if (n < have - p) return n;
        scanned = have;
      }
      await src.more(p, dirtyEnd);
    }
  };

  /**
   * Zeros ahead of `p` that the chunker would cut every `max` bytes, so they can be
   * appended without reading or scanning them: past the changed ranges inside one of
   * the base's zero runs (up to its end or the next changed range), or inside a
   * range known to be zeros. How many, in whole `max` chunks, and whether they are
   * the base's (unchanged) or new.
   */
  let zi = 0;
  const zeroSkip = (p: number, dirtyEnd: number, nextDirty: number): [number, boolean] => {
    const unchanged = p >= dirtyEnd && cursor.inZeroRun(p) ? Math.min(cursor.end, nextDirty) : p;
    while (zi < zeros.length && zeros[zi]!.end <= p) zi++;
    const known = zi < zeros.length && zeros[zi]!.start <= p ? zeros[zi]!.end : p;
    const end = Math.max(unchanged, known);
    return [Math.floor((end - p) / max) * max, unchanged >= known];
  };

  /** Chunks the new bytes from `from` (a base boundary) until the boundaries meet past the dirty ranges; returns where, and the next range. */
  const rechunk = async (from: number, ri: number): Promise<[number, number]> => {
    let p = from;
    let dirtyEnd = dirty[ri]!.end;
    ri++;
    let past = 0;
    for (;;) {
      const [skip, fromBase] = zeroCut === max ? zeroSkip(p, dirtyEnd, ri < dirty.length ? dirty[ri]!.start : size) : [0, false];
      if (skip > 0) {
        session.addZero(skip);
        if (fromBase) extra.reusedBytes += skip;
        else extra.rechunkedBytes += skip;
        p += skip;
        past = 0;
      } else {
        let len: number;
        if (past >= resyncChunks) {
          len = Math.min(cursor.nextBoundaryAfter(p), size) - p;
          extra.forcedCuts++;
          await src.ensure(p, p + len, dirtyEnd);
        } else len = await cutAt(p, dirtyEnd);
        await addBytes(src.view(p, len));
        extra.rechunkedBytes += len;
        p += len;
      }
      while (ri < dirty.length && dirty[ri]!.start < p) {
        dirtyEnd = Math.max(dirtyEnd, dirty[ri]!.end);
        ri++;
        past = 0;
      }
      if (p >= size) return [size, ri];
      if (p >= dirtyEnd) {
        if (cursor.isBoundary(p)) return [p, ri];
        past++;
      }
    }
  };

  try {
    let pos = 0;
    for (let ri = 0; ri < dirty.length; ) {
      const start = dirty[ri]!.start;
      // At or before the range; in a grown image, before the base's last (end-cut) chunk.
      const from = Math.max(pos, start < base.header.size ? cursor.boundaryAtOrBefore(start) : base.header.size > 0 ? cursor.boundaryAtOrBefore(base.header.size - 1) : 0);
      await reuse(pos, from);
      [pos, ri] = await rechunk(from, ri);
    }
    await reuse(pos, size);
    if (session.builder.size !== size) throw new Error(`incremental write of ${name}: built ${session.builder.size} bytes, expected ${size}`);
    await session.commit(params, opts.labels ?? {});
  } finally {
    await session.close();
  }
  const { builder, counters } = session;
  return {
    name,
    base: baseName,
    logicalBytes: builder.size,
    zeroBytes: builder.zeroBytes,
    dataBytes: builder.size - builder.zeroBytes,
    chunks: builder.chunks,
    ...counters,
    ...extra,
    readBytes: src.readBytes,
    reads: src.reads,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** The changed ranges clipped to the image and merged, plus the growth past the base, plus the base's tail chunk when the image shrank. */
export function dirtyRanges(changed: Iterable<ByteRange>, size: number, baseSize: number): Span[] {
  const out = clippedRanges(changed, size, "changed");
  // A tail that must be chunked anew to the end: growth, or the chunk the new end cuts.
  const tail = size > baseSize ? baseSize : size < baseSize && size > 0 ? size - 1 : size;
  if (tail < size) {
    let start = tail;
    while (out.length && out[out.length - 1]!.end >= start) start = Math.min(start, out.pop()!.start);
    out.push({ start, end: size });
  }
  return out;
}

/** Ranges checked (sorted, not overlapping), clipped to [0, size) and merged where they touch. */
function clippedRanges(ranges: Iterable<ByteRange>, size: number, what: string): Span[] {
  const out: Span[] = [];
  let prevEnd = 0;
  for (const r of ranges) {
    const { offset, length } = r;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) throw new InvalidArgumentError(`invalid ${what} range (${offset}, ${length})`);
    if (offset < prevEnd) throw new InvalidArgumentError(`${what} ranges must be sorted and must not overlap (offset ${offset} is before ${prevEnd})`);
    prevEnd = offset + length;
    const end = Math.min(offset + length, size);
    if (end <= offset) continue;
    const last = out[out.length - 1];
    if (last && last.end >= offset) last.end = Math.max(last.end, end);
    else out.push({ start: offset, end });
  }
  return out;
}

const ZEROS = Buffer.alloc(256 * 1024);

function isZero(data: Buffer): boolean {
  if (data.length && data[0] !== 0) return false;
  for (let at = 0; at < data.length; at += ZEROS.length) {
    const n = Math.min(ZEROS.length, data.length - at);
    if (data.compare(ZEROS, 0, n, at, at + n) !== 0) return false;
  }
  return true;
}
