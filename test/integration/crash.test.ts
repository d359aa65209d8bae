// Crash safety: controllers killed with SIGKILL mid-operation, leader failover,
// and agents restarted under the controller's feet.
import { existsSync, readdirSync, unlinkSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ReplicaState, VolumePhase } from "../../gen/stowage/v1/types.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually, sleep } from "../harness/processes.js";

const GiB = 2 ** 30;
let c: TestCluster;

const spec = (name: string, replicas = 2) => ({ name, sizeBytes: GiB, replicas, format: 0, preallocation: 0, pool: "" });

async function volume(name: string) {
  return (await (await c.leaderApi()).volumes.getVolume({ name })).volume!;
}

async function waitPhase(name: string, phase: VolumePhase, timeoutMs = 20_000) {
  return eventually(async () => {
    const v = await volume(name);
    return v.phase === phase ? v : undefined;
  }, timeoutMs, `volume ${name} ${VolumePhase[phase]}`);
}

/** Image files of a volume across every agent's pool. */
function imagesOf(volume: string): string[] {
  return ["n1", "n2", "n3"].flatMap((n) => readdirSync(c.poolDir(n)).filter((f) => f.startsWith(volume + ".")).map((f) => `${n}/${f}`));
}

beforeAll(async () => {
  c = await TestCluster.create();
  // c1 starts first and leads; it dies as soon as it has recorded a create.
  await c.startController("c1", { faults: ["create-volume:recorded@crash1"] });
  await c.leaderApi();
  await c.startController("c2");
  for (const [i, n] of ["n1", "n2", "n3"].entries()) await c.startAgent(n, `127.0.0.${31 + i}`);
  await c.waitNodesOnline(3);
});

afterAll(async () => {
  await c?.stop();
});

describe("controller crash", () => {
  it("a create recorded by a leader that then dies is finished by the next leader", async () => {
    const first = await c.leaderApi();
    expect(first.address).toBe(c.controllerAddresses[0]);
    const err = await first.volumes.createVolume({ spec: spec("crash1"), dryRun: false }).catch((e) => e);
    expect(err).toBeInstanceOf(Error); // the leader died before answering
    await eventually(async () => !c.controllers.get("c1")!.running, 5_000, "c1 dead");
    const v = await waitPhase("crash1", VolumePhase.VOLUME_PHASE_HEALTHY);
    expect((await c.leaderApi()).address).toBe(c.addressOf("c2"));
    expect(v.replicas.every((r) => r.state === ReplicaState.REPLICA_STATE_HEALTHY && existsSync(r.path))).toBe(true);
    expect(imagesOf("crash1")).toHaveLength(2);
  });

  it("a leader killed between two replica creations leaves work the next leader completes", async () => {
    // Agents know two controller addresses; successors reuse them.
    await c.startController("c3", { faults: ["reconcile:replica-ensured@crash2"], address: c.addressOf("c1") });
    await c.controllers.get("c2")!.kill("SIGKILL");
    const api = await c.leaderApi();
    expect(api.address).toBe(c.addressOf("c3"));
    await c.waitNodesOnline(3);
    await api.volumes.createVolume({ spec: spec("crash2", 3), dryRun: false }).catch(() => undefined);
    await eventually(async () => !c.controllers.get("c3")!.running, 10_000, "c3 killed at its fault point");
    await c.startController("c4", { address: c.addressOf("c2") });
    const v = await waitPhase("crash2", VolumePhase.VOLUME_PHASE_HEALTHY);
    expect(v.replicas).toHaveLength(3);
    expect(imagesOf("crash2")).toHaveLength(3);
    // Earlier volumes are untouched by the turnover.
    expect((await volume("crash1")).phase).toBe(VolumePhase.VOLUME_PHASE_HEALTHY);
  });

  it("a standby takes over within a few seconds of the leader's SIGKILL", async () => {
    await c.startController("c5", { address: c.addressOf("c3") });
    const leader = await c.leaderApi();
    const name = [...c.controllers.entries()].find(([, p]) => p.running && p.output.includes(`serving on ${leader.address}`))![0];
    const t0 = Date.now();
    await c.controllers.get(name)!.kill("SIGKILL");
    await eventually(async () => {
      const api = await c.leaderApi();
      await api.volumes.listVolumes({}, { timeoutMs: 500 });
      return true;
    }, 10_000, "API back");
    const took = Date.now() - t0;
    expect(took).toBeLessThan(5_000);
  });
});

describe("agent restart", () => {
  beforeAll(async () => {
    // After the failovers above, agents need a heartbeat to reach the new leader.
    await c.waitNodesOnline(3);
  });

  it("replicas turn unreachable while the agent is down and healthy when it returns", async () => {
    const api = await c.leaderApi();
    await api.volumes.createVolume({ spec: spec("ar1", 3), dryRun: false });
    await waitPhase("ar1", VolumePhase.VOLUME_PHASE_HEALTHY);
    await c.agents.get("n1")!.kill("SIGKILL");
    const degraded = await waitPhase("ar1", VolumePhase.VOLUME_PHASE_DEGRADED, 15_000);
    expect(degraded.replicas.find((r) => r.node === "n1")!.state).toBe(ReplicaState.REPLICA_STATE_UNREACHABLE);
    await c.startAgent("n1", "127.0.0.31");
    const back = await waitPhase("ar1", VolumePhase.VOLUME_PHASE_HEALTHY, 15_000);
    expect(back.replicas.every((r) => r.state === ReplicaState.REPLICA_STATE_HEALTHY)).toBe(true);
  });

  it("a restarted agent gets missing replicas back and loses orphaned ones", async () => {
    const api = await c.leaderApi();
    await api.volumes.createVolume({ spec: spec("keep", 3), dryRun: false });
    await api.volumes.createVolume({ spec: spec("drop", 3), dryRun: false });
    const keep = await waitPhase("keep", VolumePhase.VOLUME_PHASE_HEALTHY);
    await waitPhase("drop", VolumePhase.VOLUME_PHASE_HEALTHY);
    await c.agents.get("n2")!.kill("SIGKILL");
    await waitPhase("keep", VolumePhase.VOLUME_PHASE_DEGRADED, 15_000);
    // While n2 is away: its copy of "keep" vanishes and "drop" is deleted.
    const lost = keep.replicas.find((r) => r.node === "n2")!.path;
    unlinkSync(lost);
    await api.volumes.deleteVolume({ name: "drop" });
    await eventually(async () => (await volume("drop").catch((e) => e)) instanceof Error, 15_000, "drop deleted");
    expect(imagesOf("drop")).toEqual(["n2/" + readdirSync(c.poolDir("n2")).find((f) => f.startsWith("drop."))]);
    await c.startAgent("n2", "127.0.0.32");
    await waitPhase("keep", VolumePhase.VOLUME_PHASE_HEALTHY, 15_000);
    expect(existsSync(lost)).toBe(true);
    await eventually(async () => imagesOf("drop").length === 0, 15_000, "orphan of drop removed");
    await sleep(100);
    expect(imagesOf("keep")).toHaveLength(3);
  });
});
