// A full write on every core. Cutting content-defined chunks is sequential by
// nature (where a chunk ends depends on where it began), so the image is split into
// segments of a few MiB, and each worker cuts its segment as if a chunk began at the
// segment's first byte, then hashes those chunks (chunk-workers.ts). The event loop
// stitches the segments together in order, and so gets exactly the chunks a
// sequential pass (chunk-stream.ts) would:
//
//   - It knows where the image's true chunk sequence enters a segment: T, the end
//     of the previous segment's last chunk (each worker also gets the first `max`
//     bytes of the next segment, to finish the chunk that crosses into it).
//   - If T is one of the worker's boundaries, the two sequences are one from there
//     on (a chunk's end depends only on its start and the bytes), so the worker's
//     chunks are taken as they are.
//   - If not, the event loop cuts and hashes chunks itself from T until one ends on
//     a boundary of the worker's. On data that takes a chunk or two: two sequences
//     cut by content meet at the first cut both would make. Inside a run of zero
//     chunks they never meet (each cuts every `max` bytes from its own start), so
//     there the event loop skips whole `max` windows up to the run's end without
//     looking at them.
//
// So the event loop reads (one segment ahead), stitches, looks each chunk up and
// builds the manifest; the workers cut, hash, compress and write. Then the store
// step: the new chunks' byte ranges go back to a worker, which compresses them into
// one pack file (chunk-file.ts), while later segments are cut. Segments live in
// shared memory, are never copied (but for the `max` bytes of overlap), and are
// reused once stored. Long runs of zeros a source read by offset knows of are
// skipped whole (zeroSkips()): no segment holds them.
import { PACK_PREFIX_BYTES, sha256 } from "./chunk-file.js";
import { type ChunkerParams, createChunker } from "./chunker.js";
import { type ImageSource, isRangeSource, openSource } from "./chunk-stream.js";
import { ChunkWorkers, cutSpec } from "./chunk-workers.js";
import { chainChunks } from "./segments.js";
import type { WriteSession } from "./write-session.js";

/** Shortest run of known zeros skipped (a skip must be at least `max` long; shorter ones cost little to cut). */
const SKIP_AT_LEAST = 1024 * 1024;

export interface SegmentOptions {
  workers: number;
  /** Bytes per segment (rounded up to a multiple of the chunker's max). */
  segmentBytes: number;
  zstdLevel: number;
}

interface Segment {
  sab: SharedArrayBuffer;
  buf: Buffer;
  /** Bytes of the image in it (the overlap comes after). */
  got: number;
}

interface NewPack {
  items: { start: number; length: number; prefix: Uint8Array }[];
  finals: string[];
  prefixes: Set<string>;
}

/** Zeros not looked at: [start, end), with at least `max` more zeros after end. */
interface Skip {
  start: number;
  end: number;
}

/**
 * The runs of zeros to skip: each zero range long enough, but for its last `max`
 * bytes (the next segment starts there: the chunk that crosses from the zeros
 * into the data after them is cut from real bytes). A segment that ends where a
 * skip starts has the skip's first `max` bytes as its overlap.
 */
export function zeroSkips(zeros: readonly { offset: number; length: number }[], max: number): Skip[] {
  const out: Skip[] = [];
  for (const z of zeros) if (z.length >= SKIP_AT_LEAST + max) out.push({ start: z.offset, end: z.offset + z.length - max });
  return out;
}

type Dispatched = { zero: Skip } | DataSegment;

interface DataSegment {
  seg: Segment;
  /** Image offset of the segment's first byte. */
  start: number;
  /** Bytes available in seg.buf: got plus the overlap, or got at the image's end. */
  dataEnd: number;
  result: Promise<{ lengths: Int32Array; ids: Buffer }>;
}

/** Segment buffers: reused, and at most `limit` of them (reading waits for one to be released). */
class SegmentBuffers {
  private readonly free: SharedArrayBuffer[] = [];
  private readonly waiting: (() => void)[] = [];
  private alive = 0;

  constructor(
    private readonly bytes: number,
    private readonly limit: number,
  ) {}

  async acquire(): Promise<SharedArrayBuffer> {
    while (this.free.length === 0 && this.alive >= this.limit) await new Promise<void>((r) => this.waiting.push(r));
    if (this.free.length) return this.free.pop()!;
    this.alive++;
    return new SharedArrayBuffer(this.bytes);
  }

