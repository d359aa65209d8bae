// Part 3: controller memory and creation throughput with many volumes, on a cluster with
// 1 controller and 3 simulated agents.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { ListVolumesResponse } from "../../../gen/stowage/v1/controller.js";
import { VolumePhase } from "../../../gen/stowage/v1/types.js";
import { ConflictError, DeadlineError, UnavailableError } from "../../../lib/errors.js";
import { sleep } from "../../harness/processes.js";
import { onCleanup } from "./cleanup.js";
import { dumpProcessOutput, leadershipLosses, newCluster, volumeSpec } from "./cluster.js";
import { LeaderClient } from "./leader-client.js";
import { pollUntil } from "./poll.js";
import { progress } from "./progress.js";
import { SimAgent } from "./sim-agent.js";
import { max, MiB, pct, r1, r2 } from "./stats.js";

export interface MemoryResult {
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

export async function benchMemory(cfg: { volumes: number; concurrency: number }): Promise<MemoryResult> {
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
    progress(`memory: controller RSS idle ${(idle.rss / MiB).toFixed(1)} MiB; creating ${cfg.volumes} volumes, ${cfg.concurrency} in flight`);

    const n = cfg.volumes;
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
            await leader.call((api) => api.volumes.createVolume({ spec: volumeSpec(name, 2 ** 30), dryRun: false }, { timeoutMs: 60_000 }));
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
    await Promise.all(Array.from({ length: cfg.concurrency }, worker));
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
      concurrency: cfg.concurrency,
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
      leadershipLost: leadershipLosses(c),
    };
  } catch (err) {
    dumpProcessOutput();
    throw err;
  } finally {
    await stopSims();
    await stop();
  }
}
