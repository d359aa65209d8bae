// verify: re-read and re-hash every chunk file, and check every manifest's
// references. Reports corrupt chunks, missing chunks, and for each damaged
// manifest which of its chunks are bad, so an operator knows which images are
// affected. With `quarantine`, corrupt chunk files are moved to bad/: the next
// write that meets the same data then stores it again, healing the store.
import { mkdir, readdir, rename } from "node:fs/promises";
import { join } from "node:path";
import { NotFoundError } from "../errors.js";
import { ChunkDecoder, isIdHex } from "./chunk-file.js";
import { CorruptChunkError } from "./errors.js";
import { type Layout, SHARDS } from "./layout.js";
import { listManifestNames, readManifest } from "./manifests.js";
import { orderedMap, readChunkFile } from "./reader.js";

export interface VerifyOptions {
  quarantine?: boolean;
  /** Chunk files read at once (default 8). */
  readAhead?: number;
}

export interface VerifyReport {
  ok: boolean;
  manifests: number;
  chunksChecked: number;
  bytesChecked: number;
  corrupt: { id: string; reason: string; manifests: string[] }[];
  missing: { id: string; manifests: string[] }[];
  /** Manifests that reference a corrupt or missing chunk. */
  damagedManifests: { name: string; corrupt: number; missing: number }[];
  /** Manifests that cannot be read at all. */
  badManifests: { name: string; reason: string }[];
  /** Chunk files no manifest references (the GC's to remove). */
  unreferenced: number;
  seconds: number;
}

export async function verifyStore(layout: Layout, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const t0 = performance.now();
  const report: VerifyReport = { ok: true, manifests: 0, chunksChecked: 0, bytesChecked: 0, corrupt: [], missing: [], damagedManifests: [], badManifests: [], unreferenced: 0, seconds: 0 };
  const users = new Map<string, string[]>();
  for (const name of await listManifestNames(layout)) {
    try {
      for (const id of (await readManifest(layout, name)).chunkIds()) {
        const list = users.get(id);
        if (list) list.push(name);
        else users.set(id, [name]);
      }
      report.manifests++;
    } catch (err) {
      if (err instanceof NotFoundError) continue;
      report.badManifests.push({ name, reason: err instanceof Error ? err.message : String(err) });
    }
  }

  const present = new Set<string>();
  const files: string[] = [];
  for (const shard of SHARDS) for (const f of await readdir(layout.shardDir(shard))) if (isIdHex(f)) files.push(f);
  for (const f of await readdir(layout.trashDir())) if (isIdHex(f)) files.push(f);

  const decoder = new ChunkDecoder();
  await orderedMap(
    files,
    opts.readAhead ?? 8,
    // A pack that does not hold the chunk it is named after is reported like a corrupt file.
    (id) => readChunkFile(layout, id).catch((err) => (err instanceof CorruptChunkError ? err : Promise.reject(err))),
    async (file, id) => {
      if (!file || present.has(id)) return; // removed meanwhile, or seen in both places
      present.add(id);
      report.chunksChecked++;
      if (!users.has(id)) report.unreferenced++;
      try {
        if (file instanceof CorruptChunkError) throw file;
        report.bytesChecked += file.length;
        decoder.decode(file, id);
      } catch (err) {
        if (!(err instanceof CorruptChunkError)) throw err;
        report.corrupt.push({ id, reason: err.reason, manifests: users.get(id) ?? [] });
        if (opts.quarantine) {
          await mkdir(join(layout.root, "bad"), { recursive: true });
          await rename(layout.chunk(id), join(layout.root, "bad", id)).catch(() => {});
        }
      }
    },
  );

  for (const [id, names] of users) if (!present.has(id)) report.missing.push({ id, manifests: names });
  const damage = new Map<string, { name: string; corrupt: number; missing: number }>();
  const hit = (name: string) => damage.get(name) ?? damage.set(name, { name, corrupt: 0, missing: 0 }).get(name)!;
  for (const c of report.corrupt) for (const m of c.manifests) hit(m).corrupt++;
  for (const c of report.missing) for (const m of c.manifests) hit(m).missing++;
  report.damagedManifests = [...damage.values()].sort((a, b) => a.name.localeCompare(b.name));
  report.ok = report.corrupt.length === 0 && report.missing.length === 0 && report.badManifests.length === 0;
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}