  release(sab: SharedArrayBuffer): void {
    this.free.push(sab);
    this.waiting.shift()?.();
  }
}

/** Returns the bytes of known zeros skipped (neither read nor cut). */
export async function writeSegments(session: WriteSession, source: ImageSource, params: ChunkerParams, opts: SegmentOptions): Promise<number> {
  const pool = ChunkWorkers.shared();
  const chunker = createChunker(params);
  const max = params.max;
  const zeros = Buffer.alloc(max);
  const zeroShortcut = chunker.cut(zeros, 0, max) === max; // as chunk-stream.ts
  const spec = cutSpec(params, zeroShortcut);
  const segBytes = Math.max(2, Math.ceil(opts.segmentBytes / max)) * max;
  // Segments cut or being cut, in image order: a couple per worker keeps them busy.
  const depth = 2 * opts.workers + 2;
  // Enough that reading never waits for a segment only the event loop could free.
  const buffers = new SegmentBuffers(segBytes + max, depth + 4);
  const { fill, close, skipTo } = await openSource(source);
  // Long runs of zeros a range source knows of are skipped: neither read nor cut.
  const skips = zeroShortcut && skipTo && isRangeSource(source) ? zeroSkips(source.zeros, max) : [];
  let si = 0;
  let next = 0; // image offset of the next unit
  /** The next segment's first bytes: the previous one's overlap. */
  let carry: Buffer | undefined;
  /** The next unit: a skipped run of zeros, or a segment (the carry, then the source's next bytes, up to a skip). */
  const read = async (): Promise<{ zero: Skip } | { seg: Segment; start: number; dataEnd: number; eof: boolean }> => {
    const skip = skips[si];
    if (skip && skip.start === next) {
      si++;
      skipTo!(skip.end);
      next = skip.end;
      return { zero: skip };
    }
    const sab = await buffers.acquire();
    const buf = Buffer.from(sab);
    let have = carry ? carry.copy(buf, 0) : 0;
    // Up to a skip, the segment's bytes and its overlap come from the source; past
    // it, the overlap is the skip's first zeros.
    const stop = skip ? skip.start - next : Infinity;
    const own = Math.min(segBytes, stop);
    const want = own + max;
    const fromSource = Math.min(want, stop);
    if (have < fromSource) have += await fill(buf, have, fromSource - have);
    const short = have < fromSource; // the source ended
    if (!short && fromSource < want) {
      buf.fill(0, have, want);
      have = want;
    }
    const got = Math.min(have, own);
    carry = have > got && got < stop ? buf.subarray(got, have) : undefined;
    const start = next;
    next += got;
    return { seg: { sab, buf, got }, start, dataEnd: have, eof: short && !carry };
  };

  const queue: Dispatched[] = []; // dispatched, not yet stitched (the head is being stitched)
  let pos = 0; // where the image's chunk sequence has got to (every byte before it is in the manifest)
  const cut = (buf: Buffer, s: number, e: number) => chunker.cut(buf, s, e);

  const stitch = async (d: Dispatched) => {
    if ("zero" in d) {
      // Zeros from pos (at most `max` past the skip's start, where the previous
      // segment's last chunk ended) to past the skip's end: the chunker cuts them
      // every `max` bytes, and the zeros go on for `max` bytes after the skip.
      const { start, end } = d.zero;
      if (pos < start || pos > end) throw new Error(`segment pipeline: at ${pos}, outside the zeros skipped from ${start} to ${end}`);
      const n = Math.ceil((end - pos) / max);
      session.addZero(n * max);
      pos += n * max;
      return;
    }
    const { lengths, ids } = await d.result;
    session.check();
    // The segment's new chunks, to be written as one pack (two if ids' pack prefixes ever collide).
    const packs: NewPack[] = [];
    const add = (id: Uint8Array, start: number, length: number) => {
      const final = session.addHashed(id, length);
      if (!final) return;
      const prefix = Buffer.from(id.buffer, id.byteOffset, PACK_PREFIX_BYTES).toString("hex");
      let pack = packs.find((p) => !p.prefixes.has(prefix));
      if (!pack) packs.push((pack = { items: [], finals: [], prefixes: new Set() }));
      pack.items.push({ start, length, prefix: id.subarray(0, PACK_PREFIX_BYTES) });
      pack.finals.push(final);
      pack.prefixes.add(prefix);
    };
    const buf = d.seg.buf.subarray(0, d.dataEnd);
    const end = d.start + d.seg.got;
    let k = 0; // the worker's chunk k starts at `at`; `dk` data chunks come before it
    let at = 0;
    let dk = 0;
    const next = () => {
      const n = lengths[k++]!;
      at += Math.abs(n);
      if (n > 0) dk++;
    };
    while (pos < end) {
      const p = pos - d.start;
      while (k < lengths.length && at < p) next();
      if (at === p && k < lengths.length) {
        // The sequences meet: the worker's chunks are the image's from here on.
        for (; k < lengths.length; next()) {
          const n = lengths[k]!;
          if (n < 0) session.addZero(-n);
          else add(ids.subarray(32 * dk, 32 * dk + 32), at, n);
        }
        pos = d.start + at;
        break;
      }
      if (zeroShortcut && k > 0 && lengths[k - 1]! < 0) {
        // Inside a run of the worker's zero chunks: whole windows of zeros up to its end.
        let runEnd = at;
        for (let j = k; j < lengths.length && lengths[j]! < 0; j++) runEnd -= lengths[j]!;
        const n = Math.floor((runEnd - p) / max);
        if (n > 0) {
          session.addZero(n * max);
          pos += n * max;
          continue;
        }
      }
      const one: number[] = [];
      chainChunks(cut, buf, p, p + 1, d.dataEnd, max, zeroShortcut, zeros, one);
      const n = one[0]!;
      if (n < 0) session.addZero(-n);
      else add(sha256(buf.subarray(p, p + n)), p, n);
      pos += Math.abs(n);
    }
    if (packs.length === 0) buffers.release(d.seg.sab);
    else {
      const written = packs.map((p) => {
        const tmp = session.packFile();
        const prefixes = new Uint8Array(PACK_PREFIX_BYTES * p.items.length);
        p.items.forEach((it, i) => prefixes.set(it.prefix, PACK_PREFIX_BYTES * i));
        const size = pool.store(d.seg.sab, p.items.map(({ start, length }) => ({ start, length })), prefixes, tmp, opts.zstdLevel, opts.workers);
        session.writingPack(tmp, p.finals, size);
        return size;
      });
      Promise.all(written).then(
        () => buffers.release(d.seg.sab),
        () => undefined,
      );
    }
  };

  // Two loops: this one reads and hands segments to the workers, `stitching` takes
  // their results in order. Each segment is dispatched as soon as it (and its
  // overlap) is read, and stitched as soon as its chunks are known.
  let total = 0;
  let skipped = 0;
  let waiting: (() => void)[] = [];
  let readerDone = false;
  let failed = false;
  const signal = () => {
    const w = waiting;
    waiting = [];
    for (const r of w) r();
  };
  const waitSignal = () => new Promise<void>((r) => waiting.push(r));
  const stitching = (async () => {
    try {
      for (;;) {
        if (queue.length === 0) {
          if (readerDone) return;
          await waitSignal();
          continue;
        }
        await stitch(queue[0]!);
        queue.shift();
        signal();
      }
    } catch (err) {
      failed = true;
      signal();
      throw err;
    }
  })();
  stitching.catch(() => undefined);
  try {
    for (;;) {
      while (queue.length >= depth && !failed) await waitSignal();
      if (failed) break;
      const unit = await read();
      if ("zero" in unit) {
        skipped += unit.zero.end - unit.zero.start;
        queue.push(unit);
        total = unit.zero.end;
        signal();
        continue;
      }
      const { seg, start, dataEnd, eof } = unit;
      if (seg.got === 0) {
        buffers.release(seg.sab);
        break;
      }
      const result = pool.chunk(seg.sab, seg.got, dataEnd, spec, opts.workers);
      result.catch(() => undefined); // awaited in order by stitch(); a failure surfaces there
      queue.push({ seg, start, dataEnd, result });
      total = start + seg.got;
      signal();
      if (eof) break; // the source's end
    }
  } finally {
    readerDone = true;
    signal();
    await stitching.catch(() => undefined);
    await close();
  }
  await stitching;
  if (pos !== total) throw new Error(`segment pipeline: chunked ${pos} bytes of ${total}`);
  return skipped;
}
