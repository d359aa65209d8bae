// The clusters the benchmark runs against: starting and stopping them, showing what their
// processes printed when a part fails, and reading leadership events from their logs.
import { ImageFormat, Preallocation, type VolumeSpec as ApiVolumeSpec } from "../../../gen/stowage/v1/types.js";
import { TestCluster } from "../../harness/cluster.js";
import { onCleanup } from "./cleanup.js";

/** Clusters running now, so a failure can show what their processes printed last. */
const liveClusters = new Set<TestCluster>();

/** A fresh cluster (etcd only), registered for cleanup; `stop` releases it early. */
export async function newCluster(label: string): Promise<{ c: TestCluster; stop: () => Promise<void> }> {
  const c = await TestCluster.create();
  liveClusters.add(c);
  const stop = onCleanup(`cluster ${label}`, async () => {
    liveClusters.delete(c);
    await c.stop();
  });
  return { c, stop };
}

/** The cluster for the latency and failover parts: 2 controllers (c1 leads), 3 real agents on 127.0.0.41-43. */
export async function realCluster(): Promise<{ c: TestCluster; stop: () => Promise<void> }> {
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

export function dumpProcessOutput(lines = 25): void {
  for (const c of liveClusters) {
    for (const p of [...c.controllers.values(), ...c.agents.values()]) {
      const tail = p.output.trimEnd().split("\n").slice(-lines).join("\n");
      process.stderr.write(`--- last output of ${p.name} (${p.running ? "running" : "exited"}) ---\n${tail}\n`);
    }
  }
}

/** Times a leader of this cluster has logged losing its election lease so far. */
export function leadershipLosses(c: TestCluster): number {
  let lost = 0;
  for (const p of c.controllers.values()) {
    for (const line of p.output.split("\n")) {
      if (line.includes('"msg":"campaign failed') && line.includes('"wasLeader":true')) lost++;
    }
  }
  return lost;
}

/** The volume every part creates: two qcow2 replicas, not preallocated, default pool. */
export const volumeSpec = (name: string, sizeBytes: number): ApiVolumeSpec => ({
  name,
  sizeBytes,
  replicas: 2,
  format: ImageFormat.IMAGE_FORMAT_QCOW2,
  preallocation: Preallocation.PREALLOCATION_OFF,
  pool: "",
});
