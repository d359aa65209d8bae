// Grace-period replacement: a replica whose node stays offline longer than the
// controller's --replica-grace is replaced on another node (copied from an in-sync
// replica, then recorded in-sync), with leaders SIGKILLed in the middle, and no
// replacement at all while more than a third of the nodes are offline.
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ReplicaState, VolumePhase } from "../../gen/stowage/v1/types.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually, sleep } from "../harness/processes.js";
import { getVolume, imagesOn, leaderName, sameContent, startControllerWith, storedSpec, waitSettled, writeEverywhere } from "../harness/replica-helpers.js";

const GRACE_S = 3;
const FLAGS = ["--replica-grace", `${GRACE_S}s`, "--node-ttl", "3"];
const IPS: Record<string, string> = { n1: "127.0.0.111", n2: "127.0.0.112", n3: "127.0.0.113", n4: "127.0.0.114" };

let c: TestCluster;

async function create(name: string, replicas = 2, size = "64MiB") {
  const r = await c.stowctl(["volume", "create", name, "--size", size, "--replicas", String(replicas)]);
  expect(r.code, r.stderr).toBe(0);
  return getVolume(c, name);
}

beforeAll(async () => {
  c = await TestCluster.create();
  // c1 leads and dies right after it records rep2's replacement; c2 then leads and dies
  // right after it records the copy job; c3 finishes. Every other volume is unaffected.
  await startControllerWith(c, "c1", FLAGS, { faults: ["replicas:recorded@rep2"] });
  await c.leaderApi();
  await startControllerWith(c, "c2", FLAGS, { faults: ["resync:job-recorded@rep2"] });
  await startControllerWith(c, "c3", FLAGS);
  for (const n of ["n1", "n2", "n3"]) await c.startAgent(n, IPS[n]!);
  await c.waitNodesOnline(3);
});

afterAll(async () => {
  await c?.stop();
});

describe("grace-period replacement", () => {
  it("replaces the replica of a node that stays offline past the grace period, on the third node, byte-identical", async () => {
    const v0 = await create("rep1", 2, "256MiB");
    await writeEverywhere(v0, 0x5a, 0, 24);
    await writeEverywhere(v0, 0xa5, 200, 8);
    const [keep, lost] = v0.replicas;
    const third = ["n1", "n2", "n3"].find((n) => !v0.replicas.some((r) => r.node === n))!;

    const t0 = Date.now();
    await c.agents.get(lost!.node)!.kill("SIGKILL");
    const unreachable = await eventually(async () => {
      const v = await getVolume(c, "rep1");
      const r = v.replicas.find((x) => x.id === lost!.id);
      return r?.state === ReplicaState.REPLICA_STATE_UNREACHABLE ? v : undefined;
    }, 15_000, "replica unreachable");
    const tOffline = Date.now();
    expect(unreachable.phase).toBe(VolumePhase.VOLUME_PHASE_DEGRADED);
    expect(unreachable.replicas.find((r) => r.id === lost!.id)!.unreachableSinceMs).toBeGreaterThan(0);
    expect(unreachable.message).toMatch(new RegExp(`replica ${lost!.id} on ${lost!.node} is replaced at .* unless it is back by then`));

    const v = await waitSettled(c, "rep1", 2, 30_000, (x) => x.replicas.some((r) => r.node === third));
    const tHealthy = Date.now();
    const fresh = v.replicas.find((r) => r.node === third)!;
    expect(v.replicas.map((r) => r.id)).toEqual([keep!.id, fresh.id]);
    expect(fresh.lastResync).toMatchObject({ kind: "full" });
    expect(v.generation).toBe(3); // 2: replacement added (and the lost one removed), 3: recorded in-sync
    const cmp = await sameContent(keep!.path, fresh.path);
    expect(cmp.same, cmp.output).toBe(true);
    // The removed replica waits in the spec until its node returns and its image is deleted.
    expect((await storedSpec(c, "rep1")).removedReplicas).toEqual([expect.objectContaining({ id: lost!.id, node: lost!.node })]);
    const data = 32 * 2 ** 20;
    console.log(
      `[figures] rep1: agent SIGKILL -> unreachable ${tOffline - t0} ms, -> healthy on ${third} ${tHealthy - t0} ms ` +
        `(grace ${GRACE_S}s, node TTL 3s); copy ${fresh.lastResync!.durationMs} ms for 32 MiB of data in a 256 MiB qcow2 ` +
        `(${(data / 2 ** 20 / (fresh.lastResync!.durationMs / 1000)).toFixed(0)} MiB/s of data)`,
    );

    await c.startAgent(lost!.node, IPS[lost!.node]!);
    await eventually(async () => !existsSync(lost!.path) && (await storedSpec(c, "rep1")).removedReplicas === undefined, 20_000, "old image deleted");
    expect(imagesOn(c, lost!.node, "rep1")).toEqual([]);
    expect(imagesOn(c, third, "rep1")).toHaveLength(1);
  });

  it("a leader SIGKILLed right after recording a replacement, and the next one right after recording its copy: the third finishes", async () => {
    await c.waitNodesOnline(3);
    const v0 = await create("rep2");
    await writeEverywhere(v0, 0x3c, 0, 16);
    const [keep, lost] = v0.replicas;
    const third = ["n1", "n2", "n3"].find((n) => !v0.replicas.some((r) => r.node === n))!;
    expect(await leaderName(c)).toBe("c1");
    await c.agents.get(lost!.node)!.kill("SIGKILL");

    await eventually(async () => !c.controllers.get("c1")!.running, 30_000, "c1 killed at replicas:recorded");
    // What c1 recorded before it died: the replacement, out of sync, and the lost replica gone.
    const recorded = await storedSpec(c, "rep2");
    expect(recorded.placement.map((p) => p.node)).toEqual([keep!.node, third]);
    await eventually(async () => !c.controllers.get("c2")!.running, 30_000, "c2 killed at resync:job-recorded");
    const v = await waitSettled(c, "rep2", 2, 30_000, (x) => x.replicas.some((r) => r.node === third));
    expect(await leaderName(c)).toBe("c3");
    const fresh = v.replicas.find((r) => r.node === third)!;
    expect(fresh.id).toBe(recorded.placement[1]!.id);
    const cmp = await sameContent(keep!.path, fresh.path);
    expect(cmp.same, cmp.output).toBe(true);
    // The job c2 recorded is gone with the in-sync record.
    expect(Object.keys(await c.dumpState()).filter((k) => k.includes("/jobs/"))).toEqual([]);
    await c.startAgent(lost!.node, IPS[lost!.node]!);
    await eventually(async () => !existsSync(lost!.path), 20_000, "old image of rep2 deleted");
  });
});

