// The replica set with real NBD connections to in-process memory servers
// standing in for qemu-storage-daemon exports.
import { randomBytes } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { NbdClient } from "../lib/nbd/client.js";
import { NbdDisconnectedError } from "../lib/nbd/errors.js";
import { Cmd, Errno, TxFlag } from "../lib/nbd/protocol.js";
import { NbdServer } from "../lib/nbd/server.js";
import { RawConnection, startMemoryServer, type TestServer } from "../lib/nbd/test-helpers.js";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Replica } from "./replica.js";
import { NO_SPACE_BACKOFF_MS, ReplicaSet } from "./replica-set.js";
import { FakeRecord } from "./testing/fake-record.js";

const MiB = 1 << 20;
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function replicaServer(size = 4 * MiB, opts: Parameters<typeof startMemoryServer>[1] = {}): Promise<TestServer> {
  const s = await startMemoryServer(size, opts);
  cleanups.push(() => s.close());
  return s;
}

async function open(s: TestServer, connections = 2): Promise<Replica> {
  const r = await Replica.open({ spec: `unix:${s.socketPath}:vol`, socketPath: s.socketPath, exportName: "vol" }, connections);
  cleanups.push(() => r.close());
  return r;
}

/** An NBD server in front of the set (the frontend minus the process); returns its socket path. */
async function listen(set: ReplicaSet): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "frontend-test-"));
  const server = new NbdServer({ name: "vol", backend: set });
  set.onBusy = (b) => server.setBackendBusy(b);
  await server.listenUnix(join(dir, "front.sock"));
  cleanups.push(async () => {
    await server.shutdown(1_000);
    rmSync(dir, { recursive: true, force: true });
  });
  return join(dir, "front.sock");
}

/** A frontend server over the set, and a client of it. */
async function front(set: ReplicaSet): Promise<NbdClient> {
  const c = await NbdClient.connect({ socketPath: await listen(set), exportName: "vol" });
  cleanups.push(() => c.destroy());
  return c;
}

