// The replica set with real NBD connections to in-process memory servers
// standing in for qemu-storage-daemon exports.
import { randomBytes } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { NbdClient } from "../lib/nbd/client.js";
import { NbdDisconnectedError } from "../lib/nbd/errors.js";
import { Errno, TxFlag } from "../lib/nbd/protocol.js";
import { NbdServer } from "../lib/nbd/server.js";
import { startMemoryServer, type TestServer } from "../lib/nbd/test-helpers.js";
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

/** An NBD server in front of the set, and a client of it: the frontend minus the process. */
async function front(set: ReplicaSet): Promise<NbdClient> {
  const dir = mkdtempSync(join(tmpdir(), "frontend-test-"));
  const server = new NbdServer({ name: "vol", backend: set });
  set.onBusy = (b) => server.setBackendBusy(b);
  await server.listenUnix(join(dir, "front.sock"));
  const c = await NbdClient.connect({ socketPath: join(dir, "front.sock"), exportName: "vol" });
  cleanups.push(async () => {
    c.destroy();
    await server.shutdown(1_000);
    rmSync(dir, { recursive: true, force: true });
  });
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
});