describe("mass-failure brake", () => {
  it("replaces nothing while more than a third of the nodes are offline, says why, and rebuilds once enough return", async () => {
    await c.startAgent("n4", IPS.n4!);
    await c.waitNodesOnline(4);
    for (const name of ["rep1", "rep2"]) expect((await c.stowctl(["volume", "delete", name])).code).toBe(0);
    const v0 = await create("brk");
    const [keep, lost] = v0.replicas;
    const other = ["n1", "n2", "n3", "n4"].find((n) => !v0.replicas.some((r) => r.node === n))!;
    const before = await storedSpec(c, "brk");

    await c.agents.get(lost!.node)!.kill("SIGKILL");
    await c.agents.get(other)!.kill("SIGKILL");
    const paused = await eventually(async () => {
      const v = await getVolume(c, "brk");
      return v.message.includes("2 of 4 nodes offline: automatic rebuilds paused") ? v : undefined;
    }, 20_000, "brake message");
    expect(paused.phase).toBe(VolumePhase.VOLUME_PHASE_DEGRADED);
    // Well past the grace period: the placement has not moved.
    await sleep((GRACE_S + 2) * 1000);
    expect(await storedSpec(c, "brk")).toEqual(before);
    const jobs = await c.stowctl(["job", "list"]);
    expect(jobs.code, jobs.stderr).toBe(0);
    expect(jobs.stdout).toMatch(/^2 of 4 nodes offline: automatic rebuilds paused\n/);
    const shown = await c.stowctl(["volume", "get", "brk"]);
    expect(shown.stdout).toMatch(/Message:.*2 of 4 nodes offline: automatic rebuilds paused/);

    // One node back: 1 of 4 offline, no longer more than a third; the lost replica is rebuilt.
    await c.startAgent(other, IPS[other]!);
    const v = await waitSettled(c, "brk", 2, 30_000, (x) => !x.replicas.some((r) => r.id === lost!.id));
    expect(v.replicas[0]!.id).toBe(keep!.id);
    expect(v.replicas[1]!.node).not.toBe(lost!.node);
    expect((await c.stowctl(["job", "list"])).stdout).toBe("no jobs: every replica is in sync");
    await c.startAgent(lost!.node, IPS[lost!.node]!);
  });
});
