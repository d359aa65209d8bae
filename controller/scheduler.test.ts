import { describe, expect, it } from "vitest";
import { place, type ClusterSnapshot, type PlacementRequest, type SchedNode, type SchedPool } from "./scheduler.js";

const GiB = 2 ** 30;

/** A pool of `capacity` GiB; everything else defaults to an empty, thin-friendly pool. */
function pool(capacityGiB: number, opts: Partial<SchedPool> = {}): SchedPool {
  return {
    name: "default",
    capacityBytes: capacityGiB * GiB,
    availableBytes: capacityGiB * GiB,
    provisionedBytes: 0,
    overcommitRatio: 1,
    ...opts,
  };
}

/** An online, uncordoned, unlabeled node with one 100 GiB pool unless told otherwise. */
function node(name: string, opts: Partial<SchedNode> = {}): SchedNode {
  return {
    name,
    online: true,
    cordoned: false,
    labels: { zone: "", rack: "" },
    pools: [pool(100)],
    replicaCount: 0,
    ...opts,
  };
}

/** A node whose default 100 GiB pool already has `provisionedGiB` promised. */
function usedNode(name: string, provisionedGiB: number, opts: Partial<SchedNode> = {}): SchedNode {
  return node(name, { pools: [pool(100, { provisionedBytes: provisionedGiB * GiB })], ...opts });
}

function zoned(zone: string, rack = ""): { labels: { zone: string; rack: string } } {
  return { labels: { zone, rack } };
}

const thin1G: PlacementRequest = { sizeBytes: 1 * GiB, replicas: 1, thin: true };
const thin1Gx2: PlacementRequest = { ...thin1G, replicas: 2 };

interface Case {
  req: PlacementRequest;
  nodes: SchedNode[];
  /** Chosen replicas as "node/pool", in pick order. */
  placement?: string[];
  /** When set, the placement must fail with a reason containing this text. */
  failure?: string;
  /** Every node that must appear in rejections (no others may), each with text its reasons must contain. */
  rejected?: Record<string, string[]>;
}

