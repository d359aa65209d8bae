// Recompression of a pool's cold replica images into zstd-compressed qcow2
// clusters. Each image is handled under its replica's lock (DirPool.withReplicaLock),
// the lock under which the agent also opens an export: an attach that comes in
// waits for the image being rewritten, or makes the rewrite give up before its
// rename (yieldTo), and then opens whichever file the path names. Inside the lock
// everything is checked again: not exported, no internal snapshot (convert would
// drop it), no backing file, cold by mtime. The copy goes to a temp name the pool
// scan ignores (and EnsureReplica of the replica removes), must compare equal,
// is fsynced and renamed over the image only when it takes less space.
// Template images (POOL/templates/) are left out: clones open them as their
// backing file whenever one is attached, so "not in use" cannot be judged per
// file, and they are written once, when they are made.
import { randomBytes } from "node:crypto";
import { chmod, lstat, mkdir, readdir, readFile, rename, statfs, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { errorMessage, FailedPreconditionError } from "../lib/errors.js";
import { run, watchLines } from "../lib/exec.js";
import { syncDir, syncFile, unlinkIfExists } from "../lib/file-ops.js";
import type { Logger } from "../lib/logger.js";
import type { AgentPools } from "./agent-pools.js";
import { compareCommand, compressCommand, eligibility, parseConvertProgress, parseImageFacts } from "./compress-tools.js";
import type { DirPool, ReplicaImage } from "./dir-pool.js";
import { PoolJobProgress, type PoolJobRun } from "./pool-job-progress.js";
import { tempFileName } from "./replica-file-name.js";

export interface CompressedImageResult {
  replicaId: string;
  volume: string;
  action: "compressed" | "kept" | "skipped";
  reason: string;
  bytesBefore: number;
  bytesAfter: number;
  durationMs: number;
}

export interface CompressResult {
  images: CompressedImageResult[];
  bytesBefore: number;
  bytesAfter: number;
  savedBytes: number;
  durationMs: number;
}

/** What a file looked like right after we replaced it: unchanged since means nothing to gain. */
interface DoneMark {
  ino: number;
  size: number;
  mtimeMs: number;
}

const IMAGE_TIMEOUT_MS = 12 * 3600_000;

export interface PoolCompressOptions {
  /** Replica ids this node's storage daemon exports now. */
  exportedIds: () => Promise<Set<string>>;
  /** qemu-img convert -r, bytes/s (0: no limit). */
  rateLimitBytes?: number;
  log?: Logger;
  /** Where a run's progress is kept for GetPoolJobProgress (one per agent, shared with dedup). */
  progress?: PoolJobProgress;
}

export class PoolCompress {
  private readonly running = new Set<string>();
  /** Replica ids being rewritten now, and whether an export asked to have them back. */
  private readonly rewriting = new Map<string, { yield: boolean }>();
  readonly progress: PoolJobProgress;

  constructor(
    private readonly pools: AgentPools,
    private readonly dataDir: string,
    private readonly o: PoolCompressOptions,
  ) {
    this.progress = o.progress ?? new PoolJobProgress();
  }

  /**
   * An export of the replica is about to be opened: a rewrite of it in progress
   * gives up before its rename (its convert still finishes; the export waits for the lock).
   */
  yieldTo(replicaId: string): void {
    const r = this.rewriting.get(replicaId);
    if (r) r.yield = true;
  }

  async run(poolName: string, coldAfterMs: number, now = () => Date.now()): Promise<CompressResult> {
    const pool = this.pools.get(poolName);
    const ref = `${this.pools.node}/${poolName}`;
    if (this.running.has(poolName)) throw new FailedPreconditionError(`a compression of pool ${ref} is already running`, { hint: "wait for it: stowctl job list" });
    this.running.add(poolName);
    try {
      const started = Date.now();
      const marks = await this.loadMarks(poolName);
      const list = await pool.list();
      const progress = this.progress.begin("compress", poolName, list.reduce((s, r) => s + r.allocatedBytes, 0), list.length, "looking at images");
      let images: CompressedImageResult[];
      try {
        images = await this.each(pool, list, coldAfterMs, now, marks, progress);
      } finally {
        this.progress.end("compress", poolName, progress);
      }
      await this.saveMarks(poolName, marks);
      const done = images.filter((i) => i.action === "compressed");
      const bytesBefore = done.reduce((s, i) => s + i.bytesBefore, 0);
      const bytesAfter = done.reduce((s, i) => s + i.bytesAfter, 0);
      const result = { images, bytesBefore, bytesAfter, savedBytes: Math.max(0, bytesBefore - bytesAfter), durationMs: Date.now() - started };
      this.o.log?.info({ pool: poolName, compressed: done.length, of: images.length, saved: result.savedBytes }, "compress done");
      return result;
    } finally {
      this.running.delete(poolName);
    }
  }

  /** Every image of the list in turn; one that fails is left as it was. */
  private async each(pool: DirPool, list: ReplicaImage[], coldAfterMs: number, now: () => number, marks: Map<string, DoneMark>, progress: PoolJobRun): Promise<CompressedImageResult[]> {
    const images: CompressedImageResult[] = [];
    let doneBytes = 0;
    for (const r of list) {
      const t0 = Date.now();
      let res: CompressedImageResult;
      const phase = `image ${images.length + 1} of ${list.length} (${r.volume} ${r.id})`;
      progress.update({ doneBytes, itemsDone: images.length, phase });
      const copied = (fraction: number, step?: string) =>
        progress.update({ doneBytes: doneBytes + Math.floor(fraction * r.allocatedBytes), phase: step ? `${phase}: ${step}` : phase });
      try {
        res = await pool.withReplicaLock(r.id, () => this.one(pool, r, coldAfterMs, now(), marks, copied));
      } catch (err) {
        res = { replicaId: r.id, volume: r.volume, action: "skipped", reason: `failed: ${errorMessage(err)}`, bytesBefore: r.allocatedBytes, bytesAfter: r.allocatedBytes, durationMs: 0 };
        this.o.log?.warn({ pool: pool.name, replica: r.id, err: errorMessage(err) }, "compress: image left as it was");
      }
      res.durationMs = Date.now() - t0;
      images.push(res);
      doneBytes += r.allocatedBytes;
    }
    return images;
  }

  /** One image, under its replica's lock; `copied` hears how far its rewrite has got (0..1) and the step after it. */
  private async one(pool: DirPool, r: ReplicaImage, coldAfterMs: number, now: number, marks: Map<string, DoneMark>, copied: (fraction: number, step?: string) => void): Promise<CompressedImageResult> {
    const base = { replicaId: r.id, volume: r.volume, durationMs: 0 };
    const skip = (reason: string, bytes: number): CompressedImageResult => ({ ...base, action: "skipped", reason, bytesBefore: bytes, bytesAfter: bytes });
    const path = await pool.imagePath(r.id);
    if (!path) return skip("deleted meanwhile", 0);
    await this.removeStaleTemps(pool.path, r);
    const st = await lstat(path);
    const before = st.blocks * 512;
    const exported = (await this.o.exportedIds()).has(r.id);
    const info = r.format === "qcow2" && !exported ? parseImageFacts((await run("qemu-img", ["info", "-U", "-f", "qcow2", "--output=json", path], { timeoutMs: 60_000 })).stdout) : { format: r.format, snapshotCount: 0 };
    const mark = marks.get(r.id);
    const fs = await statfs(pool.path);
    const e = eligibility(
      {
        ...info,
        exported,
        mtimeMs: st.mtimeMs,
        allocatedBytes: before,
        compressedBefore: mark !== undefined && mark.ino === st.ino && mark.size === st.size && mark.mtimeMs === st.mtimeMs,
      },
      coldAfterMs,
      now,
      fs.bavail * fs.bsize,
    );
    if (!e.ok) return skip(e.reason, before);

    const tmp = join(pool.path, tempFileName({ volume: r.volume, id: r.id, format: "qcow2" }, randomBytes(6).toString("hex")));
    const state = { yield: false };
    this.rewriting.set(r.id, state);
    try {
      const cmd = compressCommand({ src: path, tmp, rateLimitBytes: this.o.rateLimitBytes });
      const onLine = (line: string) => {
        const f = parseConvertProgress(line);
        if (f !== undefined) copied(f);
      };
      await watchLines(cmd.file, cmd.args, onLine, { timeoutMs: IMAGE_TIMEOUT_MS }).exited;
      copied(1, "comparing the copy with the image");
      const cmp = compareCommand(path, tmp);
      await run(cmp.file, cmp.args, { timeoutMs: IMAGE_TIMEOUT_MS }).catch((err) => {
        throw new Error(`the compressed copy does not compare equal, image left as it was: ${errorMessage(err)}`);
      });
      await syncFile(tmp);
      const after = (await lstat(tmp)).blocks * 512;
      if (after >= before) {
        await unlinkIfExists(tmp);
        return { ...base, action: "kept", reason: `the compressed copy is not smaller (${after} bytes against ${before})`, bytesBefore: before, bytesAfter: before };
      }
      if (state.yield || (await this.o.exportedIds()).has(r.id)) {
        await unlinkIfExists(tmp);
        return skip("an attach came in during the rewrite; left as it was", before);
      }
      // Same mode, and the same mtime: coldness stays a measure of the guest's writes.
      await chmod(tmp, st.mode & 0o7777);
      await utimes(tmp, st.atime, st.mtime);
      await rename(tmp, path);
      await syncDir(pool.path);
      pool.forgetInfo(path);
      const now2 = await lstat(path);
      marks.set(r.id, { ino: now2.ino, size: now2.size, mtimeMs: now2.mtimeMs });
      this.o.log?.info({ pool: pool.name, replica: r.id, before, after }, "compress: image rewritten with zstd clusters");
      return { ...base, action: "compressed", reason: "", bytesBefore: before, bytesAfter: now2.blocks * 512 };
    } finally {
      this.rewriting.delete(r.id);
      await unlinkIfExists(tmp);
    }
  }

  /** Temp files of this replica left by an agent that died mid-rewrite (we hold its lock: none is live). */
  private async removeStaleTemps(dir: string, r: ReplicaImage): Promise<void> {
    const prefix = `.${r.volume}.${r.id}.qcow2.tmp-`;
    for (const name of await readdir(dir)) if (name.startsWith(prefix)) await unlinkIfExists(join(dir, name));
  }

  private marksFile(pool: string): string {
    return join(this.dataDir, "compress", `${pool}.json`);
  }

  private async loadMarks(pool: string): Promise<Map<string, DoneMark>> {
    try {
      return new Map(Object.entries(JSON.parse(await readFile(this.marksFile(pool), "utf8")) as Record<string, DoneMark>));
    } catch {
      return new Map();
    }
  }

  private async saveMarks(pool: string, marks: Map<string, DoneMark>): Promise<void> {
    await mkdir(join(this.dataDir, "compress"), { recursive: true });
    await writeFile(this.marksFile(pool), JSON.stringify(Object.fromEntries(marks)));
  }
}
