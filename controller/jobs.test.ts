import { describe, expect, it } from "vitest";
import { JobState } from "../gen/stowage/v1/types.js";
import { planDrain } from "./drain.js";
import { STALLED_AFTER_MS, volumeJobs } from "./jobs.js";
import type { JobRecord, ReplicaStatusRecord, VolumeSpec, VolumeStatus } from "./model.js";
import { NEW_REPLICA_REASON } from "./placement-edits.js";
import type { ClusterSnapshot, SchedNode } from "./scheduler.js";

const NOW = 10_000_000;
const GiB = 2 ** 30;

function spec(extra: Partial<VolumeSpec> = {}): VolumeSpec {
  return {
    name: "v",
    uid: "u",
    sizeBytes: GiB,
    replicas: 2,
    format: "qcow2",
    preallocation: "off",
    pool: "",
    createdAtMs: 0,
    deleting: false,
    generation: 3,
    placement: [
      { id: "r1", node: "n1", pool: "p" },
      { id: "r2", node: "n2", pool: "p", outOfSync: { sinceMs: 5, reason: NEW_REPLICA_REASON, generation: 3 } },
    ],
    ...extra,
  };
}

const replica = (id: string, node: string, state: ReplicaStatusRecord["state"] = "healthy"): ReplicaStatusRecord => ({
  id, node, pool: "p", path: "", state, virtualSizeBytes: GiB, allocatedBytes: 0, message: "", nodeEpoch: 1,
});
const status = (r2: ReplicaStatusRecord["state"] = "healthy", r1: ReplicaStatusRecord["state"] = "healthy"): VolumeStatus => ({
  phase: "degraded", message: "", replicas: [replica("r1", "n1", r1), replica("r2", "n2", r2)], updatedAtMs: 0,
});
const record: JobRecord = {
  replica: "r2", volume: "v", kind: "full", node: "n2", runner: "n2", totalBytes: 100 * 2 ** 20, copiedBytes: 40 * 2 ** 20,
  bytesPerSec: 10 * 2 ** 20, startedAtMs: NOW - 4_000, updatedAtMs: NOW - 1_000, message: "copying from r1 on n1",
};

describe("volumeJobs", () => {
  const online = (down: string[] = []) => (n: string) => !down.includes(n);
  const cases: Record<string, [Parameters<typeof volumeJobs>, Partial<ReturnType<typeof volumeJobs>[number]> | undefined]> = {
    "a reported copy runs, with its ETA": [
      [spec(), status(), new Map([["r2", record]]), online(), NOW],
      { state: JobState.JOB_STATE_RUNNING, copiedBytes: 40 * 2 ** 20, etaSeconds: 6, runner: "n2" },
    ],
    "a copy that stopped reporting is stalled": [
      [spec(), status(), new Map([["r2", { ...record, updatedAtMs: NOW - STALLED_AFTER_MS - 1 }]]), online(), NOW],
      { state: JobState.JOB_STATE_STALLED, etaSeconds: 0 },
    ],
    "target node offline: waiting": [[spec(), status("unreachable"), new Map(), online(["n2"]), NOW], { state: JobState.JOB_STATE_WAITING, message: "node n2 offline" }],
    "no in-sync replica to copy from: waiting": [
      [spec(), status("healthy", "unreachable"), new Map(), online(["n1"]), NOW],
      { state: JobState.JOB_STATE_WAITING, message: "no in-sync replica is reachable to copy from" },
    ],
    "detached: queued for the controller, a full copy": [[spec(), status(), new Map(), online(), NOW], { state: JobState.JOB_STATE_QUEUED, kind: "full", message: "the controller copies it next" }],
    "attached, a replica that missed writes: the frontend copies what it missed": [
      [
        spec({ attachments: [{ node: "n1", sinceMs: 0 }], placement: [spec().placement[0]!, { ...spec().placement[1]!, outOfSync: { sinceMs: 5, reason: "EIO", generation: 3 } }] }),
        status(),
        new Map(),
        online(),
        NOW,
      ],
      { state: JobState.JOB_STATE_QUEUED, kind: "incremental", message: "the frontend on n1 copies it" },
    ],
    "attached, a new replica: its agent copies once the frontend tracks writes": [
      [spec({ attachments: [{ node: "n1", sinceMs: 0 }] }), status(), new Map(), online(), NOW],
      { state: JobState.JOB_STATE_QUEUED, kind: "full", message: "waiting for the frontend on n1 to track writes; then its agent copies it" },
    ],
    "attached, a new replica the frontend tracks: its agent copies it next": [
      [
        spec({
          attachments: [{ node: "n1", sinceMs: 0 }],
          placement: [spec().placement[0]!, { ...spec().placement[1]!, outOfSync: { ...spec().placement[1]!.outOfSync!, agentCopy: { token: "0123456789abcdef", node: "n1", sinceMs: 6 } } }],
        }),
        status(),
        new Map(),
        online(),
        NOW,
      ],
      { state: JobState.JOB_STATE_QUEUED, kind: "full", message: "its agent copies it next; the frontend on n1 tracks writes" },
    ],
    "a deleting volume has no jobs": [[spec({ deleting: true }), status(), new Map([["r2", record]]), online(), NOW], undefined],
    "in-sync replicas have no jobs, even with a stale record": [
      [spec({ placement: [{ id: "r1", node: "n1", pool: "p" }, { id: "r2", node: "n2", pool: "p" }] }), status(), new Map([["r2", record]]), online(), NOW],
      undefined,
    ],
  };
  for (const [name, [args, want]] of Object.entries(cases)) {
    it(name, () => {
      const jobs = volumeJobs(...args);
      if (want === undefined) expect(jobs).toEqual([]);
      else expect(jobs).toEqual([expect.objectContaining(want)]);
    });
  }
});

