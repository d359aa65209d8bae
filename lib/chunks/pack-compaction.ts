// Rewriting packs that are mostly dead, at the end of a GC (gc.ts). A pack
// (chunk-file.ts) is freed only with its last name, so once the GC has removed the
// names of unreferenced chunks, a pack that keeps a few live chunks would keep the
// dead ones' bytes for ever. A pack whose names are at most half its records is
// written again with only those records, and its names are moved to the new file:
//
//   1. the new pack is written to tmp/ and fsynced;
//   2. each name is replaced atomically: a link to the new pack is made in tmp/ and
//      renamed over the name (a reader or a writer's touch finds the old file or the
//      new one, both complete; the old one goes with its last name);
//   3. the tmp/ name of the new pack is removed, and the shard directories of the
//      renamed names are fsynced (not the whole file system: a syncfs also waits for
//      whatever else the machine wrote). A crash anywhere leaves every name on a
//      complete file; the next GC removes the tmp/ leftovers (their "session" is not
//      a live writer's).
//
// The new file's mtime is now: a rewritten chunk counts as just touched, which only
// delays its removal. The caller holds the GC lock.
import { randomBytes } from "node:crypto";
import { link, open, readdir, rename, stat, unlink } from "node:fs/promises";
import { encodePack, isIdHex, PACK_HEADER_BYTES, packCount, shardOf } from "./chunk-file.js";
import { fsyncDir, type Layout, SHARDS } from "./layout.js";
import { readChunkFile } from "./reader.js";
import { writeFileSynced } from "../file-ops.js";

/** A pack is rewritten when at most this share of its records still has a name. */
const LIVE_SHARE = 0.5;

export interface CompactionStats {
  /** Packs rewritten, chunks moved to the new ones, and bytes that freed. */
  packs: number;
  chunks: number;
  freedBytes: number;
}

export async function compactPacks(layout: Layout): Promise<CompactionStats> {
  const stats: CompactionStats = { packs: 0, chunks: 0, freedBytes: 0 };
  const moved = new Set<string>(); // shards with a name renamed
  const files = new Map<number, { ids: string[]; size: number; nlink: number }>();
  for (const shard of SHARDS) {
    for (const id of await readdir(layout.shardDir(shard))) {
      if (!isIdHex(id)) continue;
      const st = await stat(layout.chunk(id)).catch(() => undefined);
      if (!st) continue;
      const f = files.get(st.ino);
      if (f) f.ids.push(id);
      else files.set(st.ino, { ids: [id], size: st.size, nlink: st.nlink });
    }
  }
  for (const f of files.values()) {
    // A name elsewhere (a writer's tmp/ name, bad/): not ours to move.
    if (f.nlink !== f.ids.length) continue;
    const records = await packRecords(layout.chunk(f.ids[0]!));
    if (records === undefined || f.ids.length > records * LIVE_SHARE) continue;
    const kept: { id: Buffer; record: Buffer[] }[] = [];
    for (const id of f.ids) {
      const record = await readChunkFile(layout, id).catch(() => undefined); // a damaged one stays where it is
      if (record) kept.push({ id: Buffer.from(id, "hex"), record: [record] });
    }
    if (kept.length !== f.ids.length) continue;
    const bytes = encodePack(kept);
    const tag = `gc-${Date.now().toString(36)}-${randomBytes(4).toString("hex")}`;
    const tmp = layout.tmp(`${tag}.pack`);
    await writeFileSynced(tmp, bytes, "wx");
    for (let i = 0; i < kept.length; i++) {
      const name = layout.tmp(`${tag}.${i}`);
      await link(tmp, name);
      await rename(name, layout.chunk(f.ids[i]!));
      moved.add(shardOf(f.ids[i]!));
    }
    await unlink(tmp);
    stats.packs++;
    stats.chunks += kept.length;
    stats.freedBytes += f.size - bytes.length;
  }
  for (const shard of moved) await fsyncDir(layout.shardDir(shard));
  return stats;
}

/** The record count of the pack at `path`, or undefined if it is a chunk file of its own. */
async function packRecords(path: string): Promise<number | undefined> {
  const fh = await open(path, "r").catch(() => undefined);
  if (!fh) return undefined;
  try {
    const head = Buffer.alloc(PACK_HEADER_BYTES);
    const { bytesRead } = await fh.read(head, 0, PACK_HEADER_BYTES, 0);
    return packCount(head.subarray(0, bytesRead));
  } finally {
    await fh.close();
  }
}
