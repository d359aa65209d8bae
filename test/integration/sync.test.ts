// The durable in-sync record a frontend writes before acknowledging a write a
// replica failed (ReplicaSyncService), against a real controller, etcd and agents.
import { existsSync, readFileSync } from "node:fs";
import { execa } from "execa";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VolumePhase } from "../../gen/stowage/v1/types.js";
import { FailedPreconditionError, NotFoundError } from "../../lib/errors.js";
import { NbdClient } from "../../lib/nbd/client.js";
import { parseNbdUri } from "../../lib/nbd-uri.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";

let c: TestCluster;
/** The replicas of volume sync2 once one of them went out of sync (for the resync case). */
let sync2: { good: { path: string }; stale: { id: string; path: string } } | undefined;

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
    // The frontend would resync r2 as soon as it is marked (its export still answers):
    // frozen, it leaves the record to this test until the end.
    const frontendPid = JSON.parse(readFileSync(join(c.agentDirs.get(node)!, "frontends", "sync1.json"), "utf8")).pid as number;
    process.kill(frontendPid, "SIGSTOP");
    const start = (await api.sync.getSyncState({ volume: "sync1" })).state!;
    expect(start).toMatchObject({ volume: "sync1", generation: 1, inSync: [r1, r2], outOfSync: [] });
    expect(start.replicas.map((r) => [r.id, r.inSync, r.outOfSyncGeneration])).toEqual([
      [r1, true, 0],
      [r2, true, 0],
    ]);

    // Inside a live-migration window (two frontends) no replica is dropped: the write fails instead.
    const key = "/stowage/v1/volumes/spec/sync1";
    const plain = await c.client.get(key).string();
    const spec = JSON.parse(plain!);
    const other = (await api.volumes.getVolume({ name: "sync1" })).volume!.replicas.find((r) => r.id === r2)!.node;
    await c.client.put(key).value(JSON.stringify({ ...spec, attachments: [...spec.attachments, { node: other, sinceMs: Date.now(), migration: "vm-x" }] }));
    await eventually(async () => (await api.volumes.getVolume({ name: "sync1" })).volume!.attachments.length === 2, 10_000, "window open");
    await eventually(async () => existsSync(join(c.agentDirs.get(other)!, "frontends", "sync1.json")), 30_000, "the window's second frontend started");
    await expect(api.sync.markOutOfSync({ volume: "sync1", replicaId: r2!, reason: "x" })).rejects.toBeInstanceOf(FailedPreconditionError);
    expect((await api.sync.getSyncState({ volume: "sync1" })).state!.outOfSync).toEqual([]);
    const windowed = JSON.parse((await c.client.get(key).string())!);
    await c.client.put(key).value(JSON.stringify({ ...windowed, attachments: windowed.attachments.filter((a: { migration?: string }) => !a.migration) }));
    await eventually(async () => (await api.volumes.getVolume({ name: "sync1" })).volume!.attachments.length === 1, 30_000, "window closed");
    await eventually(
      async () => {
        const st = JSON.parse((await c.client.get("/stowage/v1/volumes/status/sync1").string())!);
        return (st.frontends ?? []).map((f: { node: string }) => f.node).join() === node && !existsSync(join(c.agentDirs.get(other)!, "frontends", "sync1.json"));
      },
      30_000,
      "the window's second frontend stopped",
    );

    const marked = (await api.sync.markOutOfSync({ volume: "sync1", replicaId: r2!, reason: "EIO from 127.0.0.92:10809" })).state!;
    expect(marked).toMatchObject({ volume: "sync1", generation: 2, inSync: [r1], outOfSync: [r2] });
    expect(marked.replicas.find((r) => r.id === r2)).toMatchObject({ inSync: false, outOfSyncGeneration: 2 });
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
    await expect(api.sync.markInSync({ volume: "sync1", replicaId: r2!, generation: 1, kind: "", copiedBytes: 0, durationMs: 0 })).rejects.toBeInstanceOf(FailedPreconditionError);
    expect(await c.dumpState()).toEqual(before);
    // Nor inside a live-migration window: the other frontend's writes would not reach the copy.
    const reopened = JSON.parse((await c.client.get(key).string())!);
    await c.client.put(key).value(JSON.stringify({ ...reopened, attachments: [...reopened.attachments, { node: other, sinceMs: Date.now(), migration: "vm-y" }] }));
    await eventually(async () => (await api.volumes.getVolume({ name: "sync1" })).volume!.attachments.length === 2, 10_000, "window open again");
    await expect(api.sync.markInSync({ volume: "sync1", replicaId: r2!, generation: 2, kind: "full", copiedBytes: 1, durationMs: 1 })).rejects.toThrow(/live migration of domain vm-y/);
    await c.client.put(key).value(JSON.stringify(reopened));
    await eventually(
      async () => {
        const st = JSON.parse((await c.client.get("/stowage/v1/volumes/status/sync1").string())!);
        return (await api.volumes.getVolume({ name: "sync1" })).volume!.attachments.length === 1 &&
          (st.frontends ?? []).map((f: { node: string }) => f.node).join() === node && !existsSync(join(c.agentDirs.get(other)!, "frontends", "sync1.json"));
      },
      30_000,
      "window closed again",
    );

    // The record survives the leader: kill it, ask the next one.
    await c.controllers.get(api.address === c.addressOf("c1") ? "c1" : "c2")!.kill("SIGKILL");
    const next = await c.leaderApi();
    expect((await next.sync.getSyncState({ volume: "sync1" })).state).toEqual(marked);

    const back = (await next.sync.markInSync({ volume: "sync1", replicaId: r2!, generation: 2, kind: "incremental", copiedBytes: 65536, durationMs: 5 })).state!;
    expect(back).toMatchObject({ volume: "sync1", generation: 3, inSync: [r1, r2], outOfSync: [] });
    await eventually(async () => (await next.volumes.getVolume({ name: "sync1" })).volume!.phase === VolumePhase.VOLUME_PHASE_HEALTHY, 15_000, "healthy");
    process.kill(frontendPid, "SIGCONT");
    expect((await c.stowctl(["volume", "detach", "sync1", "--node", node])).code).toBe(0);
  });

  it("keeps a volume writable when a replica host's storage daemon and agent are SIGKILLed mid-write, then resyncs only what it missed", async () => {
    const api = await c.leaderApi();
    expect((await c.stowctl(["volume", "create", "sync2", "--size", "64MiB", "--replicas", "2"])).code).toBe(0);
    const v0 = (await api.volumes.getVolume({ name: "sync2" })).volume!;
    const [local, remote] = v0.replicas;
    const att = JSON.parse((await c.stowctl(["volume", "attach", "sync2", "--node", local!.node, "-o", "json"])).stdout);
    const io = (cmds: string[]) => execa("qemu-io", ["-f", "raw", ...cmds.flatMap((x) => ["-c", x]), att.nbdUri], { reject: false });
    const first = await io(["write -P 0x11 0 4M", "flush"]);
    expect(first.exitCode, first.stderr).toBe(0);

    // The other host dies (its storage daemon and its agent) while writes keep coming; then
    // 40 more writes of 4 KiB, 1 MiB apart, in the same 40 regions.
    const scattered = (n: number, pattern: string) => Array.from({ length: n }, (_, i) => `write -P ${pattern} ${(4 + (i % 40)) * 1024 * 1024} 4k`);
    const writing = io([...scattered(400, "0x22"), "flush"]);
    await new Promise((r) => setTimeout(r, 30));
    const remoteDir = c.agentDirs.get(remote!.node)!;
    const qsdPid = Number(readFileSync(join(remoteDir, "qsd", "qsd.pid"), "utf8").trim());
    await c.agents.get(remote!.node)!.kill("SIGKILL");
    process.kill(qsdPid, "SIGKILL");
    const w = await writing;
    expect(w.exitCode, w.stderr + w.stdout).toBe(0);
    expect(w.stdout).not.toMatch(/failed|error/i);
    const after = await io([...scattered(40, "0x22"), "write -P 0x33 50M 64k", "flush", "read -P 0x33 50M 64k", "read -P 0x22 40M 4k", "read -P 0x11 0 4M"]);
    expect(after.exitCode, after.stderr + after.stdout).toBe(0);
    expect(after.stdout).not.toMatch(/Pattern verification failed|error/i);

    // Recorded before any of those writes was acknowledged: degraded, the replica out of sync.
    const v = await eventually(async () => {
      const x = (await api.volumes.getVolume({ name: "sync2" })).volume!;
      return x.phase === VolumePhase.VOLUME_PHASE_DEGRADED && x.replicas.find((r) => r.id === remote!.id)?.outOfSync ? x : undefined;
    }, 15_000, "degraded with the remote replica out of sync");
    expect(v.generation).toBe(2);
    expect((await c.stowctl(["volume", "get", "sync2"])).stdout).toMatch(/out-of-sync/);

    // A frontend started again (this one is SIGKILLed; the reconciler starts a new one) serves
    // without the dead replica and keeps tracking what it misses in the same dirty map.
    const stateFile = join(c.agentDirs.get(local!.node)!, "frontends", "sync2.json");
    const old = JSON.parse(readFileSync(stateFile, "utf8"));
    expect(existsSync(join(c.agentDirs.get(local!.node)!, "frontends", `sync2.${remote!.id}.dirty`))).toBe(true);
    process.kill(old.pid, "SIGKILL");
    const fresh = await eventually(async () => {
      const st = JSON.parse(readFileSync(stateFile, "utf8"));
      return st.pid !== old.pid ? st : undefined;
    }, 30_000, "a new frontend");
    expect(fresh.backends.map((b: { replicaId: string }) => b.replicaId)).toEqual([local!.id]);
    const again = await io(["read -P 0x33 50M 64k", "write -P 0x44 60M 64k", "flush"]);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(again.stdout).not.toMatch(/Pattern verification failed/);

    // The host comes back: the frontend copies only the regions written meanwhile, then records it in-sync.
    await c.startAgent(remote!.node, remote!.node === "s1" ? "127.0.0.91" : "127.0.0.92");
    const healed = await eventually(async () => {
      const x = (await api.volumes.getVolume({ name: "sync2" })).volume!;
      return x.phase === VolumePhase.VOLUME_PHASE_HEALTHY && x.replicas.every((r) => !r.outOfSync) ? x : undefined;
    }, 60_000, "sync2 healthy again");
    expect(healed.generation).toBe(3);
    const spec = JSON.parse((await c.client.get("/stowage/v1/volumes/spec/sync2").string())!);
    const last = spec.placement.find((p: { id: string }) => p.id === remote!.id).lastResync;
    // 40 regions of 4 KiB writes and two of 64 KiB after the host died (42 regions of 64 KiB),
    // far below the 64 MiB volume.
    expect(last).toMatchObject({ kind: "incremental" });
    expect(last.bytes).toBeGreaterThanOrEqual(42 * 64 * 1024);
    expect(last.bytes).toBeLessThan(8 * 1024 * 1024);
    expect(existsSync(join(c.agentDirs.get(local!.node)!, "frontends", `sync2.${remote!.id}.dirty`))).toBe(false);

    // Writes go to both again; after a flush both images hold the same bytes.
    const both = await io(["write -P 0x55 30M 1M", "flush"]);
    expect(both.exitCode, both.stderr).toBe(0);
    const cmp = await execa("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "qcow2", local!.path, remote!.path], { reject: false });
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    sync2 = { good: local!, stale: remote! };
    expect((await c.stowctl(["volume", "detach", "sync2", "--node", local!.node])).code).toBe(0);
  });

  it("brings an out-of-sync replica of a detached volume back with a full copy, then records it in-sync", async () => {
    const api = await c.leaderApi();
    // sync2 from the previous case, detached now: a replica recorded out-of-sync (no frontend
    // runs, so nothing else would copy it) is copied in full by the controller.
    const { good, stale } = sync2!;
    await eventually(async () => (await api.volumes.getVolume({ name: "sync2" })).volume!.attachments.length === 0, 30_000, "detached");
    expect((await api.sync.markOutOfSync({ volume: "sync2", replicaId: stale.id, reason: "test" })).state!.generation).toBe(4);
    const healed = await eventually(async () => {
      const v = (await api.volumes.getVolume({ name: "sync2" })).volume!;
      return v.phase === VolumePhase.VOLUME_PHASE_HEALTHY && v.replicas.every((r) => !r.outOfSync) ? v : undefined;
    }, 60_000, "sync2 healthy again");
    expect(healed.generation).toBe(5); // 4 when marked out-of-sync, 5 when recorded in-sync
    const spec = JSON.parse((await c.client.get("/stowage/v1/volumes/spec/sync2").string())!);
    expect(spec.placement.find((p: { id: string }) => p.id === stale.id).lastResync).toMatchObject({ kind: "full" });
    // Byte for byte the same disk content (qcow2 allocation may differ).
    const cmp = await execa("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "qcow2", good.path, stale.path], { reject: false });
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
  });

  it("keeps writing when a replica's storage daemon freezes (SIGSTOP): the stalled connection is dropped after 8 s, and resynced after", async () => {
    expect((await c.stowctl(["volume", "create", "stall1", "--size", "16MiB", "--replicas", "2"])).code).toBe(0);
    const api = await c.leaderApi();
    const v0 = (await api.volumes.getVolume({ name: "stall1" })).volume!;
    const [local, remote] = v0.replicas;
    const att = JSON.parse((await c.stowctl(["volume", "attach", "stall1", "--node", local!.node, "-o", "json"])).stdout);
    const io = (cmds: string[]) => execa("qemu-io", ["-f", "raw", ...cmds.flatMap((x) => ["-c", x]), att.nbdUri], { reject: false });
    expect((await io(["write -P 0x11 0 1M", "flush"])).exitCode).toBe(0);
    const qsdPid = Number(readFileSync(join(c.agentDirs.get(remote!.node)!, "qsd", "qsd.pid"), "utf8").trim());
    process.kill(qsdPid, "SIGSTOP");
    let w;
    const t0 = Date.now();
    try {
      w = await io(["write -P 0x22 2M 64k", "flush", "read -P 0x22 2M 64k"]);
    } finally {
      process.kill(qsdPid, "SIGCONT");
    }
    const ms = Date.now() - t0;
    expect(w.exitCode, w.stderr + w.stdout).toBe(0);
    expect(w.stdout).not.toMatch(/Pattern verification failed|error/i);
    expect(ms).toBeGreaterThanOrEqual(7_000);
    expect(ms).toBeLessThan(20_000);
    // Recorded out-of-sync before that write was acknowledged; resynced once it answers again.
    const healed = await eventually(async () => {
      const v = (await api.volumes.getVolume({ name: "stall1" })).volume!;
      return v.phase === VolumePhase.VOLUME_PHASE_HEALTHY && v.generation >= 3 && v.replicas.every((r) => !r.outOfSync) ? v : undefined;
    }, 30_000, "stall1 resynced");
    expect(healed.generation).toBe(3);
    expect((await io(["flush"])).exitCode).toBe(0);
    const cmp = await execa("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "qcow2", local!.path, remote!.path], { reject: false });
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    expect((await c.stowctl(["volume", "detach", "stall1", "--node", local!.node])).code).toBe(0);
  });

  // The fencing rule (README, "Never two writers"): a frontend serves only within a 6 s lease
  // from its last read of the record, and stops for good once the record no longer lists its
  // node; a frontend elsewhere starts only 10 s after a detach its agent could not confirm.
  it("never lets a paused, detached frontend write once another node took the volume over", async () => {
    expect((await c.stowctl(["volume", "create", "fence1", "--size", "16MiB", "--replicas", "2"])).code).toBe(0);
    const api = await c.leaderApi();
    const v0 = (await api.volumes.getVolume({ name: "fence1" })).volume!;
    const [n1, n2] = [v0.replicas[0]!.node, v0.replicas[1]!.node];
    const att = JSON.parse((await c.stowctl(["volume", "attach", "fence1", "--node", n1, "-o", "json"])).stdout);
    const oldClient = await NbdClient.connect({ ...parseNbdUri(att.nbdUri) });
    await oldClient.write(0, Buffer.alloc(65536, 0xa1));
    await oldClient.flush();

    // Host n1 pauses (its agent and the frontend; its storage daemon keeps serving the replica,
    // the hardest case: the replicas stay reachable from n1).
    const frontendPid = JSON.parse(readFileSync(join(c.agentDirs.get(n1)!, "frontends", "fence1.json"), "utf8")).pid as number;
    const agentPid = c.agents.get(n1)!.child.pid!;
    process.kill(agentPid, "SIGSTOP");
    process.kill(frontendPid, "SIGSTOP");
    try {
      await eventually(async () => !(await api.nodes.getNode({ name: n1 })).node!.online, 20_000, `${n1} offline`);
      expect((await c.stowctl(["volume", "detach", "fence1", "--node", n1])).code).toBe(0);
      const t0 = Date.now();
      const took = await c.stowctl(["volume", "attach", "fence1", "--node", n2, "-o", "json", "--wait-timeout", "60"]);
      expect(took.code, took.stderr).toBe(0);
      // Not before the old frontend's lease ran out.
      expect(Date.now() - t0).toBeGreaterThanOrEqual(9_000);
      const newClient = await NbdClient.connect({ ...parseNbdUri(JSON.parse(took.stdout).attachment.nbdUri) });
      await newClient.write(0, Buffer.alloc(65536, 0xb2));
      await newClient.flush();

      // n1 resumes: its frontend's lease is over and the record says it was detached.
      process.kill(frontendPid, "SIGCONT");
      await expect(oldClient.write(0, Buffer.alloc(65536, 0xc3))).rejects.toThrow();
      await expect(oldClient.read(0, 4096)).rejects.toThrow();
      expect((await newClient.read(0, 65536)).equals(Buffer.alloc(65536, 0xb2))).toBe(true);
      newClient.destroy();
    } finally {
      process.kill(frontendPid, "SIGCONT");
      process.kill(agentPid, "SIGCONT");
      oldClient.destroy();
    }
    // Back online, n1's agent is told to stop the old frontend; the volume is whole again.
    await eventually(async () => !existsSync(join(c.agentDirs.get(n1)!, "frontends", "fence1.json")), 30_000, "the old frontend removed");
    await eventually(async () => (await api.volumes.getVolume({ name: "fence1" })).volume!.phase === VolumePhase.VOLUME_PHASE_HEALTHY, 30_000, "fence1 healthy");
    expect((await c.stowctl(["volume", "detach", "fence1", "--node", n2])).code).toBe(0);
    for (const r of v0.replicas) {
      const check = await execa("qemu-io", ["-f", "qcow2", "-U", "-r", "-c", "read -P 0xb2 0 64k", r.path], { reject: false });
      expect(check.stdout + check.stderr, r.node).not.toMatch(/Pattern verification failed|error/i);
    }
  });
});
