import { describe, expect, it } from "vitest";
import { markDataRegions, parseMap } from "./allocation.js";

const K = 1024;

describe("allocation map", () => {
  it("parses qemu-img map output and marks the regions that may hold data", () => {
    const extents = parseMap(`[{ "start": 0, "length": 1048576, "depth": 0, "present": false, "zero": true, "data": false},
{ "start": 1048576, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680},
{ "start": 1114112, "length": 4096, "depth": 0, "present": true, "zero": false, "data": false},
{ "start": 1179648, "length": 1000000, "depth": 0, "present": true, "zero": true, "data": false}]`);
    expect(extents).toHaveLength(4);
    const regions = new Uint8Array(40);
    markDataRegions(extents, 64 * K, regions);
    // Region 16 holds data; region 17 is allocated but not known to be zero; zero extents are skipped.
    expect([...regions.keys()].filter((r) => regions[r])).toEqual([16, 17]);
  });

  it("clips extents past the end and rejects what is not a map", () => {
    const regions = new Uint8Array(2);
    markDataRegions([{ start: 64 * K, length: 10 * 64 * K, zero: false, data: true }], 64 * K, regions);
    expect([...regions]).toEqual([0, 1]);
    expect(() => parseMap("{}")).toThrow(/list/);
    expect(() => parseMap('[{"start": "x"}]')).toThrow(/bad extent/);
  });
});
