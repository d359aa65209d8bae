// Incremental writes (lib/chunks/incremental.ts): a new image stored on top of a
// base manifest from its changed ranges and random reads of the new bytes.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AlreadyExistsError, InvalidArgumentError } from "../../lib/errors.js";
import { type ByteRange, ChunkStore, type ChunkerKind, ShortReadError } from "../../lib/chunks/index.js";
import { dirtyRanges } from "../../lib/chunks/incremental.js";
import { imageBytes, pieces, randomBytesSeeded } from "./chunk-fixtures.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "chunk-incremental-test-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const KiB = 1024;
const MiB = 1 << 20;
const CLUSTER = 64 * KiB;
const MAX_CHUNK = 256 * KiB;

async function restoreToBuffer(store: ChunkStore, name: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      parts.push(Buffer.from(chunk));
      cb();
    },
  });
  await store.restore(name, sink);
  return Buffer.concat(parts);
}

/** A seeded generator of small integers. */
function rng(seed: number): (n: number) => number {
  let s = seed >>> 0 || 1;
  return (n) => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s % n;
  };
}

interface Edit {
  offset: number;
  length: number;
  /** Written bytes: random, or zeros. */
  zero?: boolean;
}

/**
 * Applies `edits` to a copy of `base` resized to `size`; returns the new image and
 * the changed ranges a 64 KiB dirty bitmap would report (or the exact edited
 * bytes, with `exact`), as the caller of writeIncremental passes them.
 */
