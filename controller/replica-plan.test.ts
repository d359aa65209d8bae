import { describe, expect, it } from "vitest";
import type { ReplicaPlacement, ReplicaStateName, VolumeSpec } from "./model.js";
import { chooseReplicasToRemove, planReplicas, rebuildBrake, type NodeFacts, type ObservedReplica, type PlanInput } from "./replica-plan.js";

const MIN = 60_000;
const NOW = 1_000 * MIN;

/** "r1@n1" in sync; "r2@n2!" out of sync. */
function placement(...ids: string[]): ReplicaPlacement[] {
  return ids.map((s) => {
    const [id, rest] = s.split("@") as [string, string];
    const node = rest.replace("!", "");
    return rest.endsWith("!") ? { id, node, pool: "p", outOfSync: { sinceMs: 1, reason: "x", generation: 2 } } : { id, node, pool: "p" };
  });
}

function spec(replicas: number, p: ReplicaPlacement[], extra: Partial<VolumeSpec> = {}): VolumeSpec {
  return {
    name: "v",
    uid: "u",
    sizeBytes: 1 << 30,
    replicas,
    format: "qcow2",
    preallocation: "off",
    pool: "",
    createdAtMs: 0,
    deleting: false,
    placement: p,
    generation: 2,
    ...extra,
  };
}

/** Every replica healthy unless listed: {r2: "unreachable"} or {r2: ["unreachable", sinceMs]}. */
function observed(p: ReplicaPlacement[], states: Record<string, ReplicaStateName | [ReplicaStateName, number]> = {}): Map<string, ObservedReplica> {
  return new Map(
    p.map((x) => {
      const s = states[x.id];
      if (s === undefined) return [x.id, { state: "healthy" }];
      return [x.id, Array.isArray(s) ? { state: s[0], unreachableSinceMs: s[1] } : { state: s }];
    }),
  );
}

describe("rebuildBrake", () => {
  const cases: Record<string, [online: boolean[], paused: boolean, message: string]> = {
    "all nodes online": [[true, true, true], false, ""],
    "1 of 3 offline is exactly a third: rebuilds go on": [[true, true, false], false, ""],
    "2 of 3 offline is more than a third: paused": [[true, false, false], true, "2 of 3 nodes offline: automatic rebuilds paused"],
    "2 of 6 offline: a third, not more": [[true, true, true, true, false, false], false, ""],
    "3 of 7 offline: paused": [[true, true, true, true, false, false, false], true, "3 of 7 nodes offline: automatic rebuilds paused"],
    "1 of 2 offline: paused": [[true, false], true, "1 of 2 nodes offline: automatic rebuilds paused"],
    "a single node that is offline: paused": [[false], true, "1 of 1 nodes offline: automatic rebuilds paused"],
    "no nodes: nothing to pause": [[], false, ""],
  };
  for (const [name, [online, paused, message]] of Object.entries(cases)) {
    it(name, () => expect(rebuildBrake(online.map((o) => ({ online: o })))).toMatchObject({ paused, message }));
  }
});

describe("chooseReplicasToRemove", () => {
  const cases: Record<
    string,
    { p: string[]; count: number; states?: Record<string, ReplicaStateName>; attached?: string[]; migrating?: boolean; want: string[] }
  > = {
    "out-of-sync first": { p: ["r1@n1", "r2@n2!", "r3@n3"], count: 1, want: ["r2"] },
    "out-of-sync and unreachable before out-of-sync and healthy": { p: ["r1@n1", "r2@n2!", "r3@n3!"], count: 1, states: { r2: "unreachable" }, want: ["r2"] },
    "then unreachable or failed ones": { p: ["r1@n1", "r2@n2", "r3@n3"], count: 1, states: { r1: "failed" }, want: ["r1"] },
    "then not on the node the volume is attached to": { p: ["r1@n1", "r2@n2", "r3@n3"], count: 2, attached: ["n3"], want: ["r2", "r1"] },
    "newest first among equals": { p: ["r1@n1", "r2@n2", "r3@n3"], count: 1, want: ["r3"] },
    "the attached node's replica last": { p: ["r1@n1", "r2@n2"], count: 1, attached: ["n2"], want: ["r1"] },
    "never the last in-sync replica": { p: ["r1@n1", "r2@n2!", "r3@n3!"], count: 3, want: ["r3", "r2"] },
    "an unreachable in-sync replica goes before a healthy one, but never both": { p: ["r1@n1", "r2@n2"], count: 2, states: { r1: "unreachable" }, want: ["r1"] },
    "during a live migration only out-of-sync replicas go": { p: ["r1@n1", "r2@n2!", "r3@n3"], count: 2, migrating: true, want: ["r2"] },
    "nothing asked, nothing chosen": { p: ["r1@n1", "r2@n2"], count: 0, want: [] },
  };
  for (const [name, c] of Object.entries(cases)) {
    it(name, () => {
      const p = placement(...c.p);
      const got = chooseReplicasToRemove(p, c.count, {
        placement: p,
        observed: observed(p, c.states),
        attachedNodes: new Set(c.attached ?? []),
        migrating: c.migrating ?? false,
      });
      expect(got.map((r) => r.id)).toEqual(c.want);
    });
  }
});