describe("planDrain", () => {
  const node = (name: string, extra: Partial<SchedNode> = {}): SchedNode => ({
    name, online: true, cordoned: false, labels: { zone: "", rack: "" }, replicaCount: 0,
    pools: [{ name: "p", capacityBytes: 10 * GiB, availableBytes: 10 * GiB, provisionedBytes: 0, overcommitRatio: 1 }],
    ...extra,
  });
  const vol = (name: string, nodes: string[], size = GiB, replicas = nodes.length): VolumeSpec =>
    spec({ name, sizeBytes: size, replicas, placement: nodes.map((n, i) => ({ id: `${name}-r${i}`, node: n, pool: "p" })) });
  const snap = (...nodes: SchedNode[]): ClusterSnapshot => ({ nodes });

  it("each replica gets a node that holds none of its volume", () => {
    const plan = planDrain("n1", [vol("a", ["n1", "n2"]), vol("b", ["n2", "n3"])], snap(node("n1"), node("n2"), node("n3")), new Set());
    expect(plan.refusals).toEqual([]);
    expect(plan.moves).toEqual([{ volume: "a", replicaId: "a-r0", fromNode: "n1", toNode: "n3", toPool: "p" }]);
  });

  it("refuses when a replica has nowhere to go", () => {
    const plan = planDrain("n1", [vol("a", ["n1", "n2", "n3"])], snap(node("n1"), node("n2"), node("n3")), new Set());
    expect(plan.refusals).toEqual([expect.objectContaining({ volume: "a", reason: "need 1 host for 1 replica but only 0 are eligible" })]);
  });

  it("counts each placement against the next volume's", () => {
    const plan = planDrain(
      "n1",
      [vol("a", ["n1"], 6 * GiB), vol("b", ["n1"], 6 * GiB)],
      snap(node("n1"), node("n2"), node("n3", { cordoned: true })),
      new Set(),
    );
    expect(plan.moves.map((m) => m.toNode)).toEqual(["n2"]);
    expect(plan.refusals.map((r) => r.volume)).toEqual(["b"]);
  });

  it("a volume with enough replicas elsewhere only loses the one on the node", () => {
    const plan = planDrain("n1", [vol("a", ["n1", "n2", "n3"], GiB, 2)], snap(node("n1"), node("n2"), node("n3")), new Set());
    expect(plan.moves).toEqual([{ volume: "a", replicaId: "a-r0", fromNode: "n1", toNode: "", toPool: "" }]);
  });
});