const cases: Record<string, Case> = {
  "places 2 replicas on the 2 emptiest nodes": {
    req: thin1Gx2,
    nodes: [usedNode("n1", 80), usedNode("n2", 10), usedNode("n3", 30), usedNode("n4", 50)],
    placement: ["n2/default", "n3/default"],
    rejected: { n1: ["not chosen: lower score"], n4: ["not chosen: lower score"] },
  },
  "places replicas on distinct hosts even when one host is far emptier": {
    req: { ...thin1G, replicas: 3 },
    nodes: [
      node("big", { pools: [pool(1000), pool(1000, { name: "second" })] }),
      usedNode("n2", 90),
      usedNode("n3", 90),
    ],
    placement: ["big/default", "n2/default", "n3/default"],
    rejected: {},
  },
  "picks the emptiest pool of a node": {
    req: thin1G,
    nodes: [node("n1", { pools: [pool(100, { provisionedBytes: 90 * GiB }), pool(100, { name: "spare" })] })],
    placement: ["n1/spare"],
    rejected: {},
  },
  "prefers the node with fewer replicas when space is equal": {
    req: thin1G,
    nodes: [node("a-busy", { replicaCount: 10 }), node("b-idle", { replicaCount: 0 })],
    placement: ["b-idle/default"],
    rejected: { "a-busy": ["not chosen: lower score"] },
  },
  "skips an offline node with a reason": {
    req: thin1G,
    nodes: [node("n1", { online: false }), usedNode("n2", 50)],
    placement: ["n2/default"],
    rejected: { n1: ["offline"] },
  },
  "skips a cordoned node with a reason": {
    req: thin1G,
    nodes: [node("n1", { cordoned: true }), usedNode("n2", 50)],
    placement: ["n2/default"],
    rejected: { n1: ["cordoned"] },
  },
  "lists every reason that applies to a node": {
    req: { sizeBytes: 200 * GiB, replicas: 1, thin: true },
    nodes: [node("n1", { online: false, cordoned: true })],
    failure: "need 1 host for 1 replica but only 0 are eligible",
    rejected: { n1: ["offline", "cordoned", "pool default: not enough space"] },
  },
  "thin volume fits thanks to overcommit 2.0": {
    req: { sizeBytes: 10 * GiB, replicas: 1, thin: true },
    nodes: [node("n1", { pools: [pool(8, { overcommitRatio: 2 })] })],
    placement: ["n1/default"],
    rejected: {},
  },
  "thin volume fails with overcommit 1.0 with a capacity reason": {
    req: { sizeBytes: 10 * GiB, replicas: 1, thin: true },
    nodes: [node("n1", { pools: [pool(8, { overcommitRatio: 1 })] })],
    failure: "need 1 host for 1 replica but only 0 are eligible",
    rejected: { n1: ["pool default: not enough space: needs 10GiB, 8GiB free of 8GiB x overcommit 1 (provisioned 0B)"] },
  },
  "capacity reason counts what is already provisioned against the overcommitted size": {
    req: { sizeBytes: 10 * GiB, replicas: 1, thin: true },
    nodes: [node("n1", { pools: [pool(4, { overcommitRatio: 1.5, provisionedBytes: 3 * GiB })] })],
    failure: "only 0 are eligible",
    rejected: { n1: ["pool default: not enough space: needs 10GiB, 3GiB free of 4GiB x overcommit 1.5 (provisioned 3GiB)"] },
  },
  "a pool with overcommit 0 uses the default ratio": {
    req: { sizeBytes: 10 * GiB, replicas: 1, thin: true },
    nodes: [node("n1", { pools: [pool(8, { overcommitRatio: 0 })] })],
    failure: "only 0 are eligible",
    rejected: { n1: ["x overcommit 1 "] },
  },
  "thick volume rejected when availableBytes is too small even with overcommit": {
    req: { sizeBytes: 10 * GiB, replicas: 1, thin: false },
    nodes: [node("n1", { pools: [pool(100, { overcommitRatio: 2, availableBytes: 5 * GiB })] })],
    failure: "only 0 are eligible",
    rejected: { n1: ["pool default: not enough disk for a preallocated volume: needs 10GiB, 5GiB available"] },
  },
  "thin volume of the same size fits where the thick one did not": {
    req: { sizeBytes: 10 * GiB, replicas: 1, thin: true },
    nodes: [node("n1", { pools: [pool(100, { overcommitRatio: 2, availableBytes: 5 * GiB })] })],
    placement: ["n1/default"],
    rejected: {},
  },
  "only uses pools with the requested name": {
    req: { ...thin1G, pool: "fast" },
    nodes: [
      node("n1"),
      node("n2", { pools: [pool(100), pool(10, { name: "fast", provisionedBytes: 9 * GiB })] }),
    ],
    placement: ["n2/fast"],
    rejected: { n1: ['no pool named "fast"'] },
  },
  "an empty pool name means any pool": {
    req: { ...thin1G, pool: "" },
    nodes: [node("n1", { pools: [pool(100, { name: "slow" })] })],
    placement: ["n1/slow"],
    rejected: {},
  },
  "a node with one fitting pool is not rejected for its full pools": {
    req: { sizeBytes: 50 * GiB, replicas: 1, thin: true },
    nodes: [node("n1", { pools: [pool(10, { name: "small" }), pool(100)] })],
    placement: ["n1/default"],
    rejected: {},
  },
  "fails when there are not enough hosts, with rejections for every ineligible node": {
    req: { ...thin1G, replicas: 3 },
    nodes: [node("n1"), node("n2", { online: false }), node("n3", { cordoned: true }), node("n4", { pools: [] })],
    failure: "need 3 hosts for 3 replicas but only 1 is eligible",
    rejected: { n2: ["offline"], n3: ["cordoned"], n4: ["no pools"] },
  },
  "spreads across zones: with zones a,a,b picks one from a and one from b for 2 replicas": {
    req: thin1Gx2,
    nodes: [
      usedNode("a1", 20, zoned("a")),
      usedNode("a2", 10, zoned("a")),
      usedNode("b1", 70, zoned("b")),
    ],
    placement: ["a2/default", "b1/default"],
    rejected: { a1: ['not chosen: zone "a" already holds a replica'] },
  },
  "spreads across racks within the same zone": {
    req: thin1Gx2,
    nodes: [
      usedNode("n1", 10, zoned("a", "r1")),
      usedNode("n2", 10, zoned("a", "r1")),
      usedNode("n3", 80, zoned("a", "r2")),
    ],
    placement: ["n1/default", "n3/default"],
    rejected: { n2: ['not chosen: rack "r1" in zone "a" already holds a replica'] },
  },
  "treats racks of the same name in different zones as different racks": {
    req: { ...thin1G, replicas: 3 },
    nodes: [
      usedNode("a-r1", 10, zoned("a", "r1")),
      usedNode("a-r1-bis", 0, zoned("a", "r1")),
      usedNode("a-r2", 60, zoned("a", "r2")),
      usedNode("b-r1", 50, zoned("b", "r1")),
    ],
    // a-r1-bis first (emptiest), then zone b (new zone), then rack a/r2 (new rack) over the emptier a-r1.
    placement: ["a-r1-bis/default", "b-r1/default", "a-r2/default"],
    rejected: { "a-r1": ['not chosen: rack "r1" in zone "a" already holds a replica'] },
  },
  "empty labels are an unknown domain that does not conflict": {
    req: thin1Gx2,
    nodes: [usedNode("n1", 10), usedNode("n2", 10), usedNode("n3", 50, zoned("z"))],
    placement: ["n1/default", "n2/default"],
    rejected: { n3: ["not chosen: lower score"] },
  },
  "adding a replica never reuses an excluded node and avoids its zone": {
    req: { ...thin1G, excludeNodes: ["a1"] },
    nodes: [usedNode("a1", 0, zoned("a")), usedNode("a2", 10, zoned("a")), usedNode("b1", 60, zoned("b"))],
    placement: ["b1/default"],
    rejected: {
      a1: ["already holds a replica of this volume"],
      a2: ['not chosen: zone "a" already holds a replica'],
    },
  },
  "adding a replica avoids zones in usedDomains": {
    req: { ...thin1G, excludeNodes: ["gone"], usedDomains: [{ zone: "b", rack: "r1" }] },
    nodes: [usedNode("b2", 0, zoned("b", "r2")), usedNode("c1", 60, zoned("c", "r1"))],
    placement: ["c1/default"],
    rejected: { b2: ['not chosen: zone "b" already holds a replica'] },
  },
  "adding a replica avoids racks in usedDomains within the zone": {
    req: { ...thin1G, usedDomains: [{ zone: "a", rack: "r1" }] },
    nodes: [usedNode("a-r1", 0, zoned("a", "r1")), usedNode("a-r2", 60, zoned("a", "r2"))],
    placement: ["a-r2/default"],
    rejected: { "a-r1": ['not chosen: rack "r1" in zone "a" already holds a replica'] },
  },
  "breaks ties by node name": {
    req: thin1Gx2,
    nodes: [node("n3"), node("n1"), node("n2")],
    placement: ["n1/default", "n2/default"],
    rejected: { n3: ["not chosen: lower score"] },
  },
  "fails when the size is not positive": {
    req: { sizeBytes: 0, replicas: 1, thin: true },
    nodes: [node("n1")],
    failure: "volume size must be positive",
    rejected: {},
  },
  "fails when fewer than one replica is requested": {
    req: { ...thin1G, replicas: 0 },
    nodes: [node("n1")],
    failure: "replica count must be a whole number of at least 1",
    rejected: {},
  },
};