describe("ReplicaSet", () => {
  it("forwards reads and writes to one replica unchanged", async () => {
    const r1 = await replicaServer(16 * MiB);
    const c = await front(new ReplicaSet([await open(r1)]));
    const data = randomBytes(3 * MiB + 17);
    await c.write(4096, data, { fua: true });
    expect(r1.backend.data.subarray(4096, 4096 + data.length).equals(data)).toBe(true);
    expect((await c.read(4096, data.length)).equals(data)).toBe(true);
    await c.writeZeroes(4096, 4096);
    await c.trim(8192, 4096);
    expect(r1.backend.data.subarray(4096, 12288).every((b) => b === 0)).toBe(true);
  });

  it("keeps many requests in flight across several backend connections", async () => {
    const r1 = await replicaServer(16 * MiB, { delayMs: 1 });
    const c = await front(new ReplicaSet([await open(r1, 3)]));
    const blocks = Array.from({ length: 500 }, (_, i) => Buffer.alloc(4096, i % 256));
    await Promise.all(blocks.map((b, i) => c.write(i * 4096, b)));
    const back = await Promise.all(blocks.map((_, i) => c.read(i * 4096, 4096)));
    back.forEach((b, i) => expect(b[0]).toBe(i % 256));
  });

  it("fills one connection up to 16 requests before using the next, then picks the least loaded", async () => {
    const r1 = await replicaServer(4 * MiB, { delayMs: 20 });
    const r = await open(r1, 3);
    const reads = Array.from({ length: 20 }, () => r.pick()!.read(0, 512));
    expect(r.conns.map((c) => c.inFlight)).toEqual([16, 4, 0]);
    reads.push(r.pick()!.read(0, 512));
    expect(r.conns.map((c) => c.inFlight)).toEqual([16, 5, 0]);
    await Promise.all(reads);
    for (let i = 0; i < 48; i++) reads.push(r.pick()!.read(0, 512));
    expect(r.conns.map((c) => c.inFlight)).toEqual([16, 16, 16]);
    reads.push(r.pick()!.read(0, 512), r.pick()!.read(0, 512));
    expect(r.conns.map((c) => c.inFlight)).toEqual([17, 17, 16]);
    await Promise.all(reads);
  });

  it("sends a FLUSH to every connection of every replica", async () => {
    const r1 = await replicaServer();
    const r2 = await replicaServer();
    const c = await front(new ReplicaSet([await open(r1, 3), await open(r2, 2)]));
    await c.flush();
    expect([r1.backend.flushes, r2.backend.flushes]).toEqual([3, 2]);
  });

  it("writes to every replica and reads from the first", async () => {
    const r1 = await replicaServer();
    const r2 = await replicaServer();
    const c = await front(new ReplicaSet([await open(r1), await open(r2)]));
    await c.write(0, Buffer.from("both"));
    expect(r1.backend.data.subarray(0, 4).toString()).toBe("both");
    expect(r2.backend.data.subarray(0, 4).toString()).toBe("both");
    r2.backend.data.write("TWO!", 100);
    r1.backend.data.write("one!", 100);
    expect((await c.read(100, 4)).toString()).toBe("one!");
  });

  it("fails a write with EIO when a replica is gone, and reads from the next healthy one", async () => {
    const r1 = await replicaServer();
    const r2 = await replicaServer();
    const [a, b] = [await open(r1), await open(r2)];
    const c = await front(new ReplicaSet([a, b]));
    r2.backend.data.write("from r2", 0);
    await r1.close();
    for (let i = 0; i < 50 && a.healthy; i++) await new Promise((r) => setTimeout(r, 10));
    expect(a.healthy).toBe(false);
    expect((await c.read(0, 7)).toString()).toBe("from r2");
    await expect(c.write(0, Buffer.from("x"))).rejects.toMatchObject({ errno: Errno.EIO });
  });

  it("answers EIO once the only replica is gone, without hanging", async () => {
    const r1 = await replicaServer();
    const a = await open(r1);
    const c = await front(new ReplicaSet([a]));
    await r1.close();
    for (let i = 0; i < 50 && a.healthy; i++) await new Promise((r) => setTimeout(r, 10));
    await expect(c.read(0, 512)).rejects.toMatchObject({ errno: Errno.EIO });
    await expect(c.read(0, 512)).rejects.not.toBeInstanceOf(NbdDisconnectedError);
  });

  it("advertises what every replica supports, read-only if any is, and refuses mismatched sizes", async () => {
    const full = await replicaServer(4 * MiB);
    const ro = await replicaServer(4 * MiB, { readOnly: true, txFlags: TxFlag.READ_ONLY | TxFlag.SEND_FLUSH, blockSizes: { maximum: MiB } });
    const set = new ReplicaSet([await open(full), await open(ro)]);
    expect(set.txFlags).toBe(TxFlag.READ_ONLY | TxFlag.SEND_FLUSH);
    expect(set.blockSizes).toEqual({ minimum: 1, preferred: 4096, maximum: MiB });
    const other = await replicaServer(8 * MiB);
    const mismatched = [await open(full), await open(other)];
    expect(() => new ReplicaSet(mismatched)).toThrow(/disagree on the volume size/);
  });

  // Receive arenas are reused (lib/nbd/arena.ts): these two check that bytes still queued for
  // a socket are never overwritten by later reads, on the reply path and on the write path.
  it("never overwrites reply data queued for a slow client while other reads churn the arenas", async () => {
    const r1 = await replicaServer(32 * MiB);
    r1.backend.data.set(randomBytes(32 * MiB));
    const path = await listen(new ReplicaSet([await open(r1, 1)]));
    const slow = await RawConnection.open(path);
    cleanups.push(() => slow.destroy());
    slow.socket.pause(); // replies pile up in the frontend's writer for this connection
    const offsets = Array.from({ length: 24 }, (_, i) => ((i * 7) % 31) * MiB);
    offsets.forEach((offset, i) => slow.request({ type: Cmd.READ, cookieLo: i, offset, length: MiB }));
    // A second client keeps the replica connection's reader busy meanwhile.
    const busy = await NbdClient.connect({ socketPath: path, exportName: "vol" });
    cleanups.push(() => busy.destroy());
    for (let round = 0; round < 20; round++) {
      const got = await Promise.all([0, 1, 2, 3].map((k) => busy.read(((round + k) % 32) * MiB, MiB)));
      got.forEach((b, k) => expect(b.equals(r1.backend.data.subarray(((round + k) % 32) * MiB, ((round + k) % 32 + 1) * MiB))).toBe(true));
    }
    slow.socket.resume();
    for (let n = 0; n < offsets.length; n++) {
      const reply = await slow.reply();
      expect(reply.error).toBe(0);
      const offset = offsets[reply.cookieLo]!;
      const data = await slow.read(MiB);
      expect(data.equals(r1.backend.data.subarray(offset, offset + MiB))).toBe(true);
    }
  });

  it("never overwrites write payloads queued for a stalled replica while more writes arrive", async () => {
    const r1 = await replicaServer(32 * MiB);
    const c = await front(new ReplicaSet([await open(r1, 2)]));
    r1.server.setBackendBusy(true); // the replica stops reading: payloads queue in the frontend
    const blocks = Array.from({ length: 24 }, () => randomBytes(MiB));
    const writes = blocks.map((b, i) => c.write(i * MiB, b));
    await new Promise((r) => setTimeout(r, 200));
    r1.server.setBackendBusy(false);
    await Promise.all(writes);
    blocks.forEach((b, i) => expect(r1.backend.data.subarray(i * MiB, (i + 1) * MiB).equals(b)).toBe(true));
  });
});

