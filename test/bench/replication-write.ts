// Part 1 of the replication benchmark: writes through a frontend with 1, 2 and 3
// replicas, against fio straight at one qemu-storage-daemon export (the baseline) and
// against N fio jobs writing N exports at once (what this machine can land in N copies
// without Stowage). Three daemons, one per "host", each exporting its own raw image.
import { mkdir, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { frontendArgv } from "../../frontend/launch.js";
import { FrontendProcess } from "../../frontend/testing/frontend-process.js";
import { Qsd } from "../harness/qsd.js";
import { ROOT } from "../harness/root.js";
import { cpuTicks, fioFill, machineTicks, fioWrite, median, progress, syncDisks, type Cleanups, type FioWorkload } from "./replication-common.js";

export const WRITE_WORKLOADS: FioWorkload[] = [
  { label: "4k randwrite QD32", rw: "randwrite", bs: "4k", iodepth: 32, unit: "IOPS" },
  { label: "1M write QD16", rw: "write", bs: "1M", iodepth: 16, unit: "MB/s" },
];

export const WRITE_SETUPS = ["direct", "limit2", "limit3", "replicas1", "replicas2", "replicas3"] as const;
export type WriteSetup = (typeof WRITE_SETUPS)[number];

export const SETUP_LABELS: Record<WriteSetup, string> = {
  direct: "direct: 1 export",
  limit2: "2-copy limit: 2 exports at once, per copy",
  limit3: "3-copy limit: 3 exports at once, per copy",
  replicas1: "frontend, 1 replica",
  replicas2: "frontend, 2 replicas",
  replicas3: "frontend, 3 replicas",
};

export interface WriteOptions {
  dir: string;
  reps: number;
  runtimeSec: number;
  /** Options of each daemon's file blockdev ([] = the host page cache). */
  fileOptions: string[];
  /** Frontend connections per replica (undefined: the frontend's default). */
  connections?: number;
  cleanups: Cleanups;
}

export interface WriteFigure {
  /** Median over the runs: IOPS or MB/s (the workload's unit); per copy for the limits. */
  median: number;
  runs: number[];
  /** Frontend CPU per request, median (frontend setups only). */
  cpuUsPerIo?: number;
  /** fio's CPU per request it made, median. */
  fioUsPerIo: number;
  /** The daemons' CPU per request they served (one per copy), median. */
  daemonsUsPerCopy: number;
  /** Share of the machine's CPU time that was busy during the runs, median (0-1). */
  busy: number;
}

export interface WriteResult {
  imageBytes: number;
  workloads: { workload: FioWorkload; figures: Record<WriteSetup, WriteFigure> }[];
}

const IMAGE_BYTES = 1024 * 1024 * 1024;

/** CPU time of every daemon so far, in clock ticks. */
const daemonTicks = (qsds: Qsd[]) => qsds.reduce((n, q) => n + cpuTicks(q.pid!), 0);
const HOSTS = 3;

interface Target {
  setup: WriteSetup;
  uris: string[];
  frontend?: FrontendProcess;
}

export async function benchWrites(o: WriteOptions): Promise<WriteResult> {
  const release: (() => Promise<void>)[] = [];
  try {
    return await measure(o, release);
  } finally {
    for (const r of release.reverse()) await r();
  }
}

async function measure(o: WriteOptions, release: (() => Promise<void>)[]): Promise<WriteResult> {
  const qsds: Qsd[] = [];
  for (let h = 1; h <= HOSTS; h++) {
    const hostDir = join(o.dir, `host${h}`);
    await mkdir(hostDir, { recursive: true });
    const image = join(hostDir, "vol.raw");
    await writeFile(image, "");
    await truncate(image, IMAGE_BYTES);
    const qsd = await Qsd.start({ dir: hostDir, image, format: "raw", exportName: "vol", socket: join(hostDir, "nbd.sock"), fileOptions: o.fileOptions });
    release.push(o.cleanups.add(`qemu-storage-daemon of host${h}`, () => qsd.stop()));
    qsds.push(qsd);
  }
  const out = join(o.dir, "fio.json");
  progress(`filling the ${HOSTS} images (1 GiB each), then sync`);
  await fioFill(qsds.map((q) => q.uri), IMAGE_BYTES, out);
  await syncDisks();

  const targets: Target[] = [
    { setup: "direct", uris: [qsds[0]!.uri] },
    { setup: "limit2", uris: qsds.slice(0, 2).map((q) => q.uri) },
    { setup: "limit3", uris: qsds.map((q) => q.uri) },
  ];
  for (let n = 1; n <= HOSTS; n++) {
    const socketPath = join(o.dir, `front${n}.sock`);
    const argv = frontendArgv({
      socketPath,
      exportName: "vol",
      replicas: qsds.slice(0, n).map((q) => ({ socketPath: q.socket, exportName: q.exportName })),
      connections: o.connections,
    });
    // Started as the agent starts it (frontend/launch.ts); no --controllers: a write needs every replica.
    const frontend = await FrontendProcess.start(join(ROOT, "dist/frontend/main.js"), argv);
    release.push(o.cleanups.add(`frontend with ${n} replica(s)`, () => frontend.stop()));
    targets.push({ setup: `replicas${n}` as WriteSetup, uris: [`nbd+unix:///vol?socket=${socketPath}`], frontend });
  }

  const workloads: WriteResult["workloads"] = [];
  for (const w of WRITE_WORKLOADS) {
    const runs = new Map(WRITE_SETUPS.map((s) => [s, { values: [] as number[], cpu: [] as number[], fio: [] as number[], daemons: [] as number[], busy: [] as number[] }]));
    for (let rep = 0; rep < o.reps; rep++) {
      // A different setup goes first in each repetition, so load drift does not always hit the same one.
      const order = targets.map((_, i) => targets[(i + rep * 2) % targets.length]!);
      for (const t of order) {
        progress(`${w.label}: run ${rep + 1}/${o.reps}, ${SETUP_LABELS[t.setup]}`);
        const pid = t.frontend?.child.pid;
        const before = pid ? cpuTicks(pid) : 0;
        const daemonsBefore = daemonTicks(qsds);
        const machine = machineTicks();
        const samples = await fioWrite(t.uris, w, { sizeBytes: IMAGE_BYTES, runtimeSec: o.runtimeSec, out });
        const machineAfter = machineTicks();
        const daemonsUs = ((daemonTicks(qsds) - daemonsBefore) / 100) * 1e6;
        const perCopy = samples.map((s) => (w.unit === "IOPS" ? s.iops : s.mbps)).reduce((a, b) => a + b, 0) / samples.length;
        const r = runs.get(t.setup)!;
        r.values.push(perCopy);
        r.busy.push((machineAfter.busy - machine.busy) / (machineAfter.total - machine.total));
        const fioIops = samples.reduce((n, x) => n + x.iops, 0);
        r.fio.push((samples.reduce((n, x) => n + x.cpuCores, 0) * 1e6) / fioIops);
        // Each request through an N-replica frontend is N requests at the daemons; ramp time included, as for the frontend.
        const copies = t.setup.startsWith("replicas") ? Number(t.setup.slice("replicas".length)) : 1;
        r.daemons.push(daemonsUs / (fioIops * copies * (o.runtimeSec + 1)));
        if (pid) {
          const cpuUs = ((cpuTicks(pid) - before) / 100) * 1e6;
          // Ramp time included: the frontend worked through it too.
          r.cpu.push(cpuUs / (samples[0]!.iops * (o.runtimeSec + 1)));
        }
      }
    }
    const figures = Object.fromEntries(
      WRITE_SETUPS.map((s) => {
        const r = runs.get(s)!;
        const f: WriteFigure = { median: median(r.values), runs: r.values, busy: median(r.busy), fioUsPerIo: median(r.fio), daemonsUsPerCopy: median(r.daemons) };
        if (r.cpu.length) f.cpuUsPerIo = median(r.cpu);
        return [s, f];
      }),
    ) as Record<WriteSetup, WriteFigure>;
    workloads.push({ workload: w, figures });
  }
  return { imageBytes: IMAGE_BYTES, workloads };
}
