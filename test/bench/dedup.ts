// Deduplication benchmark (a script, not a test):
//
//   npm run build && node dist/test/bench/dedup.js [--quick] [--runs N] [--json]
//
// On a corpus it builds and caches itself (dedup-corpus.ts: Debian 12 roots made
// with debootstrap, in raw ext4 images, and a copy of the first with ~1% changed),
// it backs every image up, in order, into a fresh repository of each contender:
// Stowage's chunk store with content-defined and with fixed 64 KiB chunks, borg with
// 64 KiB average chunks (buzhash,14,18,16,4095, zstd) and restic. For each:
// repository bytes, ratio (non-zero bytes of the images / repository bytes),
// throughput (image bytes / s), and the incremental image's time against the first
// image's. Then the single-core speeds of the engine's parts on the corpus's data.
// Figures are medians of --runs runs (default 3; --quick: 1, and a one-root corpus).
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createReadStream } from "node:fs";
import { join } from "node:path";
import { Compressor } from "zstd-napi";
import { CDC_DEFAULTS, FIXED_DEFAULTS, chunkStream, createChunker } from "../../lib/chunks/index.js";
import { CDC_WASM, wasmCutter } from "../../lib/chunks/cdc-wasm.js";
import { sha256 } from "../../lib/chunks/chunk-file.js";
import { cdcTables } from "../../lib/chunks/chunker.js";
import { buildCorpus, type Corpus } from "./dedup-corpus.js";
import { borg, type Contender, restic, stowage } from "./dedup-tools.js";

const USAGE = `usage: node dist/test/bench/dedup.js [--quick] [--runs N] [--json] [--only LIST]
  --quick      one debootstrap root (cached), one run: a couple of minutes; without
               network a synthetic corpus is used instead, and said so
  --runs N     runs to take medians of (default 3, --quick 1)
  --only LIST  comma-separated subset of: cdc, fixed, borg, restic
  --json       print every figure as one JSON object last
`;
const CONTENDERS = ["cdc", "fixed", "borg", "restic"] as const;
type Which = (typeof CONTENDERS)[number];

const t0 = Date.now();
const log = (msg: string) => process.stderr.write(`[dedup ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);
const median = (v: number[]) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const mb = (bytes: number) => bytes / 1e6;

function parseArgs(argv: string[]) {
  const o = { quick: false, runs: 0, json: false, only: [...CONTENDERS] as Which[] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--quick") o.quick = true;
    else if (a === "--json") o.json = true;
    else if (a === "--runs") o.runs = Number(argv[++i]);
    else if (a === "--only") o.only = (argv[++i] ?? "").split(",").filter((w): w is Which => (CONTENDERS as readonly string[]).includes(w));
    else if (a === "-h" || a === "--help") {
      process.stdout.write(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument "${a}"\n${USAGE}`);
  }
  if (!o.runs) o.runs = o.quick ? 1 : 3;
  if (!Number.isInteger(o.runs) || o.runs < 1 || o.only.length === 0) throw new Error(USAGE);
  return o;
}

interface RunResult {
  seconds: number[]; // per image
  stored: number;
  /** Stowage only: share of each image's non-zero bytes found already stored. */
  shared: number[];
}

/** Backs the corpus up into a fresh repository in `work`; the repository stays until the benchmark ends (see main). */
async function runContender(which: Which, work: string, corpus: Corpus): Promise<RunResult> {
  const dir = mkdtempSync(join(work, `${which}-`));
  const c: Contender = which === "cdc" ? await stowage(dir, "cdc") : which === "fixed" ? await stowage(dir, "fixed") : which === "borg" ? await borg(dir) : await restic(dir);
  const r: RunResult = { seconds: [], stored: 0, shared: [] };
  for (const image of corpus.images) {
    const t = performance.now();
    const s = await c.backup(image);
    r.seconds.push((performance.now() - t) / 1000);
    if (s.dataBytes) r.shared.push((s.dedupBytes ?? 0) / s.dataBytes);
    log(`${c.label}: ${image.name} in ${r.seconds.at(-1)!.toFixed(2)} s`);
  }
  r.stored = c.storedBytes();
  return r;
}

