// Reflink deduplication of one pool: duperemove over the pool directory, which
// shares identical blocks between images through FIDEDUPERANGE. The kernel
// compares the ranges and locks both files while it shares them, so images that a
// qemu-storage-daemon holds open and writes stay correct (tested with a writer
// running). Throttled (see duperemoveCommand); one run per pool at a time. The
// hash file lives in the agent's data dir, so a later run reads only changed files.
import { randomBytes } from "node:crypto";
import { mkdir, readdir, statfs, lstat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { FailedPreconditionError } from "../lib/errors.js";
import { run, watchLines } from "../lib/exec.js";
import { unlinkIfExists } from "../lib/file-ops.js";
import type { Logger } from "../lib/logger.js";
import type { AgentPools } from "./agent-pools.js";
import { cannotShare, duperemoveCommand, duperemoveProgress, filesystemName, parseFilefrag, sharingSavings } from "./dedup-tools.js";
import { PoolJobProgress } from "./pool-job-progress.js";

export interface DedupResult {
  filesystem: string;
  freedBytes: number;
  sharedSavedBytes: number;
  sharedSavedBytesBefore: number;
  scannedBytes: number;
  files: number;
  durationMs: number;
}

/** A dedup run may take long on a big pool; past this it is stopped. */
const RUN_TIMEOUT_MS = 12 * 3600_000;

export class PoolDedup {
  private readonly running = new Set<string>();

  constructor(
    private readonly pools: AgentPools,
    private readonly dataDir: string,
    private readonly log?: Logger,
    /** Where the run's progress is kept for GetPoolJobProgress. */
    readonly progress = new PoolJobProgress(),
  ) {}

  /** The pool's filesystem, or FailedPreconditionError saying why its extents cannot be shared. */
  async check(poolName: string): Promise<string> {
    const pool = this.pools.get(poolName);
    const ref = `${this.pools.node}/${poolName}`;
    const fs = filesystemName((await statfs(pool.path)).type);
    const refusal = cannotShare(ref, fs);
    if (refusal) throw new FailedPreconditionError(refusal, { hint: "nothing was changed" });
    // XFS made without reflink=1 cannot share either: try a clone of a small probe file.
    const probe = join(pool.path, `.stowage-reflink-probe-${randomBytes(4).toString("hex")}`);
    try {
      await writeFile(probe, randomBytes(4096));
      await run("cp", ["--reflink=always", probe, `${probe}.clone`], { timeoutMs: 10_000 });
    } catch {
      throw new FailedPreconditionError(`pool ${ref} is on ${fs} without reflink support, which cannot share extents; make it with mkfs.xfs -m reflink=1`, {
        hint: "nothing was changed",
      });
    } finally {
      await unlinkIfExists(probe);
      await unlinkIfExists(`${probe}.clone`);
    }
    return fs;
  }

  async run(poolName: string): Promise<DedupResult> {
    const ref = `${this.pools.node}/${poolName}`;
    if (this.running.has(poolName)) throw new FailedPreconditionError(`a dedup of pool ${ref} is already running`, { hint: "wait for it: stowctl job list" });
    this.running.add(poolName);
    try {
      const filesystem = await this.check(poolName);
      const pool = this.pools.get(poolName);
      const started = Date.now();
      const files = await this.imageFiles(pool.path);
      const before = await this.savings(files.map((f) => f.path));
      const freeBefore = await this.freeBytes(pool.path);
      const dir = join(this.dataDir, "dedup");
      await mkdir(dir, { recursive: true });
      const cmd = duperemoveCommand({ dir: pool.path, hashfile: join(dir, `${poolName}.hash`) });
      this.log?.info({ pool: poolName, files: files.length }, "dedup: running duperemove");
      const scanned = files.reduce((s, f) => s + f.bytes, 0);
      const progress = this.progress.begin("dedup", poolName, scanned, files.length, "listing files");
      try {
        const onLine = (line: string) => {
          const p = duperemoveProgress(line, scanned);
          if (p) progress.update(p);
        };
        await watchLines(cmd.file, cmd.args, onLine, { timeoutMs: RUN_TIMEOUT_MS }).exited;
      } finally {
        this.progress.end("dedup", poolName, progress);
      }
      const freeAfter = await this.freeBytes(pool.path);
      const after = await this.savings((await this.imageFiles(pool.path)).map((f) => f.path));
      const r: DedupResult = {
        filesystem,
        freedBytes: freeAfter - freeBefore,
        sharedSavedBytes: after,
        sharedSavedBytesBefore: before,
        scannedBytes: scanned,
        files: files.length,
        durationMs: Date.now() - started,
      };
      this.log?.info({ pool: poolName, ...r }, "dedup done");
      return r;
    } finally {
      this.running.delete(poolName);
    }
  }

  /** Regular files in the pool directory (what duperemove scans) with their allocated bytes. */
  private async imageFiles(dir: string): Promise<Array<{ path: string; bytes: number }>> {
    const out: Array<{ path: string; bytes: number }> = [];
    for (const name of await readdir(dir)) {
      const path = join(dir, name);
      const st = await lstat(path).catch(() => undefined);
      if (st?.isFile()) out.push({ path, bytes: st.blocks * 512 });
    }
    return out;
  }

  private async savings(paths: string[]): Promise<number> {
    if (paths.length === 0) return 0;
    const r = await run("filefrag", ["-v", ...paths], { timeoutMs: 600_000 }).catch(() => undefined);
    return r ? sharingSavings(parseFilefrag(r.stdout)) : 0;
  }

  /** Free bytes after the filesystem has written out what it holds (freed extents show only then). */
  private async freeBytes(path: string): Promise<number> {
    await run("sync", ["-f", path], { timeoutMs: 120_000 }).catch(() => undefined);
    const s = await statfs(path);
    return s.bavail * s.bsize;
  }
}

