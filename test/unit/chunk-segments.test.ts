// The parallel write (segments cut by worker threads, stitched on the event loop)
// must make exactly the manifest the sequential one makes, chunk for chunk, and the
// WebAssembly cut must cut exactly where cdcCut() does.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CDC_WASM, wasmCutter } from "../../lib/chunks/cdc-wasm.js";
import { CDC_DEFAULTS, cdcCut, cdcTables } from "../../lib/chunks/chunker.js";
import { ChunkStore, type ChunkerKind } from "../../lib/chunks/index.js";
import { imageBytes, pieces, randomBytesSeeded } from "./chunk-fixtures.js";

const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "chunk-segments-test-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** Writes `img` sequentially and in segments of `segment` bytes; both manifests' entries must be the same. */
async function sameManifests(kind: ChunkerKind, img: Buffer, segment: number) {
  const store = await ChunkStore.open(join(dir, kind), { chunker: kind });
  const n = (await store.list()).length;
  const seq = await store.write(`seq${n}`, pieces(img), { workers: 0 });
  const par = await store.write(`par${n}`, pieces(img), { workers: 2, readSize: segment });
  const a = [...(await store.manifest(`seq${n}`)).entries()];
  const b = [...(await store.manifest(`par${n}`)).entries()];
  expect(b.length).toBe(a.length);
  expect(b).toEqual(a);
  expect(par.logicalBytes).toBe(img.length);
  expect(par.newChunks).toBe(0); // the same chunks: all found
  expect(seq.dataBytes).toBe(par.dataBytes);
  // The same image read by offset, told where its zeros are (as NBD block status
  // says, in 4 KiB blocks): long runs of them are skipped, none of them is read.
  const zeros = zeroBlocks(img, 4 * KiB);
  let readZeros = 0;
  const source = {
    size: img.length,
    zeros,
    read: async (offset: number, length: number) => {
      readZeros += zeros.filter((z) => z.offset < offset + length && offset < z.offset + z.length).length;
      return img.subarray(offset, offset + length);
    },
  };
  const byRange = await store.write(`range${n}`, source, { workers: 2, readSize: segment });
  expect([...(await store.manifest(`range${n}`)).entries()]).toEqual(a);
  expect(byRange.newChunks).toBe(0);
  expect(readZeros).toBe(0);
  const max = store.config.chunker.max;
  const longZeros = zeros.filter((z) => z.length >= 1 * MiB + max);
  expect(byRange.skippedBytes).toBe(longZeros.reduce((t, z) => t + z.length - max, 0));
  return a;
}

/** Runs of whole all-zero blocks of `grain` bytes (the last one may be short). */
function zeroBlocks(img: Buffer, grain: number): { offset: number; length: number }[] {
  const out: { offset: number; length: number }[] = [];
  for (let at = 0; at < img.length; at += grain) {
    const end = Math.min(at + grain, img.length);
    if (img.subarray(at, end).some((b) => b !== 0)) continue;
    const last = out.at(-1);
    if (last && last.offset + last.length === at) last.length += end - at;
    else out.push({ offset: at, length: end - at });
  }
  return out;
}

describe("parallel write in segments", () => {
  // Zero runs of every kind: short ones inside data, long ones crossing several
  // segments at odd offsets (the worker's zero chunks are then out of phase with
  // the image's), one ending exactly on a segment boundary, and data to the end.
  const shapes: [string, () => Buffer][] = [
    ["random data", () => randomBytesSeeded(5 * MiB + 12345, 21)],
    ["text and random data with short and long zero runs", () =>
      imageBytes(9 * MiB + 777, 22, [
        [100 * KiB + 3, 180 * KiB],
        [700_001, 3 * MiB + 5],
        [4 * MiB - 100, 4 * MiB],
        [5 * MiB, 7 * MiB],
        [8 * MiB + 1, 8 * MiB + 300 * KiB],
      ])],
    ["zeros then one data island then zeros", () => imageBytes(6 * MiB, 23, [[0, 2 * MiB + 4097], [2 * MiB + 70 * KiB, 6 * MiB]])],
    ["all zeros", () => Buffer.alloc(3 * MiB)],
    ["long zeros up to the end, after data", () => imageBytes(5 * MiB + 3, 28, [[1 * MiB + 12345, 5 * MiB + 3]])],
    ["shorter than a segment", () => imageBytes(300 * KiB + 1, 24, [[10 * KiB, 20 * KiB]])],
    ["exactly two segments", () => imageBytes(1 * MiB, 25, [[600 * KiB, 700 * KiB]])],
  ];
  for (const [what, make] of shapes) {
    it(`cuts ${what} exactly as the sequential write does (cdc)`, async () => {
      const img = make();
      await sameManifests("cdc", img, 512 * KiB);
      await sameManifests("cdc", img, 1 * MiB + 1); // rounded up to a multiple of the largest chunk
    });
  }

  it("cuts exactly as the sequential write does with the fixed chunker", async () => {
    await sameManifests("fixed", imageBytes(5 * MiB + 1000, 26, [[1 * MiB + 5, 3 * MiB]]), 512 * KiB);
  });

  it("stores, finds and restores across segments", async () => {
    const img = imageBytes(6 * MiB, 27, [[2 * MiB, 3 * MiB + 17]]);
    const store = await ChunkStore.open(join(dir, "s"));
    const first = await store.write("a", pieces(img), { readSize: 512 * KiB });
    expect(first.newChunks).toBeGreaterThan(0);
    expect(first.storedBytes).toBeLessThan(first.newBytes); // the text compresses
    const again = await store.write("b", pieces(img), { readSize: 768 * KiB });
    expect(again.newChunks).toBe(0);
    expect(again.dedupBytes).toBe(again.dataBytes);
    const out = join(dir, "out");
    await store.restore("a", out);
    const { readFileSync } = await import("node:fs");
    expect(readFileSync(out).equals(img)).toBe(true);
    expect((await store.verify()).ok).toBe(true);
  });
});

describe("WebAssembly cdc cut", () => {
  it("cuts where cdcCut does, on random and on text data, full windows and short tails", () => {
    const { gear, maskHard, maskEasy } = cdcTables(CDC_DEFAULTS);
    const { min, avg, max } = CDC_DEFAULTS;
    const cutter = wasmCutter(CDC_WASM, gear, maskHard, maskEasy, min, avg, max);
    for (const data of [randomBytesSeeded(4 * MiB + 333, 31), imageBytes(4 * MiB, 32), Buffer.alloc(600 * KiB, 7)]) {
      cutter.begin(data);
      let cuts = 0;
      for (let p = 0; p < data.length; cuts++) {
        const end = Math.min(data.length, p + max + 5);
        const n = cutter.cut(p, end);
        expect(n).toBe(cdcCut(gear, maskHard, maskEasy, min, avg, max, data, p, end, p));
        p += n;
      }
      expect(cuts).toBeGreaterThan(data.length / max);
    }
  });
});
