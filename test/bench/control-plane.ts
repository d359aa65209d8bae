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
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, open, rename, rm } from "node:fs/promises";
import { join, sep } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";
import type { Server } from "@grpc/grpc-js";
import { AgentServiceService, type AgentReplica } from "../../gen/stowage/v1/agent.js";
import { AgentRegistryServiceService, ListVolumesResponse } from "../../gen/stowage/v1/controller.js";
import { ImageFormat, Preallocation, VolumePhase, type Pool, type VolumeSpec as ApiVolumeSpec } from "../../gen/stowage/v1/types.js";
import { ConflictError, DeadlineError, errorMessage, NotFoundError, NotLeaderError, UnavailableError } from "../../lib/errors.js";
import { addService, Channel, createServer, INSECURE, listen, shutdown, type PromiseClient } from "../../lib/grpc.js";
import { TestCluster } from "../harness/cluster.js";
import { Proc, sleep } from "../harness/processes.js";

const execFileP = promisify(execFile);
const MiB = 2 ** 20;
const PiB = 2 ** 50;

// ---------------------------------------------------------------------------------------
// Options

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
const CFG = opts.quick
  ? { volumes: 30, baselineRuns: 20, failovers: 2, simVolumes: 1_000, simConcurrency: 32, watchdogMs: 5 * 60_000 }
  : { volumes: 200, baselineRuns: 20, failovers: 5, simVolumes: 10_000, simConcurrency: 32, watchdogMs: 20 * 60_000 };
const TARGET = { createP99Ms: 500, failoverMs: 2_000, rssMiB: 300, rssAtVolumes: 10_000 };

// ---------------------------------------------------------------------------------------
// Small helpers

const t0Run = performance.now();
function progress(msg: string): void {
  process.stderr.write(`[bench ${((performance.now() - t0Run) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);
}

/** Nearest-rank percentile of an unsorted sample. */
function pct(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
}
const median = (v: number[]) => pct(v, 0.5);
const max = (v: number[]) => (v.length ? Math.max(...v) : NaN);
const r1 = (n: number) => Math.round(n * 10) / 10;
const r2 = (n: number) => Math.round(n * 100) / 100;

/** Calls `fn` every `intervalMs` until it returns true; throws after `timeoutMs`. */
async function pollUntil(fn: () => Promise<boolean>, intervalMs: number, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (performance.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms`);
    await sleep(intervalMs);
  }
}

/** Retries `call` every `intervalMs` until it resolves; returns ms since `t0` and the errors seen. */
async function retryUntilOk(call: () => Promise<unknown>, t0: number, intervalMs: number, timeoutMs: number, what: string) {
  const errors: Record<string, number> = {};
  let last = "";
  while (performance.now() - t0 < timeoutMs) {
    try {
      await call();
      return { ms: performance.now() - t0, errors };
    } catch (err) {
      const name = err instanceof Error ? err.name : "Error";
      errors[name] = (errors[name] ?? 0) + 1;
      last = errorMessage(err);
    }
    await sleep(intervalMs);
  }
  throw new Error(`${what} did not succeed within ${timeoutMs} ms (last error: ${last})`);
}

/** Resident and peak memory of a process, from /proc/<pid>/status, in bytes. */
function memoryOf(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN) * 1024;
  return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
}

/** User+system CPU seconds a process has used (clock ticks are 1/100 s on Linux). */
function cpuSecondsOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // After the comm field: state is index 0, utime index 11, stime index 12.
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

const spec = (name: string, sizeBytes: number): ApiVolumeSpec => ({
  name,
  sizeBytes,
  replicas: 2,
  format: ImageFormat.IMAGE_FORMAT_QCOW2,
  preallocation: Preallocation.PREALLOCATION_OFF,
  pool: "",
});

// ---------------------------------------------------------------------------------------
// Cleanup: everything started is registered here, and released in reverse order at the
// end, on error, and on SIGINT/SIGTERM.

const cleanups: { what: string; fn: () => Promise<void> }[] = [];
function onCleanup(what: string, fn: () => Promise<void>): () => Promise<void> {
  const entry = { what, fn };
  cleanups.push(entry);
  // Runs this one now (at the end of a part) and forgets it.
  return async () => {
    const i = cleanups.indexOf(entry);
    if (i >= 0) cleanups.splice(i, 1);
    await fn();
  };
}
async function cleanupAll(): Promise<void> {
  while (cleanups.length) {
    const { what, fn } = cleanups.pop()!;
    await fn().catch((err) => progress(`cleanup of ${what} failed: ${errorMessage(err)}`));
  }
}
let exiting = false;
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    if (exiting) return;
    exiting = true;
    progress(`${sig}: cleaning up`);
    void cleanupAll().finally(() => process.exit(130));
  });
}


