// Bad requests get a clear error naming the problem, and change nothing in etcd.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ImageFormat, Preallocation } from "../../gen/stowage/v1/types.js";
import { TestCluster } from "../harness/cluster.js";

const GiB = 2 ** 30;
let c: TestCluster;

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1");
  await c.startAgent("n1", "127.0.0.21");
  await c.startAgent("n2", "127.0.0.22");
  // A small pool with no overcommit: 1 MiB of headroom at most.
  await c.startAgent("n3", "127.0.0.23", { overcommitRatio: 1 });
  await c.waitNodesOnline(3);
});

afterAll(async () => {
  await c?.stop();
});

const spec = (over: Record<string, unknown> = {}) => ({
  name: "ok",
  sizeBytes: GiB,
  replicas: 2,
  format: ImageFormat.IMAGE_FORMAT_QCOW2,
  preallocation: Preallocation.PREALLOCATION_OFF,
  pool: "",
  ...over,
});

const cases: Record<string, { spec: Record<string, unknown>; kind: string; message: RegExp }> = {
  "zero size": { spec: { sizeBytes: 0 }, kind: "InvalidArgumentError", message: /size 0.*positive/ },
  "size not a multiple of 512": { spec: { sizeBytes: 1000 }, kind: "InvalidArgumentError", message: /multiple of 512/ },
  "name with a slash": { spec: { name: "a/b" }, kind: "InvalidArgumentError", message: /invalid volume name "a\/b"/ },
  "name with dot-dot": { spec: { name: "..evil" }, kind: "InvalidArgumentError", message: /invalid volume name/ },
  "empty name": { spec: { name: "" }, kind: "InvalidArgumentError", message: /name is empty/ },
  "unknown pool": { spec: { pool: "nvme" }, kind: "NotFoundError", message: /pool "nvme" not found/ },
  "more replicas than hosts": { spec: { replicas: 4 }, kind: "InsufficientCapacityError", message: /need 4 hosts for 4 replicas but only 3/ },
  "too many replicas": { spec: { replicas: 9 }, kind: "InvalidArgumentError", message: /replica count 9/ },
  "metadata preallocation on raw": {
    spec: { format: ImageFormat.IMAGE_FORMAT_RAW, preallocation: Preallocation.PREALLOCATION_METADATA },
    kind: "InvalidArgumentError",
    message: /metadata/,
  },
  "a full pool (thick volume bigger than the disk)": {
    spec: { sizeBytes: 2 ** 50, replicas: 3, preallocation: Preallocation.PREALLOCATION_FALLOC },
    kind: "InsufficientCapacityError",
    message: /cannot place volume/,
  },
};

describe("bad input is refused and changes nothing", () => {
  for (const [name, cse] of Object.entries(cases)) {
    it(name, async () => {
      const before = await c.dumpState();
      const api = await c.leaderApi();
      const err = await api.volumes.createVolume({ spec: spec(cse.spec) as never, dryRun: false }).catch((e) => e);
      expect(err).toBeInstanceOf(Error);
      expect(err.name).toBe(cse.kind);
      expect(err.message).toMatch(cse.message);
      expect(err.hint).not.toBe("");
      expect(await c.dumpState()).toEqual(before);
    });
  }

  it("a full pool names every node's reason", async () => {
    const api = await c.leaderApi();
    const err = await api.volumes
      .createVolume({ spec: spec({ sizeBytes: 2 ** 50, replicas: 3, preallocation: Preallocation.PREALLOCATION_FULL }) as never, dryRun: false })
      .catch((e) => e);
    expect(err.rejections.map((r: { node: string }) => r.node).sort()).toEqual(["n1", "n2", "n3"]);
    for (const r of err.rejections) expect(r.reasons.join(" ")).toMatch(/not enough/);
  });

  it("stowctl turns bad input into a message, a hint and exit code 1 or 2", async () => {
    const before = await c.dumpState();
    const neg = await c.stowctl(["volume", "create", "x", "--size", "-1"]);
    expect(neg.code).toBe(2);
    expect(neg.stderr).toMatch(/size/);
    const slash = await c.stowctl(["volume", "create", "../x", "--size", "1GiB"]);
    expect(slash.code).toBeGreaterThan(0);
    expect(slash.stderr).toMatch(/invalid volume name/);
    expect(slash.stderr).toMatch(/hint:|--help/);
    expect(slash.stderr).not.toMatch(/at .*\.js:\d+/);
    const unknown = await c.stowctl(["volume", "get", "nope"]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/volume "nope" not found/);
    expect(await c.dumpState()).toEqual(before);
  });

  it("dry run shows a placement and changes nothing", async () => {
    const before = await c.dumpState();
    const api = await c.leaderApi();
    const r = await api.volumes.createVolume({ spec: spec({ name: "dry", replicas: 3 }) as never, dryRun: true });
    expect(r.placement.map((p) => p.node).sort()).toEqual(["n1", "n2", "n3"]);
    expect(r.volume).toBeUndefined();
    expect(await c.dumpState()).toEqual(before);
  });

  it("refuses to shrink a volume and cordoned nodes get no replicas", async () => {
    const api = await c.leaderApi();
    await api.nodes.cordonNode({ name: "n3" });
    const dry = await api.volumes.createVolume({ spec: spec({ name: "c1", replicas: 3 }) as never, dryRun: true }).catch((e) => e);
    expect(dry.name).toBe("InsufficientCapacityError");
    expect(JSON.stringify(dry.rejections)).toMatch(/cordoned/);
    await api.volumes.createVolume({ spec: spec({ name: "c2", replicas: 2 }) as never, dryRun: false });
    const v = (await api.volumes.getVolume({ name: "c2" })).volume!;
    expect(v.replicas.map((r) => r.node).sort()).toEqual(["n1", "n2"]);
    await api.nodes.uncordonNode({ name: "n3" });
    const err = await api.volumes.resizeVolume({ name: "c2", sizeBytes: GiB / 2 }).catch((e) => e);
    expect(err.name).toBe("InvalidArgumentError");
    expect(err.message).toMatch(/cannot shrink/);
  });
});