/** Single-core speeds of the engine's parts on the first image's data, MB/s. */
async function partSpeeds(corpus: Corpus) {
  const data: Buffer[] = [];
  let total = 0;
  const cdc = createChunker(CDC_DEFAULTS);
  for await (const c of chunkStream(corpus.images[0]!.path, createChunker(FIXED_DEFAULTS))) {
    if (c.zero) continue;
    data.push(Buffer.from(c.data));
    total += c.data.length;
    if (total >= 256e6) break;
  }
  const whole = Buffer.concat(data);
  const time = (fn: () => void) => {
    const t = performance.now();
    fn();
    return mb(whole.length) / ((performance.now() - t) / 1000);
  };
  const speeds = {
    cdcChunking: time(() => {
      for (let p = 0; p < whole.length; ) p += cdc.cut(whole, p, Math.min(whole.length, p + CDC_DEFAULTS.max));
    }),
    // As a worker cuts: 4 MiB segments copied into the module's memory (grown beforehand) as it goes.
    cdcWasm: ((cutter) =>
      time(() => {
        for (let s = 0, p = 0; s < whole.length; s += 4 << 20) {
          const seg = whole.subarray(s, Math.min(whole.length, s + (4 << 20) + CDC_DEFAULTS.max));
          cutter.begin(seg);
          for (p -= s; p < Math.min(4 << 20, seg.length); ) p += cutter.cut(p, seg.length);
          p += s;
        }
      }))(
      (() => {
        const { gear, maskHard, maskEasy } = cdcTables(CDC_DEFAULTS);
        const c = wasmCutter(CDC_WASM, gear, maskHard, maskEasy, CDC_DEFAULTS.min, CDC_DEFAULTS.avg, CDC_DEFAULTS.max);
        c.begin(Buffer.alloc((4 << 20) + CDC_DEFAULTS.max));
        return c;
      })(),
    ),
    sha256: time(() => data.forEach((d) => sha256(d))),
    zstd1: 0,
    zstd3: 0,
  };
  for (const level of [1, 3] as const) {
    const z = new Compressor();
    z.setParameters({ compressionLevel: level });
    speeds[level === 1 ? "zstd1" : "zstd3"] = time(() => data.forEach((d) => z.compress(d)));
  }
  return speeds;
}

async function warm(corpus: Corpus) {
  for (const image of corpus.images) for await (const _ of createReadStream(image.path, { highWaterMark: 8 << 20 })) void _;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const corpus = await buildCorpus(o.quick, log);
  // Repositories go next to the corpus, not into /tmp, and are all removed at the end,
  // not after each run. Creating a file on ext4 without a journal (as here) scans past
  // every inode of its block group freed in the last seconds to minutes; /tmp, which
  // every test on the machine fills and empties, made Stowage's chunk files cost
  // ~0.5 ms each to create there instead of ~0.03 ms (measured), and so would deleting
  // one contender's repository just before the next one writes. DEDUP_WORK_DIR moves it.
  const base = process.env.DEDUP_WORK_DIR ?? join(corpus.dir, "work");
  mkdirSync(base, { recursive: true });
  const work = mkdtempSync(join(base, "stowage-dedup-bench-"));
  const cleanup = () => rmSync(work, { recursive: true, force: true });
  for (const sig of ["SIGINT", "SIGTERM"] as const)
    process.once(sig, () => {
      cleanup();
      process.exit(130);
    });
  try {
    log(`corpus in ${corpus.dir}${corpus.synthetic ? " (SYNTHETIC: no network for debootstrap)" : ""}: ${corpus.images.map((i) => `${i.name} ${Math.round(mb(i.size))} MB (${Math.round(mb(i.dataBytes))} MB data)`).join(", ")}`);
    await warm(corpus);
    const results = new Map<Which, RunResult[]>(o.only.map((w) => [w, []]));
    for (let run = 0; run < o.runs; run++) for (const w of o.only) results.get(w)!.push(await runContender(w, work, corpus));
    const speeds: Record<string, number[]> = {};
    for (let run = 0; run < Math.max(3, o.runs); run++) for (const [k, v] of Object.entries(await partSpeeds(corpus))) (speeds[k] ??= []).push(v);
    report(o, corpus, results, speeds);
  } finally {
    cleanup();
  }
}

