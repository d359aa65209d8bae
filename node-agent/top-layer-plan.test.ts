import { describe, expect, it } from "vitest";
import type { MapExtent } from "./qemu-img.js";
import { targetServerArgs } from "./top-layer-copy.js";
import { classify, planBytes, planTopLayerCopy, toRequests } from "./top-layer-plan.js";

const K = 1024;
const M = 1024 * K;
const ZERO = 3; // base:allocation hole|zero
const DATA = 0;

/** A fresh linked clone's map: nothing of its own, the template's data at [0, 16M) over 64M. */
const freshTarget: MapExtent[] = [
  { start: 0, length: 16 * M, depth: 1, present: true, zero: false, data: true },
  { start: 16 * M, length: 48 * M, depth: 1, present: false, zero: true, data: false },
];

describe("classify", () => {
  const cases: Record<string, [Parameters<typeof classify>[0], ReturnType<typeof classify>]> = {
    "the source's own data is copied": [{ depth: 1, sourceZero: false, targetOwn: false, targetNonZero: true }, "data"],
    "the source's own zeros over template data are written as zeros": [{ depth: 1, sourceZero: true, targetOwn: false, targetNonZero: true }, "zero"],
    "template data the target reads too is skipped": [{ depth: 2, sourceZero: false, targetOwn: false, targetNonZero: true }, undefined],
    "template data under a stale write of the target is copied": [{ depth: 2, sourceZero: false, targetOwn: true, targetNonZero: true }, "data"],
    "nothing anywhere, nothing on the target: skipped": [{ depth: 0, sourceZero: true, targetOwn: false, targetNonZero: false }, undefined],
    "nothing on the source, data on the target's chain: zeroed": [{ depth: 0, sourceZero: true, targetOwn: false, targetNonZero: true }, "zero"],
    "depth 0 yet data (never seen): copied": [{ depth: 0, sourceZero: false, targetOwn: false, targetNonZero: false }, "data"],
  };
  for (const [name, [facts, want]] of Object.entries(cases)) it(name, () => expect(classify(facts)).toBe(want));
});

