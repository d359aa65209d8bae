// Part 1: create-to-healthy and delete-to-gone latency on a real cluster, next to the cost
// of a bare `qemu-img create`, and where the create time goes according to the logs.
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { VolumePhase } from "../../../gen/stowage/v1/types.js";
import { NotFoundError } from "../../../lib/errors.js";
import type { TestCluster } from "../../harness/cluster.js";
import type { Proc } from "../../harness/processes.js";
import { leadershipLosses, volumeSpec } from "./cluster.js";
import { LeaderClient } from "./leader-client.js";
import { pollUntil } from "./poll.js";
import { progress } from "./progress.js";
import { qemuImgBaseline } from "./qemu-img-baseline.js";
import { max, median, MiB, pct, r1, r2 } from "./stats.js";

export interface LatencyResult {
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

export async function benchLatency(c: TestCluster, cfg: { volumes: number; baselineRuns: number }): Promise<LatencyResult> {
  progress(`baseline: ${cfg.baselineRuns} × qemu-img create -f qcow2 64M`);
  const base = await qemuImgBaseline(join(c.dir, "baseline"), cfg.baselineRuns);
  const leader = new LeaderClient(c);
  const before = leadershipLosses(c);
  const size = 64 * MiB;
  const names = Array.from({ length: cfg.volumes }, (_, i) => `lat-${String(i).padStart(4, "0")}`);

  progress(`latency: creating ${names.length} volumes one after another`);
  const created: number[] = [];
  // Wall-clock marks (Date.now(), the clock the processes' logs use) for the breakdown.
  const marks = new Map<string, { sent: number; accepted: number; seen: number }>();
  for (const name of names) {
    const sent = Date.now();
    const t0 = performance.now();
    await leader.call((api) => api.volumes.createVolume({ spec: volumeSpec(name, size), dryRun: false }));
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
  const after = leadershipLosses(c);

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
    leadershipLost: after - before,
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