describe("place", () => {
  for (const [name, c] of Object.entries(cases)) {
    it(name, () => {
      const result = place(c.req, { nodes: c.nodes });

      if (c.failure !== undefined) {
        expect(result.ok).toBe(false);
        if (!result.ok) expect(result.reason).toContain(c.failure);
      } else {
        expect(result.ok ? "" : result.reason).toBe("");
        if (result.ok) expect(result.placement.map((p) => `${p.node}/${p.pool}`)).toEqual(c.placement);
      }

      if (c.rejected) {
        const byNode = new Map(result.rejections.map((r) => [r.node, r.reasons]));
        expect([...byNode.keys()].sort()).toEqual(Object.keys(c.rejected).sort());
        for (const [nodeName, wanted] of Object.entries(c.rejected)) {
          const reasons = byNode.get(nodeName) ?? [];
          for (const text of wanted) {
            expect(reasons.some((r) => r.includes(text)), `${nodeName}: ${JSON.stringify(reasons)} has "${text}"`).toBe(true);
          }
        }
      }
    });
  }

  it("does not mutate its input and gives the same answer twice", () => {
    const req: PlacementRequest = { ...thin1Gx2, excludeNodes: ["n4"], usedDomains: [{ zone: "c", rack: "r1" }] };
    const snapshot: ClusterSnapshot = {
      nodes: [
        usedNode("n3", 30, zoned("b", "r1")),
        usedNode("n1", 10, zoned("a", "r1")),
        usedNode("n2", 20, zoned("a", "r2")),
        usedNode("n4", 0, zoned("c", "r1")),
        node("n5", { online: false }),
      ],
    };
    const before = structuredClone({ req, snapshot });

    const first = place(req, snapshot);
    const second = place(req, snapshot);

    expect({ req, snapshot }).toEqual(before);
    expect(second).toEqual(first);
    expect(first.ok && first.placement.map((p) => p.node)).toEqual(["n1", "n3"]);
  });

  it("reports scores that rank the chosen replicas", () => {
    const result = place(thin1Gx2, { nodes: [usedNode("n1", 50), usedNode("n2", 10)] });
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    const [first, second] = result.placement;
    expect(first!.score).toBeGreaterThan(second!.score);
    expect(first!.score).toBeLessThanOrEqual(100);
    expect(second!.score).toBeGreaterThan(0);
  });
});