describe("planTopLayerCopy", () => {
  it("copies the clone's own ranges only, its explicit zeros as zeros", () => {
    const plan = planTopLayerCopy({
      size: 64 * M,
      // What QEMU 7.2 reports for a clone with data at 1M, zeros at 4M and data at 32M.
      depth: [
        { offset: 0, length: 1 * M, flags: 2 },
        { offset: 1 * M, length: 1 * M, flags: 1 },
        { offset: 2 * M, length: 2 * M, flags: 2 },
        { offset: 4 * M, length: 1 * M, flags: 1 },
        { offset: 5 * M, length: 11 * M, flags: 2 },
        { offset: 16 * M, length: 16 * M, flags: 0 },
        { offset: 32 * M, length: 64 * K, flags: 1 },
        { offset: 32 * M + 64 * K, length: 32 * M - 64 * K, flags: 0 },
      ],
      allocation: [
        { offset: 0, length: 4 * M, flags: DATA },
        { offset: 4 * M, length: 1 * M, flags: ZERO },
        { offset: 5 * M, length: 11 * M, flags: DATA },
        { offset: 16 * M, length: 16 * M, flags: ZERO },
        { offset: 32 * M, length: 64 * K, flags: DATA },
        { offset: 32 * M + 64 * K, length: 32 * M - 64 * K, flags: ZERO },
      ],
      target: freshTarget,
    });
    expect(plan).toEqual([
      { offset: 1 * M, length: 1 * M, kind: "data" },
      { offset: 4 * M, length: 1 * M, kind: "zero" },
      { offset: 32 * M, length: 64 * K, kind: "data" },
    ]);
    expect(planBytes(plan)).toEqual({ data: M + 64 * K, zero: M });
  });

  it("overwrites what the target holds itself where the source reads its template or nothing", () => {
    const plan = planTopLayerCopy({
      size: 64 * M,
      depth: [
        { offset: 0, length: 16 * M, flags: 2 },
        { offset: 16 * M, length: 48 * M, flags: 0 },
      ],
      allocation: [
        { offset: 0, length: 16 * M, flags: DATA },
        { offset: 16 * M, length: 48 * M, flags: ZERO },
      ],
      target: [
        { start: 0, length: 2 * M, depth: 1, present: true, zero: false, data: true },
        { start: 2 * M, length: 64 * K, depth: 0, present: true, zero: false, data: true },
        { start: 2 * M + 64 * K, length: 14 * M - 64 * K, depth: 1, present: true, zero: false, data: true },
        { start: 16 * M, length: 4 * M, depth: 1, present: false, zero: true, data: false },
        { start: 20 * M, length: 64 * K, depth: 0, present: true, zero: false, data: true },
        { start: 20 * M + 64 * K, length: 44 * M - 64 * K, depth: 1, present: false, zero: true, data: false },
      ],
    });
    expect(plan).toEqual([
      { offset: 2 * M, length: 64 * K, kind: "data" },
      { offset: 20 * M, length: 64 * K, kind: "zero" },
    ]);
  });

  it("copies as data what no list describes, and merges adjacent ranges of one kind", () => {
    const plan = planTopLayerCopy({
      size: 8 * M,
      depth: [
        { offset: 0, length: 1 * M, flags: 1 },
        { offset: 1 * M, length: 1 * M, flags: 1 },
        { offset: 2 * M, length: 2 * M, flags: 2 },
      ],
      allocation: [{ offset: 0, length: 8 * M, flags: DATA }],
      target: [{ start: 0, length: 8 * M, depth: 1, present: true, zero: false, data: true }],
    });
    expect(plan).toEqual([
      { offset: 0, length: 2 * M, kind: "data" },
      { offset: 4 * M, length: 4 * M, kind: "data" },
    ]);
  });

  it("a source with no layer of its own over the template needs nothing", () => {
    const plan = planTopLayerCopy({
      size: 64 * M,
      depth: [
        { offset: 0, length: 16 * M, flags: 2 },
        { offset: 16 * M, length: 48 * M, flags: 0 },
      ],
      allocation: [
        { offset: 0, length: 16 * M, flags: DATA },
        { offset: 16 * M, length: 48 * M, flags: ZERO },
      ],
      target: freshTarget,
    });
    expect(plan).toEqual([]);
  });
});

describe("toRequests", () => {
  it("splits data and zeros at their own maximum", () => {
    expect(
      toRequests(
        [
          { offset: 0, length: 5 * M, kind: "data" },
          { offset: 8 * M, length: 5 * M, kind: "zero" },
        ],
        2 * M,
        4 * M,
      ),
    ).toEqual([
      { offset: 0, length: 2 * M, kind: "data" },
      { offset: 2 * M, length: 2 * M, kind: "data" },
      { offset: 4 * M, length: 1 * M, kind: "data" },
      { offset: 8 * M, length: 4 * M, kind: "zero" },
      { offset: 12 * M, length: 1 * M, kind: "zero" },
    ]);
  });
});

describe("targetServerArgs", () => {
  it("serves the image to one client, uncached, exiting when it disconnects (no --persistent)", () => {
    const args = targetServerArgs({ path: "/p/v.r-1.qcow2", socket: "/t/s.sock", pidFile: "/t/p.pid" });
    expect(args).toEqual([
      "--fork", "--pid-file=/t/p.pid", "--socket=/t/s.sock", "--export-name=target",
      "--format=qcow2", "--cache=none", "--aio=native", "--discard=unmap", "/p/v.r-1.qcow2",
    ]);
    expect(args).not.toContain("--persistent");
    expect(() => targetServerArgs({ path: "v.qcow2", socket: "/t/s", pidFile: "/t/p" })).toThrow(/not absolute/);
  });
});
