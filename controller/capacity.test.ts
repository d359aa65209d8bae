import { describe, expect, it } from "vitest";
import {
  capacityTotals,
  effectivePool,
  eventId,
  eventsToPrune,
  mergeSettings,
  nextLevel,
  planEvents,
  poolCapacity,
  poolConditions,
  ratioTooLow,
  type Level,
} from "./capacity.js";
import { clusterStatus } from "./cluster-status.js";
import type { EventRecord, PoolRecord } from "./model.js";

const GiB = 2 ** 30;
const T = { warningPercent: 80, criticalPercent: 90 };
const record = (over: Partial<PoolRecord> = {}): PoolRecord => ({
  name: "default", type: "dir", path: "/p", capacityBytes: 100 * GiB, availableBytes: 60 * GiB, allocatedBytes: 30 * GiB, overcommitRatio: 2, ...over,
});

describe("pool settings", () => {
  it("the operator's ratio and thresholds win over the agent's config, and say so", () => {
    expect(effectivePool(record(), undefined)).toMatchObject({ overcommitRatio: 2, overcommitSource: "agent", configuredOvercommitRatio: 2, warningPercent: 80, criticalPercent: 90 });
    expect(effectivePool(record(), { overcommitRatio: 3, warningPercent: 70 })).toMatchObject({ overcommitRatio: 3, overcommitSource: "operator", configuredOvercommitRatio: 2, warningPercent: 70, criticalPercent: 90 });
    // An unset (0) ratio from an old agent means 1.
    expect(effectivePool(record({ overcommitRatio: 0 }), undefined).overcommitRatio).toBe(1);
  });

  const bad: Record<string, [Parameters<typeof mergeSettings>[1], RegExp]> = {
    "a negative ratio": [{ overcommitRatio: -1 }, /overcommit ratio must be a number greater than 0, got -1/],
    "a zero ratio": [{ overcommitRatio: 0 }, /greater than 0/],
    "a ratio that is not a number": [{ overcommitRatio: NaN }, /greater than 0/],
    "a ratio and a reset": [{ overcommitRatio: 2, resetOvercommit: true }, /not both/],
    "a threshold above 100": [{ warningPercent: 120 }, /warning threshold must be a percentage above 0 and at most 100/],
    "warning not below critical": [{ warningPercent: 95 }, /warning threshold \(95%\) must be below the critical one \(90%\)/],
    "critical below the current warning": [{ criticalPercent: 60 }, /\(80%\) must be below the critical one \(60%\)/],
  };
  for (const [name, [change, message]] of Object.entries(bad)) {
    it(`refuses ${name}`, () => {
      const r = mergeSettings(undefined, change);
      expect(r.ok).toBe(false);
      if (!r.ok) {
        expect(r.message).toMatch(message);
        expect(r.hint).not.toBe("");
      }
    });
  }

  it("merges changes and resets", () => {
    expect(mergeSettings({ overcommitRatio: 3 }, { warningPercent: 70, criticalPercent: 85 })).toEqual({ ok: true, settings: { overcommitRatio: 3, warningPercent: 70, criticalPercent: 85 } });
    expect(mergeSettings({ overcommitRatio: 3, warningPercent: 70 }, { resetOvercommit: true })).toEqual({ ok: true, settings: { warningPercent: 70 } });
    expect(mergeSettings({ overcommitRatio: 3, warningPercent: 70, criticalPercent: 85 }, { resetThresholds: true })).toEqual({ ok: true, settings: { overcommitRatio: 3 } });
  });

  it("a ratio below what is provisioned names the pool, the figures and the ratio that would do", () => {
    expect(ratioTooLow("n1/default", 100 * GiB, 2, 150 * GiB)).toBeUndefined();
    const low = ratioTooLow("n1/default", 100 * GiB, 1, 150 * GiB)!;
    expect(low.message).toBe("pool n1/default has 150GiB provisioned; overcommit 1 would allow only 100GiB (100GiB x 1): the volumes already there would break the ratio");
    expect(low.hint).toMatch(/at least 1\.5.*--force.*nothing was changed/);
  });
});

describe("capacity figures", () => {
  it("physical use, provisioned share of the limit, and the worse level", () => {
    const p = effectivePool(record(), undefined);
    expect(poolCapacity(p, 150 * GiB)).toEqual({
      usedBytes: 40 * GiB, provisionedLimitBytes: 200 * GiB, overcommitSource: "agent", configuredOvercommitRatio: 2,
      usedPercent: 40, provisionedPercent: 75, warningPercent: 80, criticalPercent: 90, level: "ok",
    });
    expect(poolCapacity(p, 170 * GiB).level).toBe("warning");
    expect(poolCapacity(effectivePool(record({ availableBytes: 5 * GiB }), undefined), 0).level).toBe("critical");
    expect(poolCapacity(effectivePool(record({ capacityBytes: 0, availableBytes: 0 }), undefined), 0)).toMatchObject({ usedPercent: 0, level: "ok" });
  });

  it("sums pools into node and cluster totals", () => {
    const pool = (cap: number, avail: number, alloc: number, prov: number, templates = 0) => ({
      node: "n", name: "p", type: "dir", path: "/", capacityBytes: cap, availableBytes: avail, allocatedBytes: alloc, provisionedBytes: prov, overcommitRatio: 2, replicaCount: 1, templateBytes: templates,
    });
    expect(capacityTotals([pool(100, 60, 30, 150, 5), pool(50, 50, 0, 0, 2)])).toEqual({
      capacityBytes: 150, availableBytes: 110, usedBytes: 40, allocatedBytes: 30, provisionedBytes: 150, provisionedLimitBytes: 300, poolCount: 2, replicaCount: 2, templateBytes: 7,
    });
  });
});

