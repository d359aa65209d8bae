// Shipping an image to another store chunk by missing chunk: an index store
// (manifests only) gives the manifest a normal write gives; the receiving store
// (lib/chunks/receive-session.ts) asks for exactly the chunks it lacks, checks what
// comes, leaves nothing behind when the transfer fails, and keeps what it touched
// through a concurrent GC.
import { mkdtempSync, readdirSync, rmSync, utimesSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ChunkStore, CorruptChunkError, type Manifest, type MissingPack, sendMissing, StoreFormatError } from "../../lib/chunks/index.js";
import { PACK_ENTRY_BYTES, PACK_HEADER_BYTES, PACK_PREFIX_BYTES } from "../../lib/chunks/chunk-file.js";
import { InvalidArgumentError } from "../../lib/errors.js";
import { imageBytes, randomBytesSeeded } from "./chunk-fixtures.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "chunk-ship-test-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;

const reader = (img: Buffer) => async (offset: number, length: number) => img.subarray(offset, offset + length);
const source = (img: Buffer) => ({ size: img.length, zeros: [], read: reader(img) });

function entries(m: Manifest) {
  return [...m.entries()];
}

/** Every name under the store's chunks/ (packs count once per chunk). */
function chunkNames(store: ChunkStore): string[] {
  const out: string[] = [];
  for (const shard of readdirSync(join(store.root, "chunks"))) out.push(...readdirSync(join(store.root, "chunks", shard)));
  return out;
}

const files = (store: ChunkStore, sub: string) => readdirSync(join(store.root, sub));

async function restoreToBuffer(store: ChunkStore, name: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  await store.restore(name, new Writable({ write: (c: Buffer, _e, cb) => (parts.push(Buffer.from(c)), cb()) }));
  return Buffer.concat(parts);
}

/** The packs of the chunks `target` lacks for image `img`, as a sender makes them from its index manifest. */
async function packsFor(index: ChunkStore, name: string, img: Buffer, missing: Buffer, level: number): Promise<MissingPack[]> {
  const packs: MissingPack[] = [];
  await sendMissing(await index.manifest(name), missing, reader(img), level, async (p) => void packs.push(p));
  return packs;
}

/** Ships `name` (image `img`, already in `index`) to `target`; returns the receive stats and what was sent. */
async function ship(index: ChunkStore, target: ChunkStore, name: string, img: Buffer) {
  const session = await target.receive(name, await index.manifestFile(name));
  try {
    const packs = await packsFor(index, name, img, session.missing, session.zstdLevel);
    for (const p of packs) await session.addPack(p.ids, p.pack);
    const stats = await session.commit();
    return { stats, missing: session.missing.length / 32, sentBytes: packs.reduce((n, p) => n + p.pack.length, 0) };
  } finally {
    await session.close();
  }
}

describe("index stores", () => {
  it("give exactly the manifest a normal full write gives, and store nothing", async () => {
    const img = imageBytes(24 * MiB, 7, [[3 * MiB, 9 * MiB]]);
    const store = await ChunkStore.open(join(dir, "store"));
    const index = await ChunkStore.open(join(dir, "index"), { indexOnly: true });
    for (const workers of [undefined, 0]) {
      const name = `img-w${workers ?? "default"}`;
      const a = await store.write(name, source(img), { workers });
      const b = await index.write(name, source(img), { workers });
      expect(entries(await index.manifest(name))).toEqual(entries(await store.manifest(name)));
      expect(b.newChunks).toBe(0);
      expect(b.storedBytes).toBe(0);
      expect(b.chunks).toBe(a.chunks);
    }
    expect(chunkNames(index)).toEqual([]);
    expect(files(index, "tmp")).toEqual([]);
    expect(chunkNames(store).length).toBeGreaterThan(100);
    // The kind of store is part of it: neither opens as the other.
    await expect(ChunkStore.open(join(dir, "index"))).rejects.toBeInstanceOf(StoreFormatError);
    await expect(ChunkStore.open(join(dir, "store"), { indexOnly: true })).rejects.toBeInstanceOf(StoreFormatError);
  });

  it("give exactly the manifest a normal incremental write gives", async () => {
    const base = imageBytes(16 * MiB, 11, [[10 * MiB, 14 * MiB]]);
    const next = Buffer.from(base);
    randomBytesSeeded(64 * 1024, 5).copy(next, 2 * MiB + 4096);
    randomBytesSeeded(200_000, 6).copy(next, 11 * MiB);
    const changed = [
      { offset: 2 * MiB, length: 128 * 1024 },
      { offset: 11 * MiB, length: 256 * 1024 },
    ];
    const store = await ChunkStore.open(join(dir, "store"));
    const index = await ChunkStore.open(join(dir, "index"), { indexOnly: true });
    for (const s of [store, index]) {
      await s.write("v@1", source(base));
      await s.writeIncremental("v@2", "v@1", { size: next.length, changed, read: reader(next) });
    }
    const want = entries(await store.manifest("v@2"));
    expect(entries(await index.manifest("v@2"))).toEqual(want);
    // And the full write of the new image agrees (the incremental is not a forced-cut one).
    await store.write("v@2-full", source(next));
    expect(entries(await store.manifest("v@2-full"))).toEqual(want);
    expect(chunkNames(index)).toEqual([]);
  });
});

