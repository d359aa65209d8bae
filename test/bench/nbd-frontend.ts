// Data-path benchmark (a script, not a test):
//
//   npm run build && node dist/test/bench/nbd-frontend.js [--quick] [--json] [--connections N] [--runtime S]
//                                                          [--direct-io] [--send-buffer-kib N]
//
// fio's nbd engine straight at a qemu-storage-daemon raw export vs the same export
// through a Stowage frontend process, in the same run, on the same image (a raw file in
// a temp dir, filled with data first): 4k random read and write at queue depth 32, 1M
// sequential read and write at queue depth 16. Direct and frontend runs alternate so
// drift in machine load hits both; each figure is the median of 3 runs (--quick: 1,
// shorter). Prints IOPS, MB/s, the ratio frontend/direct against its target, and the
// frontend's CPU time per request. Every process and file it creates is removed at the
// end, on error and on SIGINT/SIGTERM.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { truncate, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "../../lib/exec.js";
import { frontendArgv } from "../../frontend/launch.js";
import { FrontendProcess } from "../../frontend/testing/frontend-process.js";
import { Qsd } from "../harness/qsd.js";
import { AGENT_FILE_OPTIONS } from "./replication-common.js";

const USAGE = `usage: node dist/test/bench/nbd-frontend.js [--quick] [--json] [--connections N] [--runtime S]
                                               [--direct-io] [--send-buffer-kib N]

  --quick          one run per figure, 3 s each (default: median of 3 runs of 10 s)
  --json           print one JSON object with every figure as the last line
  --connections N  frontend connections to the replica (default: the frontend's default)
  --runtime S      seconds per fio run
  --direct-io      open the image as the agent opens replicas (${AGENT_FILE_OPTIONS.join(",")})
                   instead of through the host page cache
  --send-buffer-kib N  the frontend's --send-buffer-kib (default: the frontend's default;
                   0: the system default, as before the option existed)
`;