describe("planReplicas", () => {
  const GRACE = 10 * MIN;
  const input = (
    s: VolumeSpec,
    o: { states?: Record<string, ReplicaStateName | [ReplicaStateName, number]>; nodes?: Record<string, Partial<NodeFacts>>; paused?: boolean } = {},
  ): PlanInput => ({
    spec: s,
    observed: observed(s.placement, o.states),
    nodes: new Map(["n1", "n2", "n3", "n4"].map((n) => [n, { online: true, draining: false, ...o.nodes?.[n] }])),
    now: NOW,
    graceMs: GRACE,
    brake: o.paused ? { paused: true, offline: 2, total: 3, message: "2 of 3 nodes offline: automatic rebuilds paused" } : { paused: false, offline: 0, total: 3, message: "" },
  });
  const summary = (i: PlanInput) => {
    const p = planReplicas(i);
    return { add: p.add.map((a) => a.replaces?.id ?? "new"), remove: p.remove.map((r) => r.id), notes: p.notes, recheckInMs: p.recheckInMs };
  };

  const cases: Record<string, [PlanInput, { add?: string[]; remove?: string[]; notes?: RegExp[]; recheckInMs?: number }]> = {
    "converged: nothing to do": [input(spec(2, placement("r1@n1", "r2@n2"))), {}],
    "scale up: new replicas": [input(spec(3, placement("r1@n1", "r2@n2"))), { add: ["new"] }],
    "scale down: the out-of-sync replica goes": [input(spec(1, placement("r1@n1", "r2@n2!"))), { remove: ["r2"] }],
    "unreachable within the grace period: wait, and look again when it runs out": [
      input(spec(2, placement("r1@n1", "r2@n2")), { states: { r2: ["unreachable", NOW - 4 * MIN] } }),
      { notes: [/r2 on n2 is replaced at .* unless it is back by then/], recheckInMs: 6 * MIN },
    ],
    "unreachable past the grace period: replaced": [
      input(spec(2, placement("r1@n1", "r2@n2")), { states: { r2: ["unreachable", NOW - 11 * MIN] } }),
      { add: ["r2"] },
    ],
    "failed past the grace period: replaced too": [
      input(spec(2, placement("r1@n1", "r2@n2")), { states: { r2: ["failed", NOW - 11 * MIN] } }),
      { add: ["r2"] },
    ],
    "past the grace period while rebuilds are paused: nothing, and the reason": [
      input(spec(2, placement("r1@n1", "r2@n2")), { states: { r2: ["unreachable", NOW - 11 * MIN] }, paused: true }),
      { notes: [/^2 of 3 nodes offline: automatic rebuilds paused$/] },
    ],
    "the only in-sync replica is never replaced": [
      input(spec(2, placement("r1@n1", "r2@n2!")), { states: { r1: ["unreachable", NOW - 11 * MIN] } }),
      { notes: [/r1 on n1 is not replaced: it holds the only in-sync copy/] },
    ],
    "an out-of-sync replica past the grace period is replaced": [
      input(spec(2, placement("r1@n1", "r2@n2!")), { states: { r2: ["unreachable", NOW - 11 * MIN] } }),
      { add: ["r2"] },
    ],
    "drain: a replacement first, the replica stays": [
      input(spec(2, placement("r1@n1", "r2@n2")), { nodes: { n2: { draining: true } } }),
      { add: ["new"], notes: [/r2 on draining node n2 leaves once 2 in-sync replicas are healthy elsewhere \(1 now\)/] },
    ],
    "drain: replacement still copying, nothing more": [
      input(spec(2, placement("r1@n1", "r2@n2", "r3@n3!")), { nodes: { n2: { draining: true } } }),
      { notes: [/leaves once 2 in-sync replicas are healthy elsewhere/] },
    ],
    "drain: replacement in sync, the replica on the draining node goes": [
      input(spec(2, placement("r1@n1", "r2@n2", "r3@n3")), { nodes: { n2: { draining: true } } }),
      { remove: ["r2"] },
    ],
    "drain: a replacement in sync but unreachable does not count": [
      input(spec(2, placement("r1@n1", "r2@n2", "r3@n3")), { nodes: { n2: { draining: true } }, states: { r3: ["unreachable", NOW - MIN] } }),
      { notes: [/r3 on n3 is replaced at/, /r2 on draining node n2 leaves once 2 in-sync replicas are healthy elsewhere \(1 now\)/], recheckInMs: 9 * MIN },
    ],
    "drain of a 1-replica volume: copy first, then the only replica leaves": [
      input(spec(1, placement("r1@n1", "r2@n2")), { nodes: { n1: { draining: true } } }),
      { remove: ["r1"] },
    ],
    "undrained (uncordon) with the replacement still copying: the replacement goes": [
      input(spec(2, placement("r1@n1", "r2@n2", "r3@n3!"))),
      { remove: ["r3"] },
    ],
    "live migration: an extra in-sync replica waits": [
      input(spec(1, placement("r1@n1", "r2@n2"), { attachments: [{ node: "n1", sinceMs: 0 }, { node: "n2", sinceMs: 0, migration: "vm1" }] })),
      { notes: [/live migration of vm1 in progress/] },
    ],
  };
  for (const [name, [i, want]] of Object.entries(cases)) {
    it(name, () => {
      const got = summary(i);
      expect(got.add).toEqual(want.add ?? []);
      expect(got.remove).toEqual(want.remove ?? []);
      expect(got.notes).toHaveLength((want.notes ?? []).length);
      (want.notes ?? []).forEach((re, k) => expect(got.notes[k]).toMatch(re));
      expect(got.recheckInMs).toBe(want.recheckInMs);
    });
  }

  it("an operator's count change leaves unreachable replicas to the reconciler", () => {
    const i = input(spec(3, placement("r1@n1", "r2@n2")), { states: { r2: ["unreachable", NOW - 11 * MIN] } });
    expect(planReplicas({ ...i, replaceUnreachable: false }).add).toEqual([{ reason: "3 replicas wanted" }]);
  });
});