function report(o: ReturnType<typeof parseArgs>, corpus: Corpus, results: Map<Which, RunResult[]>, speeds: Record<string, number[]>) {
  const images = corpus.images;
  const logical = images.reduce((n, i) => n + i.size, 0);
  const data = images.reduce((n, i) => n + i.dataBytes, 0);
  const incr = images.length - 1;
  const out: Record<string, unknown> = { corpus: images.map(({ name, size, dataBytes, what }) => ({ name, size, dataBytes, what })), synthetic: corpus.synthetic, runs: o.runs, contenders: {} };
  const p = (s: string) => process.stdout.write(s + "\n");
  p("");
  p(`corpus${corpus.synthetic ? " (SYNTHETIC)" : ""}: ${images.map((i) => `${i.name} = ${i.what}`).join("; ")}`);
  p(`images ${mb(logical).toFixed(0)} MB in all, ${mb(data).toFixed(0)} MB of it non-zero; medians of ${o.runs} run(s)`);
  p("");
  p(`${"contender".padEnd(28)} ${"stored MB".padStart(10)} ${"ratio".padStart(6)} ${"full MB/s".padStart(10)} ${"all MB/s".padStart(9)} ${"full s".padStart(7)} ${"incr s".padStart(7)} ${"incr/full".padStart(9)}`);
  const fig: Record<string, { stored: number; fullMBs: number; allMBs: number; fullS: number; incrS: number }> = {};
  for (const [w, runs] of results) {
    const stored = median(runs.map((r) => r.stored));
    const fullS = median(runs.map((r) => r.seconds[0]!));
    const incrS = median(runs.map((r) => r.seconds[incr]!));
    const allS = median(runs.map((r) => r.seconds.reduce((a, b) => a + b, 0)));
    const f = { stored, fullMBs: mb(images[0]!.size) / fullS, allMBs: mb(logical) / allS, fullS, incrS };
    fig[w] = f;
    const label = { cdc: "stowage CDC 16K+~32K zstd-2", fixed: "stowage fixed 64K zstd-2", borg: "borg buzhash,14,18,16 zstd", restic: "restic 0.14 (zstd auto)" }[w];
    p(`${label.padEnd(28)} ${mb(stored).toFixed(1).padStart(10)} ${(data / stored).toFixed(2).padStart(6)} ${f.fullMBs.toFixed(0).padStart(10)} ${f.allMBs.toFixed(0).padStart(9)} ${fullS.toFixed(2).padStart(7)} ${incrS.toFixed(2).padStart(7)} ${(incrS / fullS).toFixed(2).padStart(9)}`);
    (out.contenders as Record<string, unknown>)[w] = { ...f, ratio: data / stored, runs };
  }
  p("");
  for (const w of ["cdc", "fixed"] as const) {
    const runs = results.get(w);
    if (!runs) continue;
    const shared = images.map((_, i) => median(runs.map((r) => r.shared[i] ?? 0)));
    p(`stowage ${w}: share of each image's data already stored: ${images.map((im, i) => `${im.name} ${(100 * shared[i]!).toFixed(1)}%`).join(", ")}`);
  }
  if (fig.borg) {
    for (const w of ["cdc", "fixed"] as const) {
      const f = fig[w];
      if (!f) continue;
      p(`stowage ${w} / borg: stored ${(f.stored / fig.borg.stored).toFixed(3)} (target <= 1), throughput ${(f.allMBs / fig.borg.allMBs).toFixed(2)}x all, ${(f.fullMBs / fig.borg.fullMBs).toFixed(2)}x full (target >= 2)`);
    }
  }
  const sp = Object.fromEntries(Object.entries(speeds).map(([k, v]) => [k, median(v)]));
  p(`engine parts, one core, on ${images[0]!.name}'s non-zero data (MB/s, median of ${speeds.sha256!.length}): CDC chunking ${sp.cdcChunking!.toFixed(0)} (JavaScript) / ${sp.cdcWasm!.toFixed(0)} (WebAssembly, as the workers cut), SHA-256 ${sp.sha256!.toFixed(0)}, zstd-1 ${sp.zstd1!.toFixed(0)}, zstd-3 ${sp.zstd3!.toFixed(0)}`);
  out.parts = sp;
  if (o.json) p(JSON.stringify(out));
}

main().catch((err) => {
  process.stderr.write(`dedup benchmark failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
