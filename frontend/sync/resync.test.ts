// The resync copy against real NBD connections to in-process memory servers:
// what it copies, how (straight from the receive arenas, zero runs as
// WRITE_ZEROES), its ordering against live writes, read failover, and that an
// interrupted copy leaves the rest of the map dirty on disk.
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { NbdRequest } from "../../lib/nbd/backend.js";
import { NbdClient } from "../../lib/nbd/client.js";
import { MemoryBackend } from "../../lib/nbd/memory-backend.js";
import { NbdServer } from "../../lib/nbd/server.js";
import { DirtyMap } from "./dirty-map.js";
import { RegionLocks } from "./region-locks.js";
import { copyDirtyRegions, ResyncAborted, type ResyncTarget } from "./resync.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const R = 64 * KiB;
const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A memory backend that logs write kinds and can hold reads back. */
class Backend extends MemoryBackend {
  readonly ops: { kind: "write" | "zeroes"; offset: number; length: number }[] = [];
  heldReads: (() => void)[] | undefined;
  failReads = false;

  override read(req: NbdRequest): void {
    if (this.failReads) return req.done(5);
    if (this.heldReads) this.heldReads.push(() => super.read(req));
    else super.read(req);
  }
  override write(req: NbdRequest): void {
    this.ops.push({ kind: "write", offset: req.offset, length: req.length });
    super.write(req);
  }
  override writeZeroes(req: NbdRequest): void {
    this.ops.push({ kind: "zeroes", offset: req.offset, length: req.length });
    super.writeZeroes(req);
  }
  release(): void {
    const held = this.heldReads ?? [];
    this.heldReads = undefined;
    for (const r of held) r();
  }
}

async function tmp(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "stowage-resync-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function serve(size: number): Promise<{ backend: Backend; client: NbdClient }> {
  const dir = await tmp();
  const backend = new Backend(size);
  const server = new NbdServer({ name: "vol", backend });
  await server.listenUnix(join(dir, "nbd.sock"));
  cleanups.push(() => server.shutdown(2_000));
  const client = await NbdClient.connect({ socketPath: join(dir, "nbd.sock"), exportName: "vol" });
  cleanups.push(() => client.destroy());
  return { backend, client };
}

async function dirtyMap(size: number): Promise<{ map: DirtyMap; path: string }> {
  const path = join(await tmp(), "vol.dirty");
  const { map } = await DirtyMap.open(path, { sizeBytes: size, regionBytes: R, generation: 1 });
  cleanups.push(() => map.close().catch(() => undefined));
  return { map, path };
}

function target(sources: NbdClient[], replica: NbdClient, stillResyncing = () => true): ResyncTarget {
  return { sources: () => sources, replica: () => replica, flush: () => replica.flush(), stillResyncing };
}

function activeLocks(): RegionLocks {
  const locks = new RegionLocks(R);
  locks.activate();
  return locks;
}

