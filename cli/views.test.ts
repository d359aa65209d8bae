import { describe, expect, it } from "vitest";
import { ReplicaState, VolumePhase, type Node, type Pool, type Volume } from "../gen/stowage/v1/types.js";
import { formatAge, formatFields, formatTable, plural } from "./output.js";
import { nodesTable, placementView, poolsTable, rejectionLines, volumeDetail, volumesTable } from "./views.js";

const GiB = 2 ** 30;

describe("formatTable", () => {
  it("aligns columns, upper-cases headers and leaves no trailing spaces", () => {
    expect(formatTable(["name", "size"], [["vm1", "10GiB"], ["database", "1TiB"]])).toBe(
      "NAME       SIZE\n" + "vm1        10GiB\n" + "database   1TiB\n",
    );
    expect(formatTable(["a", "b"], [["x", ""]])).toBe("A   B\nx\n");
  });

  it("formats fields, ages and plurals", () => {
    expect(formatFields([["Name", "vm1"], ["Phase", "healthy"]])).toBe("Name:   vm1\nPhase:  healthy\n");
    expect(formatAge(0, 1000)).toBe("never");
    expect(formatAge(1000, 6000)).toBe("5s");
    expect(formatAge(1000, 1000 + 3 * 3600 * 1000)).toBe("3h");
    expect(plural(1, "replica")).toBe("1 replica");
    expect(plural(2, "replica")).toBe("2 replicas");
  });
});

const pool: Pool = {
  node: "host1",
  name: "default",
  type: "dir",
  path: "/var/lib/stowage/pools/default",
  capacityBytes: 100 * GiB,
  availableBytes: 60 * GiB,
  allocatedBytes: 2 * GiB,
  provisionedBytes: 30 * GiB,
  overcommitRatio: 2,
  replicaCount: 3,
  templateBytes: 0,
};

describe("views", () => {
  it("node list", () => {
    const node: Node = {
      name: "host1",
      address: "127.0.0.2:7500",
      labels: { zone: "a", rack: "" },
      cordoned: true,
      online: true,
      lastHeartbeatMs: 10_000,
      pools: [pool],
      agentVersion: "0.1.0",
      libvirtUri: "",
      replicaCount: 3,
    };
    expect(nodesTable([node], 13_000)).toBe(
      "NAME    STATUS            ADDRESS          ZONE   RACK   POOLS   HEARTBEAT   VERSION\n" +
        "host1   online,cordoned   127.0.0.2:7500   a      -      1       3s          0.1.0\n",
    );
    expect(nodesTable([], 0)).toBe("no nodes registered\n");
  });

  it("pool list shows human sizes", () => {
    const lines = poolsTable([pool]).split("\n");
    expect(lines[0]).toMatch(/^NODE\s+NAME\s+CAPACITY\s+USED\s+AVAILABLE\s+ALLOCATED\s+PROVISIONED\s+OVERCOMMIT\s+REPLICAS\s+LEVEL$/);
    // Without the controller's figures (an older controller): derived here, no level.
    expect(lines[1]).toMatch(/^host1\s+default\s+100GiB\s+40GiB 40%\s+60GiB\s+2GiB\s+30GiB 15%\s+2x\s+3\s+-$/);
  });

  const volume: Volume = {
    generation: 1,
    spec: { name: "vm1", sizeBytes: 10 * GiB, replicas: 2, format: 1, preallocation: 1, pool: "" },
    phase: VolumePhase.VOLUME_PHASE_DEGRADED,
    replicas: [
      { id: "r1", node: "host1", pool: "default", path: "/p/vm1.r1.qcow2", state: ReplicaState.REPLICA_STATE_HEALTHY, virtualSizeBytes: 10 * GiB, allocatedBytes: 1536 * 1024, message: "", outOfSync: false, outOfSyncSinceMs: 0, unreachableSinceMs: 0 },
      { id: "r2", node: "host2", pool: "default", path: "/p/vm1.r2.qcow2", state: ReplicaState.REPLICA_STATE_UNREACHABLE, virtualSizeBytes: 10 * GiB, allocatedBytes: 0, message: "node offline", outOfSync: false, outOfSyncSinceMs: 0, unreachableSinceMs: 0 },
    ],
    message: "1 of 2 replicas unreachable",
    createdAtMs: 0,
    attachments: [],
    uid: "u1",
  };

  it("volume list: name, size, healthy/desired replicas, phase", () => {
    expect(volumesTable([volume])).toBe(
      "NAME   SIZE    REPLICAS   PHASE      FORMAT   ATTACHED\nvm1    10GiB   1/2        degraded   qcow2    -\n",
    );
    const attached = { ...volume, attachments: [{ node: "n2", socketPath: "/s", nbdUri: "nbd+unix:///vm1?socket=/s", state: 2, message: "", migration: "", unconfirmedSinceMs: 0 }] };
    expect(volumesTable([attached])).toContain("qcow2    n2\n");
    expect(volumesTable([])).toBe("no volumes found\n");
  });

  it("volume get: fields, then one row per replica", () => {
    const text = volumeDetail(volume);
    expect(text).toContain("Phase:          degraded\n");
    expect(text).toContain("Size:           10GiB (10737418240 bytes)\n");
    expect(text).toContain("Message:        1 of 2 replicas unreachable\n");
    expect(text).toMatch(/NODE\s+POOL\s+STATE\s+VIRTUAL SIZE\s+ALLOCATED\s+PATH\s+MESSAGE\n/);
    expect(text).toMatch(/host1\s+default\s+healthy\s+10GiB\s+1.5MiB\s+\/p\/vm1.r1.qcow2\n/);
    expect(text).toMatch(/host2\s+default\s+unreachable\s+10GiB\s+0B\s+\/p\/vm1.r2.qcow2\s+node offline\n/);
  });

  it("dry run: placement with scores, then rejections", () => {
    const text = placementView("vm1", {
      placement: [{ node: "host1", pool: "default", score: 0.8123 }],
      rejections: [{ node: "host3", reasons: ["cordoned", "insufficient storage"] }],
    });
    expect(text).toBe(
      "dry run: volume vm1 would be placed on:\n" +
        "NODE    POOL      SCORE\n" +
        "host1   default   0.812\n" +
        "not chosen:\n" +
        "  host3: cordoned; insufficient storage\n" +
        "nothing was created\n",
    );
    expect(rejectionLines([{ node: "h", reasons: [] }])).toBe("  h: no reason given\n");
  });
});
