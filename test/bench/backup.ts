// Backups through a real cluster against borg and restic, on the same images in
// the same run: a volume holding a Debian image (the dedup benchmark's corpus,
// debootstrapped and cached) is backed up with `stowctl backup create`, then the
// 64 KiB blocks where the image with 1% of its data changed differs are written
// (as a VM would), and it is backed up again (incremental: dirty bitmaps).
// borg (64 KiB average chunks) and restic back up the same two image files.
// Reported per contender: time of the full and of the second backup, their
// ratio (the issue's target: the second <= 5% of the first), MB/s of the image's
// data, and the bytes stored. Medians of --runs (default 3; --quick: 1).
//
//   npm run build && node dist/test/bench/backup.js [--quick] [--runs N]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { execa } from "execa";
import { NbdClient } from "../../lib/nbd/client.js";
import { parseNbdUri } from "../../lib/nbd-uri.js";
import { TestCluster } from "../harness/cluster.js";
import { buildCorpus, type CorpusImage } from "./dedup-corpus.js";
import { borg, restic, type Contender } from "./dedup-tools.js";
import { median, round } from "./replication-common.js";

const t0 = performance.now();
const log = (msg: string) => process.stderr.write(`[backup ${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);
const mb = (b: number) => b / 1e6;

interface Sample {
  full: number;
  second: number;
  stored: number;
  /** Stowage: where each backup's time went, ms (controller steps, the store node's, and the rest). */
  steps?: { full: Record<string, number>; second: Record<string, number> };
}

/** The last pino line of the cluster's processes with message `msg` about backup `ref`. */
function logLine(c: TestCluster, msg: string, ref: string): Record<string, any> | undefined {
  for (const p of [...c.controllers.values(), ...c.agents.values()]) {
    for (const line of p.output.split("\n").reverse()) {
      if (!line.includes(msg) || !line.includes(ref)) continue;
      try {
        const j = JSON.parse(line);
        if (j.msg === msg && j.backup === ref) return j;
      } catch {
        // not a log line
      }
    }
  }
  return undefined;
}

/**
 * One backup's time, split: stowctl and the request around it ("client"), then the
 * controller's steps (controller/backups.ts), the store node's part of "write"
 * (opening the store, block status of the fleece and connecting to it:
 * "write.extents"; the chunk store: "write.store") and the rest of it ("write.rpc").
 */
function stepsOf(c: TestCluster, ref: string, totalMs: number): Record<string, number> {
  const taken = logLine(c, "backup taken", ref);
  const written = logLine(c, "backup written", ref);
  const out: Record<string, number> = { client: totalMs - (taken?.ms ?? 0), ...(taken?.steps ?? {}) };
  if (written?.steps && out.write !== undefined) {
    out["write.extents"] = written.steps.extents;
    out["write.store"] = written.steps.write;
    out["write.rpc"] = out.write - written.ms;
    delete out.write;
  }
  return out;
}

async function stowctl(c: TestCluster, args: string[]): Promise<string> {
  const r = await c.stowctl(args);
  if (r.code !== 0) throw new Error(`stowctl ${args.join(" ")} failed: ${r.stderr}`);
  return r.stdout;
}

/** Writes `image` over the whole volume through a frontend on `node`. */
async function fill(c: TestCluster, volume: string, node: string, image: CorpusImage): Promise<void> {
  const att = JSON.parse(await stowctl(c, ["volume", "attach", volume, "--node", node, "-o", "json"]));
  await execa("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", "-t", "writeback", image.path, att.nbdUri]);
  await stowctl(c, ["volume", "detach", volume, "--node", node]);
}

/** Writes only the 64 KiB blocks where `next` differs from `prev`, as a VM changing them would; returns their bytes. */
async function change(c: TestCluster, volume: string, node: string, prev: CorpusImage, next: CorpusImage): Promise<number> {
  const att = JSON.parse(await stowctl(c, ["volume", "attach", volume, "--node", node, "-o", "json"]));
  const client = await NbdClient.connect({ ...parseNbdUri(att.nbdUri) });
  const [a, b] = [readFileSync(prev.path), readFileSync(next.path)];
  const B = 65536;
  let written = 0;
  for (let off = 0; off < b.length; off += B) {
    const nb = b.subarray(off, off + B);
    if (nb.equals(a.subarray(off, off + B))) continue;
    await client.write(off, nb);
    written += nb.length;
  }
  await client.flush();
  client.destroy();
  await stowctl(c, ["volume", "detach", volume, "--node", node]);
  return written;
}

async function stowageRun(c: TestCluster, run: number, full: CorpusImage, changed: CorpusImage): Promise<Sample> {
  const volume = `bench${run}`;
  const size = `${Math.ceil(full.size / 2 ** 20)}MiB`;
  await stowctl(c, ["volume", "create", volume, "--size", size, "--replicas", "2"]);
  const node = JSON.parse(await stowctl(c, ["volume", "get", volume, "-o", "json"])).volume.replicas[0].node as string;
  const backup = async () => {
    const t = performance.now();
    const b = JSON.parse(await stowctl(c, ["backup", "create", volume, "-o", "json", "--wait-timeout", "3600"])).backup;
    const s = (performance.now() - t) / 1000;
    return { s, b, steps: stepsOf(c, `${b.volume}@${b.id}`, s * 1000) };
  };
  await fill(c, volume, node, full);
  const one = await backup();
  log(`stowage: full backup of ${full.name} in ${one.s.toFixed(2)} s, ${one.b.durationMs} ms of it in the controller (${round(mb(one.b.dataBytes))} MB data, ${round(mb(one.b.storedBytes))} MB stored)`);
  const written = await change(c, volume, node, full, changed);
  log(`stowage: ${round(mb(written), 1)} MB of 64 KiB blocks rewritten to make ${changed.name}`);
  const two = await backup();
  log(`stowage: second backup (${changed.name}, ${two.b.kind}) in ${two.s.toFixed(2)} s, ${two.b.durationMs} ms of it in the controller (${round(mb(two.b.readBytes), 1)} MB read, ${round(mb(two.b.newBytes))} MB new, ${round(mb(two.b.storedBytes))} MB stored)`);
  log(`stowage: steps (ms): full ${fmtSteps(one.steps)}; second ${fmtSteps(two.steps)}`);
  return { full: one.s, second: two.s, stored: one.b.storedBytes + two.b.storedBytes, steps: { full: one.steps, second: two.steps } };
}

const fmtSteps = (st: Record<string, number>) =>
  Object.entries(st)
    .map(([k, v]) => `${k} ${Math.round(v)}`)
    .join(", ");

async function toolRun(make: (work: string) => Promise<Contender>, full: CorpusImage, changed: CorpusImage): Promise<Sample & { label: string }> {
  const work = mkdtempSync(join(tmpdir(), "stowage-backup-bench-"));
  try {
    const c = await make(work);
    const time = async (image: CorpusImage) => {
      const t = performance.now();
      await c.backup(image);
      return (performance.now() - t) / 1000;
    };
    const a = await time(full);
    const b = await time(changed);
    log(`${c.label}: ${a.toFixed(2)} s, then ${b.toFixed(2)} s`);
    return { label: c.label, full: a, second: b, stored: c.storedBytes() };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

async function main() {
  const argv = process.argv.slice(2);
  const quick = argv.includes("--quick");
  const runsAt = argv.indexOf("--runs");
  const runs = runsAt >= 0 ? Number(argv[runsAt + 1]) : quick ? 1 : 3;
  const corpus = await buildCorpus(true, log);
  const full = corpus.images[0]!;
  const changed = corpus.images.find((i) => i.name.endsWith("-incr"))!;
  log(`images: ${full.name} (${round(mb(full.size))} MB, ${round(mb(full.dataBytes))} MB data), ${changed.name} (1% of the data rewritten)${corpus.synthetic ? " (SYNTHETIC corpus: no network)" : ""}`);

  const rows = new Map<string, Sample[]>();
  const add = (label: string, s: Sample) => rows.set(label, [...(rows.get(label) ?? []), s]);
  for (let run = 0; run < runs; run++) {
    // A fresh cluster each run: the node's chunk store starts empty, as borg's and restic's repositories do.
    const c = await TestCluster.create();
    try {
      await c.startController("c1");
      for (const [n, ip] of [["k1", "127.0.0.161"], ["k2", "127.0.0.162"], ["k3", "127.0.0.163"]] as const) await c.startAgent(n, ip);
      await c.waitNodesOnline(3);
      add("stowage backup create (2-replica volume, store on the third node)", await stowageRun(c, run, full, changed));
    } finally {
      await c.stop();
    }
    for (const make of [borg, restic]) {
      const r = await toolRun(make, full, changed);
      add(r.label, r);
    }
  }

  const data = mb(full.dataBytes);
  console.log(`\nimages: ${full.name} ${round(mb(full.size))} MB with ${round(data)} MB of data; then ${changed.name}; medians of ${runs} run(s)\n`);
  console.log(`${"contender".padEnd(68)} ${"full s".padStart(7)} ${"2nd s".padStart(7)} ${"2nd/full".padStart(8)} ${"MB/s".padStart(6)} ${"stored MB".padStart(9)}`);
  const med = new Map<string, { full: number; second: number; stored: number }>();
  for (const [label, samples] of rows) {
    const m = { full: median(samples.map((s) => s.full)), second: median(samples.map((s) => s.second)), stored: median(samples.map((s) => s.stored)) };
    med.set(label, m);
    console.log(
      `${label.padEnd(68)} ${m.full.toFixed(2).padStart(7)} ${m.second.toFixed(2).padStart(7)} ${(m.second / m.full).toFixed(2).padStart(8)} ${Math.round(data / m.full).toString().padStart(6)} ${round(mb(m.stored), 1).toString().padStart(9)}`,
    );
  }
  const s = [...med.entries()].find(([l]) => l.startsWith("stowage"))![1];
  const b = [...med.entries()].find(([l]) => l.startsWith("borg"))![1];
  console.log(`\nstowage / borg: stored ${(s.stored / b.stored).toFixed(3)} (target <= 1), full-backup throughput ${(b.full / s.full).toFixed(2)}x (target >= 2)`);
  console.log(`stowage incremental / full backup time: ${(s.second / s.full).toFixed(2)} (target <= 0.05)`);
  const withSteps = [...rows.values()].flat().filter((x) => x.steps);
  for (const which of ["full", "second"] as const) {
    const keys = [...new Set(withSteps.flatMap((x) => Object.keys(x.steps![which])))];
    console.log(`stowage ${which === "full" ? "full" : "incremental"} backup, median ms per step: ${keys.map((k) => `${k} ${Math.round(median(withSteps.map((x) => x.steps![which][k] ?? 0)))}`).join(", ")}`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
