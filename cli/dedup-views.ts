// Views of a pool's reflink dedup: its policy and last run in `pool get`, and the
// result of `pool dedup`. Pure: API objects (and `now`) in, text out.
import type { PoolDedup, PoolDedupRun } from "../gen/stowage/v1/types.js";
import { formatSize } from "../lib/sizes.js";

/** "daily, quiet hours 01:00-05:00 (next: outside the quiet hours ...)" */
export function dedupPolicyLine(d: PoolDedup): string {
  const hours = d.quietHours ? `quiet hours ${d.quietHours}` : "at any time";
  return d.schedule === "daily" ? `daily, ${hours}${d.next ? ` (${d.next})` : ""}` : `off${d.quietHours ? ` (${hours} when on)` : ""}`;
}

/** "done at 2026-...: 60MiB deduplicated, 60MiB saved by shared extents in the pool, 59MiB freed" */
export function dedupRunLine(r: PoolDedupRun): string {
  const when = new Date(r.finishedAtMs || r.startedAtMs).toISOString();
  if (r.state === "running") return `running since ${new Date(r.startedAtMs).toISOString()} (${r.trigger}): ${r.message}`;
  if (r.state === "failed") return `failed at ${when} (${r.trigger}): ${r.message}`;
  return (
    `done at ${when} (${r.trigger}, ${r.filesystem}): ${formatSize(r.deduplicatedBytes)} deduplicated, ` +
    `${formatSize(r.savedBytes)} saved by shared extents in the pool, ${formatSize(Math.max(0, r.freedBytes))} freed on the filesystem; ${r.message}`
  );
}

export function dedupFields(d: PoolDedup | undefined): Array<[string, string]> {
  if (!d) return [];
  return [["Dedup", dedupPolicyLine(d)], ...(d.lastRun ? ([["Last dedup", dedupRunLine(d.lastRun)]] as Array<[string, string]>) : [])];
}
