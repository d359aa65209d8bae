// Storing one image: chunk it, hash each chunk, keep what the store lacks, and
// commit a manifest. The order of steps is what makes it safe:
//
//   1. A pending record (pending/SESSION) says a write started at startedMs. The GC
//      never deletes a chunk whose mtime is at or after the oldest live writer's
//      start (gc.ts), so everything this write references stays until it commits.
//   2. A chunk already in the store is "touched" (its mtime set to now) instead of
//      merely looked up: the touch both answers "is it there?" and protects it. If
//      the GC removed it a moment before, the touch fails with ENOENT and the chunk
//      is written again.
//   3. A new chunk is written to tmp/, fsynced, and renamed into chunks/: a chunk
//      file under its final name is always complete.
//   4. After the last chunk: fsync every shard directory this write put or found a
//      chunk in, then write the manifest to tmp/, fsync it, link it into
//      manifests/ (which refuses an existing name) and fsync manifests/. So a
//      committed manifest never points at a chunk a crash could lose.
//   5. Remove the pending record. A writer killed before that leaves a record whose
//      process is gone; the GC removes it, and the chunks only it referenced.
import { randomBytes } from "node:crypto";
import { link, open, rename, rm, stat, unlink } from "node:fs/promises";
import { utimesSync } from "node:fs";
import { hostname } from "node:os";
import { AlreadyExistsError, InvalidArgumentError } from "../errors.js";
import { faultPoint } from "../faults.js";
import { HEADER_BYTES, sha256, shardOf } from "./chunk-file.js";
import { CompressPool } from "./compress-pool.js";
import { type ChunkerParams, createChunker } from "./chunker.js";
import { chunkStream, type ImageSource } from "./chunk-stream.js";
import { fsyncDir, type Layout, type PendingRecord, type StoreConfig, validManifestName, writePending } from "./layout.js";
import { ManifestBuilder } from "./manifest.js";

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
  if (!validManifestName(name)) throw new InvalidArgumentError(`invalid manifest name "${name}"`, { hint: "use letters, digits and . _ @ : + -, starting with a letter or digit" });
  if (await exists(layout.manifest(name))) throw new AlreadyExistsError("manifest", name);
  const t0 = performance.now();
  const chunkerParams = opts.chunker ?? config.chunker;
  const chunker = createChunker(chunkerParams);
  const concurrency = opts.concurrency ?? 16;
  const session = `${Date.now().toString(36)}-${process.pid}-${randomBytes(4).toString("hex")}`;
  const record: PendingRecord = { session, name, host: hostname(), pid: process.pid, startedMs: Date.now() };
  await writePending(layout, record);

  const stats: WriteStats = { name, logicalBytes: 0, zeroBytes: 0, dataBytes: 0, chunks: 0, newChunks: 0, newBytes: 0, storedBytes: 0, dedupBytes: 0, seconds: 0 };
  const builder = new ManifestBuilder();
  const known = new Set<string>();
  const shards = new Set<string>();
  const writes = new Set<Promise<void>>();
  let failure: unknown;
  let tmpSeq = 0;

  const encoder = new CompressPool(opts.zstdLevel ?? config.zstdLevel, opts.compressWorkers ?? 0);
  const writeChunk = async (idHex: string, data: Uint8Array) => {
    const parts = await encoder.encode(data);
    stats.storedBytes += HEADER_BYTES + parts[1].length;
    const tmp = layout.tmp(`${session}.${tmpSeq++}`);
    const fh = await open(tmp, "wx");
    try {
      await fh.writev(parts);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, layout.chunk(idHex));
  };

  try {
    for await (const chunk of chunkStream(source, chunker, opts.readSize)) {
      const len = chunk.data.length;
      if (chunk.zero) {
        builder.addZero(len);
        continue;
      }
      const id = sha256(chunk.data);
      builder.addChunk(id, len);
      const idHex = id.toString("hex");
      if (known.has(idHex)) {
        stats.dedupBytes += len;
        continue;
      }
      known.add(idHex);
      shards.add(shardOf(idHex));
      if (touch(layout.chunk(idHex))) {
        stats.dedupBytes += len;
        continue;
      }
      stats.newChunks++;
      stats.newBytes += len;
      if (failure) throw failure;
      const p: Promise<void> = writeChunk(idHex, chunk.data).then(
        () => void writes.delete(p),
        (err) => {
          writes.delete(p);
          failure ??= err;
        },
      );
      writes.add(p);
      if (writes.size >= concurrency) await Promise.race(writes);
    }
    await Promise.all(writes);
    if (failure) throw failure;
    for (const s of shards) await fsyncDir(layout.shardDir(s));
    faultPoint("chunks.write.before-manifest", name);

    const manifest = builder.encode({ name, createdMs: Date.now(), chunker: chunkerParams, labels: opts.labels ?? {} });
    const tmp = layout.tmp(`${session}.manifest`);
    const fh = await open(tmp, "wx");
    try {
      await fh.writeFile(manifest);
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await link(tmp, layout.manifest(name));
    } catch (err: any) {
      if (err?.code === "EEXIST") throw new AlreadyExistsError("manifest", name);
      throw err;
    } finally {
      await unlink(tmp).catch(() => {});
    }
    await fsyncDir(layout.manifestsDir());
    faultPoint("chunks.write.after-manifest", name);
  } catch (err) {
    await Promise.allSettled(writes);
    throw err;
  } finally {
    await encoder.close();
    await rm(layout.pending(session), { force: true });
  }
  stats.logicalBytes = builder.size;
  stats.zeroBytes = builder.zeroBytes;
  stats.dataBytes = builder.size - builder.zeroBytes;
  stats.chunks = builder.chunks;
  stats.seconds = (performance.now() - t0) / 1000;
  return stats;
}

/** Sets the chunk's mtime to now; false if it does not exist. */
function touch(path: string): boolean {
  const now = Date.now() / 1000;
  try {
    utimesSync(path, now, now);
    return true;
  } catch (err: any) {
    if (err?.code === "ENOENT") return false;
    throw err;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err: any) {
    if (err?.code === "ENOENT") return false;
    throw err;
  }
}