/** Clusters running now, so a failure can show what their processes printed last. */
const liveClusters = new Set<TestCluster>();

async function newCluster(label: string): Promise<{ c: TestCluster; stop: () => Promise<void> }> {
  const c = await TestCluster.create();
  liveClusters.add(c);
  const stop = onCleanup(`cluster ${label}`, async () => {
    liveClusters.delete(c);
    await c.stop();
  });
  return { c, stop };
}

function dumpProcessOutput(lines = 25): void {
  for (const c of liveClusters) {
    for (const p of [...c.controllers.values(), ...c.agents.values()]) {
      const tail = p.output.trimEnd().split("\n").slice(-lines).join("\n");
      process.stderr.write(`--- last output of ${p.name} (${p.running ? "running" : "exited"}) ---\n${tail}\n`);
    }
  }
}

type Api = ReturnType<TestCluster["api"]>;

/**
 * API calls against the current leader. Like any client it follows the leader: on
 * NotLeaderError or an unreachable controller it finds the leader again and retries
 * (every call used here is idempotent). The time spent doing so stays in the figures,
 * and the number of times it happened is reported.
 */
class LeaderClient {
  redirects = 0;
  private api?: Api;
  private resolving?: Promise<Api>;

  constructor(private readonly c: TestCluster) {}

  async call<T>(fn: (api: Api) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const api = this.api ?? (await this.resolve());
      try {
        return await fn(api);
      } catch (err) {
        if (!(err instanceof NotLeaderError || err instanceof UnavailableError) || attempt >= 10) throw err;
        this.redirects++;
        if (this.api === api) this.api = undefined;
      }
    }
  }

  private resolve(): Promise<Api> {
    this.resolving ??= this.c.leaderApi().then(
      (api) => {
        this.resolving = undefined;
        return (this.api = api);
      },
      (err) => {
        this.resolving = undefined;
        throw err;
      },
    );
    return this.resolving;
  }
}

/** Leadership events the controllers of a cluster have logged so far. */
function leadershipEvents(c: TestCluster): { elected: number; lost: number } {
  let elected = 0;
  let lost = 0;
  for (const p of c.controllers.values()) {
    for (const line of p.output.split("\n")) {
      if (line.includes('"msg":"elected leader"')) elected++;
      else if (line.includes('"msg":"campaign failed') && line.includes('"wasLeader":true')) lost++;
    }
  }
  return { elected, lost };
}

// ---------------------------------------------------------------------------------------
// Baseline: the work an agent must do for one replica, run directly.

