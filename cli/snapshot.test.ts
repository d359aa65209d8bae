import { describe, expect, it } from "vitest";
import { SnapshotState } from "../gen/stowage/v1/types.js";
import { parseSnapshotRef, snapshotDetail, snapshotsTable } from "./commands/snapshot.js";
import { UsageError } from "./flags.js";

describe("snapshot references", () => {
  it("splits VOLUME@SNAPSHOT", () => {
    expect(parseSnapshotRef("vm1@before-upgrade")).toEqual({ volume: "vm1", name: "before-upgrade" });
  });

  it("refuses anything else before calling the controller", () => {
    for (const bad of ["vm1", "@s", "vm1@", "a@b@c", ""]) {
      expect(() => parseSnapshotRef(bad), bad).toThrow(UsageError);
    }
  });
});

describe("snapshot views", () => {
  const snap = {
    volume: "vm1",
    name: "s1",
    state: SnapshotState.SNAPSHOT_STATE_READY,
    createdAtMs: Date.UTC(2026, 10, 27, 12, 0, 0),
    sizeBytes: 10 * 2 ** 30,
    replicaIds: ["r-a", "r-b"],
    nodes: ["n1", "n2"],
    message: "",
    attached: true,
    heldMs: 7,
  };

  it("lists and details what an operator needs", () => {
    expect(snapshotsTable([snap])).toMatch(/vm1@s1\s+ready\s+10GiB\s+2026-11-27T12:00:00Z\s+n1,n2\s+7 ms/);
    expect(snapshotsTable([])).toBe("no snapshots found\n");
    const d = snapshotDetail(snap);
    expect(d).toMatch(/held by:\s+r-a on n1, r-b on n2/);
    expect(d).toMatch(/writes held:\s+7 ms \(taken while attached\)/);
  });
});