describe("receiving an image", () => {
  it("asks for and stores only the chunks the store lacks", async () => {
    const a = imageBytes(16 * MiB, 21, [[12 * MiB, 13 * MiB]]);
    const b = Buffer.from(a);
    randomBytesSeeded(300_000, 22).copy(b, 5 * MiB);
    const target = await ChunkStore.open(join(dir, "target"));
    const index = await ChunkStore.open(join(dir, "index"), { indexOnly: true });
    await target.write("a@1", source(a));
    await index.write("b@1", source(b));

    const r = await ship(index, target, "b@1", b);
    expect(r.missing).toBeGreaterThan(0);
    expect(r.stats.newChunks).toBe(r.missing);
    // The changed 300 KB and the chunks around it: a small part of 15 MiB of data.
    expect(r.stats.newBytes).toBeLessThan(1.5 * MiB);
    expect(r.sentBytes).toBeLessThan(1.5 * MiB);
    expect(r.stats.dedupBytes + r.stats.newBytes).toBe(r.stats.dataBytes);
    expect((await restoreToBuffer(target, "b@1")).equals(b)).toBe(true);
    expect(entries(await target.manifest("b@1"))).toEqual(entries(await index.manifest("b@1")));
    expect((await target.verify()).ok).toBe(true);
    expect(files(target, "pending")).toEqual([]);
    expect(files(target, "tmp")).toEqual([]);

    // Into an empty store: everything is sent, and restores.
    const empty = await ChunkStore.open(join(dir, "empty"));
    const all = await ship(index, empty, "b@1", b);
    expect(all.missing).toBe((await index.manifest("b@1")).chunkIds().size);
    expect((await restoreToBuffer(empty, "b@1")).equals(b)).toBe(true);
  });

  it("refuses a chunk whose bytes are not its id's, or one not asked for, and leaves nothing", async () => {
    const img = imageBytes(8 * MiB, 31);
    const target = await ChunkStore.open(join(dir, "target"));
    const index = await ChunkStore.open(join(dir, "index"), { indexOnly: true });
    await index.write("x@1", source(img));
    const manifestFile = await index.manifestFile("x@1");

    // A record whose payload was changed after it was packed.
    let session = await target.receive("x@1", manifestFile);
    const packs = await packsFor(index, "x@1", img, session.missing, session.zstdLevel);
    const bad = Buffer.from(packs[1]!.pack);
    const offset = bad.readUInt32LE(PACK_HEADER_BYTES + PACK_ENTRY_BYTES + PACK_PREFIX_BYTES); // the second record
    bad[offset + 40] ^= 0xff;
    await session.addPack(packs[0]!.ids, packs[0]!.pack);
    await expect(session.addPack(packs[1]!.ids, bad)).rejects.toBeInstanceOf(CorruptChunkError);
    await expect(session.commit()).rejects.toBeInstanceOf(InvalidArgumentError); // chunks never came
    await session.close();
    expect(await target.list()).toEqual([]);
    expect(files(target, "pending")).toEqual([]);
    expect(files(target, "tmp")).toEqual([]);

    // A pack whose ids do not name its records, and one sent twice.
    session = await target.receive("x@1", manifestFile);
    const swapped = Buffer.concat([packs[1]!.ids.subarray(32, 64), packs[1]!.ids.subarray(0, 32), packs[1]!.ids.subarray(64)]);
    await expect(session.addPack(swapped, packs[1]!.pack)).rejects.toBeInstanceOf(CorruptChunkError);
    await session.addPack(packs[1]!.ids, packs[1]!.pack);
    await expect(session.addPack(packs[1]!.ids, packs[1]!.pack)).rejects.toThrow(/sent twice/);
    await session.close();

    // A chunk the store has (so was not asked for).
    await target.write("y@1", source(img));
    session = await target.receive("x@1", manifestFile);
    expect(session.missing.length).toBe(0);
    await expect(session.addPack(packs[0]!.ids, packs[0]!.pack)).rejects.toThrow(/not asked for/);
    await session.close();
    expect(await target.list()).toEqual(["y@1"]);
    expect(files(target, "pending")).toEqual([]);
  });

  it("leaves no manifest, pending record or tmp file after an abort; the next GC takes its chunks", async () => {
    const img = imageBytes(12 * MiB, 41);
    const target = await ChunkStore.open(join(dir, "target"));
    const index = await ChunkStore.open(join(dir, "index"), { indexOnly: true });
    await index.write("z@1", source(img));
    const session = await target.receive("z@1", await index.manifestFile("z@1"));
    const packs = await packsFor(index, "z@1", img, session.missing, session.zstdLevel);
    expect(packs.length).toBeGreaterThan(2);
    for (const p of packs.slice(0, 2)) await session.addPack(p.ids, p.pack);
    expect(files(target, "pending").length).toBe(1);
    await session.close(); // the sender went away
    expect(await target.list()).toEqual([]);
    expect(files(target, "pending")).toEqual([]);
    expect(files(target, "tmp")).toEqual([]);
    const gc = await target.gc({ marginMs: -60_000 }); // nothing is running: anything unreferenced goes
    expect(gc.removedChunks).toBeGreaterThan(0);
    expect(chunkNames(target)).toEqual([]);
  });

  it("keeps the chunks it touched through a GC that runs while it receives", async () => {
    // a = X + Y, b = X + Z: b reuses X's chunks, a's Y chunks become garbage.
    const x = imageBytes(8 * MiB, 51);
    const a = Buffer.concat([x, imageBytes(8 * MiB, 52)]);
    const b = Buffer.concat([x, imageBytes(8 * MiB, 53)]);
    const target = await ChunkStore.open(join(dir, "target"));
    const index = await ChunkStore.open(join(dir, "index"), { indexOnly: true });
    await target.write("a@1", source(a));
    await index.write("b@1", source(b));
    // a's chunks are an hour old: only a touch protects them from the GC below.
    const old = Date.now() / 1000 - 3600;
    for (const shard of readdirSync(join(target.root, "chunks"))) for (const n of readdirSync(join(target.root, "chunks", shard))) utimesSync(join(target.root, "chunks", shard, n), old, old);

    const session = await target.receive("b@1", await index.manifestFile("b@1"));
    try {
      await target.delete("a@1"); // nothing committed references X any more
      const gc = await target.gc({ marginMs: 100 }); // (file times are not exact to the millisecond)
      expect(gc.liveWriters).toBe(1);
      expect(gc.removedChunks).toBeGreaterThan(0); // Y's
      for (const p of await packsFor(index, "b@1", b, session.missing, session.zstdLevel)) await session.addPack(p.ids, p.pack);
      await session.commit();
    } finally {
      await session.close();
    }
    expect((await target.verify()).ok).toBe(true);
    expect((await restoreToBuffer(target, "b@1")).equals(b)).toBe(true);
  });
});