describe("ReplicaSet with the recorded write policy", () => {
  async function named(name: string, size = 4 * MiB, stallTimeoutMs?: number): Promise<{ s: TestServer; r: Replica; uri: string }> {
    const s = await replicaServer(size, { name });
    const r = await Replica.open({ spec: `unix:${s.socketPath}:${name}`, socketPath: s.socketPath, exportName: name }, 2, { stallTimeoutMs });
    cleanups.push(() => r.close());
    return { s, r, uri: `nbd+unix:///${name}?socket=${s.socketPath}` };
  }
  const failWrites = (s: TestServer) => {
    const write = s.backend.write.bind(s.backend);
    s.backend.write = (req) => req.done(Errno.EIO);
    return () => (s.backend.write = write);
  };
  function stateDir(): string {
    const dir = mkdtempSync(join(tmpdir(), "frontend-maps-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    return dir;
  }
  function synced(replicas: Replica[], record: FakeRecord, o: { dir?: string; unreachable?: Replica["address"][]; refreshMs?: number; leaseMs?: number; node?: string; copyRateBytes?: number } = {}): ReplicaSet {
    const set = new ReplicaSet(replicas, undefined, {
      recorder: record,
      generation: 1,
      stateDir: o.dir ?? stateDir(),
      volume: "vol",
      refreshMs: o.refreshMs ?? 50,
      unreachable: o.unreachable,
      leaseMs: o.leaseMs,
      node: o.node,
      copyRateBytes: o.copyRateBytes,
    });
    cleanups.push(() => set.close());
    return set;
  }
  const until = async (what: string, cond: () => boolean, ms = 5_000) => {
    const deadline = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };

  it("records a replica that fails a write out-of-sync before acking, then writes to the others only", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a", "r-b"]);
    record.markDelayMs = 20;
    // No periodic reads of the record: b (which keeps answering) would be resynced at once.
    const set = synced([a.r, b.r], record, { refreshMs: 60_000 });
    const c = await front(set);
    const one = randomBytes(64 * 1024);
    await c.write(0, one);
    expect(b.s.backend.data.subarray(0, one.length).equals(one)).toBe(true);

    failWrites(b.s);
    const two = randomBytes(64 * 1024);
    // Several writes fail on b at once: one mark, every write acknowledged after it.
    await Promise.all([c.write(MiB, two), c.write(2 * MiB, two), c.flush()]);
    expect(record.marks).toEqual(["r-b"]);
    expect(set.policy!.state("r-b")).toBe("out-of-sync");
    expect(set.policy!.generation).toBe(2);
    expect(a.s.backend.data.subarray(MiB, MiB + two.length).equals(two)).toBe(true);

    const callsOnB = b.s.backend.calls;
    await c.write(3 * MiB, two);
    await c.flush();
    expect(b.s.backend.calls).toBe(callsOnB);
    expect((await c.read(MiB, two.length)).equals(two)).toBe(true);
  });

  it("fails the write (EIO) when the controller refuses the mark, and keeps the replica", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a", "r-b"]);
    record.refuseMarks = true;
    const set = synced([a.r, b.r], record);
    const c = await front(set);
    failWrites(b.s);
    await expect(c.write(0, randomBytes(4096))).rejects.toThrow();
    expect(set.policy!.state("r-b")).toBe("in-sync");
  });

  it("fails reads over to the next in-sync replica", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const c = await front(synced([a.r, b.r], new FakeRecord(["r-a", "r-b"])));
    const data = randomBytes(8192);
    await c.write(0, data);
    a.s.backend.read = (req) => req.done(Errno.EIO);
    expect((await c.read(0, data.length)).equals(data)).toBe(true);
  });

  it("reads the recorded state before its first request: a replica another frontend marked is never read", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    // r-a (listed first, the "local" one) missed writes that only r-b has.
    const fresh = randomBytes(8192);
    fresh.copy(b.s.backend.data, 0);
    const record = new FakeRecord(["r-a", "r-b"], ["r-a"]);
    // Keep r-a away so it is not resynced during the test.
    a.s.backend.write = (req) => req.done(Errno.EIO);
    const set = synced([a.r, b.r], record);
    const c = await front(set);
    expect((await c.read(0, fresh.length)).equals(fresh)).toBe(true);
    expect(set.policy!.state("r-a")).not.toBe("in-sync");
  });

  it("fails requests (EIO) while the recorded state cannot be read, and serves once it can", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a", "r-b"]);
    record.available = false;
    const c = await front(synced([a.r, b.r], record));
    await expect(c.read(0, 4096)).rejects.toThrow();
    record.available = true;
    expect((await c.read(0, 4096)).length).toBe(4096);
  });

  it("resyncs a replica that comes back: only the regions written meanwhile are copied, live writes go on, then it is in-sync", async () => {
    const size = 16 * MiB;
    const a = await named("r-a", size);
    const b = await named("r-b", size);
    const record = new FakeRecord(["r-a", "r-b"]);
    const set = synced([a.r, b.r], record);
    const c = await front(set);
    await c.write(0, randomBytes(size));
    await c.flush();
    const restore = failWrites(b.s);
    // While b is away: writes over 3 scattered 64 KiB regions (one straddles two).
    await c.write(5 * MiB, randomBytes(4096));
    await c.flush();
    await c.write(9 * MiB + 64 * 1024 - 512, randomBytes(1024));
    await c.write(13 * MiB, randomBytes(64 * 1024));
    await c.flush();
    expect(set.policy!.state("r-b")).toBe("out-of-sync");
    // It answers again: writes keep coming while the copy runs.
    restore();
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop; i++) await c.write((100 + ((i * 7) % 20)) * 64 * 1024 + 512, randomBytes(4096));
    })();
    await until("the resync", () => set.policy!.state("r-b") === "in-sync");
    stop = true;
    await writer;
    await c.flush();
    expect(record.inSyncMarks).toEqual([{ id: "r-b", kind: "incremental", bytes: expect.any(Number) }]);
    // Regions 80, 159-160, 208, and some of the writer's 100-119 it wrote before the copy started.
    expect(record.inSyncMarks[0]!.bytes).toBeGreaterThanOrEqual(4 * 64 * 1024);
    expect(record.inSyncMarks[0]!.bytes).toBeLessThanOrEqual(24 * 64 * 1024);
    expect(b.s.backend.data.equals(a.s.backend.data)).toBe(true);
    await until("the dirty map to go", () => readdirSync(set["sync"]!.stateDir).length === 0);
  });

  it("keeps the dirty map across a restart of the frontend and copies only those regions then", async () => {
    const size = 8 * MiB;
    const a = await named("r-a", size);
    const b = await named("r-b", size);
    const dir = stateDir();
    const record = new FakeRecord(["r-a", "r-b"]);
    const first = synced([a.r, b.r], record, { dir });
    const c = await front(first);
    const restore = failWrites(b.s);
    await c.write(MiB, randomBytes(8192));
    await c.write(6 * MiB, randomBytes(8192));
    await c.flush();
    expect(record.replicas[1]!.inSync).toBe(false);
    await first.close();
    restore();
    // A new frontend over the same maps: b is recorded out-of-sync and resynced from its map.
    const a2 = await Replica.open(a.r.address, 2);
    const b2 = await Replica.open(b.r.address, 2);
    const second = synced([a2, b2], record, { dir });
    await second.warmUp();
    await until("the resync", () => second.policy!.state("r-b") === "in-sync");
    expect(record.inSyncMarks).toEqual([{ id: "r-b", kind: "incremental", bytes: 2 * 64 * 1024 }]);
    expect(b.s.backend.data.equals(a.s.backend.data)).toBe(true);
  });

  it("copies everything to a replica that joins the volume, and drops one that leaves", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a"]);
    const set = synced([a.r], record);
    const c = await front(set);
    await c.write(MiB, randomBytes(MiB));
    record.add("r-b", b.uri);
    await until("the new replica's copy", () => set.policy?.has("r-b") === true && set.policy.state("r-b") === "in-sync");
    expect(record.inSyncMarks).toEqual([{ id: "r-b", kind: "full", bytes: 4 * MiB }]);
    expect(b.s.backend.data.equals(a.s.backend.data)).toBe(true);
    const data = randomBytes(4096);
    await c.write(0, data);
    expect(b.s.backend.data.subarray(0, 4096).equals(data)).toBe(true);
    record.remove("r-b");
    await until("the replica to leave", () => !set.policy!.has("r-b"));
    const calls = b.s.backend.calls;
    await c.write(0, randomBytes(4096));
    expect(b.s.backend.calls).toBe(calls);
  });

  it("tracks a new replica its agent copies: an empty map, named in the record; nothing copied from here until the copy is done, then only what was written meanwhile", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a"]);
    const set = synced([a.r], record);
    const c = await front(set);
    await c.write(0, randomBytes(2 * MiB));
    await c.flush();
    record.add("r-b", b.uri, true);
    await until("the tracking record", () => record.tracked.length === 1);
    const token = record.tracked[0]!.token;
    expect(record.replicas[1]!.trackingToken).toBe(token);
    // The agent's copy reads the source now (the bench and the integration tests run the real one) ...
    b.s.backend.data.set(a.s.backend.data);
    // ... and misses these writes, which land while it runs.
    await c.write(64 * 1024 + 100, randomBytes(100));
    await c.write(3 * MiB, randomBytes(4096));
    await new Promise((r) => setTimeout(r, 200));
    expect(b.s.backend.calls).toBe(0);
    expect(set.policy!.state("r-b")).toBe("out-of-sync");
    record.copied("r-b", b.uri);
    await until("the catch-up", () => set.policy!.state("r-b") === "in-sync");
    expect(record.inSyncMarks).toEqual([{ id: "r-b", kind: "incremental", bytes: 2 * 64 * 1024 }]);
    expect(b.s.backend.data.equals(a.s.backend.data)).toBe(true);
    expect(record.tracked).toHaveLength(1);
  });

  it("keeps its tracking map across a restart (no new token); a frontend without the map tracks anew with another token", async () => {
    const a = await named("r-a");
    const dir = stateDir();
    const record = new FakeRecord(["r-a"]);
    const first = synced([a.r], record, { dir });
    await first.warmUp();
    record.add("r-b", "", true);
    await until("the first tracking record", () => record.tracked.length === 1);
    const c = await front(first);
    await c.write(MiB, randomBytes(4096));
    await first.close();
    const a2 = await Replica.open(a.r.address, 2);
    cleanups.push(() => a2.close());
    const second = synced([a2], record, { dir });
    await second.warmUp();
    await new Promise((r) => setTimeout(r, 200));
    expect(record.tracked).toHaveLength(1);
    await second.close();
    // Elsewhere (no map): its writes since are tracked in a new map, whose token voids a copy made for the old one.
    const a3 = await Replica.open(a.r.address, 2);
    cleanups.push(() => a3.close());
    const third = synced([a3], record, { dir: stateDir() });
    await third.warmUp();
    await until("the second tracking record", () => record.tracked.length === 2);
    expect(record.tracked[1]!.token).not.toBe(record.tracked[0]!.token);
    expect(record.replicas[1]!.trackingToken).toBe(record.tracked[1]!.token);
  });

  it("copies everything once copied when its map is not the one the record names", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a"]);
    const set = synced([a.r], record);
    const c = await front(set);
    await c.write(0, randomBytes(MiB));
    record.add("r-b", "", true);
    await until("the tracking record", () => record.tracked.length === 1);
    // The record names another frontend's map (this one's report was overtaken).
    record.replicas[1]!.trackingToken = "0000000000000000";
    record.copied("r-b", b.uri);
    await until("the copy", () => set.policy!.state("r-b") === "in-sync");
    expect(record.inSyncMarks).toEqual([{ id: "r-b", kind: "full", bytes: 4 * MiB }]);
    expect(b.s.backend.data.equals(a.s.backend.data)).toBe(true);
  });

  it("starts with a replica unreachable: it is recorded out-of-sync before the first write is acknowledged", async () => {
    const a = await named("r-a");
    const record = new FakeRecord(["r-a", "r-b"]);
    const gone = { spec: "unix:/nonexistent/sock:r-b", socketPath: "/nonexistent/sock", exportName: "r-b" };
    const set = synced([a.r], record, { unreachable: [gone] });
    const c = await front(set);
    await c.write(0, randomBytes(4096));
    expect(record.marks).toEqual(["r-b"]);
    expect(record.replicas[1]!.inSync).toBe(false);
  });

  it("serves only within its lease: without the record it holds I/O, and once detached from its node it stops for good", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a", "r-b"]);
    record.attachedNodes = ["n1"];
    const set = synced([a.r, b.r], record, { refreshMs: 60_000, leaseMs: 300, node: "n1" });
    const c = await front(set);
    await c.write(0, randomBytes(4096));
    // The controller is out of reach past the lease: requests fail rather than risk a second writer.
    record.available = false;
    await new Promise((r) => setTimeout(r, 350));
    await expect(c.write(0, randomBytes(4096))).rejects.toThrow();
    await expect(c.read(0, 4096)).rejects.toThrow();
    record.available = true;
    await c.write(0, randomBytes(4096));
    // Detached here (and perhaps attached elsewhere): nothing more reaches the replicas.
    record.attachedNodes = ["n2"];
    await new Promise((r) => setTimeout(r, 350));
    const calls = [a.s.backend.calls, b.s.backend.calls];
    await expect(c.write(0, randomBytes(4096))).rejects.toThrow();
    record.attachedNodes = ["n1", "n2"];
    await expect(c.read(0, 4096)).rejects.toThrow();
    expect([a.s.backend.calls, b.s.backend.calls]).toEqual(calls);
  });

  it("finishes a slow (throttled) copy across many reads of the record, reporting progress", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a"]);
    const set = synced([a.r], record, { copyRateBytes: 2 * MiB });
    const c = await front(set);
    await c.write(0, randomBytes(4 * MiB));
    record.add("r-b", b.uri);
    const t0 = Date.now();
    await until("the throttled copy", () => record.inSyncMarks.length > 0, 10_000);
    // 4 MiB at 2 MiB/s: about 2 s, while the record was read every 50 ms.
    expect(Date.now() - t0).toBeGreaterThan(1_500);
    expect(record.reads).toBeGreaterThan(20);
    expect(record.inSyncMarks).toEqual([{ id: "r-b", kind: "full", bytes: 4 * MiB }]);
    expect(set.resyncs).toHaveLength(1);
    const copied = record.progress.map((p) => p.copiedBytes);
    expect(copied.length).toBeGreaterThanOrEqual(1);
    expect(copied).toEqual([...copied].sort((x, y) => x - y));
    expect(b.s.backend.data.equals(a.s.backend.data)).toBe(true);
  });

  it("does not resync while another frontend serves the volume too (a live migration's window)", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a"]);
    record.attachedNodes = ["n1", "n2"];
    const set = synced([a.r], record, { node: "n1" });
    const c = await front(set);
    await c.write(0, randomBytes(MiB));
    record.add("r-b", b.uri);
    await until("the new replica known", () => set.policy?.has("r-b") === true);
    await new Promise((r) => setTimeout(r, 300));
    expect(set.policy!.state("r-b")).toBe("out-of-sync");
    expect(record.inSyncMarks).toEqual([]);
    // The window closes (this frontend stays): the copy runs.
    record.attachedNodes = ["n1"];
    await until("the copy", () => set.policy!.state("r-b") === "in-sync");
    expect(b.s.backend.data.equals(a.s.backend.data)).toBe(true);
  });

  const fullDisk = (s: TestServer) => {
    const write = s.backend.write.bind(s.backend);
    let calls = 0;
    s.backend.write = (req) => {
      calls++;
      req.done(Errno.ENOSPC);
    };
    return { restore: () => (s.backend.write = write), calls: () => calls };
  };

  it("returns ENOSPC (not EIO) when the only replica is full, marks nothing, and takes the write once space is freed", async () => {
    const a = await named("r-a");
    const record = new FakeRecord(["r-a"]);
    const c = await front(synced([a.r], record));
    const before = randomBytes(64 * 1024);
    await c.write(0, before);
    const full = fullDisk(a.s);
    const data = randomBytes(64 * 1024);
    await expect(c.write(MiB, data)).rejects.toMatchObject({ errno: Errno.ENOSPC });
    expect(record.marks).toEqual([]);
    expect((await c.read(0, before.length)).equals(before)).toBe(true);
    full.restore();
    await c.write(MiB, data);
    expect((await c.read(MiB, data.length)).equals(data)).toBe(true);
  });

  it("returns ENOSPC when every in-sync replica is full, and keeps them all in-sync", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a", "r-b"]);
    const set = synced([a.r, b.r], record);
    const c = await front(set);
    const fa = fullDisk(a.s);
    const fb = fullDisk(b.s);
    await expect(c.write(0, randomBytes(4096))).rejects.toMatchObject({ errno: Errno.ENOSPC });
    await expect(c.writeZeroes(0, 4096)).resolves.toBeUndefined();
    expect(record.marks).toEqual([]);
    expect([set.policy!.state("r-a"), set.policy!.state("r-b")]).toEqual(["in-sync", "in-sync"]);
    // One full, the other broken: that is not a full disk, so EIO.
    b.s.backend.write = (req) => req.done(Errno.EIO);
    await expect(c.write(0, randomBytes(4096))).rejects.toMatchObject({ errno: Errno.EIO });
    fa.restore();
    fb.restore();
    await c.write(0, randomBytes(4096));
  });

  it("marks only the full replica out-of-sync when the other took the write, and retries its resync with a growing wait", async () => {
    const saved = { ...NO_SPACE_BACKOFF_MS };
    NO_SPACE_BACKOFF_MS.first = 200;
    NO_SPACE_BACKOFF_MS.max = 800;
    cleanups.push(() => Object.assign(NO_SPACE_BACKOFF_MS, saved));
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a", "r-b"]);
    const set = synced([a.r, b.r], record, { refreshMs: 20 });
    const c = await front(set);
    const full = fullDisk(b.s);
    const data = randomBytes(256 * 1024);
    await c.write(0, data);
    expect(record.marks).toEqual(["r-b"]);
    expect(set.policy!.state("r-b")).toBe("out-of-sync");
    // Refreshes every 20 ms; the resync tries at 200 ms, then waits 400, 800, 800 ms.
    await new Promise((r) => setTimeout(r, 1_600));
    const tries = full.calls();
    expect(tries).toBeGreaterThanOrEqual(2); // the write, then at least one resync attempt
    expect(tries).toBeLessThanOrEqual(1 + 4 * 4); // a handful of attempts (each a few regions), not one per refresh
    expect(set.policy!.state("r-b")).toBe("out-of-sync");
    full.restore();
    await until("the resync once space is back", () => set.policy!.state("r-b") === "in-sync", 5_000);
    expect(b.s.backend.data.equals(a.s.backend.data)).toBe(true);
  });

  it("drops a replica that stops answering (a frozen host) after the stall timeout, and writes go on", async () => {
    const a = await named("r-a", 4 * MiB, 300);
    const b = await named("r-b", 4 * MiB, 300);
    const record = new FakeRecord(["r-a", "r-b"]);
    const set = synced([a.r, b.r], record, { refreshMs: 60_000 });
    const c = await front(set);
    await c.write(0, randomBytes(4096));
    // b takes requests and never answers them.
    b.s.backend.write = () => undefined;
    const t0 = Date.now();
    await c.write(MiB, randomBytes(4096));
    const ms = Date.now() - t0;
    expect(ms).toBeGreaterThanOrEqual(250);
    expect(ms).toBeLessThan(3_000);
    expect(record.marks).toEqual(["r-b"]);
    expect(set.policy!.state("r-b")).toBe("out-of-sync");
    await c.write(2 * MiB, randomBytes(4096));
  });
  it("freeze holds new writes until thaw, once those in flight and the marks they caused are done; reads go on", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const record = new FakeRecord(["r-a", "r-b"]);
    record.markDelayMs = 100;
    const set = synced([a.r, b.r], record, { refreshMs: 60_000 });
    const c = await front(set);
    await c.write(0, Buffer.alloc(4096, 1));
    // A write in flight that b fails: recording b out-of-sync takes 100 ms, and the freeze waits for it.
    const restore = failWrites(b.s);
    const inFlight = c.write(4096, Buffer.alloc(4096, 2));
    await until("b's mark pending", () => set.policy!.state("r-b") === "faulted");
    await set.freeze();
    // Resolved only once the mark was recorded.
    expect(set.policy!.state("r-b")).toBe("out-of-sync");
    expect(record.marks).toEqual(["r-b"]);
    await inFlight;
    restore();
    await expect(set.freeze()).rejects.toThrow(/held already/);
    let acked = false;
    const held = c.write(8192, Buffer.alloc(4096, 3)).then(() => (acked = true));
    expect((await c.read(0, 4096))[0]).toBe(1);
    await new Promise((r) => setTimeout(r, 100));
    expect(acked).toBe(false);
    expect(a.s.backend.data[8192]).toBe(0);
    set.thaw();
    await held;
    expect(a.s.backend.data[8192]).toBe(3);
    expect(set.frozen).toBe(false);
  });
});
