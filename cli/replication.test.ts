import { describe, expect, it } from "vitest";
import { replicationsTable } from "./commands/replication.js";

describe("replication views", () => {
  it("shows the target, the interval, the last copy and the recovery point", () => {
    const t = replicationsTable([
      { volume: "vm1", node: "n3", pool: "default", everySeconds: 300, lastBackupId: "20261127-150000", lastSyncAtMs: Date.UTC(2026, 10, 27, 15, 0, 0), rpoSeconds: 42, lastReadBytes: 3 * 2 ** 20, lastShippedBytes: 512 * 1024, lastDurationMs: 900, message: "" },
      { volume: "vm2", node: "n3", pool: "default", everySeconds: 30, lastBackupId: "", lastSyncAtMs: 0, rpoSeconds: 0, lastReadBytes: 0, lastShippedBytes: 0, lastDurationMs: 0, message: "target node n3 is offline" },
    ]);
    expect(t).toMatch(/vm1\s+n3\/default\s+5m\s+2026-11-27T15:00:00Z\s+42s\s+3MiB\s+512KiB\s+0.9 s\s+-/);
    expect(t).toMatch(/vm2\s+n3\/default\s+30s\s+-\s+-\s+-\s+-\s+-\s+target node n3 is offline/);
    expect(replicationsTable([])).toBe("no replications\n");
  });
});
