// The replica set with real NBD connections to in-process memory servers
// standing in for qemu-storage-daemon exports.
import { randomBytes } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { NbdClient } from "../lib/nbd/client.js";
import { NbdDisconnectedError } from "../lib/nbd/errors.js";
import { Cmd, Errno, TxFlag } from "../lib/nbd/protocol.js";
import { NbdServer } from "../lib/nbd/server.js";
import { RawConnection, startMemoryServer, type TestServer } from "../lib/nbd/test-helpers.js";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Replica } from "./replica.js";
import { ReplicaSet } from "./replica-set.js";

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
  async function named(name: string): Promise<{ s: TestServer; r: Replica }> {
    const s = await replicaServer(4 * MiB, { name });
    const r = await Replica.open({ spec: `unix:${s.socketPath}:${name}`, socketPath: s.socketPath, exportName: name }, 2);
    cleanups.push(() => r.close());
    return { s, r };
  }
  const failWrites = (s: TestServer) => {
    s.backend.write = (req) => req.done(Errno.EIO);
  };

  it("records a replica that fails a write out-of-sync before acking, then writes to the others only", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const marks: string[] = [];
    const set = new ReplicaSet([a.r, b.r], undefined, {
      generation: 1,
      recorder: { markOutOfSync: async (id) => (marks.push(id), await new Promise((r) => setTimeout(r, 20)), 2), syncState: async () => ({ generation: 1, outOfSync: [] }) },
    });
    const c = await front(set);
    const one = randomBytes(64 * 1024);
    await c.write(0, one);
    expect(b.s.backend.data.subarray(0, one.length).equals(one)).toBe(true);

    failWrites(b.s);
    const two = randomBytes(64 * 1024);
    // Several writes fail on b at once: one mark, every write acknowledged after it.
    await Promise.all([c.write(MiB, two), c.write(2 * MiB, two), c.flush()]);
    expect(marks).toEqual(["r-b"]);
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
    const set = new ReplicaSet([a.r, b.r], undefined, {
      generation: 1,
      recorder: {
        markOutOfSync: async () => {
          throw new Error("controller unreachable past the deadline");
        },
        syncState: async () => ({ generation: 1, outOfSync: [] }),
      },
    });
    const c = await front(set);
    failWrites(b.s);
    await expect(c.write(0, randomBytes(4096))).rejects.toThrow();
    expect(set.policy!.state("r-b")).toBe("in-sync");
  });

  it("fails reads over to the next in-sync replica", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    const set = new ReplicaSet([a.r, b.r], undefined, { generation: 1, recorder: { markOutOfSync: async () => 2, syncState: async () => ({ generation: 1, outOfSync: [] }) } });
    const c = await front(set);
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
    let asked = 0;
    const set = new ReplicaSet([a.r, b.r], undefined, {
      generation: 1,
      recorder: { markOutOfSync: async () => 3, syncState: async () => (asked++, { generation: 2, outOfSync: ["r-a"] }) },
    });
    const c = await front(set);
    expect((await c.read(0, fresh.length)).equals(fresh)).toBe(true);
    expect(asked).toBe(1);
    expect(set.policy!.state("r-a")).toBe("out-of-sync");
    const callsOnA = a.s.backend.calls;
    await c.write(0, randomBytes(4096));
    expect(a.s.backend.calls).toBe(callsOnA);
  });

  it("fails requests (EIO) while the recorded state cannot be read, and serves once it can", async () => {
    const a = await named("r-a");
    const b = await named("r-b");
    let up = false;
    const set = new ReplicaSet([a.r, b.r], undefined, {
      generation: 1,
      recorder: {
        markOutOfSync: async () => 2,
        syncState: async () => {
          if (!up) throw new Error("no controller");
          return { generation: 1, outOfSync: [] };
        },
      },
    });
    const c = await front(set);
    await expect(c.read(0, 4096)).rejects.toThrow();
    up = true;
    expect((await c.read(0, 4096)).length).toBe(4096);
  });
});
