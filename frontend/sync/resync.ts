// The copy that brings an out-of-sync replica back while the volume stays in
// use. The replica already gets every live write (it is "resyncing"); this
// copies the regions its dirty map names from an in-sync replica, a run of
// adjacent regions at a time, each run under the region locks so a copy never
// lands over a newer live write. Regions are cleared as they land and the map
// is saved every second, so an interrupted copy resumes where it stopped.
import type { Logger } from "pino";
import type { DirtyMap } from "./dirty-map.js";
import type { RegionLocks } from "./region-locks.js";
import type { ResyncProgress } from "./sync-client.js";

/** What the copy needs from the replica set. */
export interface ResyncTarget {
  /** Reads from an in-sync replica (failing over between them). */
  readInSync(offset: number, length: number): Promise<Buffer>;
  /** Writes to the replica being resynced. */
  write(offset: number, data: Buffer): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  /** False once the replica fell back to out-of-sync (a live write failed on it) or left. */
  stillResyncing(): boolean;
}

export interface ResyncOptions {
  map: DirtyMap;
  locks: RegionLocks;
  target: ResyncTarget;
  /** Bytes per second, 0 for no limit. */
  rateBytes: number;
  /** Regions copied together (adjacent dirty regions), at most. */
  runRegions?: number;
  /** Runs in flight at once. */
  parallel?: number;
  report?: (p: ResyncProgress) => void;
  log?: Logger;
}

export interface ResyncResult {
  kind: ResyncProgress["kind"];
  bytes: number;
  ms: number;
}

export class ResyncAborted extends Error {
  override readonly name = "ResyncAborted";
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Copies every dirty region of `map` to the target; resolves once all of it is flushed there. */
export async function copyDirtyRegions(o: ResyncOptions): Promise<ResyncResult> {
  const { map, locks, target } = o;
  const R = map.options.regionBytes;
  const size = map.options.sizeBytes;
  const runRegions = o.runRegions ?? 16;
  const kind: ResyncResult["kind"] = map.full ? "full" : "incremental";
  const totalBytes = map.dirtyBytes;
  const startedAtMs = Date.now();
  let copied = 0;
  const zero = Buffer.alloc(runRegions * R);

  // Runs of adjacent dirty regions, in order.
  const runs: [number, number][] = [];
  for (const r of map.dirtyRegions()) {
    const last = runs[runs.length - 1];
    if (last && last[1] === r - 1 && r - last[0] < runRegions) last[1] = r;
    else runs.push([r, r]);
  }

  let lastReport = Date.now();
  let lastCopied = 0;
  const progress = (): ResyncProgress => {
    const now = Date.now();
    const rate = now > lastReport ? ((copied - lastCopied) * 1000) / (now - lastReport) : 0;
    return { kind, totalBytes, copiedBytes: copied, bytesPerSec: rate, startedAtMs };
  };
  const ticker = setInterval(() => {
    const p = progress();
    lastReport = Date.now();
    lastCopied = copied;
    // Cleared regions reach the file: a restart resumes from here.
    void map.flush().catch((err: unknown) => o.log?.warn({ err: String(err) }, "saving resync progress failed"));
    o.report?.(p);
  }, 1_000);
  ticker.unref();

  let next = 0;
  const worker = async () => {
    while (next < runs.length) {
      if (!target.stillResyncing()) throw new ResyncAborted("the replica stopped taking writes");
      const [first, last] = runs[next++]!;
      const regions: number[] = [];
      try {
        for (let r = first; r <= last; r++) {
          await locks.lock(r);
          regions.push(r);
        }
        const offset = first * R;
        const length = Math.min((last + 1) * R, size) - offset;
        const data = await target.readInSync(offset, length);
        if (data.equals(zero.subarray(0, length))) await target.writeZeroes(offset, length);
        else await target.write(offset, data);
        for (const r of regions) map.clear(r);
        copied += length;
      } finally {
        for (const r of regions) locks.unlock(r);
      }
      if (o.rateBytes > 0) {
        const ahead = (copied * 1000) / o.rateBytes - (Date.now() - startedAtMs);
        if (ahead > 0) await sleep(ahead);
      }
    }
  };

  try {
    await Promise.all(Array.from({ length: Math.min(o.parallel ?? 4, Math.max(runs.length, 1)) }, worker));
    if (!target.stillResyncing()) throw new ResyncAborted("the replica stopped taking writes");
    await target.flush();
    await map.flush();
  } finally {
    clearInterval(ticker);
  }
  return { kind, bytes: copied, ms: Date.now() - startedAtMs };
}
