// Volume lifecycle against a real cluster: etcd, two controllers, three agents,
// real qemu-img images on disk.
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execa } from "execa";
import { ImageFormat, VolumePhase, ReplicaState } from "../../gen/stowage/v1/types.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";

const GiB = 2 ** 30;
let c: TestCluster;

async function qemuInfo(path: string): Promise<{ "virtual-size": number; format: string }> {
  const r = await execa("qemu-img", ["info", "--output=json", "-U", path]);
  return JSON.parse(String(r.stdout));
}

async function waitPhase(name: string, phase: VolumePhase) {
  return eventually(async () => {
    const api = await c.leaderApi();
    const v = (await api.volumes.getVolume({ name })).volume!;
    return v.phase === phase ? v : undefined;
  }, 20_000, `volume ${name} phase ${phase}`);
}

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1");
  await c.startController("c2");
  await c.startAgent("n1", "127.0.0.51", { zone: "a" });
  await c.startAgent("n2", "127.0.0.52", { zone: "b" });
  await c.startAgent("n3", "127.0.0.53", { zone: "c" });
  await c.waitNodesOnline(3);
});

afterAll(async () => {
  await c?.stop();
});

describe("volumes on a real cluster", () => {
  it("creates a 2-replica qcow2 volume as images on two different hosts", async () => {
    const api = await c.leaderApi();
    await api.volumes.createVolume({ spec: { name: "vol1", sizeBytes: 3 * GiB, replicas: 2, format: 0, preallocation: 0, pool: "" }, dryRun: false });
    const v = await waitPhase("vol1", VolumePhase.VOLUME_PHASE_HEALTHY);
    expect(v.replicas).toHaveLength(2);
    expect(new Set(v.replicas.map((r) => r.node)).size).toBe(2);
    for (const r of v.replicas) {
      expect(r.state).toBe(ReplicaState.REPLICA_STATE_HEALTHY);
      expect(r.path.startsWith(c.poolDir(r.node))).toBe(true);
      const info = await qemuInfo(r.path);
      expect(info.format).toBe("qcow2");
      expect(info["virtual-size"]).toBe(3 * GiB);
    }
  });

  it("creates raw volumes and grows them with resize", async () => {
    const api = await c.leaderApi();
    await api.volumes.createVolume({ spec: { name: "raw1", sizeBytes: GiB, replicas: 3, format: ImageFormat.IMAGE_FORMAT_RAW, preallocation: 0, pool: "" }, dryRun: false });
    await waitPhase("raw1", VolumePhase.VOLUME_PHASE_HEALTHY);
    await api.volumes.resizeVolume({ name: "raw1", sizeBytes: 2 * GiB });
    const v = await eventually(async () => {
      const x = (await (await c.leaderApi()).volumes.getVolume({ name: "raw1" })).volume!;
      return x.phase === VolumePhase.VOLUME_PHASE_HEALTHY && x.replicas.every((r) => r.virtualSizeBytes === 2 * GiB) ? x : undefined;
    });
    for (const r of v.replicas) {
      const info = await qemuInfo(r.path);
      expect(info.format).toBe("raw");
      expect(info["virtual-size"]).toBe(2 * GiB);
    }
  });

  it("deletes a volume and its image files", async () => {
    const api = await c.leaderApi();
    await api.volumes.createVolume({ spec: { name: "gone", sizeBytes: GiB, replicas: 2, format: 0, preallocation: 0, pool: "" }, dryRun: false });
    const v = await waitPhase("gone", VolumePhase.VOLUME_PHASE_HEALTHY);
    const paths = v.replicas.map((r) => r.path);
    paths.forEach((p) => expect(existsSync(p)).toBe(true));
    await api.volumes.deleteVolume({ name: "gone" });
    await eventually(async () => {
      const r = await (await c.leaderApi()).volumes.getVolume({ name: "gone" }).catch((e) => e);
      return r instanceof Error && r.name === "NotFoundError";
    });
    paths.forEach((p) => expect(existsSync(p)).toBe(false));
    expect(Object.keys(await c.dumpState()).filter((k) => k.endsWith("/gone"))).toEqual([]);
  });

  it("works end to end through stowctl with -o json", async () => {
    const created = await c.stowctl(["volume", "create", "cli1", "--size", "2GiB", "--replicas", "2", "-o", "json"]);
    expect(created.stderr).toBe("");
    expect(created.code).toBe(0);
    const got = await c.stowctl(["volume", "get", "cli1", "-o", "json"]);
    expect(got.code).toBe(0);
    const j = JSON.parse(got.stdout);
    const vol = j.volume ?? j;
    expect(vol.phase).toBe("healthy");
    expect(vol.replicas).toHaveLength(2);
    for (const r of vol.replicas) {
      expect(r.state).toBe("healthy");
      expect(existsSync(r.path)).toBe(true);
      expect(typeof r.node).toBe("string");
      expect(r.pool).toBe("default");
    }
    const del = await c.stowctl(["volume", "delete", "cli1"]);
    expect(del.code).toBe(0);
  });
});