function edit(base: Buffer, size: number, edits: Edit[], seed: number, exact = false): { img: Buffer; changed: ByteRange[] } {
  const img = Buffer.alloc(size);
  base.copy(img, 0, 0, Math.min(size, base.length));
  const spans: [number, number][] = [];
  for (const [i, e] of edits.entries()) {
    const end = Math.min(e.offset + e.length, size);
    if (e.zero) img.fill(0, e.offset, end);
    else randomBytesSeeded(end - e.offset, seed * 1000 + i).copy(img, e.offset);
    spans.push(exact ? [e.offset, end] : [Math.floor(e.offset / CLUSTER) * CLUSTER, Math.min(size, Math.ceil(end / CLUSTER) * CLUSTER)]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  const merged: [number, number][] = [];
  for (const s of spans) {
    const last = merged[merged.length - 1];
    if (last && last[1] >= s[0]) last[1] = Math.max(last[1], s[1]);
    else merged.push([...s]);
  }
  return { img, changed: merged.map(([a, b]) => ({ offset: a, length: b - a })) };
}

/** read() over an in-memory image, counting what it hands out. */
function reader(img: Buffer) {
  const r = { bytes: 0, calls: 0, read: async (offset: number, length: number) => {
    r.bytes += length;
    r.calls++;
    expect(offset + length).toBeLessThanOrEqual(img.length);
    return Buffer.from(img.subarray(offset, offset + length));
  } };
  return r;
}

/** Scattered edits: many small ones, some large, some zeros, the very start and end, across cluster and chunk boundaries. */
function scatteredEdits(size: number, count: number, seed: number): Edit[] {
  const r = rng(seed);
  const edits: Edit[] = [
    { offset: 0, length: 1 + r(5000) },
    { offset: size - 1 - r(3000), length: 4000 },
  ];
  for (let i = 0; i < count; i++) {
    const kind = r(6);
    const length = kind === 0 ? 1 + r(16) : kind === 1 ? 200 * KiB + r(300 * KiB) : kind === 2 ? CLUSTER : 4 * KiB;
    edits.push({ offset: r(size - length), length, zero: kind === 3 });
  }
  return edits;
}

const manifestEntries = async (store: ChunkStore, name: string) => [...(await store.manifest(name)).entries()];

describe.each<ChunkerKind>(["cdc", "fixed"])("incremental write (%s chunker)", (chunker) => {
  it("restores the new image exactly after scattered changes and growth, reads little, and makes the manifest a full write makes", async () => {
    const store = await ChunkStore.open(join(dir, "store"), { chunker });
    const base = imageBytes(24 * MiB, 31, [
      [3 * MiB, 7 * MiB + 123],
      [20 * MiB, 21 * MiB],
    ]);
    await store.write("b0", pieces(base));
    // Grown by an unaligned amount; one edit writes into the former zero region.
    const edits = [...scatteredEdits(24 * MiB, 40, 5), { offset: 5 * MiB + 777, length: 3000 }];
    const { img, changed } = edit(base, 25 * MiB + 12345, edits, 1);
    const r = reader(img);
    const s = await store.writeIncremental("b1", "b0", { size: img.length, changed, read: r.read, labels: { volume: "v" } });

    expect((await restoreToBuffer(store, "b1")).equals(img)).toBe(true);
    expect(s.logicalBytes).toBe(img.length);
    expect(s.reusedBytes + s.rechunkedBytes).toBe(img.length);
    expect(s.readBytes).toBe(r.bytes);
    expect(s.reads).toBe(r.calls);
    expect(s.forcedCuts).toBe(0);
    expect(s.missingBaseChunks).toBe(0);
    expect(s.dataBytes).toBe(s.newBytes + s.dedupBytes);
    // Reads: the changed bytes, plus per changed region at most the chunk before it and a few after.
    const regions = dirtyRanges(changed, img.length, base.length).length;
    expect(s.changedBytes).toBeGreaterThan(0);
    expect(s.readBytes).toBeLessThanOrEqual(s.changedBytes + regions * (3 * MAX_CHUNK + CLUSTER));
    if (chunker === "fixed") expect(s.readBytes).toBe(s.changedBytes); // whole clusters: nothing around them
    else expect(s.readBytes).toBeLessThanOrEqual(s.changedBytes + regions * 2 * MAX_CHUNK);
    expect(s.newBytes).toBeLessThanOrEqual(s.readBytes);
    expect((await store.manifest("b1")).header.labels).toEqual({ volume: "v" });

    // The same image written in full: the same entries (so dedup and later increments are as good).
    await store.write("full", pieces(img));
    expect(await manifestEntries(store, "b1")).toEqual(await manifestEntries(store, "full"));
    const report = await store.verify();
    expect(report.ok).toBe(true);
  });

  it("handles a shrunk image, unaligned exact ranges, no change at all, and an empty base", async () => {
    const store = await ChunkStore.open(join(dir, "store"), { chunker });
    const base = imageBytes(8 * MiB, 41, [[MiB, 2 * MiB]]);
    await store.write("b0", pieces(base));

    const same = reader(base);
    const s0 = await store.writeIncremental("same", "b0", { size: base.length, changed: [], read: same.read });
    expect(same.bytes).toBe(0);
    expect(s0.newChunks).toBe(0);
    expect(s0.reusedBytes).toBe(base.length);

    const shrunk = edit(base, 6 * MiB + 999, [{ offset: 100, length: 10 }, { offset: 1.5 * MiB, length: 5, zero: false }, { offset: 3 * MiB + 1, length: 70 * KiB }], 2, true);
    const s1 = await store.writeIncremental("shrunk", "b0", { size: shrunk.img.length, changed: shrunk.changed, read: reader(shrunk.img).read });
    expect(s1.logicalBytes).toBe(shrunk.img.length);
    expect((await restoreToBuffer(store, "shrunk")).equals(shrunk.img)).toBe(true);

    await store.write("empty", pieces(Buffer.alloc(0)));
    const grown = imageBytes(3 * MiB + 5, 43);
    const s2 = await store.writeIncremental("from-empty", "empty", { size: grown.length, changed: [], read: reader(grown).read });
    expect(s2.readBytes).toBe(grown.length);
    expect((await restoreToBuffer(store, "from-empty")).equals(grown)).toBe(true);

    const zeroed = edit(base, base.length, [{ offset: 0, length: base.length, zero: true }], 3);
    const s3 = await store.writeIncremental("zeroed", "b0", { size: base.length, changed: zeroed.changed, read: reader(zeroed.img).read });
    expect(s3.zeroBytes).toBe(base.length);
    expect(s3.chunks).toBe(0);
    expect([...(await store.manifest("zeroed")).entries()]).toEqual([{ offset: 0, length: base.length, id: null }]);
    expect((await store.verify()).ok).toBe(true);
  });

  it("reads nothing of the ranges known to be zeros: a large growth and a discarded range", async () => {
    const store = await ChunkStore.open(join(dir, "store"), { chunker });
    const base = imageBytes(8 * MiB, 45);
    await store.write("b0", pieces(base));
    const size = 72 * MiB + 100;
    const { img, changed } = edit(base, size, [{ offset: 2 * MiB, length: MiB, zero: true }, { offset: 40 * MiB, length: CLUSTER }], 46);
    const zeros = [
      { offset: 2 * MiB, length: MiB },
      { offset: 8 * MiB, length: 32 * MiB },
      { offset: 40 * MiB + CLUSTER, length: size - 40 * MiB - CLUSTER },
    ];
    const r = reader(img);
    const s = await store.writeIncremental("b1", "b0", { size, changed, zeros, read: r.read });
    expect(s.readBytes).toBe(r.bytes);
    expect(s.readBytes).toBeLessThan(5 * MAX_CHUNK + CLUSTER);
    expect((await restoreToBuffer(store, "b1")).equals(img)).toBe(true);
    await store.write("full", pieces(img));
    expect(await manifestEntries(store, "b1")).toEqual(await manifestEntries(store, "full"));
  });

  it("restores every image of a chain of five increments, each on the previous one", async () => {
    const store = await ChunkStore.open(join(dir, "store"), { chunker });
    let img = imageBytes(12 * MiB, 51, [[4 * MiB, 6 * MiB]]);
    await store.write("v0", pieces(img));
    const images = [img];
    for (let i = 1; i <= 5; i++) {
      const size = img.length + (i % 2 ? 300 * KiB + i : 0);
      const next = edit(img, size, scatteredEdits(img.length, 15, 60 + i), 60 + i);
      const r = reader(next.img);
      const s = await store.writeIncremental(`v${i}`, `v${i - 1}`, { size, changed: next.changed, read: r.read });
      expect(s.readBytes).toBeLessThan(size / 2);
      img = next.img;
      images.push(img);
    }
    // Older versions go; what the newest needs stays.
    for (let i = 0; i < 4; i++) await store.delete(`v${i}`);
    await store.gc({ marginMs: 0 });
    expect((await store.verify()).ok).toBe(true);
    for (const i of [4, 5]) expect((await restoreToBuffer(store, `v${i}`)).equals(images[i]!)).toBe(true);
    await store.write("full", pieces(img));
    expect(await manifestEntries(store, "v5")).toEqual(await manifestEntries(store, "full"));
  });

  it("still restores exactly when boundaries are forced to meet at once", async () => {
    const store = await ChunkStore.open(join(dir, "store"), { chunker });
    const base = imageBytes(8 * MiB, 71);
    await store.write("b0", pieces(base));
    const { img, changed } = edit(base, base.length, scatteredEdits(base.length, 20, 72), 72);
    const s = await store.writeIncremental("b1", "b0", { size: img.length, changed, read: reader(img).read, resyncChunks: 0 });
    if (chunker === "cdc") expect(s.forcedCuts).toBeGreaterThan(0);
    expect((await restoreToBuffer(store, "b1")).equals(img)).toBe(true);
    // And an increment on top of that one.
    const next = edit(img, img.length, scatteredEdits(img.length, 10, 73), 73);
    await store.writeIncremental("b2", "b1", { size: img.length, changed: next.changed, read: reader(next.img).read });
    expect((await restoreToBuffer(store, "b2")).equals(next.img)).toBe(true);
    expect((await store.verify()).ok).toBe(true);
  });
});

describe("incremental write and the GC", () => {
  it("never loses a chunk while its base is deleted and collected mid-write: what the GC took is read and stored again", async () => {
    const store = await ChunkStore.open(join(dir, "store"));
    const base = imageBytes(16 * MiB, 81);
    await store.write("b0", pieces(base));
    await new Promise((r) => setTimeout(r, 200)); // b0's chunks are now older than the next write's start
    const { img, changed } = edit(base, base.length, [
      { offset: 2 * MiB, length: 100 * KiB },
      { offset: 8 * MiB, length: 64 * KiB },
      { offset: 13 * MiB, length: 64 * KiB },
    ], 82);

    // Pause inside the read of the second range: the chunks before it are reused (touched), those after are not yet.
    let resume!: () => void;
    const paused = new Promise<void>((r) => (resume = r));
    let reachedHalf!: () => void;
    const half = new Promise<void>((r) => (reachedHalf = r));
    const r = reader(img);
    const read = async (offset: number, length: number) => {
      if (offset >= 7 * MiB && offset < 9 * MiB) {
        reachedHalf();
        await paused;
      }
      return r.read(offset, length);
    };
    const writing = store.writeIncremental("b1", "b0", { size: img.length, changed, read });
    await half;

    await store.delete("b0");
    const gcs = [];
    for (let i = 0; i < 3; i++) gcs.push(await store.gc({ marginMs: 50 }));
    expect(gcs[0]!.liveWriters).toBe(1);
    expect(gcs[0]!.removedChunks).toBeGreaterThan(0); // the second half: nothing protects it yet
    expect(gcs[0]!.keptRecent).toBeGreaterThan(0); // the first half: touched by the write

    resume();
    const s = await writing;
    expect(s.missingBaseChunks).toBeGreaterThan(0);
    expect(s.missingBaseChunks).toBeLessThanOrEqual(gcs[0]!.removedChunks);
    const report = await store.verify();
    expect(report.ok).toBe(true);
    expect(report.missing).toEqual([]);
    expect((await restoreToBuffer(store, "b1")).equals(img)).toBe(true);
  });

  it("runs GCs in a loop against a sequence of increments, each base deleted after use", async () => {
    const store = await ChunkStore.open(join(dir, "store"));
    let img = imageBytes(6 * MiB, 91);
    await store.write("v0", pieces(img));
    let stop = false;
    let runs = 0;
    const gcLoop = (async () => {
      while (!stop) {
        await store.gc({ marginMs: 50 });
        runs++;
        await new Promise((r) => setImmediate(r));
      }
    })();
    for (let i = 1; i <= 6; i++) {
      const next = edit(img, img.length, scatteredEdits(img.length, 8, 92 + i), 92 + i);
      const r = reader(next.img);
      // Reads that yield, so GC steps run in between.
      const read = async (offset: number, length: number) => {
        await new Promise((res) => setTimeout(res, 1));
        return r.read(offset, length);
      };
      await store.writeIncremental(`v${i}`, `v${i - 1}`, { size: img.length, changed: next.changed, read });
      await store.delete(`v${i - 1}`);
      img = next.img;
      const seen = runs;
      while (runs === seen) await new Promise((res) => setTimeout(res, 5)); // a whole GC after the delete
    }
    stop = true;
    await gcLoop;
    expect(runs).toBeGreaterThanOrEqual(6);
    expect((await store.verify()).ok).toBe(true);
    expect((await restoreToBuffer(store, "v6")).equals(img)).toBe(true);
  });
});

describe("incremental write arguments", () => {
  it("refuses unsorted or overlapping ranges, a short read, an existing name, and a missing base, leaving nothing pending", async () => {
    const store = await ChunkStore.open(join(dir, "store"));
    const base = imageBytes(2 * MiB, 99);
    await store.write("b0", pieces(base));
    const read = reader(base).read;
    await expect(store.writeIncremental("x", "b0", { size: base.length, changed: [{ offset: MiB, length: 10 }, { offset: 0, length: 10 }], read })).rejects.toThrow(InvalidArgumentError);
    await expect(store.writeIncremental("x", "b0", { size: base.length, changed: [{ offset: 0, length: 100 }, { offset: 50, length: 10 }], read })).rejects.toThrow(InvalidArgumentError);
    await expect(store.writeIncremental("x", "b0", { size: base.length, changed: [{ offset: 0, length: 100 }], read: async () => Buffer.alloc(5) })).rejects.toThrow(ShortReadError);
    await expect(store.writeIncremental("b0", "b0", { size: base.length, changed: [], read })).rejects.toThrow(AlreadyExistsError);
    await expect(store.writeIncremental("x", "nope", { size: base.length, changed: [], read })).rejects.toThrow(/not found|nope/);
    expect(await store.list()).toEqual(["b0"]);
    expect((await store.gc({ marginMs: 0 })).liveWriters).toBe(0);
  });
});
