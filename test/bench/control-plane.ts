// Control-plane benchmark (a script, not a test):
//
//   npm run build && node dist/test/bench/control-plane.js [--quick] [--json] [--only latency,failover,memory]
//
// 1. latency  — real cluster (1 etcd, 2 controllers, 3 agents on 127.0.0.41-43 with real
//               qemu-img): create-to-healthy and delete-to-gone latency of 2-replica 64 MiB
//               qcow2 volumes created one after another, next to the cost of a bare
//               `qemu-img create` measured in the same run.
// 2. failover — same cluster: SIGKILL the leader, time until the surviving controller
//               answers ListVolumes and accepts a CreateVolume.
// 3. memory   — a separate cluster with 1 controller and 3 in-process simulated agents:
//               controller RSS with 0 and with many volumes, and creation throughput.
//
// Prints a human-readable report on stdout (progress goes to stderr) and, with --json,
// one JSON object on the last line of stdout. Every process and temp dir it starts is
// removed at the end, on error and on SIGINT/SIGTERM. Only loopback addresses are used.
//
// This file parses the arguments and runs the parts; the parts, the report and the
// cleanup live in ./control-plane/.
import { cleanUpOnSignals, cleanupAll, startWatchdog } from "./control-plane/cleanup.js";
import { dumpProcessOutput, realCluster } from "./control-plane/cluster.js";
import { benchFailover } from "./control-plane/failover.js";
import { benchLatency } from "./control-plane/latency.js";
import { benchMemory } from "./control-plane/memory.js";
import { elapsedSeconds, progress, startClock } from "./control-plane/progress.js";
import { renderReport, summaryRows, type BenchResult } from "./control-plane/report.js";
import { r1 } from "./control-plane/stats.js";

const USAGE = `usage: node dist/test/bench/control-plane.js [--quick] [--json] [--only PARTS]

  --quick        fewer volumes and failovers (about a minute)
  --json         print one JSON object with every figure as the last line
  --only PARTS   comma-separated subset of: latency, failover, memory
  -h, --help     show this help
`;

type Part = "latency" | "failover" | "memory";
const PARTS: Part[] = ["latency", "failover", "memory"];

function parseOptions(argv: string[]) {
  let quick = false;
  let json = false;
  let only: Part[] = PARTS;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--quick") quick = true;
    else if (a === "--json") json = true;
    else if (a === "-h" || a === "--help") {
      process.stdout.write(USAGE);
      process.exit(0);
    } else if (a === "--only" || a.startsWith("--only=")) {
      const v = a.includes("=") ? a.slice(a.indexOf("=") + 1) : argv[++i] ?? "";
      only = v.split(",").map((s) => s.trim()).filter(Boolean) as Part[];
      const bad = only.filter((p) => !PARTS.includes(p));
      if (bad.length || only.length === 0) throw new Error(`--only takes ${PARTS.join(", ")}; got "${v}"`);
    } else {
      throw new Error(`unknown argument "${a}"\n${USAGE}`);
    }
  }
  return { quick, json, only };
}

const opts = parseOptions(process.argv.slice(2));
startClock();
const CFG = opts.quick
  ? { volumes: 30, baselineRuns: 20, failovers: 2, simVolumes: 1_000, simConcurrency: 32, watchdogMs: 5 * 60_000 }
  : { volumes: 200, baselineRuns: 20, failovers: 5, simVolumes: 10_000, simConcurrency: 32, watchdogMs: 20 * 60_000 };
cleanUpOnSignals();

async function main(): Promise<void> {
  const stopWatchdog = startWatchdog(CFG.watchdogMs);

  const mode = opts.quick ? "quick" : "full";
  progress(`control-plane benchmark, ${mode} run, parts: ${opts.only.join(", ")}`);
  const result: BenchResult = { mode, seconds: 0, latency: undefined, failover: undefined, memory: undefined, summary: [] };

  try {
    if (opts.only.includes("latency") || opts.only.includes("failover")) {
      progress("starting a real cluster: etcd, 2 controllers, 3 agents on 127.0.0.41-43");
      const { c, stop } = await realCluster();
      try {
        if (opts.only.includes("latency")) result.latency = await benchLatency(c, CFG);
        if (opts.only.includes("failover")) result.failover = await benchFailover(c, CFG.failovers);
      } catch (err) {
        dumpProcessOutput();
        throw err;
      } finally {
        await stop();
      }
    }
    if (opts.only.includes("memory")) {
      progress("starting a cluster with 1 controller and 3 simulated agents");
      result.memory = await benchMemory({ volumes: CFG.simVolumes, concurrency: CFG.simConcurrency });
    }
  } finally {
    await cleanupAll();
    stopWatchdog();
  }
  result.seconds = r1(elapsedSeconds());
  result.summary = summaryRows(result);

  process.stdout.write(renderReport(result));
  if (opts.json) process.stdout.write(JSON.stringify(result) + "\n");
}

main().then(
  () => process.exit(0),
  async (err) => {
    progress(`benchmark failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    await cleanupAll();
    process.exit(1);
  },
);
