// Manifest -> image bytes, streaming: chunk files are read a few ahead, decoded,
// checked against their ids and written in order. Into a file, zero runs become
// holes (the file is truncated to its size first and only data is written); into a
// stream they are written as zeros.
import { open } from "node:fs/promises";
import type { Writable } from "node:stream";
import { ChunkDecoder } from "./chunk-file.js";
import { MissingChunkError } from "./errors.js";
import type { Layout } from "./layout.js";
import type { ManifestEntry } from "./manifest.js";
import { readManifest } from "./manifests.js";
import { orderedMap, readChunkFile } from "./reader.js";

export type RestoreTarget = string | Writable;

export interface RestoreOptions {
  /** Chunk files read ahead (default 8). */
  readAhead?: number;
}

export interface RestoreStats {
  bytes: number;
  zeroBytes: number;
  chunks: number;
  seconds: number;
}

const ZERO_PIECE = Buffer.alloc(1024 * 1024);

export async function restoreImage(layout: Layout, name: string, target: RestoreTarget, opts: RestoreOptions = {}): Promise<RestoreStats> {
  const t0 = performance.now();
  const manifest = await readManifest(layout, name);
  const decoder = new ChunkDecoder();
  const stats: RestoreStats = { bytes: manifest.header.size, zeroBytes: manifest.header.zeroBytes, chunks: 0, seconds: 0 };
  const load = async (e: ManifestEntry): Promise<Buffer | undefined> => {
    if (e.id === null) return undefined;
    const file = await readChunkFile(layout, e.id);
    if (!file) throw new MissingChunkError(e.id, name);
    return decoder.decode(file, e.id);
  };

  if (typeof target === "string") {
    const fh = await open(target, "w");
    try {
      await fh.truncate(manifest.header.size);
      await orderedMap(manifest.entries(), opts.readAhead ?? 8, load, async (data, e) => {
        if (!data) return;
        stats.chunks++;
        let done = 0;
        while (done < data.length) done += (await fh.write(data, done, data.length - done, e.offset + done)).bytesWritten;
      });
      await fh.sync();
    } finally {
      await fh.close();
    }
  } else {
    const write = (buf: Buffer) => (target.write(buf) ? Promise.resolve() : new Promise<void>((resolve) => target.once("drain", resolve)));
    await orderedMap(manifest.entries(), opts.readAhead ?? 8, load, async (data, e) => {
      if (data) {
        stats.chunks++;
        return write(data);
      }
      for (let left = e.length; left > 0; left -= ZERO_PIECE.length) await write(left >= ZERO_PIECE.length ? ZERO_PIECE : ZERO_PIECE.subarray(0, left));
    });
  }
  stats.seconds = (performance.now() - t0) / 1000;
  return stats;
}
