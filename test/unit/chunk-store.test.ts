import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AlreadyExistsError } from "../../lib/errors.js";
import { ChunkStore, MissingChunkError } from "../../lib/chunks/index.js";
import { Layout } from "../../lib/chunks/layout.js";
import { readChunkFile } from "../../lib/chunks/reader.js";
import { imageBytes, pieces, randomBytesSeeded } from "./chunk-fixtures.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "chunk-store-test-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;
const chunkFiles = (root: string) => readdirSync(join(root, "chunks")).flatMap((s) => readdirSync(join(root, "chunks", s)).map((f) => join(root, "chunks", s, f)));

/** Flips a bit near the end of the chunk's own record: in its file, or in the pack its name links to. */
function corruptChunk(path: string): void {
  const bytes = readFileSync(path);
  let end = bytes.length;
  if (bytes.subarray(0, 4).toString("latin1") === "SCP1") {
    const prefix = Buffer.from(path.split("/").pop()!.slice(0, 16), "hex");
    for (let i = 0, at = 8; i < bytes.readUInt32LE(4); i++, at += 16) {
      if (bytes.subarray(at, at + 8).equals(prefix)) end = bytes.readUInt32LE(at + 8) + bytes.readUInt32LE(at + 12);
    }
  }
  bytes[end - 10]! ^= 0x40;
  writeFileSync(path, bytes);
}

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

