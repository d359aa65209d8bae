// Replication benchmark (a script, not a test):
//
//   npm run build && node dist/test/bench/replication.js [--quick] [--json] [--only PARTS] [--direct-io] ...
//
// Three parts, each against a baseline measured in the same run:
//   write     fio (nbd engine) through a frontend with 1, 2 and 3 replicas (one
//             qemu-storage-daemon per replica, a raw image each) vs fio straight at one
//             export, and vs N fio jobs writing N exports at once (the N-copy limit of the
//             machine, per copy): 4k random write QD32 and 1M sequential write QD16
//             (replication-write.ts)
//   resync    Stowage's replica rebuilds (a detached volume's: DirPool.copyFrom, qemu-img
//             convert from an NBD export; an attached volume's: the same copy while the
//             frontend tracks writes, then its catch-up; and the frontend's full copy) vs a
//             durable plain qemu-img convert of the same image into the same pool, images
//             always opened as the agent does (replication-resync.ts)
//   failover  a replica host's daemon SIGKILLed under QD1 writes in a real small cluster:
//             kill → next acknowledged write (replication-failover.ts)
// Each figure is the median of 3 runs, 5 for failovers (--quick: 1, shorter: about 75 s in
// all). Prints one table per part with ratios against their targets, and with --json one
// JSON object last. Every process and file it creates is removed at the end, on error, on
// SIGINT/SIGTERM and when the watchdog gives up.
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { AGENT_FILE_OPTIONS, Cleanups, progress, round } from "./replication-common.js";
import { benchFailover } from "./replication-failover.js";
import { FAILOVER_TARGET_MS, failoverLines, RESYNC_TARGET, resyncLines, resyncRatios, writeLines, writeRatios } from "./replication-report.js";
import { benchResync } from "./replication-resync.js";
import { benchWrites, WRITE_SETUPS } from "./replication-write.js";

const PARTS = ["write", "resync", "failover"] as const;
type Part = (typeof PARTS)[number];

const USAGE = `usage: node dist/test/bench/replication.js [--quick] [--json] [--only PARTS] [--runtime S]
                                              [--failovers N] [--connections N] [--direct-io]

  --quick          one run of each figure, 3 s fio runs, one failover (default: median of
                   3 runs, 10 s fio runs, 5 failovers)
  --json           print one JSON object with every figure as the last line
  --only PARTS     comma-separated subset of: ${PARTS.join(", ")} (default: all)
  --runtime S      seconds per fio run
  --failovers N    failovers to take the median of
  --connections N  frontend connections to each replica (default: the frontend's default)
  --direct-io      write: open the images as the agent does (${AGENT_FILE_OPTIONS.join(",")})
                   instead of through the host page cache (the nbd-frontend benchmark's
                   setting); resync and the failover cluster's agents always do
`;

function parseOptions(argv: string[]) {
  const o = {
    quick: false,
    json: false,
    parts: [...PARTS] as Part[],
    runtime: undefined as number | undefined,
    failovers: undefined as number | undefined,
    connections: undefined as number | undefined,
    directIo: false,
  };
  const positive = (flag: string, v: string | undefined) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} takes a positive integer\n${USAGE}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--quick") o.quick = true;
    else if (a === "--json") o.json = true;
    else if (a === "--direct-io") o.directIo = true;
    else if (a === "--runtime") o.runtime = positive(a, argv[++i]);
    else if (a === "--failovers") o.failovers = positive(a, argv[++i]);
    else if (a === "--connections") o.connections = positive(a, argv[++i]);
    else if (a === "--only") {
      const parts = (argv[++i] ?? "").split(",").filter(Boolean);
      const bad = parts.filter((p) => !(PARTS as readonly string[]).includes(p));
      if (parts.length === 0 || bad.length) throw new Error(`--only takes some of ${PARTS.join(", ")}\n${USAGE}`);
      o.parts = parts as Part[];
    } else if (a === "-h" || a === "--help") {
      process.stdout.write(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument "${a}"\n${USAGE}`);
  }
  return o;
}

const opts = parseOptions(process.argv.slice(2));
const REPS = opts.quick ? 1 : 3;
const RUNTIME = opts.runtime ?? (opts.quick ? 3 : 10);
const FAILOVERS = opts.failovers ?? (opts.quick ? 1 : 5);
const cleanups = new Cleanups();

/** Stops the run: cleans up and exits with `code`. */
function abort(why: string, code: number): void {
  if (cleanups.interrupted) return;
  cleanups.interrupted = true;
  progress(`${why}: cleaning up`);
  void cleanups.runAll().finally(() => process.exit(code));
}
for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => abort(sig, 130));
// A hung daemon or cluster must not hold CI forever.
const WATCHDOG_MIN = opts.quick ? 10 : 60;
setTimeout(() => abort(`still running after ${WATCHDOG_MIN} min, giving up`, 2), WATCHDOG_MIN * 60_000).unref();

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "stowage-bench-replication-"));
  cleanups.add("temp dir", () => rmSync(dir, { recursive: true, force: true }));
  const fileOptions = opts.directIo ? AGENT_FILE_OPTIONS : [];
  const load0 = loadavg()[0]!;
  const sections: string[][] = [];
  const json: Record<string, unknown> = { reps: REPS, runtime: RUNTIME, directIo: opts.directIo };

  if (opts.parts.includes("write")) {
    const r = await benchWrites({ dir, reps: REPS, runtimeSec: RUNTIME, fileOptions, connections: opts.connections, cleanups });
    sections.push(writeLines(r, REPS, RUNTIME));
    json.write = {
      workloads: r.workloads.map((w) => ({
        workload: w.workload.label,
        unit: w.workload.unit,
        figures: Object.fromEntries(WRITE_SETUPS.map((s) => [s, { ...w.figures[s], median: round(w.figures[s].median), runs: w.figures[s].runs.map((x) => round(x)) }])),
      })),
      ratios: writeRatios(r),
    };
  }
  if (opts.parts.includes("resync")) {
    const r = await benchResync({ dir, reps: REPS, cleanups });
    sections.push(resyncLines(r, REPS));
    json.resync = { ...r, ratios: resyncRatios(r), target: RESYNC_TARGET };
  }
  if (opts.parts.includes("failover")) {
    const r = await benchFailover({ dir, reps: FAILOVERS, cleanups, writeRuntimeSec: RUNTIME });
    sections.push(failoverLines(r));
    json.failover = { ...r, targetMs: FAILOVER_TARGET_MS };
  }

  const load1 = loadavg()[0]!;
  json.load = [round(load0, 2), round(load1, 2)];
  const cache = opts.directIo ? `images opened as the agent does (${fileOptions.join(",")})` : "images through the host page cache";
  process.stdout.write(
    [`Replication benchmark: ${opts.parts.includes("write") ? `write part: ${cache}; ` : ""}load average ${load0.toFixed(1)} before, ${load1.toFixed(1)} after`, ...sections.flatMap((s) => ["", ...s])].join("\n") + "\n",
  );
  if (opts.json) process.stdout.write(JSON.stringify(json) + "\n");
}

main()
  .catch((err) => {
    if (cleanups.interrupted) return;
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => cleanups.runAll());
