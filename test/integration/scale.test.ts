// `stowctl volume set VOL --replicas N`: scaling up adds out-of-sync replicas that
// are copied (detached volumes: by the controller) and recorded in-sync; scaling
// down removes the least useful replicas and their images; bad input changes nothing.
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FailedPreconditionError, InsufficientCapacityError, InvalidArgumentError, NotFoundError } from "../../lib/errors.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";
import { getVolume, imagesOn, sameContent, storedSpec, waitSettled, writeEverywhere } from "../harness/replica-helpers.js";

let c: TestCluster;

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1");
  for (const [i, n] of ["n1", "n2", "n3"].entries()) await c.startAgent(n, `127.0.0.${121 + i}`);
  await c.waitNodesOnline(3);
  const r = await c.stowctl(["volume", "create", "s1", "--size", "128MiB", "--replicas", "1"]);
  expect(r.code, r.stderr).toBe(0);
});

afterAll(async () => {
  await c?.stop();
});

describe("volume set --replicas", () => {
  it("scales up: new replicas are placed on other nodes, copied, recorded in-sync; progress is shown", async () => {
    const v0 = await getVolume(c, "s1");
    await writeEverywhere(v0, 0x61, 0, 20);
    await writeEverywhere(v0, 0x62, 100, 4);

    const dry = await c.stowctl(["volume", "set", "s1", "--replicas", "3", "--dry-run"]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/^dry run: volume s1:\n {2}would add a replica on n\d \(pool default\)\n {2}would add a replica on n\d \(pool default\)\nnothing was changed$/);
    expect((await storedSpec(c, "s1")).placement).toHaveLength(1);

    const t0 = Date.now();
    const r = await c.stowctl(["volume", "set", "s1", "--replicas", "3"]);
    const took = Date.now() - t0;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^volume s1:\n {2}add a replica on n\d \(pool default\)\n {2}add a replica on n\d \(pool default\)\n/);
    expect(r.stdout).toMatch(/s1: 1\/3 replicas in sync/);
    expect(r.stdout).toMatch(/volume s1 is healthy with 3 replicas, all in sync$/);

    const v = await getVolume(c, "s1");
    expect(new Set(v.replicas.map((x) => x.node))).toEqual(new Set(["n1", "n2", "n3"]));
    expect(v.replicas[0]!.id).toBe(v0.replicas[0]!.id);
    for (const added of v.replicas.slice(1)) {
      expect(added.lastResync).toMatchObject({ kind: "full" });
      const cmp = await sameContent(v0.replicas[0]!.path, added.path);
      expect(cmp.same, cmp.output).toBe(true);
    }
    // 1 -> 2 (two replicas added in one write), then one generation per replica recorded in-sync.
    expect(v.generation).toBe(4);
    const shown = await c.stowctl(["volume", "get", "s1"]);
    expect(shown.stdout).toMatch(/copies:\n {2}r-[0-9a-f]{12} on n\d: last resync full 128MiB in \d+\.\ds at /);
    console.log(`[figures] s1: volume set 1 -> 3 replicas (24 MiB of data in 128 MiB) ${took} ms wall through stowctl`);
  });

  it("asking again changes nothing", async () => {
    const before = await c.dumpState();
    const r = await c.stowctl(["volume", "set", "s1", "--replicas", "3"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe("volume s1 already has 3 replicas; nothing to change");
    expect(await c.dumpState()).toEqual(before);
  });

  it("bad input is refused with a clear error and changes nothing", async () => {
    const api = await c.leaderApi();
    const before = await c.dumpState();
    const zero = await c.stowctl(["volume", "set", "s1", "--replicas", "0"]);
    expect(zero.code).toBe(2);
    expect(zero.stderr).toMatch(/expected a whole number of at least 1, got "0"/);
    await expect(api.volumes.setVolumeReplicas({ name: "s1", replicas: 0, dryRun: false })).rejects.toBeInstanceOf(InvalidArgumentError);
    const many = await c.stowctl(["volume", "set", "s1", "--replicas", "4"]);
    expect(many.code).toBe(1);
    expect(many.stderr).toBe(
      "error: volume s1 cannot have 4 replicas: the cluster has 3 nodes and each replica needs its own\nhint: use at most 3, or add nodes first",
    );
    const unknown = await c.stowctl(["volume", "set", "nope", "--replicas", "2"]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^error: volume "nope" not found/);
    await expect(api.volumes.setVolumeReplicas({ name: "nope", replicas: 2, dryRun: false })).rejects.toBeInstanceOf(NotFoundError);
    expect(await c.dumpState()).toEqual(before);

    // No room: with a node cordoned, a 2-replica volume cannot get a third.
    expect((await c.stowctl(["volume", "create", "s2", "--size", "64MiB"])).code).toBe(0);
    const s2 = await getVolume(c, "s2");
    const free = ["n1", "n2", "n3"].find((n) => !s2.replicas.some((r) => r.node === n))!;
    expect((await c.stowctl(["node", "cordon", free])).code).toBe(0);
    const cordoned = await c.dumpState();
    const full = await c.stowctl(["volume", "set", "s2", "--replicas", "3"]);
    expect(full.code).toBe(1);
    expect(full.stderr).toMatch(/^error: cannot place 1 more replica of volume s2: need 1 host for 1 replica but only 0 are eligible\nrejected nodes:\n/);
    expect(full.stderr).toContain(`  ${free}: cordoned\n`);
    await expect(api.volumes.setVolumeReplicas({ name: "s2", replicas: 3, dryRun: false })).rejects.toBeInstanceOf(InsufficientCapacityError);
    expect(await c.dumpState()).toEqual(cordoned);
    expect((await c.stowctl(["node", "uncordon", free])).code).toBe(0);

    // A volume being deleted: its replicas no longer change. (Its first agent is stopped so the delete waits.)
    const holder = c.agents.get(s2.replicas[0]!.node)!;
    holder.child.kill("SIGSTOP");
    try {
      await api.volumes.deleteVolume({ name: "s2" });
      await expect(api.volumes.setVolumeReplicas({ name: "s2", replicas: 1, dryRun: false })).rejects.toBeInstanceOf(FailedPreconditionError);
      const deleting = await c.stowctl(["volume", "set", "s2", "--replicas", "1"]);
      expect(deleting.stderr).toMatch(/^error: volume s2 is being deleted\n/);
    } finally {
      holder.child.kill("SIGCONT");
    }
    await eventually(async () => (await getVolume(c, "s2").catch((e) => e)) instanceof NotFoundError, 90_000, "s2 deleted");
  });

  it("scales down: removes replicas not on the node the volume is attached to, and their images", async () => {
    const v0 = await getVolume(c, "s1");
    const attachedTo = v0.replicas[1]!.node;
    const att = await c.stowctl(["volume", "attach", "s1", "--node", attachedTo]);
    expect(att.code, att.stderr).toBe(0);

    const r = await c.stowctl(["volume", "set", "s1", "--replicas", "1"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("(in sync; not on a node the volume is attached to)");
    const v = await waitSettled(c, "s1", 1);
    expect(v.replicas.map((x) => x.node)).toEqual([attachedTo]);
    // Attached: the removed images stay a few seconds for the frontend to let go, then go.
    const gone = v0.replicas.filter((x) => x.node !== attachedTo);
    // The record of the removed replicas goes right after their images.
    await eventually(async () => gone.every((g) => !existsSync(g.path)) && (await storedSpec(c, "s1")).removedReplicas === undefined, 30_000, "removed images deleted");
    for (const g of gone) expect(imagesOn(c, g.node, "s1")).toEqual([]);
    expect((await c.stowctl(["volume", "detach", "s1", "--node", attachedTo])).code).toBe(0);
  });
});
