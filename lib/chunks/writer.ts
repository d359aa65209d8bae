// Storing one image: chunk it, hash each chunk, keep what the store lacks, and
// commit a manifest. The steps that make it safe against crashes and a concurrent
// GC (pending record, touch, fsync order) are the session's: write-session.ts.
import { type ChunkerParams, createChunker } from "./chunker.js";
import { chunkStream, type ImageSource } from "./chunk-stream.js";
import type { Layout, StoreConfig } from "./layout.js";
import { WriteSession } from "./write-session.js";

export interface WriteOptions {
  /** Default: the store's chunker. */
  chunker?: ChunkerParams;
  /** Default: the store's level. */
  zstdLevel?: number;
  labels?: Record<string, string>;
  /** Chunk files being written and synced at once (default 16). */
  concurrency?: number;
  /** Worker threads compressing chunks (default 0: inline; on the shared 2-core machine where this was measured, a worker was slower). */
  compressWorkers?: number;
  /** Bytes read from the source at a time (default 8 MiB). */
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
  seconds: number;
}

export async function writeImage(layout: Layout, config: StoreConfig, name: string, source: ImageSource, opts: WriteOptions = {}): Promise<WriteStats> {
  const t0 = performance.now();
  const chunkerParams = opts.chunker ?? config.chunker;
  const chunker = createChunker(chunkerParams);
  const session = await WriteSession.start(layout, name, {
    zstdLevel: opts.zstdLevel ?? config.zstdLevel,
    concurrency: opts.concurrency ?? 16,
    compressWorkers: opts.compressWorkers ?? 0,
  });
  try {
    for await (const chunk of chunkStream(source, chunker, opts.readSize)) {
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
    seconds: (performance.now() - t0) / 1000,
  };
}