function parseOptions(argv: string[]) {
  const o = {
    quick: false,
    json: false,
    connections: undefined as number | undefined,
    runtime: undefined as number | undefined,
    directIo: false,
    sendBufferKiB: undefined as number | undefined,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--quick") o.quick = true;
    else if (a === "--json") o.json = true;
    else if (a === "--connections") o.connections = Number(argv[++i]);
    else if (a === "--runtime") o.runtime = Number(argv[++i]);
    else if (a === "--direct-io") o.directIo = true;
    else if (a === "--send-buffer-kib") o.sendBufferKiB = Number(argv[++i]);
    else if (a === "-h" || a === "--help") {
      process.stdout.write(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument "${a}"\n${USAGE}`);
  }
  return o;
}

const opts = parseOptions(process.argv.slice(2));
const REPS = opts.quick ? 1 : 3;
const RUNTIME = opts.runtime ?? (opts.quick ? 3 : 10);
const IMAGE_SIZE = 1024 * 1024 * 1024;
const ROOT = new URL("../../../", import.meta.url).pathname;

interface Workload {
  name: string;
  rw: string;
  bs: string;
  iodepth: number;
  target: number;
  /** The figure that matters: IOPS for small blocks, MB/s for large ones. */
  unit: "IOPS" | "MB/s";
}

const WORKLOADS: Workload[] = [
  { name: "4k randread  QD32", rw: "randread", bs: "4k", iodepth: 32, target: 0.85, unit: "IOPS" },
  { name: "4k randwrite QD32", rw: "randwrite", bs: "4k", iodepth: 32, target: 0.85, unit: "IOPS" },
  { name: "1M read      QD16", rw: "read", bs: "1M", iodepth: 16, target: 0.8, unit: "MB/s" },
  { name: "1M write     QD16", rw: "write", bs: "1M", iodepth: 16, target: 0.8, unit: "MB/s" },
];

interface Sample {
  iops: number;
  mbps: number;
  /** Frontend CPU microseconds per request (frontend runs only). */
  cpuUsPerIo?: number;
}

const t0 = Date.now();
function progress(msg: string): void {
  process.stderr.write(`[bench ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);
}

const median = (v: number[]) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** utime+stime of a process in clock ticks (100/s on Linux). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

async function fio(uri: string, w: Workload, runtime: number, out: string): Promise<Sample> {
  await run(
    "fio",
    [
      "--name=bench", "--ioengine=nbd", `--uri=${uri}`, `--rw=${w.rw}`, `--bs=${w.bs}`, `--iodepth=${w.iodepth}`,
      `--size=${IMAGE_SIZE}`, `--runtime=${runtime}`, "--time_based", "--ramp_time=1", "--output-format=json", `--output=${out}`,
    ],
    { timeoutMs: (runtime + 60) * 1000 },
  );
  const job = JSON.parse(readFileSync(out, "utf8")).jobs[0];
  const side = w.rw.includes("read") ? job.read : job.write;
  return { iops: side.iops, mbps: side.bw_bytes / 1e6 };
}

const cleanups: (() => Promise<void> | void)[] = [];
async function cleanup(): Promise<void> {
  for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => undefined);
}
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    progress(`${sig}: cleaning up`);
    void cleanup().then(() => process.exit(130));
  });
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "stowage-bench-nbd-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, "vol.raw");
  await writeFile(image, "");
  await truncate(image, IMAGE_SIZE);
  const fileOptions = opts.directIo ? AGENT_FILE_OPTIONS : [];
  const qsd = await Qsd.start({ dir, image, format: "raw", socket: join(dir, "qsd.sock"), exportName: "vol", fileOptions });
  cleanups.push(() => qsd.stop());
  const frontSock = join(dir, "front.sock");
  const feArgs = frontendArgv({ socketPath: frontSock, exportName: "vol", replicas: [{ socketPath: qsd.socket, exportName: "vol" }], connections: opts.connections, sendBufferKiB: opts.sendBufferKiB });
  // Started exactly as the agent starts it (frontend/launch.ts), environment included.
  const fe = await FrontendProcess.start(join(ROOT, "dist/frontend/main.js"), feArgs);
  cleanups.push(() => fe.stop());
  const direct = "nbd+unix:///vol?socket=" + qsd.socket;
  const front = "nbd+unix:///vol?socket=" + frontSock;
  const out = join(dir, "fio.json");

  progress("filling the image (random reads must not hit holes)");
  await run("fio", ["--name=fill", "--ioengine=nbd", `--uri=${direct}`, "--rw=write", "--bs=1M", "--iodepth=16", `--size=${IMAGE_SIZE}`, `--output=${out}`], {
    timeoutMs: 300_000,
  });

  const load0 = loadavg()[0]!;
  const results: { workload: Workload; direct: Sample[]; frontend: Sample[] }[] = [];
  for (const w of WORKLOADS) {
    const r = { workload: w, direct: [] as Sample[], frontend: [] as Sample[] };
    for (let i = 0; i < REPS; i++) {
      progress(`${w.name}: run ${i + 1}/${REPS} direct`);
      r.direct.push(await fio(direct, w, RUNTIME, out));
      progress(`${w.name}: run ${i + 1}/${REPS} through the frontend`);
      const before = cpuTicks(fe.child.pid!);
      const s = await fio(front, w, RUNTIME, out);
      const cpuUs = ((cpuTicks(fe.child.pid!) - before) / 100) * 1e6;
      s.cpuUsPerIo = cpuUs / (s.iops * (RUNTIME + 1)); // ramp time included: the frontend worked through it too
      r.frontend.push(s);
    }
    results.push(r);
  }
  const load1 = loadavg()[0]!;

  const rows = results.map(({ workload: w, direct: d, frontend: f }) => {
    const pick = (s: Sample) => (w.unit === "IOPS" ? s.iops : s.mbps);
    const dm = median(d.map(pick));
    const fm = median(f.map(pick));
    return {
      workload: w.name.replace(/\s+/g, " "),
      unit: w.unit,
      direct: Math.round(dm),
      frontend: Math.round(fm),
      ratio: Math.round((fm / dm) * 100) / 100,
      target: w.target,
      met: fm / dm >= w.target,
      cpuUsPerIo: Math.round(median(f.map((s) => s.cpuUsPerIo ?? 0)) * 10) / 10,
      runs: { direct: d.map(pick).map(Math.round), frontend: f.map(pick).map(Math.round) },
    };
  });

  const lines = [
    `NBD frontend vs direct qemu-storage-daemon export (raw image, fio nbd engine, ${REPS} run(s) of ${RUNTIME} s, median)`,
    `load average ${load0.toFixed(1)} before, ${load1.toFixed(1)} after; ${opts.connections ?? "default"} frontend connection(s) to the replica; image ${opts.directIo ? `opened as the agent does (${AGENT_FILE_OPTIONS.join(",")})` : "through the host page cache"}; frontend send buffer ${opts.sendBufferKiB === undefined ? "default" : opts.sendBufferKiB === 0 ? "system default" : `${opts.sendBufferKiB} KiB`}`,
    "",
    `${"workload".padEnd(20)} ${"direct".padStart(10)} ${"frontend".padStart(10)} ${"ratio".padStart(6)} ${"target".padStart(7)}      fe CPU/IO   runs (direct | frontend)`,
    ...rows.map(
      (r) =>
        `${r.workload.padEnd(20)} ${`${r.direct} ${r.unit === "IOPS" ? "IOPS" : "MB/s"}`.padStart(10)} ${String(r.frontend).padStart(10)} ${r.ratio.toFixed(2).padStart(6)} ${`≥${r.target}`.padStart(7)} ${r.met ? "met " : "MISS"} ${`${r.cpuUsPerIo} µs`.padStart(10)}   ${r.runs.direct.join(",")} | ${r.runs.frontend.join(",")}`,
    ),
  ];
  process.stdout.write(lines.join("\n") + "\n");
  if (opts.json) process.stdout.write(JSON.stringify({ reps: REPS, runtime: RUNTIME, load: [load0, load1], directIo: opts.directIo, sendBufferKiB: opts.sendBufferKiB ?? null, rows }) + "\n");
}

main()
  .catch((err) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
