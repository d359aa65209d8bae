// Garbage collection: mark and sweep, safe while writes are in progress.
//
// Why mark-and-sweep and not stored reference counts: the manifests are already the
// truth about what is referenced. A separate count file must be updated in step
// with them, and a crash between the two leaves a count that is too high (a leak)
// or too low (a chunk deleted under a manifest). Recomputing from the manifests
// cannot drift; refcounts() in store.ts derives counts the same way when asked.
//
// The protocol with concurrent writers (writer.ts):
//   - a writer records its start time in pending/ before it touches any chunk, and
//     sets the mtime of every chunk it reuses to now ("touch"), or writes it anew;
//   - the GC reads pending/ first, then manifests/; cutoff = min(GC start, start of
//     every live writer) - margin;
//   - a chunk is deleted only if no manifest references it AND its mtime is before
//     the cutoff. Anything a live writer has touched or written has a later mtime.
//   - deleting is rename to trash/, then a second look at the mtime: a writer that
//     touched the chunk between the GC's stat and its rename made it recent again,
//     and it goes back; a writer that comes after the rename finds nothing (ENOENT)
//     and writes the chunk again. Only then is the trash copy unlinked.
//   - a writer that started after the GC listed pending/ started after the GC did,
//     so everything it touches is after the cutoff too. A writer that committed
//     before the GC listed manifests/ is in that list; one that commits later was
//     still pending when the GC looked (the manifest is linked before the pending
//     record is removed).
// A GC killed between the rename and the unlink leaves chunks in trash/: the next
// GC moves them back before doing anything, and readers look there too. Writers
// whose process is gone leave pending records and tmp/ files: removed here.
// All of this assumes one host's clock: the store is a local directory.
//
// Names that are links to one pack (chunk-file.ts) share its inode, so its mtime:
// a touch of any of its chunks keeps the unreferenced others one more round (late,
// never early). A pack's bytes are freed with its last name; one left mostly dead
// is rewritten with only its live records (pack-compaction.ts).
import { open, readdir, readFile, rename, rm, stat, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { ConflictError, NotFoundError } from "../errors.js";
import { faultPoint } from "../faults.js";
import { isIdHex } from "./chunk-file.js";
import { type Layout, type PendingRecord, SHARDS, writerAlive } from "./layout.js";
import { listManifestNames, readManifest } from "./manifests.js";
import { compactPacks } from "./pack-compaction.js";

export interface GcOptions {
  /** Safety margin subtracted from the cutoff, ms (default 2000). */
  marginMs?: number;
  /** Report what would be removed without removing it. */
  dryRun?: boolean;
}

export interface GcStats {
  manifests: number;
  liveWriters: number;
  referencedChunks: number;
  removedChunks: number;
  removedBytes: number;
  /** Unreferenced chunks kept because a writer may be using them. */
  keptRecent: number;
  /** Packs rewritten without their dead records (pack-compaction.ts; their bytes freed are in removedBytes). */
  compactedPacks: number;
  stalePending: number;
  removedTmpFiles: number;
  restoredFromTrash: number;
  seconds: number;
}

export async function collectGarbage(layout: Layout, opts: GcOptions = {}): Promise<GcStats> {
  const t0 = performance.now();
  const margin = opts.marginMs ?? 2000;
  const stats: GcStats = { manifests: 0, liveWriters: 0, referencedChunks: 0, removedChunks: 0, removedBytes: 0, keptRecent: 0, compactedPacks: 0, stalePending: 0, removedTmpFiles: 0, restoredFromTrash: 0, seconds: 0 };
  const release = await lockGc(layout);
  try {
    stats.restoredFromTrash = await restoreTrash(layout);
    const gcStart = Date.now();
    const live = await liveWriters(layout, opts.dryRun ?? false, stats);
    stats.liveWriters = live.length;
    const cutoff = Math.min(gcStart, ...live.map((r) => r.startedMs)) - margin;

    const referenced = new Set<string>();
    for (const name of await listManifestNames(layout)) {
      // A manifest that cannot be read stops the GC: what it references is unknown.
      const manifest = await readManifest(layout, name).catch((err) => {
        if (err instanceof NotFoundError) return undefined; // deleted meanwhile
        throw err;
      });
      if (!manifest) continue;
      for (const id of manifest.chunkIds()) referenced.add(id);
      stats.manifests++;
    }
    stats.referencedChunks = referenced.size;

    for (const shard of SHARDS) {
      for (const id of await readdir(layout.shardDir(shard))) {
        if (!isIdHex(id) || referenced.has(id)) continue;
        const path = layout.chunk(id);
        const st = await stat(path).catch(() => undefined);
        if (!st) continue;
        if (st.mtimeMs >= cutoff) {
          stats.keptRecent++;
          continue;
        }
        if (opts.dryRun) {
          stats.removedChunks++;
          stats.removedBytes += freed(st);
          continue;
        }
        const trashed = layout.trash(id);
        try {
          await rename(path, trashed);
        } catch (err: any) {
          if (err?.code === "ENOENT") continue;
          throw err;
        }
        faultPoint("chunks.gc.trashed", id);
        const again = await stat(trashed);
        if (again.mtimeMs >= cutoff) {
          await rename(trashed, path);
          stats.keptRecent++;
          continue;
        }
        await unlink(trashed);
        stats.removedChunks++;
        stats.removedBytes += freed(again);
      }
    }

    if (!opts.dryRun) {
      const c = await compactPacks(layout);
      stats.compactedPacks = c.packs;
      stats.removedBytes += c.freedBytes;
    }

    const liveSessions = new Set(live.map((r) => r.session));
    for (const f of await readdir(layout.tmpDir())) {
      const session = f.split(".")[0]!;
      if (liveSessions.has(session)) continue;
      const st = await stat(layout.tmp(f)).catch(() => undefined);
      if (!st || st.mtimeMs >= cutoff) continue;
      if (!opts.dryRun) await rm(layout.tmp(f), { force: true });
      stats.removedTmpFiles++;
    }
  } finally {
    await release();
  }
  stats.seconds = (performance.now() - t0) / 1000;
  return stats;
}

/** Bytes removing this name frees: a pack's (chunk-file.ts) only with its last name. */
const freed = (st: { size: number; nlink: number }) => (st.nlink <= 1 ? st.size : 0);

/** Moves chunks an interrupted GC left in trash/ back; the caller holds the GC lock. */
async function restoreTrash(layout: Layout): Promise<number> {
  let n = 0;
  for (const id of await readdir(layout.trashDir())) {
    if (!isIdHex(id)) continue;
    await rename(layout.trash(id), layout.chunk(id));
    n++;
  }
  return n;
}

async function liveWriters(layout: Layout, dryRun: boolean, stats: GcStats): Promise<PendingRecord[]> {
  const live: PendingRecord[] = [];
  for (const f of await readdir(layout.pendingDir())) {
    if (!f.endsWith(".json")) continue;
    let record: PendingRecord;
    try {
      record = JSON.parse(await readFile(`${layout.pendingDir()}/${f}`, "utf8")) as PendingRecord;
    } catch (err: any) {
      if (err?.code === "ENOENT") continue; // finished meanwhile: its manifest is listed later
      throw err;
    }
    if (writerAlive(record)) live.push(record);
    else {
      stats.stalePending++;
      if (!dryRun) await rm(`${layout.pendingDir()}/${f}`, { force: true });
    }
  }
  return live;
}

async function lockGc(layout: Layout): Promise<() => Promise<void>> {
  const me = { host: hostname(), pid: process.pid, session: "gc", name: "gc", startedMs: Date.now() };
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await open(layout.gcLock(), "wx");
      await fh.writeFile(JSON.stringify(me));
      await fh.close();
      return () => rm(layout.gcLock(), { force: true });
    } catch (err: any) {
      if (err?.code !== "EEXIST" || attempt > 0) throw err?.code === "EEXIST" ? new ConflictError("another garbage collection is running on this store") : err;
      const holder = JSON.parse(await readFile(layout.gcLock(), "utf8").catch(() => "{}")) as PendingRecord;
      if (holder.pid && writerAlive(holder)) throw new ConflictError(`another garbage collection is running on this store (pid ${holder.pid})`);
      await rm(layout.gcLock(), { force: true });
    }
  }
}
