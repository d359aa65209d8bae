// Part 2: leader failover. SIGKILL the leader, time until the surviving controller answers
// ListVolumes and accepts a CreateVolume, then put a fresh standby on the dead one's address.
import { performance } from "node:perf_hooks";
import { VolumePhase } from "../../../gen/stowage/v1/types.js";
import type { TestCluster } from "../../harness/cluster.js";
import { sleep } from "../../harness/processes.js";
import { volumeSpec } from "./cluster.js";
import { pollUntil, retryUntilOk } from "./poll.js";
import { progress } from "./progress.js";
import { max, median, MiB, r1 } from "./stats.js";

interface FailoverRun {
  listVolumesMs: number;
  createVolumeMs: number;
  /** From the kill until the volume created during the failover was healthy. */
  newVolumeHealthyMs: number;
  errorsSeen: Record<string, number>;
}

export interface FailoverResult {
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

export async function benchFailover(c: TestCluster, failovers: number): Promise<FailoverResult> {
  const runs: FailoverRun[] = [];
  let nextName = 3;
  for (let i = 0; i < failovers; i++) {
    const leader = (await c.leaderApi()).address;
    const victim = runningControllerAt(c, leader);
    const survivor = c.controllerAddresses.find((a) => a !== leader);
    if (!survivor) throw new Error("no standby controller");
    // A connected channel to the survivor, so the first poll does not pay for the connect.
    const api = c.api(survivor);
    await api.cluster.getLeader({}, { timeoutMs: 2_000 });
    const volume = `failover-${i}`;

    progress(`failover ${i + 1}/${failovers}: SIGKILL leader ${victim} (${leader}); polling ${survivor}`);
    const t0 = performance.now();
    const killed = c.controllers.get(victim)!.kill("SIGKILL");
    const [list, create] = await Promise.all([
      retryUntilOk(() => api.volumes.listVolumes({}, { timeoutMs: 200 }), t0, 20, 30_000, "ListVolumes"),
      retryUntilOk(() => api.volumes.createVolume({ spec: volumeSpec(volume, 64 * MiB), dryRun: false }, { timeoutMs: 1_000 }), t0, 20, 30_000, "CreateVolume"),
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
