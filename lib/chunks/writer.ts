// Storing one image: chunk it, hash each chunk, keep what the store lacks, and
// commit a manifest. The steps that make it safe against crashes and a concurrent
// GC (pending record, touch, sync order) are the session's: write-session.ts.
//
// With worker threads (the default), segments of the image are cut, hashed and
// compressed on every core (segment-pipeline.ts); without, all of it happens on the
// event loop, chunk by chunk (chunk-stream.ts).
import { type ChunkerParams, createChunker } from "./chunker.js";
import { chunkStream, type ImageSource } from "./chunk-stream.js";
import { defaultWorkers } from "./chunk-workers.js";
import type { Layout, StoreConfig } from "./layout.js";
import { writeSegments } from "./segment-pipeline.js";
import { WriteSession } from "./write-session.js";

/** Bytes per segment handed to a worker (with workers), or per read (without). */
const DEFAULT_SEGMENT = 4 * 1024 * 1024;

export interface WriteOptions {
  /** Default: the store's chunker. */
  chunker?: ChunkerParams;
  /** Default: the store's level. */
  zstdLevel?: number;
  labels?: Record<string, string>;
  /** Chunk files being written at once when hashing and compressing inline (default 16). */
  concurrency?: number;
  /** Worker threads that hash and compress (default: one per core, at most 4; 0: all on the event loop). */
  workers?: number;
  /** Bytes read from the source at a time: a segment, with workers (default 4 MiB). */
  readSize?: number;
}

export interface WriteStats {
  name: string;
  /** Bytes of the image. */
  logicalBytes: number;
  /** Bytes in zero runs: never stored. */
  zeroBytes: number;
  /** logicalBytes - zeroBytes. */
  dataBytes: number;
  /** Non-zero chunks referenced, repeats counted. */
  chunks: number;
  /** Chunks this write added to the store. */
  newChunks: number;
  /** Uncompressed bytes of those chunks. */
  newBytes: number;
  /** Bytes of the chunk files this write added (compressed, with headers). */
  storedBytes: number;
  /** Non-zero bytes not stored because the store (or this image) already had them. */
  dedupBytes: number;
  /** Bytes of zeros the source said were zeros, long runs of them, neither read nor looked at. */
  skippedBytes?: number;
  seconds: number;
}

export async function writeImage(layout: Layout, config: StoreConfig, name: string, source: ImageSource, opts: WriteOptions = {}): Promise<WriteStats> {
  const t0 = performance.now();
  const chunkerParams = opts.chunker ?? config.chunker;
  const workers = opts.workers ?? defaultWorkers();
  const zstdLevel = opts.zstdLevel ?? config.zstdLevel;
  const session = await WriteSession.start(layout, name, { zstdLevel, concurrency: opts.concurrency ?? 16, indexOnly: config.indexOnly });
  let skippedBytes = 0;
  try {
    if (workers > 0) skippedBytes = await writeSegments(session, source, chunkerParams, { workers, zstdLevel, segmentBytes: opts.readSize ?? DEFAULT_SEGMENT });
    else
      for await (const chunk of chunkStream(source, createChunker(chunkerParams), opts.readSize)) {
        if (chunk.zero) session.addZero(chunk.data.length);
        else await session.addData(chunk.data);
      }
    await session.commit(chunkerParams, opts.labels ?? {});
  } finally {
    await session.close();
  }
  const { builder, counters } = session;
  return {
    name,
    logicalBytes: builder.size,
    zeroBytes: builder.zeroBytes,
    dataBytes: builder.size - builder.zeroBytes,
    chunks: builder.chunks,
    ...counters,
    skippedBytes,
    seconds: (performance.now() - t0) / 1000,
  };
}
