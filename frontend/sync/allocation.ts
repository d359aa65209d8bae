// Where a replica holds data, as qemu-img reads it over NBD (block status,
// base:allocation): a full copy skips the regions that read as zeroes on both
// the source and the target, so a rebuild moves only what is allocated.

export interface Extent {
  start: number;
  length: number;
  zero: boolean;
  data: boolean;
}

/** Parses `qemu-img map --output=json`. */
export function parseMap(json: string): Extent[] {
  const raw = JSON.parse(json) as unknown;
  if (!Array.isArray(raw)) throw new Error("qemu-img map did not print a list");
  return raw.map((e: Record<string, unknown>) => {
    if (typeof e.start !== "number" || typeof e.length !== "number") throw new Error(`bad extent ${JSON.stringify(e)}`);
    return { start: e.start, length: e.length, zero: e.zero === true, data: e.data === true };
  });
}

/** Marks in `into` (one byte per region) every region an extent that may not read as zeroes touches. */
export function markDataRegions(extents: Extent[], regionBytes: number, into: Uint8Array): void {
  for (const e of extents) {
    if (e.zero && !e.data) continue;
    if (e.length <= 0) continue;
    const first = Math.floor(e.start / regionBytes);
    const last = Math.min(into.length - 1, Math.floor((e.start + e.length - 1) / regionBytes));
    into.fill(1, first, last + 1);
  }
}

/** The extents of an NBD export (`nbd://…` or `nbd+unix://…`). */
export async function exportMap(nbdUri: string): Promise<Extent[]> {
  // Loaded on first use: execa is ~90 ms of every frontend's start (and so of every
  // attach and migration), and only a rebuild needs it.
  const { run } = await import("../../lib/exec.js");
  const { stdout } = await run("qemu-img", ["map", "--output=json", "-f", "raw", nbdUri], { timeoutMs: 300_000 });
  return parseMap(stdout);
}
