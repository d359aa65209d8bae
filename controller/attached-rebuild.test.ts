import { describe, expect, it } from "vitest";
import { awaitsAgentCopy, copyStillCovered, planAgentCopy, type CopyBasis } from "./attached-rebuild.js";
import type { FrontendStatus, ReplicaPlacement, ReplicaStatusRecord, VolumeSpec } from "./model.js";
import { NEW_REPLICA_REASON } from "./placement-edits.js";

const GiB = 2 ** 30;
const TOKEN = "00112233aabbccdd";

function spec(extra: Partial<VolumeSpec> = {}, r2: Partial<NonNullable<ReplicaPlacement["outOfSync"]>> = {}): VolumeSpec {
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
    attachments: [{ node: "n1", sinceMs: 0 }],
    placement: [
      { id: "r1", node: "n1", pool: "p" },
      { id: "r2", node: "n2", pool: "p", outOfSync: { sinceMs: 5, reason: NEW_REPLICA_REASON, generation: 3, agentCopy: { token: TOKEN, node: "n1", sinceMs: 6 }, ...r2 } },
    ],
    ...extra,
  };
}

const replica = (id: string, node: string, extra: Partial<ReplicaStatusRecord> = {}): ReplicaStatusRecord => ({
  id, node, pool: "p", path: "", state: "healthy", virtualSizeBytes: GiB, allocatedBytes: 0, message: "", nodeEpoch: 1, ...extra,
});
const REPLICAS = [replica("r1", "n1", { exportUri: "nbd://n1/r1" }), replica("r2", "n2")];
const FRONTEND: FrontendStatus = { node: "n1", socketPath: "", nbdUri: "", state: "attached", message: "" };

describe("planAgentCopy", () => {
  const cases: Record<string, { spec: VolumeSpec; replicas?: ReplicaStatusRecord[]; frontends?: FrontendStatus[]; starts: boolean | RegExp }> = {
    "starts once the attached node's frontend tracks, from the exported in-sync replica": { spec: spec(), starts: true },
    "waits for the frontend to report its map": { spec: spec({}, { agentCopy: undefined }), starts: /waiting for the frontend/ },
    "waits while another node's frontend is not confirmed stopped": {
      spec: spec(),
      frontends: [FRONTEND, { ...FRONTEND, node: "n3", state: "detaching" }],
      starts: /not confirmed stopped/,
    },
    "never inside a migration's window": { spec: spec({ attachments: [{ node: "n1", sinceMs: 0 }, { node: "n3", sinceMs: 0, migration: "vm1" }] }), starts: /exactly one node/ },
    "never for a single attachment that is a migration's": { spec: spec({ attachments: [{ node: "n1", sinceMs: 0, migration: "vm1" }] }), starts: /exactly one node/ },
    "not when the map was reported by a frontend on another node": { spec: spec({ attachments: [{ node: "n3", sinceMs: 0 }] }), frontends: [{ ...FRONTEND, node: "n3" }], starts: /tracked by the frontend on n1/ },
    "not while the target is exported": { spec: spec(), replicas: [REPLICAS[0]!, replica("r2", "n2", { exportUri: "nbd://n2/r2" })], starts: /still exported/ },
    "not before the target image exists": { spec: spec(), replicas: [REPLICAS[0]!, replica("r2", "n2", { state: "creating" })], starts: /not made yet/ },
    "not without an exported in-sync source": { spec: spec(), replicas: [replica("r1", "n1"), REPLICAS[1]!], starts: /no in-sync replica/ },
    "not during a revert": { spec: spec({ reverting: { snapshot: "s", tag: "t", sinceMs: 1 } }), starts: /revert/ },
    "not for a replica the frontend marked (its dirty map covers it)": { spec: spec({}, { reason: "errno 5 on a WRITE", agentCopy: undefined }), starts: /no agent copy pending/ },
    "not once copied": { spec: spec({}, { agentCopy: { token: TOKEN, node: "n1", sinceMs: 6, copied: { startedAtMs: 7, atMs: 8, bytes: 1, ms: 1 } } }), starts: /no agent copy pending/ },
  };
  for (const [name, c] of Object.entries(cases)) {
    it(name, () => {
      const s = c.spec;
      const plan = planAgentCopy(s, s.placement[1]!, c.replicas ?? REPLICAS, c.frontends ?? [FRONTEND]);
      if (c.starts === true) {
        expect(plan).toEqual({ start: true, basis: { replica: "r2", generation: 3, token: TOKEN, node: "n1" }, source: REPLICAS[0] });
      } else {
        expect(plan.start).toBe(false);
        if (!plan.start) expect(plan.reason).toMatch(c.starts as RegExp);
      }
    });
  }
});

describe("copyStillCovered", () => {
  const basis: CopyBasis = { replica: "r2", generation: 3, token: TOKEN, node: "n1" };
  const cases: Record<string, { spec: VolumeSpec; covered: boolean }> = {
    "the same map tracks for the same single writer": { spec: spec(), covered: true },
    "a detach and attach on the same node meanwhile (the map was kept)": { spec: spec({ generation: 9 }), covered: true },
    "another map tracks now (a frontend that lost its map)": { spec: spec({}, { agentCopy: { token: "ffffffffffffffff", node: "n1", sinceMs: 9 } }), covered: false },
    "attached elsewhere": { spec: spec({ attachments: [{ node: "n3", sinceMs: 0 }] }), covered: false },
    "a migration's window opened": { spec: spec({ attachments: [{ node: "n1", sinceMs: 0 }, { node: "n3", sinceMs: 0, migration: "vm" }] }), covered: false },
    "detached": { spec: spec({ attachments: [] }), covered: false },
    "recorded out-of-sync again": { spec: spec({}, { generation: 4 }), covered: false },
    "in sync meanwhile (a detached volume's copy)": { spec: { ...spec(), placement: [spec().placement[0]!, { id: "r2", node: "n2", pool: "p" }] }, covered: false },
    "removed from the volume": { spec: { ...spec(), placement: [spec().placement[0]!] }, covered: false },
  };
  for (const [name, c] of Object.entries(cases)) it(name, () => expect(copyStillCovered(c.spec, basis)).toBe(c.covered));
});

describe("awaitsAgentCopy", () => {
  it("is true only for a new replica not yet copied", () => {
    expect(awaitsAgentCopy(spec().placement[1]!)).toBe(true);
    expect(awaitsAgentCopy(spec().placement[0]!)).toBe(false);
    expect(awaitsAgentCopy(spec({}, { reason: "errno 5" }).placement[1]!)).toBe(false);
  });
});
