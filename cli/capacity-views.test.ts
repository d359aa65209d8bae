import { describe, expect, it } from "vitest";
import type { Pool } from "../gen/stowage/v1/types.js";
import { clusterStatusView, eventsTable, poolDetail, poolsTable } from "./capacity-views.js";

const MiB = 2 ** 20;
const pool: Pool = {
  node: "n1", name: "default", type: "dir", path: "/p", capacityBytes: 100 * MiB, availableBytes: 10 * MiB, allocatedBytes: 60 * MiB,
  provisionedBytes: 150 * MiB, overcommitRatio: 3, replicaCount: 2, templateBytes: 0,
  capacity: {
    usedBytes: 90 * MiB, provisionedLimitBytes: 300 * MiB, overcommitSource: "operator", configuredOvercommitRatio: 1,
    usedPercent: 90, provisionedPercent: 50, warningPercent: 80, criticalPercent: 90, level: "critical",
  },
};

describe("capacity views", () => {
  it("pool list: physical use and provisioned share side by side, and the level", () => {
    expect(poolsTable([pool]).split("\n")[1]).toMatch(/^n1\s+default\s+100MiB\s+90MiB 90%\s+10MiB\s+60MiB\s+150MiB 50%\s+3x\s+2\s+critical$/);
  });

  it("pool get: where the ratio comes from, the limit and the thresholds", () => {
    const text = poolDetail(pool);
    expect(text).toContain("Provisioned:  150MiB (50% of the limit 300MiB; logical)\n");
    expect(text).toContain("Overcommit:   3x (set by the operator; the agent's config says 1x)\n");
    expect(text).toContain("Thresholds:   warning 80%, critical 90% (of used and of provisioned)\n");
    expect(text).toContain("Level:        critical\n");
    expect(text).not.toContain("Templates:");
    expect(poolDetail({ ...pool, templateBytes: 5 * MiB })).toContain("Templates:    5MiB (template copies for linked clones, on disk)\n");
  });

  it("cluster status: health, problems, totals and active events", () => {
    const now = 1_000_000;
    const text = clusterStatusView(
      {
        capacity: { capacityBytes: 100 * MiB, availableBytes: 10 * MiB, usedBytes: 90 * MiB, allocatedBytes: 60 * MiB, provisionedBytes: 150 * MiB, provisionedLimitBytes: 300 * MiB, poolCount: 1, replicaCount: 2, templateBytes: 3 * MiB },
        nodeCount: 1, nodesOnline: 1, nodesCordoned: 0, volumeCount: 2, volumesByPhase: { healthy: 2 }, health: "critical",
        problems: ["critical: pool n1/default: filesystem use above threshold"],
        activeEvents: [{ id: "1", atMs: now - 5_000, severity: "critical", object: "pool n1/default", reason: "pool-used", message: "pool n1/default: 90% ...", resolvedAtMs: 0, resolution: "" }],
        leader: "127.0.0.1:7400",
      },
      now,
    );
    expect(text).toContain("Health:        critical\n");
    expect(text).toContain("Volumes:       2 (2 healthy)\n");
    expect(text).toContain("Used:          90MiB (90%; physical)\n");
    expect(text).toContain("Templates:     3MiB (template copies on disk)\n");
    expect(text).toContain("Thin savings:  90MiB promised but not allocated\n");
    expect(text).toContain("Problems:\n  critical: pool n1/default: filesystem use above threshold\n");
    expect(text).toMatch(/Active events:\nAGE\s+SEVERITY\s+STATE\s+OBJECT\s+MESSAGE\n5s\s+critical\s+active\s+pool n1\/default\s+pool n1\/default: 90% \.\.\.\n/);
  });

  it("event list: resolved events say when and why", () => {
    const text = eventsTable([{ id: "1", atMs: 0, severity: "warning", object: "pool n1/default", reason: "pool-used", message: "m", resolvedAtMs: 50_000, resolution: "back below 80% (60%)" }], 60_000);
    expect(text).toMatch(/never\s+warning\s+resolved 10s ago: back below 80% \(60%\)\s+pool n1\/default\s+m\n$/);
    expect(eventsTable([], 0)).toBe("no events\n");
  });
});
