import { describe, expect, it } from "vitest";
import { compareCommand, compressCommand, eligibility, formatAge, parseConvertProgress, parseImageFacts, type ImageFacts } from "./compress-tools.js";

const DAY = 86_400_000;
const NOW = 100 * DAY;
const cold: ImageFacts = { format: "qcow2", exported: false, snapshotCount: 0, mtimeMs: NOW - 8 * DAY, allocatedBytes: 10 << 20, compressedBefore: false };
const FREE = 1 << 30;

describe("eligibility", () => {
  const cases: Record<string, [Partial<ImageFacts>, number, number, { ok: true } | RegExp]> = {
    "a cold, detached qcow2 image without snapshots is rewritten": [{}, 7 * DAY, FREE, { ok: true }],
    "cold-after 0 takes an image written a moment ago": [{ mtimeMs: NOW - 10 }, 0, FREE, { ok: true }],
    "an exported image (volume attached) is left alone": [{ exported: true }, 7 * DAY, FREE, /in use: exported by the storage daemon/],
    "an image with internal snapshots is left alone (convert would lose them)": [{ snapshotCount: 2 }, 7 * DAY, FREE, /has 2 internal snapshots, which a rewrite would lose/],
    "a linked clone is left alone": [{ backingFile: "/p/templates/t.qcow2" }, 7 * DAY, FREE, /a linked clone \(backing file \/p\/templates\/t\.qcow2\)/],
    "an image written 3 days ago is not cold after 7d": [{ mtimeMs: NOW - 3 * DAY }, 7 * DAY, FREE, /written 3d ago, not cold yet \(cold after 7d\)/],
    "a raw image has no compressed clusters": [{ format: "raw" }, 7 * DAY, FREE, /a raw image/],
    "an image we rewrote and nobody changed since is not read again": [{ compressedBefore: true }, 7 * DAY, FREE, /already recompressed, unchanged since/],
    "too little free space for the temporary copy": [{}, 7 * DAY, 1 << 20, /not enough free space for the temporary copy/],
    "exported wins over every other reason": [{ exported: true, snapshotCount: 1, mtimeMs: NOW }, 7 * DAY, FREE, /in use/],
  };
  for (const [name, [facts, coldAfter, free, want]] of Object.entries(cases)) {
    it(name, () => {
      const got = eligibility({ ...cold, ...facts }, coldAfter, NOW, free);
      if (want instanceof RegExp) {
        expect(got.ok).toBe(false);
        expect(got.ok ? "" : got.reason).toMatch(want);
      } else expect(got).toEqual(want);
    });
  }
});

describe("command lines", () => {
  it("rewrites throttled, with zstd 64 KiB clusters, the source format given and the lock taken", () => {
    expect(compressCommand({ src: "/p/v.r-0000abcd.qcow2", tmp: "/p/.v.r-0000abcd.qcow2.tmp-01" })).toEqual({
      file: "nice",
      args: "-n 19 ionice -c 3 qemu-img convert -p -f qcow2 -O qcow2 -c -o compression_type=zstd,cluster_size=65536 -m 1 /p/v.r-0000abcd.qcow2 /p/.v.r-0000abcd.qcow2.tmp-01".split(" "),
    });
    expect(compressCommand({ src: "a", tmp: "b" }).args).not.toContain("-U");
  });

  it("adds a rate limit only when one is set", () => {
    expect(compressCommand({ src: "a", tmp: "b", rateLimitBytes: 50 << 20 }).args.join(" ")).toMatch(/-m 1 -r 52428800 a b$/);
    expect(compressCommand({ src: "a", tmp: "b", rateLimitBytes: 0 }).args).not.toContain("-r");
  });

  it("compares both as qcow2", () => {
    expect(compareCommand("a", "b").args.slice(5)).toEqual(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", "a", "b"]);
  });
});

describe("parseImageFacts", () => {
  it("reads snapshots and the backing file of qemu-img 7.2 output", () => {
    const withSnap = JSON.stringify({
      snapshots: [{ "icount": 0, "vm-clock-nsec": 0, name: "s1", "date-sec": 1, "date-nsec": 0, "vm-clock-sec": 0, id: "1", "vm-state-size": 0 }],
      "virtual-size": 67108864, filename: "v.qcow2", "cluster-size": 65536, format: "qcow2", "actual-size": 200704, "dirty-flag": false,
    });
    expect(parseImageFacts(withSnap)).toEqual({ format: "qcow2", snapshotCount: 1 });
    const clone = JSON.stringify({ "backing-filename": "/p/templates/t.u.qcow2", "backing-filename-format": "qcow2", format: "qcow2", "virtual-size": 1 });
    expect(parseImageFacts(clone)).toEqual({ format: "qcow2", snapshotCount: 0, backingFile: "/p/templates/t.u.qcow2" });
    expect(() => parseImageFacts("qemu-img: oops")).toThrow(/not JSON/);
  });

  it("formats ages by their largest unit", () => {
    expect([formatAge(7 * DAY), formatAge(36 * 3600_000), formatAge(2 * 3600_000), formatAge(90_000), formatAge(5_000)]).toEqual(["7d", "1.5d", "2h", "1.5m", "5s"]);
  });
});

describe("parseConvertProgress", () => {
  it("reads qemu-img's progress lines and nothing else", () => {
    expect(parseConvertProgress("    (0.00/100%)")).toBe(0);
    expect(parseConvertProgress("    (42.17/100%)")).toBeCloseTo(0.4217);
    expect(parseConvertProgress("    (100.00/100%)")).toBe(1);
    expect(parseConvertProgress("")).toBeUndefined();
    expect(parseConvertProgress("qemu-img: error while writing")).toBeUndefined();
  });
});