describe("chunk store", () => {
  it("restores byte for byte, from a file or a stream, into a sparse file or a stream", async () => {
    const img = imageBytes(20 * MiB, 1, [
      [2 * MiB, 9 * MiB],
      [15 * MiB + 17, 16 * MiB],
      [20 * MiB - 5000, 20 * MiB],
    ]);
    writeFileSync(join(dir, "img"), img);
    const store = await ChunkStore.open(join(dir, "store"));
    const a = await store.write("a", join(dir, "img"));
    expect(a.logicalBytes).toBe(img.length);
    expect(a.zeroBytes).toBeGreaterThan(6.5 * MiB);
    expect(a.dataBytes + a.zeroBytes).toBe(img.length);
    expect(a.storedBytes).toBeLessThan(a.newBytes); // the text half compresses
    await store.write("b", pieces(img));

    await store.restore("a", join(dir, "out-a"));
    expect(readFileSync(join(dir, "out-a")).equals(img)).toBe(true);
    // Zero runs are holes: the file has fewer blocks than its size needs.
    expect(statSync(join(dir, "out-a")).blocks * 512).toBeLessThan(img.length - 6 * MiB);
    expect((await restoreToBuffer(store, "b")).equals(img)).toBe(true);
    const c = await store.write("c", pieces(img), { workers: 1 }); // hashed and compressed on a worker thread
    expect(c.dedupBytes).toBe(c.dataBytes);
    await store.write("d", pieces(img.subarray(5000)), { workers: 0 }); // everything on the event loop
    expect((await restoreToBuffer(store, "d")).equals(img.subarray(5000))).toBe(true);
    const m = await store.manifest("a");
    expect(m.header.size).toBe(img.length);
    expect([...m.entries()].filter((e) => e.id === null).length).toBeGreaterThanOrEqual(2);
  });

  it("stores an all-zero image as nothing", async () => {
    const store = await ChunkStore.open(join(dir, "store"));
    const s = await store.write("zeros", pieces(Buffer.alloc(10 * MiB)));
    expect(s.zeroBytes).toBe(10 * MiB);
    expect(s.newChunks).toBe(0);
    expect(chunkFiles(store.root)).toHaveLength(0);
    expect([...(await store.manifest("zeros")).entries()]).toEqual([{ offset: 0, length: 10 * MiB, id: null }]);
    expect((await restoreToBuffer(store, "zeros")).equals(Buffer.alloc(10 * MiB))).toBe(true);
  });

  it("deduplicates two similar images: content-defined chunks survive an insertion, fixed ones do not", async () => {
    const a = imageBytes(16 * MiB, 2);
    const b = Buffer.concat([a.subarray(0, 3 * MiB), randomBytesSeeded(777, 5), a.subarray(3 * MiB, 12 * MiB), randomBytesSeeded(5000, 6), a.subarray(12 * MiB)]);
    const cdc = await ChunkStore.open(join(dir, "cdc"));
    const fixed = await ChunkStore.open(join(dir, "fixed"), { chunker: "fixed" });
    await cdc.write("a", pieces(a));
    await fixed.write("a", pieces(a));
    const cb = await cdc.write("b", pieces(b));
    const fb = await fixed.write("b", pieces(b));
    expect(cb.dedupBytes / cb.dataBytes).toBeGreaterThan(0.9);
    expect(fb.dedupBytes / fb.dataBytes).toBeLessThan(0.25);
    expect((await restoreToBuffer(cdc, "b")).equals(b)).toBe(true);
    expect((await restoreToBuffer(fixed, "b")).equals(b)).toBe(true);
    const counts = await cdc.refcounts();
    expect([...counts.values()].filter((n) => n === 2).length).toBeGreaterThan(counts.size * 0.8);
  });

  it("refuses a name that exists and a name that is not one", async () => {
    const store = await ChunkStore.open(join(dir, "store"));
    await store.write("a", pieces(randomBytesSeeded(MiB, 1)));
    await expect(store.write("a", pieces(randomBytesSeeded(MiB, 2)))).rejects.toThrow(AlreadyExistsError);
    await expect(store.write("../a", pieces(randomBytesSeeded(MiB, 2)))).rejects.toThrow(/invalid manifest name/);
    expect(await store.list()).toEqual(["a"]);
  });

  it("garbage-collects chunks no manifest references, and nothing else", async () => {
    const store = await ChunkStore.open(join(dir, "store"));
    const a = imageBytes(8 * MiB, 3);
    const b = Buffer.concat([a.subarray(0, 4 * MiB), imageBytes(4 * MiB, 4)]);
    await store.write("a", pieces(a));
    await store.write("b", pieces(b));
    const before = chunkFiles(store.root).length;
    await store.delete("a");
    const gc = await store.gc({ marginMs: 50 });
    expect(gc.removedChunks).toBeGreaterThan(0);
    expect(chunkFiles(store.root).length).toBe(before - gc.removedChunks);
    expect((await store.verify()).ok).toBe(true);
    expect((await restoreToBuffer(store, "b")).equals(b)).toBe(true);
    // An unreferenced chunk in a pack b touched a moment ago may wait for the next GC; then only b's chunks are left.
    await new Promise((r) => setTimeout(r, 100));
    await store.gc({ marginMs: 50 });
    expect(chunkFiles(store.root).length).toBe((await store.manifest("b")).chunkIds().size);
    expect((await store.gc({ marginMs: 50 })).removedChunks).toBe(0);
  });

  it("keeps a full write's new chunks in packs, one inode for many names; the GC frees dead packs and rewrites mostly dead ones", async () => {
    const store = await ChunkStore.open(join(dir, "store"));
    const a = imageBytes(12 * MiB, 31);
    const s = await store.write("a", pieces(a), { readSize: 4 * MiB });
    const inodes = new Map<number, { names: number; nlink: number }>();
    for (const f of chunkFiles(store.root)) {
      const st = statSync(f);
      inodes.set(st.ino, { names: (inodes.get(st.ino)?.names ?? 0) + 1, nlink: st.nlink });
    }
    expect(chunkFiles(store.root)).toHaveLength(s.newChunks);
    expect(inodes.size).toBeGreaterThanOrEqual(3); // a pack per 4 MiB segment
    expect(inodes.size).toBeLessThan(s.newChunks / 10);
    for (const { names, nlink } of inodes.values()) expect(nlink).toBe(names); // no other name (tmp/) left
    // Stored bytes are the packs' sizes.
    const sizes = new Map(chunkFiles(store.root).map((f) => [statSync(f).ino, statSync(f).size]));
    expect(s.storedBytes).toBe([...sizes.values()].reduce((x, y) => x + y, 0));
    expect(readdirSync(join(store.root, "tmp"))).toHaveLength(0); // the packs' tmp/ names are gone

    // b shares a's first MiB: after a goes, the packs with no chunk of b left are
    // freed, and the one that keeps b's few is rewritten without the rest.
    const b = Buffer.concat([a.subarray(0, 1 * MiB), imageBytes(4 * MiB, 32)]);
    await store.write("b", pieces(b));
    const bytesOnDisk = () => [...new Map(chunkFiles(store.root).map((f) => [statSync(f).ino, statSync(f).size])).values()].reduce((x, y) => x + y, 0);
    const before = bytesOnDisk();
    await store.delete("a");
    const gcs = [await store.gc({ marginMs: 50 })];
    await new Promise((r) => setTimeout(r, 100)); // b's touches kept its pack's dead names one round
    gcs.push(await store.gc({ marginMs: 50 }));
    expect(gcs.reduce((n, g) => n + g.compactedPacks, 0)).toBeGreaterThanOrEqual(1);
    expect(gcs.reduce((n, g) => n + g.removedBytes, 0)).toBe(before - bytesOnDisk());
    expect(chunkFiles(store.root)).toHaveLength((await store.manifest("b")).chunkIds().size);
    for (const f of chunkFiles(store.root)) {
      const bytes = readFileSync(f);
      if (bytes.subarray(0, 4).toString("latin1") === "SCP1") expect(statSync(f).nlink).toBeGreaterThan(bytes.readUInt32LE(4) / 2);
    }
    expect(readdirSync(join(store.root, "tmp"))).toHaveLength(0);
    expect((await store.verify()).ok).toBe(true);
    expect((await restoreToBuffer(store, "b")).equals(b)).toBe(true);
    expect((await store.gc({ marginMs: 50 })).compactedPacks).toBe(0);
  });

  it("opens a version 1 store (chunk files of their own) as version 2 and reads it alongside packs", async () => {
    const root = join(dir, "store");
    const old = await ChunkStore.open(root);
    const a = imageBytes(3 * MiB, 41);
    await old.write("a", pieces(a));
    // As version 1 kept them: a file of its own per chunk, its record.
    for (const f of chunkFiles(root)) {
      const record = (await readChunkFile(new Layout(root), f.split("/").pop()!))!;
      unlinkSync(f);
      writeFileSync(f, record);
    }
    expect(chunkFiles(root).every((f) => statSync(f).nlink === 1 && readFileSync(f).subarray(0, 4).toString("latin1") === "SCK1")).toBe(true);
    const config = JSON.parse(readFileSync(join(root, "STORE"), "utf8"));
    writeFileSync(join(root, "STORE"), JSON.stringify({ ...config, version: 1 }));
    const store = await ChunkStore.open(root);
    expect(store.config.version).toBe(2);
    expect(JSON.parse(readFileSync(join(root, "STORE"), "utf8")).version).toBe(2);
    const b = Buffer.concat([a, imageBytes(5 * MiB, 42)]);
    const w = await store.write("b", pieces(b));
    expect(w.dedupBytes).toBeGreaterThan(2 * MiB); // found a's chunk files
    expect((await restoreToBuffer(store, "a")).equals(a)).toBe(true);
    expect((await restoreToBuffer(store, "b")).equals(b)).toBe(true);
    expect((await store.verify()).ok).toBe(true);
  });

  it("never removes a chunk a running write has referenced, and the write re-stores what the GC took before it got there", async () => {
    const store = await ChunkStore.open(join(dir, "store"));
    const a = imageBytes(16 * MiB, 8);
    await store.write("a", pieces(a));
    await new Promise((r) => setTimeout(r, 200)); // a's chunks are now older than the next write's start

    // A second write of the same data, paused half-way: it has touched the first
    // half's chunks (they are in the store), not yet the second half's.
    let resume!: () => void;
    const paused = new Promise<void>((r) => (resume = r));
    let reachedHalf!: () => void;
    const half = new Promise<void>((r) => (reachedHalf = r));
    async function* source() {
      yield* pieces(a.subarray(0, 8 * MiB));
      yield a.subarray(8 * MiB, 9 * MiB); // the chunker holds back up to max bytes: feed a little more
      reachedHalf();
      await paused;
      yield* pieces(a.subarray(9 * MiB));
    }
    const writing = store.write("b", source());
    await half;

    await store.delete("a");
    const gcs = [];
    for (let i = 0; i < 3; i++) gcs.push(await store.gc({ marginMs: 50 }));
    expect(gcs[0]!.liveWriters).toBe(1);
    expect(gcs[0]!.removedChunks).toBeGreaterThan(0); // the second half: nothing protects it yet
    expect(gcs[0]!.keptRecent).toBeGreaterThan(0); // the first half: touched by the write

    resume();
    const b = await writing;
    // Exactly what the GCs took before it got there: all three run before it resumes, and
    // under load the later ones took a few chunks the first had kept (CI: 127 against 125).
    expect(b.newChunks).toBe(gcs.reduce((n, g) => n + g.removedChunks, 0));
    const report = await store.verify();
    expect(report.ok).toBe(true);
    expect(report.missing).toEqual([]);
    expect((await restoreToBuffer(store, "b")).equals(a)).toBe(true);
  });

  it("runs GCs in a loop against concurrent writes without losing a chunk", async () => {
    const store = await ChunkStore.open(join(dir, "store"));
    const base = imageBytes(6 * MiB, 11);
    await store.write("base", pieces(base));
    let stop = false;
    let runs = 0;
    const gcLoop = (async () => {
      while (!stop) {
        await store.gc({ marginMs: 50 });
        runs++;
        await new Promise((r) => setImmediate(r));
      }
      return runs;
    })();
    const images: Buffer[] = [];
    // Six writes at least, more while the GCs (slower on a busy machine) have not run a few times alongside.
    for (let i = 0; i < 6 || (runs < 3 && i < 40); i++) {
      // Each image shares most of its data with the previous one, whose manifest is then deleted.
      const img = Buffer.concat([base.subarray(0, (2 + (i % 3)) * MiB), imageBytes(2 * MiB, 100 + i), base.subarray(4 * MiB)]);
      images.push(img);
      await store.write(`img${i}`, pieces(img));
      if (i > 0) await store.delete(`img${i - 1}`);
      if (i === 2) await store.delete("base");
    }
    stop = true;
    expect(await gcLoop).toBeGreaterThan(1);
    expect((await store.verify()).ok).toBe(true);
    expect((await restoreToBuffer(store, `img${images.length - 1}`)).equals(images.at(-1)!)).toBe(true);
  });

  it("verify reports a corrupt and a missing chunk and the manifests they affect; quarantine lets the next write heal", async () => {
    const store = await ChunkStore.open(join(dir, "store"));
    const a = imageBytes(4 * MiB, 21);
    await store.write("a", pieces(a));
    await store.write("a-again", pieces(a));
    const files = chunkFiles(store.root).sort();
    expect(statSync(files[0]!).nlink).toBeGreaterThan(1); // the chunks are in packs
    // Not the last record of its pack: the flip must hit the named chunk only.
    const flipped = files[1]!;
    corruptChunk(flipped);
    unlinkSync(files[0]!);

    const report = await store.verify({ quarantine: true });
    expect(report.ok).toBe(false);
    expect(report.corrupt.map((c) => c.id)).toEqual([flipped.split("/").pop()]);
    expect(report.corrupt[0]!.manifests).toEqual(["a", "a-again"]);
    expect(report.missing.map((c) => c.id)).toEqual([files[0]!.split("/").pop()]);
    expect(report.damagedManifests).toEqual([
      { name: "a", corrupt: 1, missing: 1 },
      { name: "a-again", corrupt: 1, missing: 1 },
    ]);
    await expect(store.restore("a", join(dir, "out"))).rejects.toThrow(MissingChunkError);

    const healed = await store.write("a-healed", pieces(a));
    expect(healed.newChunks).toBe(2);
    expect((await store.verify()).ok).toBe(true);
    expect((await restoreToBuffer(store, "a")).equals(a)).toBe(true);
  });
});
