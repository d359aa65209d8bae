// The durable in-sync record a frontend writes before acknowledging a write a
// replica failed (ReplicaSyncService), against a real controller, etcd and agents.
import { readFileSync } from "node:fs";
import { execa } from "execa";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VolumePhase } from "../../gen/stowage/v1/types.js";
import { FailedPreconditionError, NotFoundError } from "../../lib/errors.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";

let c: TestCluster;
/** The replicas of volume sync2 once one of them went out of sync (for the resync case). */
let sync2: { good: { path: string }; stale: { path: string } } | undefined;

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1");
  await c.startController("c2");
  for (const [i, n] of ["s1", "s2"].entries()) await c.startAgent(n, `127.0.0.${91 + i}`);
  await c.waitNodesOnline(2);
  const r = await c.stowctl(["volume", "create", "sync1", "--size", "64MiB", "--replicas", "2"]);
  expect(r.code, r.stderr).toBe(0);
});

afterAll(async () => {
  await c?.stop();
});

describe("replica sync records", () => {
  it("marks a replica out-of-sync (degraded, new generation), never the last one, and back in-sync after a resync", async () => {
    const api = await c.leaderApi();
    const [r1, r2] = (await api.volumes.getVolume({ name: "sync1" })).volume!.replicas.map((r) => r.id);
    // Attached, so the controller does not resync it by itself (it does that for detached volumes).
    const node = (await api.volumes.getVolume({ name: "sync1" })).volume!.replicas.find((r) => r.id === r1)!.node;
    expect((await c.stowctl(["volume", "attach", "sync1", "--node", node])).code).toBe(0);
    const start = (await api.sync.getSyncState({ volume: "sync1" })).state!;
    expect(start).toEqual({ volume: "sync1", generation: 1, inSync: [r1, r2], outOfSync: [] });

    // Inside a live-migration window (two frontends) no replica is dropped: the write fails instead.
    const key = "/stowage/v1/volumes/spec/sync1";
    const plain = await c.client.get(key).string();
    const spec = JSON.parse(plain!);
    const other = (await api.volumes.getVolume({ name: "sync1" })).volume!.replicas.find((r) => r.id === r2)!.node;
    await c.client.put(key).value(JSON.stringify({ ...spec, attachments: [...spec.attachments, { node: other, sinceMs: Date.now(), migration: "vm-x" }] }));
    await eventually(
      async () => (await api.sync.markOutOfSync({ volume: "sync1", replicaId: r2!, reason: "x" }).then(() => "marked", (e: unknown) => e)) instanceof FailedPreconditionError,
      10_000,
      "refused during the migration window",
    );
    expect((await api.sync.getSyncState({ volume: "sync1" })).state!.outOfSync).toEqual([]);
    const windowed = JSON.parse((await c.client.get(key).string())!);
    await c.client.put(key).value(JSON.stringify({ ...windowed, attachments: windowed.attachments.filter((a: { migration?: string }) => !a.migration) }));
    await eventually(async () => (await api.volumes.getVolume({ name: "sync1" })).volume!.attachments.length === 1, 30_000, "window closed");

    const marked = (await api.sync.markOutOfSync({ volume: "sync1", replicaId: r2!, reason: "EIO from 127.0.0.92:10809" })).state!;
    expect(marked).toEqual({ volume: "sync1", generation: 2, inSync: [r1], outOfSync: [r2] });
    // Idempotent: the same report again changes nothing.
    expect((await api.sync.markOutOfSync({ volume: "sync1", replicaId: r2!, reason: "again" })).state!.generation).toBe(2);

    const v = await eventually(async () => {
      const x = (await api.volumes.getVolume({ name: "sync1" })).volume!;
      return x.phase === VolumePhase.VOLUME_PHASE_DEGRADED ? x : undefined;
    }, 15_000, "degraded");
    expect(v.generation).toBe(2);
    expect(v.replicas.find((r) => r.id === r2)).toMatchObject({ outOfSync: true });
    expect(v.message).toMatch(/out of sync since .*EIO from 127.0.0.92:10809/);
    const shown = await c.stowctl(["volume", "get", "sync1"]);
    expect(shown.stdout).toMatch(/out-of-sync/);

    // The last in-sync replica is never given up.
    const before = await c.dumpState();
    await expect(api.sync.markOutOfSync({ volume: "sync1", replicaId: r1!, reason: "x" })).rejects.toBeInstanceOf(FailedPreconditionError);
    await expect(api.sync.markOutOfSync({ volume: "sync1", replicaId: "r-nope", reason: "x" })).rejects.toBeInstanceOf(NotFoundError);
    await expect(api.sync.markOutOfSync({ volume: "nope", replicaId: r1!, reason: "x" })).rejects.toBeInstanceOf(NotFoundError);
    // A resync that started before the replica was marked (generation 1) does not cover the gap.
    await expect(api.sync.markInSync({ volume: "sync1", replicaId: r2!, generation: 1 })).rejects.toBeInstanceOf(FailedPreconditionError);
    expect(await c.dumpState()).toEqual(before);

    // The record survives the leader: kill it, ask the next one.
    await c.controllers.get(api.address === c.addressOf("c1") ? "c1" : "c2")!.kill("SIGKILL");
    const next = await c.leaderApi();
    expect((await next.sync.getSyncState({ volume: "sync1" })).state).toEqual(marked);

    const back = (await next.sync.markInSync({ volume: "sync1", replicaId: r2!, generation: 2 })).state!;
    expect(back).toEqual({ volume: "sync1", generation: 3, inSync: [r1, r2], outOfSync: [] });
    await eventually(async () => (await next.volumes.getVolume({ name: "sync1" })).volume!.phase === VolumePhase.VOLUME_PHASE_HEALTHY, 15_000, "healthy");
    expect((await c.stowctl(["volume", "detach", "sync1", "--node", node])).code).toBe(0);
  });

  it("keeps a volume writable when a replica host's qemu-storage-daemon is SIGKILLed mid-write: the frontend records it out-of-sync first", async () => {
    const api = await c.leaderApi();
    expect((await c.stowctl(["volume", "create", "sync2", "--size", "64MiB", "--replicas", "2"])).code).toBe(0);
    const v0 = (await api.volumes.getVolume({ name: "sync2" })).volume!;
    const [local, remote] = v0.replicas;
    const att = JSON.parse((await c.stowctl(["volume", "attach", "sync2", "--node", local!.node, "-o", "json"])).stdout);
    const io = (cmds: string[]) => execa("qemu-io", ["-f", "raw", ...cmds.flatMap((x) => ["-c", x]), att.nbdUri], { reject: false });
    const first = await io(["write -P 0x11 0 1M", "flush"]);
    expect(first.exitCode, first.stderr).toBe(0);

    // The other host's storage daemon dies while writes keep coming.
    const writing = io(Array.from({ length: 40 }, (_, i) => `write -P 0x22 ${(1 + i) * 1024 * 1024} 256k`).concat(["flush"]));
    await new Promise((r) => setTimeout(r, 50));
    const pid = Number(readFileSync(join(c.agentDirs.get(remote!.node)!, "qsd", "qsd.pid"), "utf8").trim());
    process.kill(pid, "SIGKILL");
    const w = await writing;
    expect(w.exitCode, w.stderr + w.stdout).toBe(0);
    expect(w.stdout).not.toMatch(/failed|error/i);
    const after = await io(["write -P 0x33 50M 1M", "flush", "read -P 0x33 50M 1M", "read -P 0x22 1M 256k", "read -P 0x11 0 1M"]);
    expect(after.exitCode, after.stderr + after.stdout).toBe(0);
    expect(after.stdout).not.toMatch(/Pattern verification failed|error/i);

    // Recorded before any of those writes was acknowledged: degraded, the replica out of sync.
    const v = await eventually(async () => {
      const x = (await api.volumes.getVolume({ name: "sync2" })).volume!;
      return x.phase === VolumePhase.VOLUME_PHASE_DEGRADED && x.replicas.find((r) => r.id === remote!.id)?.outOfSync ? x : undefined;
    }, 15_000, "degraded with the remote replica out of sync");
    expect(v.generation).toBe(2);
    sync2 = { good: local!, stale: remote! };
    // The surviving replica holds every acknowledged write.
    const check = await execa("qemu-io", ["-f", "qcow2", "-U", "-r", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 40M 256k", "-c", "read -P 0x33 50M 1M", local!.path], { reject: false });
    expect(check.exitCode, check.stderr).toBe(0);
    expect(check.stdout).not.toMatch(/Pattern verification failed/);

    // A frontend started again (this one is SIGKILLed; the reconciler starts a new one) leaves the
    // out-of-sync replica out: no reads from it, no writes to it.
    const stateFile = join(c.agentDirs.get(local!.node)!, "frontends", "sync2.json");
    const old = JSON.parse(readFileSync(stateFile, "utf8"));
    process.kill(old.pid, "SIGKILL");
    const fresh = await eventually(async () => {
      const st = JSON.parse(readFileSync(stateFile, "utf8"));
      return st.pid !== old.pid ? st : undefined;
    }, 30_000, "a new frontend");
    expect(fresh.backends.map((b: { replicaId: string }) => b.replicaId)).toEqual([local!.id]);
    const again = await io(["read -P 0x33 50M 1M", "write -P 0x44 60M 64k", "flush"]);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(again.stdout).not.toMatch(/Pattern verification failed/);
    expect((await c.stowctl(["volume", "detach", "sync2", "--node", local!.node])).code).toBe(0);
  });

  it("brings an out-of-sync replica of a detached volume back with a full copy, then records it in-sync", async () => {
    const api = await c.leaderApi();
    // sync2 from the previous case: its remote replica missed writes and the volume is detached now
    // (the copy may have begun already).
    const { good, stale } = sync2!;
    const healed = await eventually(async () => {
      const v = (await api.volumes.getVolume({ name: "sync2" })).volume!;
      return v.phase === VolumePhase.VOLUME_PHASE_HEALTHY && v.replicas.every((r) => !r.outOfSync) ? v : undefined;
    }, 60_000, "sync2 healthy again");
    expect(healed.generation).toBe(3); // 2 when marked out-of-sync, 3 when recorded in-sync
    // Byte for byte the same disk content (qcow2 allocation may differ).
    const cmp = await execa("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "qcow2", good.path, stale.path], { reject: false });
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
  });
});
