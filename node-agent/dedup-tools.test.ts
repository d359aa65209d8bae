import { describe, expect, it } from "vitest";
import { cannotShare, duperemoveCommand, filesystemName, duperemoveProgress, parseDuperemoveLine, parseFilefrag, sharingSavings } from "./dedup-tools.js";

// Captured from filefrag 1.47 on XFS after duperemove deduplicated two qcow2 images.
const FILEFRAG = `Filesystem type is: 58465342
File size of /p/v1.r1.qcow2 is 67436544 (16464 blocks of 4096 bytes)
 ext:     logical_offset:        physical_offset: length:   expected: flags:
   0:        0..      48:         24..        72:     49:             shared
   1:       49..      63:      17176..     17190:     15:         73: unwritten
   2:       64..   15135:        551..     15622:  15072:      17191: shared
   3:    15136..   16463:      32778..     34105:   1328:      15623: last,eof
/p/v1.r1.qcow2: 4 extents found
File size of /p/v2.r2.qcow2 is 67436544 (16464 blocks of 4096 bytes)
 ext:     logical_offset:        physical_offset: length:   expected: flags:
   0:        0..      48:         24..        72:     49:             shared
   1:       49..      63:      17300..     17314:     15:         73: unwritten
   2:       64..   15135:        551..     15622:  15072:      17191: last,shared,eof
/p/v2.r2.qcow2: 3 extents found
`;

describe("filesystems", () => {
  it("names statfs magic numbers and refuses the ones that cannot share extents", () => {
    expect(filesystemName(0x58465342)).toBe("xfs");
    expect(filesystemName(0x9123683en)).toBe("btrfs");
    expect(filesystemName(0xef53)).toBe("ext4");
    expect(filesystemName(0x1234)).toBe("0x1234");
    expect(cannotShare("n1/default", "xfs")).toBeUndefined();
    expect(cannotShare("n1/default", "btrfs")).toBeUndefined();
    expect(cannotShare("n1/default", "ext4")).toBe(
      "pool n1/default is on ext4, which cannot share extents; put it on XFS (mkfs.xfs -m reflink=1) or btrfs",
    );
  });
});

describe("duperemove command", () => {
  it("runs throttled, block-level, with a hash file", () => {
    const c = duperemoveCommand({ dir: "/p", hashfile: "/d/default.hash" });
    expect([c.file, ...c.args].join(" ")).toBe(
      "nice -n 19 ionice -c 3 duperemove -dr --dedupe-options=partial --hashfile=/d/default.hash --io-threads=1 --cpu-threads=1 /p",
    );
  });
});

describe("filefrag", () => {
  it("parses extents with their sharing flag, in bytes", () => {
    const e = parseFilefrag(FILEFRAG);
    expect(e).toHaveLength(7);
    expect(e[0]).toEqual({ file: "/p/v1.r1.qcow2", physicalStart: 24 * 4096, length: 49 * 4096, shared: true });
    expect(e[1]!.shared).toBe(false);
    expect(e[6]).toMatchObject({ file: "/p/v2.r2.qcow2", length: 15072 * 4096, shared: true });
  });

  it("counts each extra reference to a shared physical range as saved", () => {
    expect(sharingSavings(parseFilefrag(FILEFRAG))).toBe((49 + 15072) * 4096);
    expect(sharingSavings([])).toBe(0);
    // Three files sharing one range save two copies; overlapping ranges are merged.
    const r = (s: number, l: number) => ({ file: "f", physicalStart: s, length: l, shared: true });
    expect(sharingSavings([r(0, 100), r(0, 100), r(0, 100)])).toBe(200);
    expect(sharingSavings([r(0, 100), r(50, 100)])).toBe(50);
    expect(sharingSavings([{ ...r(0, 100), shared: false }])).toBe(0);
  });
});

describe("parseDuperemoveLine", () => {
  it("reads the hashing and sharing steps of duperemove 0.11's output", () => {
    // Lines captured from duperemove 0.11 deduplicating three files on XFS.
    expect(parseDuperemoveLine("[2/3] (66.67%) csum: /mnt/x/b c")).toEqual({ step: "hashing", index: 2, count: 3, file: "/mnt/x/b c" });
    expect(parseDuperemoveLine("[0x555e999a80c0] (1/4) Try to dedupe extents with id f2c604d3")).toEqual({ step: "sharing", index: 1, count: 4 });
    for (const other of ["Gathering file list...", "Total files:  3", "[0x555e999a80c0] Skipping - extents are already deduped.", "Found 2 identical extents.", ""]) {
      expect(parseDuperemoveLine(other)).toBeUndefined();
    }
  });
});

describe("duperemoveProgress", () => {
  it("counts the hashed share of the bytes, then the sharing step", () => {
    expect(duperemoveProgress("[1/4] (25.00%) csum: /p/a.qcow2", 400)).toEqual({ doneBytes: 0, itemsDone: 0, itemsTotal: 4, phase: "hashing file 1 of 4 (a.qcow2)" });
    expect(duperemoveProgress("[3/4] (75.00%) csum: /p/c.qcow2", 400)).toMatchObject({ doneBytes: 200, itemsDone: 2 });
    expect(duperemoveProgress("[0x5] (2/7) Try to dedupe extents with id 1", 400)).toEqual({ doneBytes: 400, itemsDone: 1, itemsTotal: 7, phase: "sharing identical extents 2 of 7" });
    expect(duperemoveProgress("Total files:  4", 400)).toBeUndefined();
  });
});