describe("copyDirtyRegions", () => {
  it("copies exactly the dirty regions, byte for byte, through many arena reuses, and flushes", async () => {
    const size = 48 * MiB;
    const src = await serve(size);
    const dst = await serve(size);
    randomBytes(size).copy(src.backend.data);
    const { map } = await dirtyMap(size);
    // Everything but regions 100-199 and the last one: runs cross the 4 MiB arenas many times over.
    await map.markDirty(0, 100 * R);
    await map.markDirty(200 * R, size - 201 * R);
    const flushesBefore = dst.backend.flushes;
    const r = await copyDirtyRegions({ map, locks: activeLocks(), target: target([src.client], dst.client), rateBytes: 0 });
    expect(r).toMatchObject({ kind: "incremental", bytes: size - 101 * R });
    expect(map.count).toBe(0);
    expect(dst.backend.flushes).toBe(flushesBefore + 1);
    expect(dst.backend.data.subarray(0, 100 * R).equals(src.backend.data.subarray(0, 100 * R))).toBe(true);
    expect(dst.backend.data.subarray(100 * R, 200 * R).every((b) => b === 0)).toBe(true);
    expect(dst.backend.data.subarray(200 * R, size - R).equals(src.backend.data.subarray(200 * R, size - R))).toBe(true);
    expect(dst.backend.data.subarray(size - R).every((b) => b === 0)).toBe(true);
    // Runs of at most 16 regions, never one across a clean gap.
    expect(Math.max(...dst.backend.ops.map((o) => o.length))).toBe(16 * R);
    expect(dst.backend.ops.some((o) => o.offset < 200 * R && o.offset + o.length > 100 * R)).toBe(false);
  });

  it("sends a run that reads as zeroes as WRITE_ZEROES, and overwrites stale data there", async () => {
    const size = 4 * MiB;
    const src = await serve(size);
    const dst = await serve(size);
    src.backend.data.fill(7, 0, MiB);
    src.backend.data[MiB + 5] = 1; // one byte of data in the second run
    dst.backend.data.fill(9); // stale everywhere
    const { map } = await dirtyMap(size);
    await map.markDirty(0, size);
    await copyDirtyRegions({ map, locks: activeLocks(), target: target([src.client], dst.client), rateBytes: 0, runRegions: 16 });
    expect(dst.backend.data.equals(src.backend.data)).toBe(true);
    expect(dst.backend.ops.sort((a, b) => a.offset - b.offset).map((o) => o.kind)).toEqual(["write", "write", "zeroes", "zeroes"]);
  });

  it("never lands a copy over a newer live write: the write waits for the region, then wins", async () => {
    const size = 2 * MiB;
    const src = await serve(size);
    const dst = await serve(size);
    src.backend.data.fill(1); // the in-sync replica's (older) content
    const { map } = await dirtyMap(size);
    await map.markDirty(0, R);
    const locks = activeLocks();
    src.backend.heldReads = [];
    const copying = copyDirtyRegions({ map, locks, target: target([src.client], dst.client), rateBytes: 0 });
    // The copy holds region 0 and its read is in flight; a live write to region 0 arrives.
    await new Promise((r) => setTimeout(r, 20));
    expect(src.backend.heldReads.length).toBe(1);
    const live = Buffer.alloc(4 * KiB, 2);
    let liveSent = false;
    const liveDone = new Promise<void>((resolve, reject) =>
      locks.enter(4 * KiB, live.length, (token) => {
        liveSent = true;
        dst.client.write(4 * KiB, live).then(() => {
          locks.leave(token);
          resolve();
        }, reject);
      }),
    );
    await new Promise((r) => setTimeout(r, 20));
    expect(liveSent).toBe(false);
    src.backend.release();
    await copying;
    await liveDone;
    expect(dst.backend.data.subarray(0, 4 * KiB).every((b) => b === 1)).toBe(true);
    expect(dst.backend.data.subarray(4 * KiB, 8 * KiB).every((b) => b === 2)).toBe(true);
    expect(dst.backend.data.subarray(8 * KiB, R).every((b) => b === 1)).toBe(true);
  });

  it("reads from the next in-sync replica when one fails", async () => {
    const size = 2 * MiB;
    const bad = await serve(size);
    const good = await serve(size);
    const dst = await serve(size);
    bad.backend.failReads = true;
    bad.backend.data.fill(3);
    good.backend.data.fill(4);
    const { map } = await dirtyMap(size);
    await map.markDirty(0, size);
    await copyDirtyRegions({ map, locks: activeLocks(), target: target([bad.client, good.client], dst.client), rateBytes: 0 });
    expect(dst.backend.data.every((b) => b === 4)).toBe(true);
  });

  it("stops when every source fails, and when the replica stops resyncing; what was not copied stays dirty on disk", async () => {
    const size = 8 * MiB;
    const src = await serve(size);
    const dst = await serve(size);
    src.backend.data.fill(5);
    src.backend.failReads = true;
    const first = await dirtyMap(size);
    await first.map.markDirty(0, size);
    await expect(copyDirtyRegions({ map: first.map, locks: activeLocks(), target: target([src.client], dst.client), rateBytes: 0 })).rejects.toThrow();
    expect(first.map.count).toBe(size / R);

    src.backend.failReads = false;
    const { map, path } = await dirtyMap(size);
    await map.markDirty(0, size);
    let runs = 0;
    // Still resyncing for the first few runs only (checked before each run and at the end).
    const still = () => ++runs <= 3;
    await expect(
      copyDirtyRegions({ map, locks: activeLocks(), target: target([src.client], dst.client, still), rateBytes: 0, parallel: 1 }),
    ).rejects.toBeInstanceOf(ResyncAborted);
    expect(map.dirtyBytes).toBe(size - 3 * MiB);
    await map.flush();
    const again = await DirtyMap.open(path, { sizeBytes: size, regionBytes: R, generation: 1 });
    expect(again.map.dirtyBytes).toBe(size - 3 * MiB);
    expect([...again.map.dirtyRegions()][0]).toBe(3 * MiB / R);
    await again.map.close();
  });
});
