// Incremental write against full write on a synthetic image (a script, not a test):
//
//   npx vite-node test/unit/chunk-incremental-bench.ts [--gib N] [--runs N] [--chunker cdc|fixed]
//
// A 1 GiB image (half incompressible, half text, a quarter zeros) is written in
// full; then 1% of it is rewritten, once as scattered 64 KiB clusters and once as
// runs of 640 KiB (16 per GiB), and the new image is stored both ways: writeIncremental from
// the changed ranges, and a full write (what a backup without a dirty bitmap
// does). The source is memory, so the figures are the store's own cost: reading
// over NBD adds about 1 s per GiB to the full write and almost nothing to the
// incremental one. Prints medians of --runs runs.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChunkStore, type ByteRange, type ChunkerKind } from "../../lib/chunks/index.js";
import { imageBytes, pieces, randomBytesSeeded } from "./chunk-fixtures.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const GiB = 1 << 30;
const CLUSTER = 64 * 1024;
const size = Number(opt("gib", "1")) * GiB;
const runs = Number(opt("runs", "3"));
const chunker = opt("chunker", "cdc") as ChunkerKind;
const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor((v.length - 1) / 2)]!;
const mb = (n: number) => (n / 1e6).toFixed(1);

/** Clusters to rewrite: `count` runs of `clustersPerRun` clusters, about 1% of the image, sorted. */
function plan(count: number, clustersPerRun: number, seed: number): ByteRange[] {
  const clusters = size / CLUSTER;
  const starts = new Set<number>();
  let s = seed;
  while (starts.size < count) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const c = Math.floor((s / 2 ** 32) * (clusters - clustersPerRun));
    starts.add(c - (c % clustersPerRun));
  }
  return [...starts].sort((a, b) => a - b).map((c) => ({ offset: c * CLUSTER, length: clustersPerRun * CLUSTER }));
}

const scenarios = [
  { label: "scattered 64 KiB clusters", ranges: (seed: number) => plan(Math.round((size * 0.01) / CLUSTER), 1, seed) },
  { label: `${Math.round((size * 0.01) / (10 * CLUSTER))} runs of 640 KiB`, ranges: (seed: number) => plan(Math.round((size * 0.01) / (10 * CLUSTER)), 10, seed) },
];

const rows: Record<string, { full0: number[]; full: number[]; incr: number[]; read: number[]; newMB: number[]; changed: number }> = {};
for (let run = 0; run < runs; run++) {
  for (const [k, sc] of scenarios.entries()) {
    const dir = mkdtempSync(join(tmpdir(), "chunk-incr-bench-"));
    try {
      const img = imageBytes(size, 1000 + run, [[size / 2, size / 2 + size / 4]]);
      const store = await ChunkStore.open(join(dir, "store"), { chunker });
      const full0 = await store.write("b0", pieces(img, [8 << 20]));
      const changed = sc.ranges(77 + run);
      for (const [i, r] of changed.entries()) randomBytesSeeded(r.length, 5000 + i).copy(img, r.offset);
      const read = async (offset: number, length: number) => Buffer.from(img.subarray(offset, offset + length));
      const incr = await store.writeIncremental("b1", "b0", { size, changed, read });
      const full = await store.write("b1-full", pieces(img, [8 << 20]));
      const row = (rows[sc.label] ??= { full0: [], full: [], incr: [], read: [], newMB: [], changed: 0 });
      row.full0.push(full0.seconds);
      row.full.push(full.seconds);
      row.incr.push(incr.seconds);
      row.read.push(incr.readBytes);
      row.newMB.push(incr.newBytes);
      row.changed = incr.changedBytes;
      process.stderr.write(`run ${run + 1}/${runs} ${sc.label}: first full ${full0.seconds.toFixed(2)} s, full ${full.seconds.toFixed(2)} s, incremental ${incr.seconds.toFixed(3)} s, read ${mb(incr.readBytes)} MB in ${incr.reads} reads, reused ${mb(incr.reusedBytes)} MB, new ${mb(incr.newBytes)} MB\n`);
      void k;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
}
console.log(`${size / GiB} GiB image, ${chunker} chunker, medians of ${runs} runs`);
console.log("| change (1%) | changed MB | read MB | first full s | full s | incremental s | incr / full | incr / first full |");
console.log("|---|---|---|---|---|---|---|---|");
for (const [label, r] of Object.entries(rows)) {
  const incr = median(r.incr);
  console.log(`| ${label} | ${mb(r.changed)} | ${mb(median(r.read))} | ${median(r.full0).toFixed(2)} | ${median(r.full).toFixed(2)} | ${incr.toFixed(3)} | ${((incr / median(r.full)) * 100).toFixed(1)}% | ${((incr / median(r.full0)) * 100).toFixed(1)}% |`);
}