async function qemuImgBaseline(dir: string, runs: number) {
  await mkdir(dir, { recursive: true });
  const create: number[] = [];
  const agentLike: number[] = [];
  const fsync = async (path: string) => {
    const fh = await open(path, "r");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  };
  for (let i = 0; i < runs; i++) {
    // The reference: a bare `qemu-img create -f qcow2 FILE 64M`.
    const file = join(dir, `base-${i}.qcow2`);
    let t = performance.now();
    await execFileP("qemu-img", ["create", "-q", "-f", "qcow2", file, "64M"]);
    create.push(performance.now() - t);
    await rm(file, { force: true });
    // For information: what the dir pool does per new replica (create under a temp name,
    // fsync, rename, fsync the directory, qemu-img info).
    const tmp = join(dir, `tmp-${i}.qcow2`);
    const final = join(dir, `agent-${i}.qcow2`);
    t = performance.now();
    await execFileP("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "preallocation=off", tmp, String(64 * MiB)]);
    await fsync(tmp);
    await rename(tmp, final);
    await fsync(dir);
    await execFileP("qemu-img", ["info", "--output=json", "-f", "qcow2", "-U", final]);
    agentLike.push(performance.now() - t);
    await rm(final, { force: true });
  }
  return { createMedianMs: median(create), agentLikeMedianMs: median(agentLike), runs };
}

// ---------------------------------------------------------------------------------------
// Part 1: create-to-healthy and delete latency on a real cluster

interface LatencyResult {
  volumes: number;
  createToHealthyMs: { p50: number; p90: number; p99: number; max: number; mean: number };
  deleteToGoneMs: { p50: number; p99: number; max: number };
  baseline: { qemuImgCreateMedianMs: number; agentWorkMedianMs: number; runs: number };
  /** create-to-healthy p50 divided by the median bare qemu-img create. */
  p50OverQemuImgCreate: number;
  p50OverAgentWork: number;
  /** Calls that met a non-leader or an unreachable controller and had to find the leader again. */
  leaderRedirects: number;
  /** Times a leader lost its election lease (without being killed) during this part. */
  leadershipLost: number;
  breakdownMedianMs: ReturnType<typeof createBreakdown>;
}

async function realCluster(): Promise<{ c: TestCluster; stop: () => Promise<void> }> {
  const { c, stop } = await newCluster("real");
  try {
    await c.startController("c1", { leaderTtlSec: 1 });
    await c.leaderApi(); // c1 leads
    await c.startController("c2", { leaderTtlSec: 1 });
    for (const i of [1, 2, 3]) await c.startAgent(`n${i}`, `127.0.0.4${i}`, { zone: `z${i}` });
    await c.waitNodesOnline(3);
    return { c, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function benchLatency(c: TestCluster): Promise<LatencyResult> {
  progress(`baseline: ${CFG.baselineRuns} × qemu-img create -f qcow2 64M`);
  const base = await qemuImgBaseline(join(c.dir, "baseline"), CFG.baselineRuns);
  const leader = new LeaderClient(c);
  const before = leadershipEvents(c);
  const size = 64 * MiB;
  const names = Array.from({ length: CFG.volumes }, (_, i) => `lat-${String(i).padStart(4, "0")}`);

  progress(`latency: creating ${names.length} volumes one after another`);
  const created: number[] = [];
  // Wall-clock marks (Date.now(), the clock the processes' logs use) for the breakdown.
  const marks = new Map<string, { sent: number; accepted: number; seen: number }>();
  for (const name of names) {
    const sent = Date.now();
    const t0 = performance.now();
    await leader.call((api) => api.volumes.createVolume({ spec: spec(name, size), dryRun: false }));
    const accepted = Date.now();
    await pollUntil(
      async () => (await leader.call((api) => api.volumes.getVolume({ name }))).volume?.phase === VolumePhase.VOLUME_PHASE_HEALTHY,
      5,
      60_000,
      `volume ${name} healthy`,
    );
    created.push(performance.now() - t0);
    marks.set(name, { sent, accepted, seen: Date.now() });
  }
  const breakdown = createBreakdown(c, marks);

  progress(`latency: deleting ${names.length} volumes one after another`);
  const deleted: number[] = [];
  for (const name of names) {
    const t0 = performance.now();
    await leader.call((api) => api.volumes.deleteVolume({ name }));
    await pollUntil(
      async () => {
        try {
          await leader.call((api) => api.volumes.getVolume({ name }));
          return false;
        } catch (err) {
          if (err instanceof NotFoundError) return true;
          throw err;
        }
      },
      5,
      60_000,
      `volume ${name} gone`,
    );
    deleted.push(performance.now() - t0);
  }
  const after = leadershipEvents(c);

  const p50 = pct(created, 0.5);
  return {
    volumes: names.length,
    createToHealthyMs: {
      p50: r1(p50),
      p90: r1(pct(created, 0.9)),
      p99: r1(pct(created, 0.99)),
      max: r1(max(created)),
      mean: r1(created.reduce((a, b) => a + b, 0) / created.length),
    },
    deleteToGoneMs: { p50: r1(pct(deleted, 0.5)), p99: r1(pct(deleted, 0.99)), max: r1(max(deleted)) },
    baseline: { qemuImgCreateMedianMs: r1(base.createMedianMs), agentWorkMedianMs: r1(base.agentLikeMedianMs), runs: base.runs },
    p50OverQemuImgCreate: r2(p50 / base.createMedianMs),
    p50OverAgentWork: r2(p50 / base.agentLikeMedianMs),
    leaderRedirects: leader.redirects,
    leadershipLost: after.lost - before.lost,
    breakdownMedianMs: breakdown,
  };
}

/**
 * Where the create-to-healthy time goes, from the processes' own logs (same clock):
 * the agents log "replica image created" when an image is ready, the leader logs
 * "volume phase changed" when it has written the healthy status.
 */
function createBreakdown(c: TestCluster, marks: Map<string, { sent: number; accepted: number; seen: number }>) {
  const imagesDone = new Map<string, number>();
  const healthyWritten = new Map<string, number>();
  const scan = (procs: Iterable<Proc>, msg: string, onLine: (j: { time: number; volume: string; phase?: string }) => void) => {
    for (const p of procs) {
      for (const line of p.output.split("\n")) {
        if (!line.includes(msg)) continue;
        try {
          onLine(JSON.parse(line));
        } catch {
          // not a log line
        }
      }
    }
  };
  scan(c.agents.values(), '"msg":"replica image created"', (j) => {
    if (marks.has(j.volume)) imagesDone.set(j.volume, Math.max(imagesDone.get(j.volume) ?? 0, j.time));
  });
  scan(c.controllers.values(), '"msg":"volume phase changed"', (j) => {
    if (j.phase === "healthy" && marks.has(j.volume) && !healthyWritten.has(j.volume)) healthyWritten.set(j.volume, j.time);
  });
  const seg = { accept: [] as number[], replicas: [] as number[], status: [] as number[], observe: [] as number[] };
  for (const [name, m] of marks) {
    const images = imagesDone.get(name);
    const written = healthyWritten.get(name);
    if (images === undefined || written === undefined) continue;
    seg.accept.push(m.accepted - m.sent);
    seg.replicas.push(images - m.accepted);
    seg.status.push(written - images);
    seg.observe.push(m.seen - written);
  }
  return {
    samples: seg.accept.length,
    /** CreateVolume call: validate, place, write spec+status+operation to etcd. */
    createCall: median(seg.accept),
    /** From the answer until the later of the two replica images is created (reconcile start + agent work). */
    untilBothImagesCreated: median(seg.replicas),
    /** From the second image until the leader logged the healthy status (agent reply, etcd write). */
    untilHealthyWritten: median(seg.status),
    /** From the healthy status until a GetVolume poll (every 5 ms) saw it. */
    untilObserved: median(seg.observe),
  };
}

// ---------------------------------------------------------------------------------------
// Part 2: leader failover

interface FailoverRun {
  listVolumesMs: number;
  createVolumeMs: number;
  /** From the kill until the volume created during the failover was healthy. */
  newVolumeHealthyMs: number;
  errorsSeen: Record<string, number>;
}

interface FailoverResult {
  runs: FailoverRun[];
  listVolumesMs: { median: number; max: number };
  createVolumeMs: { median: number; max: number };
  newVolumeHealthyMs: { median: number; max: number };
}

function runningControllerAt(c: TestCluster, address: string): string {
  const hit = [...c.controllers.entries()].find(([, p]) => p.running && p.output.includes(`serving on ${address}\n`));
  if (!hit) throw new Error(`no running controller serves ${address}`);
  return hit[0];
}

async function benchFailover(c: TestCluster): Promise<FailoverResult> {
  const runs: FailoverRun[] = [];
  let nextName = 3;
  for (let i = 0; i < CFG.failovers; i++) {
    const leader = (await c.leaderApi()).address;
    const victim = runningControllerAt(c, leader);
    const survivor = c.controllerAddresses.find((a) => a !== leader);
    if (!survivor) throw new Error("no standby controller");
    // A connected channel to the survivor, so the first poll does not pay for the connect.
    const api = c.api(survivor);
    await api.cluster.getLeader({}, { timeoutMs: 2_000 });
    const volume = `failover-${i}`;

    progress(`failover ${i + 1}/${CFG.failovers}: SIGKILL leader ${victim} (${leader}); polling ${survivor}`);
    const t0 = performance.now();
    const killed = c.controllers.get(victim)!.kill("SIGKILL");
    const [list, create] = await Promise.all([
      retryUntilOk(() => api.volumes.listVolumes({}, { timeoutMs: 200 }), t0, 20, 30_000, "ListVolumes"),
      retryUntilOk(() => api.volumes.createVolume({ spec: spec(volume, 64 * MiB), dryRun: false }, { timeoutMs: 1_000 }), t0, 20, 30_000, "CreateVolume"),
    ]);
    await killed;
    await pollUntil(
      async () => (await api.volumes.getVolume({ name: volume }, { timeoutMs: 1_000 })).volume?.phase === VolumePhase.VOLUME_PHASE_HEALTHY,
      20,
      60_000,
      `volume ${volume} healthy after failover`,
    );
    const healthy = performance.now() - t0;
    const errorsSeen: Record<string, number> = {};
    for (const e of [list.errors, create.errors]) for (const [k, v] of Object.entries(e)) errorsSeen[k] = (errorsSeen[k] ?? 0) + v;
    runs.push({ listVolumesMs: r1(list.ms), createVolumeMs: r1(create.ms), newVolumeHealthyMs: r1(healthy), errorsSeen });
    progress(`  ListVolumes after ${list.ms.toFixed(0)} ms, CreateVolume after ${create.ms.toFixed(0)} ms, new volume healthy after ${healthy.toFixed(0)} ms`);

    // A fresh standby on the dead one's address (the agents know both addresses).
    const name = `c${nextName++}`;
    await c.startController(name, { address: leader, leaderTtlSec: 1 });
    const restarted = c.api(leader);
    await pollUntil(
      async () => {
        const r = await restarted.cluster.getLeader({}, { timeoutMs: 1_000 }).catch(() => undefined);
        return r !== undefined && !r.isLeader && r.leader === survivor;
      },
      50,
      20_000,
      `${name} up as a standby`,
    );
    await c.waitNodesOnline(3);
    await sleep(1_500); // let every agent heartbeat the new leader at least once more
  }
  const pick = (k: "listVolumesMs" | "createVolumeMs" | "newVolumeHealthyMs") => runs.map((r) => r[k]);
  const mm = (v: number[]) => ({ median: r1(median(v)), max: r1(max(v)) });
  return {
    runs,
    listVolumesMs: mm(pick("listVolumesMs")),
    createVolumeMs: mm(pick("createVolumeMs")),
    newVolumeHealthyMs: mm(pick("newVolumeHealthyMs")),
  };
}

// ---------------------------------------------------------------------------------------
// Part 3: controller memory with many volumes, against simulated agents

/** An in-process agent: AgentService backed by a Map, registered and heartbeating like node-agent. */
class SimAgent {
  readonly replicas = new Map<string, AgentReplica>();
  address = "";
  calls = { ensure: 0, delete: 0, inventory: 0 };
  private stopped = false;
  private loop?: Promise<void>;
  private wake?: () => void;
  private readonly channels = new Map<string, Channel>();

  private constructor(
    readonly name: string,
    private readonly server: Server,
  ) {}

  static async start(name: string, controllers: string[]): Promise<SimAgent> {
    const server = createServer();
    const self = new SimAgent(name, server);
    addService(server, AgentServiceService, {
      getInventory: async () => {
        self.calls.inventory++;
        return { node: name, pools: self.pools(), replicas: [...self.replicas.values()] };
      },
      ensureReplica: async (req) => {
        self.calls.ensure++;
        let replica = self.replicas.get(req.id);
        let created = false;
        let resized = false;
        if (!replica) {
          replica = {
            id: req.id,
            volume: req.volume,
            pool: req.pool,
            path: `/sim/${req.id}`,
            format: req.format,
            virtualSizeBytes: req.sizeBytes,
            allocatedBytes: 0,
          };
          self.replicas.set(req.id, replica);
          created = true;
        } else if (replica.virtualSizeBytes < req.sizeBytes) {
          replica.virtualSizeBytes = req.sizeBytes;
          resized = true;
        }
        return { replica, created, resized };
      },
      deleteReplica: async (req) => {
        self.calls.delete++;
        return { deleted: self.replicas.delete(req.id) };
      },
    });
    const port = await listen(server, "127.0.0.1:0", INSECURE);
    self.address = `127.0.0.1:${port}`;
    self.loop = self.register(controllers);
    return self;
  }

  pools(): Pool[] {
    return [
      {
        node: this.name,
        name: "default",
        type: "dir",
        path: "/sim",
        capacityBytes: PiB,
        availableBytes: PiB,
        allocatedBytes: 0,
        provisionedBytes: 0,
        overcommitRatio: 10,
        replicaCount: 0,
      },
    ];
  }

  private client(address: string): PromiseClient<typeof AgentRegistryServiceService> {
    let ch = this.channels.get(address);
    if (!ch) {
      ch = new Channel(address, INSECURE);
      this.channels.set(address, ch);
    }
    return ch.service(AgentRegistryServiceService);
  }

  /** RegisterNode, then Heartbeat every interval; follows the leader, re-registers when asked. */
  private async register(controllers: string[]): Promise<void> {
    let current = controllers[0]!;
    let index = 0;
    let registered = false;
    let interval = 1_000;
    while (!this.stopped) {
      try {
        if (!registered) {
          const res = await this.client(current).registerNode(
            { name: this.name, address: this.address, labels: { zone: this.name, rack: "" }, pools: this.pools(), agentVersion: "sim" },
            { timeoutMs: 2_000 },
          );
          interval = res.heartbeatIntervalMs > 0 ? res.heartbeatIntervalMs : 1_000;
          registered = true;
        } else {
          const res = await this.client(current).heartbeat({ name: this.name, pools: this.pools() }, { timeoutMs: 2_000 });
          if (res.reregister) {
            registered = false;
            continue;
          }
        }
        await this.sleep(interval);
      } catch (err) {
        if (this.stopped) break;
        if (err instanceof NotFoundError) {
          registered = false;
          continue;
        }
        if (err instanceof NotLeaderError && err.leader && err.leader !== current) {
          current = err.leader;
        } else {
          index = (index + 1) % controllers.length;
          current = controllers[index]!;
        }
        await this.sleep(err instanceof NotLeaderError || err instanceof UnavailableError || err instanceof DeadlineError ? 200 : 1_000);
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.loop;
    for (const ch of this.channels.values()) ch.close();
    await shutdown(this.server, 200);
  }
}

interface MemoryResult {
  volumes: number;
  concurrency: number;
  rssIdleMiB: number;
  rssMiB: number;
  peakRssMiB: number;
  /** RSS after 5 s without API calls (heartbeats only). */
  rssAfterIdleMiB: number;
  bytesPerVolume: number;
  createSeconds: number;
  createPerSec: number;
  allHealthySeconds: number;
  healthyPerSec: number;
  createRpcMs: { p50: number; p99: number; max: number };
  controllerCpuSeconds: number;
  listVolumes: { ms: number; responseMiB: number };
  createRetries: Record<string, number>;
  leaderRedirects: number;
  leadershipLost: number;
}

async function benchMemory(): Promise<MemoryResult> {
  const { c, stop } = await newCluster("simulated");
  const sims: SimAgent[] = [];
  const stopSims = onCleanup("simulated agents", async () => {
    await Promise.all(sims.map((s) => s.stop()));
  });
  try {
    await c.startController("m1");
    const leader = new LeaderClient(c);
    for (const i of [1, 2, 3]) sims.push(await SimAgent.start(`sim${i}`, c.controllerAddresses));
    await c.waitNodesOnline(3);
    const pid = c.controllers.get("m1")!.child.pid!;
    await sleep(3_000); // idle: heartbeats only
    const idle = memoryOf(pid);
    const cpu0 = cpuSecondsOf(pid);
    progress(`memory: controller RSS idle ${(idle.rss / MiB).toFixed(1)} MiB; creating ${CFG.simVolumes} volumes, ${CFG.simConcurrency} in flight`);

    const n = CFG.simVolumes;
    const rpcMs: number[] = [];
    const retries: Record<string, number> = {};
    let next = 0;
    let done = 0;
    const t0 = performance.now();
    let lastReport = t0;
    const worker = async () => {
      while (next < n) {
        const name = `sim-${String(next++).padStart(6, "0")}`;
        for (let attempt = 0; ; attempt++) {
          const t = performance.now();
          try {
            await leader.call((api) => api.volumes.createVolume({ spec: spec(name, 2 ** 30), dryRun: false }, { timeoutMs: 60_000 }));
            rpcMs.push(performance.now() - t);
            break;
          } catch (err) {
            const transient = err instanceof ConflictError || err instanceof UnavailableError || err instanceof DeadlineError;
            if (!transient || attempt >= 5) throw err;
            retries[(err as Error).name] = (retries[(err as Error).name] ?? 0) + 1;
            await sleep(50);
          }
        }
        done++;
        if (performance.now() - lastReport > 5_000) {
          lastReport = performance.now();
          const rss = memoryOf(pid).rss;
          progress(`  ${done}/${n} created (${(done / ((lastReport - t0) / 1000)).toFixed(0)}/s), controller RSS ${(rss / MiB).toFixed(1)} MiB`);
        }
      }
    };
    await Promise.all(Array.from({ length: CFG.simConcurrency }, worker));
    const tCreated = performance.now();
    progress(`  all ${n} create calls answered after ${((tCreated - t0) / 1000).toFixed(1)} s; waiting until all are healthy`);

    let list = { ms: 0, bytes: 0 };
    await pollUntil(
      async () => {
        const t = performance.now();
        const res = await leader.call((api) => api.volumes.listVolumes({}, { timeoutMs: 60_000 }));
        list = { ms: performance.now() - t, bytes: ListVolumesResponse.encode(res).finish().length };
        const healthy = res.volumes.filter((v) => v.phase === VolumePhase.VOLUME_PHASE_HEALTHY).length;
        if (healthy < n) progress(`  ${healthy}/${n} healthy (ListVolumes took ${list.ms.toFixed(0)} ms)`);
        return healthy >= n;
      },
      1_000,
      10 * 60_000,
      `all ${n} volumes healthy`,
    );
    const tHealthy = performance.now();
    const mem = memoryOf(pid);
    const cpu = cpuSecondsOf(pid) - cpu0;
    const perVolume = (mem.rss - idle.rss) / n;
    progress(`  all healthy after ${((tHealthy - t0) / 1000).toFixed(1)} s; controller RSS ${(mem.rss / MiB).toFixed(1)} MiB; idling 5 s`);
    await sleep(5_000);
    const settled = memoryOf(pid);
    return {
      volumes: n,
      concurrency: CFG.simConcurrency,
      rssIdleMiB: r1(idle.rss / MiB),
      rssMiB: r1(mem.rss / MiB),
      peakRssMiB: r1(mem.hwm / MiB),
      rssAfterIdleMiB: r1(settled.rss / MiB),
      bytesPerVolume: Math.round(perVolume),
      createSeconds: r1((tCreated - t0) / 1000),
      createPerSec: r1(n / ((tCreated - t0) / 1000)),
      allHealthySeconds: r1((tHealthy - t0) / 1000),
      healthyPerSec: r1(n / ((tHealthy - t0) / 1000)),
      createRpcMs: { p50: r1(pct(rpcMs, 0.5)), p99: r1(pct(rpcMs, 0.99)), max: r1(max(rpcMs)) },
      controllerCpuSeconds: r1(cpu),
      listVolumes: { ms: r1(list.ms), responseMiB: r2(list.bytes / MiB) },
      createRetries: retries,
      leaderRedirects: leader.redirects,
      leadershipLost: leadershipEvents(c).lost,
    };
  } catch (err) {
    dumpProcessOutput();
    throw err;
  } finally {
    await stopSims();
    await stop();
  }
}

// ---------------------------------------------------------------------------------------
// Report

interface Row {
  figure: string;
  value: string;
  target: string;
  verdict: "PASS" | "MISS" | "n/a" | "info";
}

function table(rows: Row[]): string {
  const head: Row = { figure: "figure", value: "value", target: "target", verdict: "info" };
  const w = (k: keyof Row) => Math.max(...[head, ...rows].map((r) => (k === "verdict" && r === head ? 6 : r[k].length)));
  const line = (r: Row, verdict: string) =>
    `  ${r.figure.padEnd(w("figure"))}  ${r.value.padStart(w("value"))}  ${r.target.padEnd(w("target"))}  ${verdict}`;
  const rule = `  ${"-".repeat(w("figure") + w("value") + w("target") + 12)}`;
  return [line(head, "result"), rule, ...rows.map((r) => line(r, r.verdict === "info" ? "" : r.verdict))].join("\n");
}

const verdict = (ok: boolean): "PASS" | "MISS" => (ok ? "PASS" : "MISS");

async function main(): Promise<void> {
  const watchdog = setTimeout(() => {
    progress(`watchdog: still running after ${CFG.watchdogMs / 1000} s; cleaning up and giving up`);
    void cleanupAll().finally(() => process.exit(2));
  }, CFG.watchdogMs);
  watchdog.unref();

  const mode = opts.quick ? "quick" : "full";
  progress(`control-plane benchmark, ${mode} run, parts: ${opts.only.join(", ")}`);
  const result: {
    mode: string;
    seconds: number;
    latency?: LatencyResult;
    failover?: FailoverResult;
    memory?: MemoryResult;
    summary: Row[];
  } = { mode, seconds: 0, latency: undefined, failover: undefined, memory: undefined, summary: [] };

  try {
    if (opts.only.includes("latency") || opts.only.includes("failover")) {
      progress("starting a real cluster: etcd, 2 controllers, 3 agents on 127.0.0.41-43");
      const { c, stop } = await realCluster();
      try {
        if (opts.only.includes("latency")) result.latency = await benchLatency(c);
        if (opts.only.includes("failover")) result.failover = await benchFailover(c);
      } catch (err) {
        dumpProcessOutput();
        throw err;
      } finally {
        await stop();
      }
    }
    if (opts.only.includes("memory")) {
      progress("starting a cluster with 1 controller and 3 simulated agents");
      result.memory = await benchMemory();
    }
  } finally {
    await cleanupAll();
    clearTimeout(watchdog);
  }
  result.seconds = r1((performance.now() - t0Run) / 1000);

  const out: string[] = [];
  out.push("", `Stowage control-plane benchmark (${mode} run, ${result.seconds} s)`, "");
  const rows = result.summary;
  const L = result.latency;
  if (L) {
    const h = L.createToHealthyMs;
    out.push(
      `1. Create-to-healthy, ${L.volumes} two-replica 64 MiB qcow2 volumes one after another (real agents):`,
      `   p50 ${h.p50} ms   p90 ${h.p90} ms   p99 ${h.p99} ms   max ${h.max} ms   (target p99 < ${TARGET.createP99Ms} ms)`,
      `   baseline: bare qemu-img create 64M median ${L.baseline.qemuImgCreateMedianMs} ms -> p50 is ${L.p50OverQemuImgCreate}x that`,
      `             the dir pool's work per replica (create, fsync, rename, fsync dir, info) median ${L.baseline.agentWorkMedianMs} ms -> p50 is ${L.p50OverAgentWork}x that`,
      `   breakdown (medians, from the processes' logs): create call ${L.breakdownMedianMs.createCall} ms, then both images created ${L.breakdownMedianMs.untilBothImagesCreated} ms,`,
      `             then healthy status written ${L.breakdownMedianMs.untilHealthyWritten} ms, then seen by GetVolume ${L.breakdownMedianMs.untilObserved} ms`,
      `   delete-to-NotFound: p50 ${L.deleteToGoneMs.p50} ms   p99 ${L.deleteToGoneMs.p99} ms   max ${L.deleteToGoneMs.max} ms`,
      `   leader lost its election lease ${L.leadershipLost} time(s) during this part; ${L.leaderRedirects} call(s) had to find the leader again`,
      "",
    );
    rows.push(
      { figure: "create->healthy p50", value: `${h.p50} ms`, target: "", verdict: "info" },
      { figure: "create->healthy p99", value: `${h.p99} ms`, target: `< ${TARGET.createP99Ms} ms`, verdict: verdict(h.p99 < TARGET.createP99Ms) },
      { figure: "create->healthy p50 / qemu-img create", value: `${L.p50OverQemuImgCreate}x`, target: "", verdict: "info" },
      { figure: "delete->gone p50 / p99", value: `${L.deleteToGoneMs.p50} / ${L.deleteToGoneMs.p99} ms`, target: "", verdict: "info" },
    );
  }
  const F = result.failover;
  if (F) {
    out.push(`2. Leader failover (SIGKILL of the leader, leader TTL 1 s), ${F.runs.length} runs:`);
    for (const [i, r] of F.runs.entries()) {
      const errs = Object.entries(r.errorsSeen).map(([k, v]) => `${k}×${v}`).join(", ");
      out.push(`   run ${i + 1}: ListVolumes ${r.listVolumesMs} ms, CreateVolume ${r.createVolumeMs} ms, new volume healthy ${r.newVolumeHealthyMs} ms   (errors while waiting: ${errs || "none"})`);
    }
    out.push(
      `   ListVolumes:  median ${F.listVolumesMs.median} ms, max ${F.listVolumesMs.max} ms   (target < ${TARGET.failoverMs} ms)`,
      `   CreateVolume: median ${F.createVolumeMs.median} ms, max ${F.createVolumeMs.max} ms   (target < ${TARGET.failoverMs} ms)`,
      `   the volume created during failover was healthy after: median ${F.newVolumeHealthyMs.median} ms, max ${F.newVolumeHealthyMs.max} ms`,
      "",
    );
    rows.push(
      { figure: "failover -> ListVolumes (max)", value: `${F.listVolumesMs.max} ms`, target: `< ${TARGET.failoverMs} ms`, verdict: verdict(F.listVolumesMs.max < TARGET.failoverMs) },
      { figure: "failover -> CreateVolume (max)", value: `${F.createVolumeMs.max} ms`, target: `< ${TARGET.failoverMs} ms`, verdict: verdict(F.createVolumeMs.max < TARGET.failoverMs) },
      { figure: "failover -> ListVolumes / CreateVolume (median)", value: `${F.listVolumesMs.median} / ${F.createVolumeMs.median} ms`, target: "", verdict: "info" },
    );
  }
  const M = result.memory;
  if (M) {
    const atTarget = M.volumes >= TARGET.rssAtVolumes;
    out.push(
      `3. Controller memory, ${M.volumes} volumes (2 replicas each) on 3 simulated agents, ${M.concurrency} creates in flight:`,
      `   RSS with 0 volumes ${M.rssIdleMiB} MiB; with ${M.volumes} volumes ${M.rssMiB} MiB (peak ${M.peakRssMiB} MiB, ${M.rssAfterIdleMiB} MiB after 5 s idle); ${M.bytesPerVolume} bytes per volume`,
      atTarget
        ? `   (target < ${TARGET.rssMiB} MiB at ${TARGET.rssAtVolumes} volumes)`
        : `   (target < ${TARGET.rssMiB} MiB at ${TARGET.rssAtVolumes} volumes: not measured in a quick run; bytes per volume` +
          ` at this size are not a guide, the heap grows in steps early on)`,
      `   create calls: ${M.createSeconds} s, ${M.createPerSec} volumes/s (RPC p50 ${M.createRpcMs.p50} ms, p99 ${M.createRpcMs.p99} ms, max ${M.createRpcMs.max} ms)`,
      `   all healthy after ${M.allHealthySeconds} s: ${M.healthyPerSec} volumes/s; controller CPU ${M.controllerCpuSeconds} s`,
      `   ListVolumes with ${M.volumes} volumes: ${M.listVolumes.ms} ms, ${M.listVolumes.responseMiB} MiB response`,
      `   leader lost its election lease ${M.leadershipLost} time(s); ${M.leaderRedirects} call(s) had to find the leader again; retries: ${JSON.stringify(M.createRetries)}`,
      "",
    );
    rows.push(
      { figure: "controller RSS with 0 volumes", value: `${M.rssIdleMiB} MiB`, target: "", verdict: "info" },
      atTarget
        ? { figure: `controller RSS @ ${M.volumes} volumes`, value: `${M.rssMiB} MiB`, target: `< ${TARGET.rssMiB} MiB`, verdict: verdict(M.rssMiB < TARGET.rssMiB) }
        : { figure: `controller RSS @ ${M.volumes} volumes (quick run)`, value: `${M.rssMiB} MiB`, target: `< ${TARGET.rssMiB} MiB @ ${TARGET.rssAtVolumes}`, verdict: "n/a" },
      { figure: "controller bytes per volume", value: `${M.bytesPerVolume} B`, target: "", verdict: "info" },
      { figure: "volume creation throughput", value: `${M.createPerSec}/s`, target: "", verdict: "info" },
      { figure: "create -> all healthy throughput", value: `${M.healthyPerSec}/s`, target: "", verdict: "info" },
    );
  }
  out.push("Summary:", table(rows), "");
  process.stdout.write(out.join("\n") + "\n");
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