describe("threshold levels", () => {
  const cases: [Level, number, Level][] = [
    ["ok", 79.9, "ok"],
    ["ok", 80, "warning"],
    ["ok", 95, "critical"],
    ["warning", 79, "warning"], // within the 2-point margin: stays
    ["warning", 77.9, "ok"],
    ["critical", 88.5, "critical"],
    ["critical", 85, "warning"],
    ["critical", 78.5, "warning"],
    ["critical", 50, "ok"],
    ["warning", 91, "critical"],
  ];
  for (const [was, pct, want] of cases) {
    it(`${was} at ${pct}% -> ${want}`, () => expect(nextLevel(was, pct, T)).toBe(want));
  }
});

describe("capacity events", () => {
  const pool = (availableGiB: number) => effectivePool(record({ availableBytes: availableGiB * GiB }), undefined);
  const active = (e: Partial<EventRecord>): EventRecord => ({ id: "00000000000001-a", atMs: 1, severity: "warning", object: "pool n1/default", reason: "pool-used", message: "", ...e });

  it("raises a warning with a message that names the pool, the figures and what to do", () => {
    const plan = planEvents(poolConditions("n1", pool(15), 0), [], 1000);
    expect(plan.resolve).toEqual([]);
    expect(plan.raise).toEqual([{ atMs: 1000, severity: "warning", object: "pool n1/default", reason: "pool-used", message: expect.stringContaining("85% of its filesystem in use (85GiB of 100GiB, 15GiB free), above the warning threshold of 80%") }]);
    expect(plan.raise[0]!.message).toMatch(/ENOSPC.*stowctl node drain n1/);
  });

  it("escalates: the warning is resolved and a critical event raised", () => {
    const plan = planEvents(poolConditions("n1", pool(5), 0), [active({})], 2000);
    expect(plan.resolve).toEqual([{ event: active({}), resolution: "escalated to critical (95%)" }]);
    expect(plan.raise).toMatchObject([{ severity: "critical", reason: "pool-used" }]);
  });

  it("resolves once the figure is back below the threshold (with the margin), and does nothing in between", () => {
    expect(planEvents(poolConditions("n1", pool(21), 0), [active({})], 3000)).toEqual({ raise: [], resolve: [] });
    expect(planEvents(poolConditions("n1", pool(40), 0), [active({})], 3000)).toEqual({ raise: [], resolve: [{ event: active({}), resolution: "back below 80% (60%)" }] });
  });

  it("judges provisioned against capacity x ratio", () => {
    const plan = planEvents(poolConditions("n1", pool(90), 185 * GiB), [], 1);
    expect(plan.raise).toMatchObject([{ severity: "critical", reason: "pool-provisioned", message: expect.stringContaining("92.5% of its provisioning limit promised (185GiB of 200GiB = 100GiB x overcommit 2)") }]);
    expect(plan.raise[0]!.message).toContain("stowctl pool set n1/default --overcommit N");
  });

  it("resolves events of pools no longer reported, but keeps those of offline nodes", () => {
    const gone = active({ object: "pool n9/old" });
    const offline = active({ id: "00000000000002-b", object: "pool n2/default" });
    const plan = planEvents([], [gone, offline], 5, (o) => o.startsWith("pool n2/"));
    expect(plan.resolve).toEqual([{ event: gone, resolution: "no longer reported" }]);
  });

  it("keeps the last N events, pruning the oldest resolved ones first", () => {
    const ev = (n: number, resolved: boolean): EventRecord => ({ ...active({}), id: eventId(n, "x"), atMs: n, ...(resolved ? { resolvedAtMs: n + 1 } : {}) });
    const all = [ev(5, true), ev(1, false), ev(2, true), ev(3, true), ev(4, false)];
    expect(eventsToPrune(all, 3).map((e) => e.atMs)).toEqual([2, 3]);
    expect(eventsToPrune(all, 10)).toEqual([]);
    expect(eventId(1234, "ab")).toBe("00000000001234-ab");
  });
});

describe("cluster status", () => {
  it("health is the worst of events, offline nodes and volume phases, each named", () => {
    const s = clusterStatus({
      nodes: [{ name: "n1", online: true, cordoned: false, pools: [] }, { name: "n2", online: false, cordoned: true, pools: [] }],
      volumes: [{ name: "v1", phase: "healthy" }, { name: "v2", phase: "degraded" }],
      active: [active_({ severity: "critical" })],
      leader: "c1",
    });
    expect(s).toMatchObject({ health: "critical", nodeCount: 2, nodesOnline: 1, nodesCordoned: 1, volumeCount: 2, volumesByPhase: { healthy: 1, degraded: 1 } });
    expect(s.problems).toEqual(["1 of 2 nodes offline: n2", "1 volume degraded: v2", "critical: pool n1/default: filesystem use above threshold"]);
    expect(clusterStatus({ nodes: [{ name: "n1", online: true, cordoned: false, pools: [] }], volumes: [], active: [], leader: "" })).toMatchObject({ health: "ok", problems: [] });
  });
});

function active_(e: Partial<EventRecord>): EventRecord {
  return { id: "00000000000001-a", atMs: 1, severity: "warning", object: "pool n1/default", reason: "pool-used", message: "", ...e };
}
