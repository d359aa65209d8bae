import { describe, expect, it } from "vitest";
import type { OperationRecord, ReplicaStatusRecord, VolumeSpec } from "./model.js";
import { deriveVolumeStatus, statusChanged, withUnreachableSince } from "./volume-status.js";

const GiB = 2 ** 30;
const spec: VolumeSpec = {
  name: "v",
  uid: "u",
  sizeBytes: GiB,
  replicas: 2,
  format: "qcow2",
  preallocation: "off",
  pool: "",
  createdAtMs: 0,
  deleting: false,
  placement: [],
};
const replica = (id: string, state: ReplicaStatusRecord["state"], size = GiB): ReplicaStatusRecord => ({
  id,
  node: "n-" + id,
  pool: "default",
  path: "/p/" + id,
  state,
  virtualSizeBytes: size,
  allocatedBytes: 0,
  message: state === "failed" ? "boom" : "",
  nodeEpoch: 1,
});
const op = (kind: OperationRecord["kind"]): OperationRecord => ({ id: "o", kind, volume: "v", startedAtMs: 0, startedBy: "c" });

const cases: Record<string, { replicas: ReplicaStatusRecord[]; op?: OperationRecord; deleting?: boolean; phase: string; done: boolean }> = {
  "healthy when every replica is healthy at full size": {
    replicas: [replica("a", "healthy"), replica("b", "healthy")],
    phase: "healthy",
    done: false,
  },
  "creating while the create operation waits for a replica": {
    replicas: [replica("a", "healthy"), replica("b", "creating")],
    op: op("create-volume"),
    phase: "creating",
    done: false,
  },
  "create operation completes once all replicas are healthy": {
    replicas: [replica("a", "healthy"), replica("b", "healthy")],
    op: op("create-volume"),
    phase: "healthy",
    done: true,
  },
  "degraded when one replica's node is unreachable": {
    replicas: [replica("a", "healthy"), replica("b", "unreachable")],
    phase: "degraded",
    done: false,
  },
  "failed when no replica is healthy": {
    replicas: [replica("a", "failed"), replica("b", "unreachable")],
    phase: "failed",
    done: false,
  },
  "resizing while a replica is still at the old size": {
    replicas: [replica("a", "healthy", 2 * GiB), replica("b", "healthy", GiB)],
    op: op("resize-volume"),
    phase: "resizing",
    done: false,
  },
  "deleting wins over everything": {
    replicas: [replica("a", "healthy"), replica("b", "healthy")],
    op: op("delete-volume"),
    deleting: true,
    phase: "deleting",
    done: false,
  },
};

describe("deriveVolumeStatus", () => {
  for (const [name, c] of Object.entries(cases)) {
    it(name, () => {
      const s = { ...spec, sizeBytes: c.op?.kind === "resize-volume" ? 2 * GiB : GiB, deleting: c.deleting ?? false };
      const d = deriveVolumeStatus(s, c.replicas, c.op);
      expect(d.status.phase).toBe(c.phase);
      expect(d.operationDone).toBe(c.done);
    });
  }

  it("names the replica and its problem in the message", () => {
    const d = deriveVolumeStatus(spec, [replica("a", "healthy"), replica("b", "failed")], undefined);
    expect(d.status.message).toContain("replica b on n-b: boom");
  });

  it("detects changes but ignores identical statuses", () => {
    const a = deriveVolumeStatus(spec, [replica("a", "healthy")], undefined).status;
    const b = deriveVolumeStatus(spec, [replica("a", "healthy")], undefined).status;
    expect(statusChanged(a, b)).toBe(false);
    expect(statusChanged(a, { ...b, phase: "failed" })).toBe(true);
    expect(statusChanged(undefined, b)).toBe(true);
  });
});

describe("withUnreachableSince", () => {
  const since = (r: ReplicaStatusRecord, t: number): ReplicaStatusRecord => ({ ...r, unreachableSinceMs: t });
  const cases: Record<string, [ReplicaStatusRecord, ReplicaStatusRecord | undefined, number | undefined]> = {
    "first seen unreachable: now": [replica("a", "unreachable"), replica("a", "healthy"), 500],
    "still unreachable: the first moment is kept (also across leaders: it comes from etcd)": [replica("a", "unreachable"), since(replica("a", "unreachable"), 100), 100],
    "unreachable, then failed: the clock keeps running": [replica("a", "failed"), since(replica("a", "unreachable"), 100), 100],
    "healthy again: cleared": [since(replica("a", "healthy"), 100), since(replica("a", "unreachable"), 100), undefined],
    "creating: not counted": [replica("a", "creating"), undefined, undefined],
  };
  for (const [name, [r, prev, want]] of Object.entries(cases)) {
    it(name, () => expect(withUnreachableSince(r, prev, 500).unreachableSinceMs).toBe(want));
  }
});
