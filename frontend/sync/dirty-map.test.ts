import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DirtyMap, regionCount } from "./dirty-map.js";

const KiB = 1024;
const MiB = 1024 * KiB;
let dir: string;
let path: string;
const opts = { sizeBytes: 10 * MiB + 512, regionBytes: 64 * KiB, generation: 7 };

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "stowage-dirty-"));
  path = join(dir, "vol.dirty");
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("DirtyMap", () => {
  it("counts regions, including a short last one", async () => {
    expect(regionCount(opts.sizeBytes, opts.regionBytes)).toBe(161);
    const { map, state } = await DirtyMap.open(path, opts);
    expect(state).toBe("created");
    expect(map.regions).toBe(161);
    expect(map.count).toBe(0);
    await map.markDirty(10 * MiB, 512); // the 512-byte last region
    expect(map.dirtyBytes).toBe(512);
    await map.close();
  });

  it("marks every region a write touches, and only those", async () => {
    const { map } = await DirtyMap.open(path, opts);
    await map.markDirty(64 * KiB - 512, 1024); // straddles regions 0 and 1
    await map.markDirty(5 * 64 * KiB, 64 * KiB); // exactly region 5
    await map.markDirty(9 * 64 * KiB + 4096, 0); // a zero-length request still names its region
    expect([...map.dirtyRegions()]).toEqual([0, 1, 5, 9]);
    expect([...map.dirtyRegions(2)]).toEqual([5, 9]);
    expect(map.count).toBe(4);
    expect(map.dirtyBytes).toBe(4 * 64 * KiB);
    expect(() => map.span(opts.sizeBytes, 4096)).toThrow(RangeError);
    expect(() => map.span(-1, 1)).toThrow(RangeError);
    await map.close();
  });

  it("is on disk when markDirty resolves, and survives a reopen", async () => {
    const a = await DirtyMap.open(path, opts);
    await a.map.markDirty(3 * 64 * KiB, 4096);
    await a.map.markDirty(160 * 64 * KiB, 512);
    // No close: what markDirty promised must already be in the file (a crash right now).
    const b = await DirtyMap.open(path, opts);
    expect(b.state).toBe("loaded");
    expect([...b.map.dirtyRegions()]).toEqual([3, 160]);
    await a.map.close();
    await b.map.close();
  });

  it("shares one sync among concurrent marks, and does not sync for an already dirty region", async () => {
    const { map } = await DirtyMap.open(path, opts);
    await Promise.all(Array.from({ length: 50 }, (_, i) => map.markDirty(i * 64 * KiB, 4096)));
    expect(map.count).toBe(50);
    expect(map.syncs).toBeLessThanOrEqual(2);
    const before = map.syncs;
    await map.markDirty(0, 4096);
    await map.markDirty(10, 100);
    expect(map.syncs).toBe(before);
    await map.close();
  });

  it("persists clears with the next flush", async () => {
    const { map } = await DirtyMap.open(path, opts);
    await map.markDirty(0, 3 * 64 * KiB);
    map.clear(1);
    map.clear(1);
    expect([...map.dirtyRegions()]).toEqual([0, 2]);
    await map.flush();
    const again = await DirtyMap.open(path, opts);
    expect([...again.map.dirtyRegions()]).toEqual([0, 2]);
    await again.map.close();
    await map.close();
  });

  it("reports a map of another size, region size or generation as a mismatch and starts empty", async () => {
    const { map } = await DirtyMap.open(path, opts);
    await map.markDirty(0, 4096);
    await map.close();
    for (const other of [{ ...opts, sizeBytes: 20 * MiB }, { ...opts, regionBytes: 128 * KiB }, { ...opts, generation: 8 }]) {
      const o = await DirtyMap.open(path, other);
      expect(o.state).toBe("mismatch");
      expect(o.map.count).toBe(0);
      await o.map.close();
      // Put the original back for the next case.
      const back = await DirtyMap.open(path, opts);
      await back.map.markDirty(0, 4096);
      await back.map.close();
    }
  });

  it("treats a garbage file as a mismatch", async () => {
    await writeFile(path, "not a dirty map");
    const { map, state } = await DirtyMap.open(path, opts);
    expect(state).toBe("mismatch");
    expect(map.full).toBe(false);
    await map.markAll();
    expect(map.count).toBe(map.regions);
    expect(map.dirtyBytes).toBe(opts.sizeBytes);
    map.clear(0);
    await map.close();
    expect((await readFile(path)).subarray(0, 8).toString()).toBe("STOWDIRT");
    // A restart finds the rest of the full copy still to do, and knows it is a full one.
    const again = await DirtyMap.open(path, opts);
    expect(again.state).toBe("loaded");
    expect(again.map.full).toBe(true);
    expect(again.map.count).toBe(again.map.regions - 1);
    await again.map.close();
  });

  it("rejects bad options", async () => {
    await expect(DirtyMap.open(path, { ...opts, regionBytes: 3000 })).rejects.toThrow(/power of two/);
    await expect(DirtyMap.open(path, { ...opts, sizeBytes: 0 })).rejects.toThrow(/bad volume size/);
  });

  it("marks many whole regions with one sync", async () => {
    const { map } = await DirtyMap.open(path, opts);
    const before = map.syncs;
    await map.markRegions([3, 7, 7, 9, 1000, -1]);
    expect([...map.dirtyRegions()]).toEqual([3, 7, 9]);
    expect(map.syncs).toBe(before + 1);
    await map.close();
  });

  it("keeps a tracking token across a reopen, beside the dirty bits, and only on a map that is not a full copy", async () => {
    const { map } = await DirtyMap.open(path, opts);
    expect(map.token).toBe("");
    await map.setToken("0123456789abcdef");
    await map.markDirty(3 * 64 * KiB, 1);
    await map.close();
    const again = await DirtyMap.open(path, opts);
    expect(again.state).toBe("loaded");
    expect(again.map.token).toBe("0123456789abcdef");
    expect([...again.map.dirtyRegions()]).toEqual([3]);
    await expect(again.map.setToken("BAD TOKEN")).rejects.toThrow(RangeError);
    await again.map.markAll();
    await expect(again.map.setToken("fedcba9876543210")).rejects.toThrow(/full copy/);
    await again.map.close();
    // A map of another generation starts over: no token.
    const other = await DirtyMap.open(path, { ...opts, generation: 8 });
    expect(other.state).toBe("mismatch");
    expect(other.map.token).toBe("");
    await other.map.close();
  });
});
