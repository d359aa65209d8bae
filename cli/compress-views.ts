// Views of a pool's recompression of cold images: its policy, the bytes it saved
// and its last run in `pool get`, and the result of `pool compress`. Pure: API
// objects in, text out.
import type { PoolCompress, PoolCompressRun } from "../gen/stowage/v1/types.js";
import { formatSize } from "../lib/sizes.js";

function age(ms: number): string {
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000]] as const) if (ms > 0 && ms % size === 0) return `${ms / size}${unit}`;
  return `${Math.round(ms / 1000)}s`;
}

/** "daily, images unmodified for 7d, quiet hours 01:00-05:00 (outside the quiet hours ...)" */
export function compressPolicyLine(c: PoolCompress): string {
  const hours = c.quietHours ? `quiet hours ${c.quietHours}` : "at any time";
  if (c.schedule !== "daily") return `off (images unmodified for ${c.coldAfter} when on)`;
  return `daily, images unmodified for ${c.coldAfter}, ${hours}${c.next ? ` (${c.next})` : ""}`;
}

/** "done at ...: 2 of 5 images recompressed, 60MiB -> 12MiB, 48MiB saved" */
export function compressRunLine(r: PoolCompressRun): string {
  const when = new Date(r.finishedAtMs || r.startedAtMs).toISOString();
  if (r.state === "running") return `running since ${new Date(r.startedAtMs).toISOString()} (${r.trigger}): ${r.message}`;
  if (r.state === "failed") return `failed at ${when} (${r.trigger}): ${r.message}`;
  return (
    `done at ${when} (${r.trigger}, cold after ${age(r.coldAfterMs)}): ${r.message}; ` +
    `${formatSize(r.bytesBefore)} -> ${formatSize(r.bytesAfter)}, ${formatSize(r.savedBytes)} saved`
  );
}

/** One line per image: "vol1 r-0000abcd  compressed  60MiB -> 12MiB (3.1s)" or "skipped: why". */
export function compressImageLines(r: PoolCompressRun): string[] {
  return r.images.map((i) => {
    const what = i.action === "compressed" ? `compressed ${formatSize(i.bytesBefore)} -> ${formatSize(i.bytesAfter)} (${(i.durationMs / 1000).toFixed(1)}s)` : `${i.action}: ${i.reason}`;
    return `  ${i.volume} ${i.replicaId}: ${what}`;
  });
}

export function compressFields(c: PoolCompress | undefined): Array<[string, string]> {
  if (!c) return [];
  return [
    ["Compress", compressPolicyLine(c)],
    ["Saved by compression", formatSize(c.totalSavedBytes)],
    ...(c.lastRun ? ([["Last compress", compressRunLine(c.lastRun)]] as Array<[string, string]>) : []),
  ];
}
