import { describe, expect, it } from "vitest";
import { CDC_DEFAULTS, FIXED_DEFAULTS, chunkStream, createChunker, type Chunker } from "../../lib/chunks/index.js";
import { imageBytes, pieces, randomBytesSeeded } from "./chunk-fixtures.js";

/** Chunk end offsets of `buf`, by calling cut() directly (no zero shortcut). */
function boundaries(chunker: Chunker, buf: Buffer): number[] {
  const ends: number[] = [];
  for (let p = 0; p < buf.length; ) {
    p += chunker.cut(buf, p, Math.min(buf.length, p + chunker.params.max));
    ends.push(p);
  }
  return ends;
}

async function streamBoundaries(chunker: Chunker, source: Buffer | AsyncIterable<Buffer>, len: number): Promise<{ ends: number[]; zeros: number }> {
  const ends: number[] = [];
  let zeros = 0;
  for await (const c of chunkStream(Buffer.isBuffer(source) ? pieces(source, [len]) : source, chunker, 1 << 20)) {
    ends.push(c.offset + c.data.length);
    if (c.zero) zeros += c.data.length;
  }
  return { ends, zeros };
}

describe("cdc chunker", () => {
  const cdc = createChunker(CDC_DEFAULTS);
  const data = randomBytesSeeded(16 << 20, 7);

  it("cuts chunks between min and max, about min + avg (48 KiB) on average", () => {
    const ends = boundaries(cdc, data);
    const sizes = ends.map((e, i) => e - (i ? ends[i - 1]! : 0));
    for (const s of sizes.slice(0, -1)) {
      expect(s).toBeGreaterThanOrEqual(CDC_DEFAULTS.min);
      expect(s).toBeLessThanOrEqual(CDC_DEFAULTS.max);
    }
    const avg = data.length / sizes.length;
    expect(avg).toBeGreaterThan(40 * 1024);
    expect(avg).toBeLessThan(56 * 1024);
  });

  it("cuts as stores made before normalization was a parameter did when it is absent (level 2)", () => {
    const before = { kind: "cdc" as const, min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024, seed: CDC_DEFAULTS.seed };
    const absent = boundaries(createChunker(before), data);
    expect(boundaries(createChunker({ ...before, normalization: 2 }), data)).toEqual(absent);
    expect(boundaries(createChunker({ ...before, normalization: 0 }), data)).not.toEqual(absent);
    // Normalized: sizes bunch around the average (fewer small and large chunks).
    const sizes = absent.map((e, i) => e - (i ? absent[i - 1]! : 0));
    expect(data.length / sizes.length).toBeGreaterThan(64 * 1024);
    expect(data.length / sizes.length).toBeLessThan(88 * 1024);
  });

  it("puts boundaries by content: an insertion near the start moves only the nearby ones", () => {
    const inserted = Buffer.concat([data.subarray(0, 1000), randomBytesSeeded(100, 99), data.subarray(1000)]);
    const before = boundaries(cdc, data);
    const after = new Set(boundaries(cdc, inserted).map((e) => e - 100));
    const moved = before.filter((e) => !after.has(e));
    expect(moved.length).toBeLessThanOrEqual(2);
    expect(Math.max(...moved)).toBeLessThan(2 * CDC_DEFAULTS.max);
  });

  it("fixed chunks, by contrast, all move after an insertion", () => {
    const fixed = createChunker(FIXED_DEFAULTS);
    const inserted = Buffer.concat([data.subarray(0, 1000), randomBytesSeeded(100, 99), data.subarray(1000)]);
    const after = new Set(boundaries(fixed, inserted).map((e) => e - 100));
    expect(boundaries(fixed, data).slice(0, -1).filter((e) => after.has(e)).length).toBe(0);
  });

  it("gives the same chunks however the stream is split, and flags zero chunks", async () => {
    const img = imageBytes(12 << 20, 3, [
      [1 << 20, 5 << 20],
      [(8 << 20) + 123, (9 << 20) + 7],
    ]);
    const direct = boundaries(cdc, img);
    const whole = await streamBoundaries(cdc, img, img.length);
    const split = await streamBoundaries(cdc, pieces(img), img.length);
    expect(whole.ends).toEqual(direct);
    expect(split.ends).toEqual(direct);
    expect(split.zeros).toBeGreaterThan(3.5 * (1 << 20));
    expect(split.zeros).toBeLessThanOrEqual(5 << 20);
  });

  it("cuts in the same place when asked again with more bytes and resumed where it stopped", () => {
    const { max } = CDC_DEFAULTS;
    for (let start = 0; start < 4 << 20; start += 97_531) {
      const whole = cdc.cut(data, start, start + max);
      for (const step of [1000, 16 * 1024, 64 * 1024, 100_000]) {
        let end = start + step;
        let scanned = start;
        let n = cdc.cut(data, start, end, scanned);
        while (n === end - start && end < start + max) {
          scanned = end;
          end = Math.min(start + max, end + step);
          n = cdc.cut(data, start, end, scanned);
        }
        expect(n).toBe(whole);
      }
    }
  });

  it("cuts a long zero run at max, so the zero shortcut changes nothing", () => {
    expect(cdc.cut(Buffer.alloc(CDC_DEFAULTS.max), 0, CDC_DEFAULTS.max)).toBe(CDC_DEFAULTS.max);
  });

  it("rejects inconsistent sizes", () => {
    expect(() => createChunker({ ...CDC_DEFAULTS, avg: 60000 })).toThrow(RangeError);
    expect(() => createChunker({ ...CDC_DEFAULTS, min: CDC_DEFAULTS.avg })).toThrow(RangeError);
    expect(() => createChunker({ ...CDC_DEFAULTS, normalization: 5 })).toThrow(/normalization/);
    expect(() => createChunker({ ...CDC_DEFAULTS, normalization: 1.5 })).toThrow(/normalization/);
  });
});
