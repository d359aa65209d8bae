import { describe, expect, it } from "vitest";
import { InternalError, InvalidArgumentError } from "../lib/errors.js";
import { checkPreallocation, cloneArgs, copyArgs, createArgs, infoArgs, mapArgs, parseInfo, parseMap, resizeArgs, revertArgs } from "./qemu-img.js";

// Captured from qemu-img 7.2.22 (Debian 12): `qemu-img create -f qcow2 a.qcow2 1G; qemu-img info --output=json a.qcow2`
const QCOW2_INFO = `{
    "virtual-size": 1073741824,
    "filename": "a.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "dirty-flag": false
}
`;

// Captured: `qemu-img create -f raw b.raw 1M; qemu-img resize -f raw b.raw 2M; qemu-img info --output=json -U b.raw`
const RAW_INFO = `{
    "virtual-size": 2097152,
    "filename": "b.raw",
    "format": "raw",
    "actual-size": 4096,
    "dirty-flag": false
}
`;

describe("qemu-img argument builders", () => {
  it("builds create with format and preallocation", () => {
    expect(createArgs({ path: "/p/v.r-0123abcd.qcow2", format: "qcow2", sizeBytes: 2 ** 30, preallocation: "metadata" })).toEqual([
      "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", "/p/v.r-0123abcd.qcow2", "1073741824",
    ]);
    expect(createArgs({ path: "/p/x.raw", format: "raw", sizeBytes: 4096, preallocation: "falloc" })).toEqual([
      "create", "-q", "-f", "raw", "-o", "preallocation=falloc", "/p/x.raw", "4096",
    ]);
  });

  it("rejects metadata preallocation for raw, bad sizes and relative paths", () => {
    expect(() => createArgs({ path: "/p/x.raw", format: "raw", sizeBytes: 4096, preallocation: "metadata" })).toThrow(InvalidArgumentError);
    expect(() => checkPreallocation("raw", "metadata")).toThrow(/not valid for raw/);
    expect(() => checkPreallocation("qcow2", "metadata")).not.toThrow();
    expect(() => checkPreallocation("vmdk" as never, "off")).toThrow(InvalidArgumentError);
    expect(() => createArgs({ path: "/p/x.raw", format: "raw", sizeBytes: 0, preallocation: "off" })).toThrow(InvalidArgumentError);
    expect(() => createArgs({ path: "/p/x.raw", format: "raw", sizeBytes: 1.5, preallocation: "off" })).toThrow(InvalidArgumentError);
    expect(() => createArgs({ path: "json:{}", format: "raw", sizeBytes: 4096, preallocation: "off" })).toThrow(/not absolute/);
  });

  it("builds info without format probing, optionally sharing the lock", () => {
    expect(infoArgs("/p/a.qcow2", { format: "qcow2" })).toEqual(["info", "--output=json", "-f", "qcow2", "/p/a.qcow2"]);
    expect(infoArgs("/p/a.raw", { format: "raw", forceShare: true })).toEqual(["info", "--output=json", "-f", "raw", "-U", "/p/a.raw"]);
  });

  it("builds resize with -f and optional preallocation, never --shrink", () => {
    expect(resizeArgs({ path: "/p/a.qcow2", format: "qcow2", sizeBytes: 2 * 2 ** 30 })).toEqual([
      "resize", "-q", "-f", "qcow2", "/p/a.qcow2", "2147483648",
    ]);
    expect(resizeArgs({ path: "/p/a.raw", format: "raw", sizeBytes: 8192, preallocation: "full" })).toEqual([
      "resize", "-q", "-f", "raw", "--preallocation=full", "/p/a.raw", "8192",
    ]);
    expect(() => resizeArgs({ path: "/p/a.raw", format: "raw", sizeBytes: 8192, preallocation: "metadata" })).toThrow(InvalidArgumentError);
  });
});

describe("qemu-img info parser", () => {
  it("parses qcow2 output", () => {
    expect(parseInfo(QCOW2_INFO)).toEqual({
      format: "qcow2",
      virtualSizeBytes: 1073741824,
      actualSizeBytes: 200704,
      dirty: false,
      clusterSizeBytes: 65536,
    });
  });

  it("parses raw output", () => {
    expect(parseInfo(RAW_INFO)).toEqual({ format: "raw", virtualSizeBytes: 2097152, actualSizeBytes: 4096, dirty: false });
  });

  it("reports output it cannot use as InternalError", () => {
    expect(() => parseInfo("qemu-img: Could not open 'x'")).toThrow(InternalError);
    expect(() => parseInfo('{"filename": "x"}')).toThrow(/virtual-size/);
    expect(() => parseInfo("[]")).toThrow(InternalError);
  });
});

describe("copyArgs", () => {
  it("overwrites the existing image from an NBD export with O_DIRECT writes, flushed at the end, optionally throttled", () => {
    expect(copyArgs({ sourceUri: "nbd://10.0.0.2:10809/r-1", targetPath: "/p/v.r-2.qcow2", targetFormat: "qcow2", rateLimitBytes: 0 })).toEqual([
      "convert", "-n", "-t", "none", "-f", "raw", "-O", "qcow2", "nbd://10.0.0.2:10809/r-1", "/p/v.r-2.qcow2",
    ]);
    expect(copyArgs({ sourceUri: "nbd+unix:///r-1?socket=/s", targetPath: "/p/x.raw", targetFormat: "raw", rateLimitBytes: 50 << 20 })).toContain("52428800");
  });

  it("refuses a source that is not NBD, a relative target and a bad rate", () => {
    expect(() => copyArgs({ sourceUri: "/etc/passwd", targetPath: "/p/x", targetFormat: "raw", rateLimitBytes: 0 })).toThrow(/not an NBD URI/);
    expect(() => copyArgs({ sourceUri: "json:{}", targetPath: "/p/x", targetFormat: "raw", rateLimitBytes: 0 })).toThrow(/not an NBD URI/);
    expect(() => copyArgs({ sourceUri: "nbd://h:1/e", targetPath: "p/x", targetFormat: "raw", rateLimitBytes: 0 })).toThrow(/not absolute/);
    expect(() => copyArgs({ sourceUri: "nbd://h:1/e", targetPath: "/p/x", targetFormat: "raw", rateLimitBytes: -1 })).toThrow(/rate limit/);
  });
});

describe("snapshot commands", () => {
  it("reverts and clones by tag, reading the source alongside the storage daemon", () => {
    expect(revertArgs("/p/v.r-1.qcow2", "stow-abc")).toEqual(["snapshot", "-a", "stow-abc", "/p/v.r-1.qcow2"]);
    expect(cloneArgs({ sourcePath: "/p/a.qcow2", tag: "stow-abc", targetPath: "/p/b.qcow2" })).toEqual([
      "convert", "-U", "-f", "qcow2", "-l", "snapshot.name=stow-abc", "-O", "qcow2", "-t", "writeback", "/p/a.qcow2", "/p/b.qcow2",
    ]);
  });

  it("refuses tags that could be read as options or other snapshot parameters", () => {
    for (const tag of ["", "-x", "a,b", "a=b", "x".repeat(65), "a b"]) {
      expect(() => revertArgs("/p/a.qcow2", tag), tag).toThrow(/invalid snapshot tag/);
      expect(() => cloneArgs({ sourcePath: "/p/a.qcow2", tag, targetPath: "/p/b" }), tag).toThrow(/invalid snapshot tag/);
    }
    expect(() => cloneArgs({ sourcePath: "a.qcow2", tag: "t", targetPath: "/p/b" })).toThrow(/not absolute/);
  });
});

// Captured from qemu-img 7.2.22: a 64 MiB linked clone over a template with data at [0, 16M),
// the clone holding data at 1M and zeros at 4M (`qemu-img map --output=json c.qcow2`).
const CLONE_MAP = `[{ "start": 0, "length": 1048576, "depth": 1, "present": true, "zero": false, "data": true, "offset": 327680},
{ "start": 1048576, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680},
{ "start": 2097152, "length": 2097152, "depth": 1, "present": true, "zero": false, "data": true, "offset": 2424832},
{ "start": 4194304, "length": 1048576, "depth": 0, "present": true, "zero": true, "data": false},
{ "start": 5242880, "length": 11534336, "depth": 1, "present": true, "zero": false, "data": true, "offset": 5570560},
{ "start": 16777216, "length": 50331648, "depth": 1, "present": false, "zero": true, "data": false}]
`;

describe("qemu-img map", () => {
  it("builds the command with the format given, never probed", () => {
    expect(mapArgs("/p/v.r-1.qcow2", "qcow2")).toEqual(["map", "--output=json", "-f", "qcow2", "/p/v.r-1.qcow2"]);
    expect(() => mapArgs("v.qcow2", "qcow2")).toThrow(/not absolute/);
  });

  it("parses the extents of an image and its backing chain", () => {
    const m = parseMap(CLONE_MAP);
    expect(m).toHaveLength(6);
    expect(m[1]).toEqual({ start: 1048576, length: 1048576, depth: 0, present: true, zero: false, data: true });
    expect(m[3]).toEqual({ start: 4194304, length: 1048576, depth: 0, present: true, zero: true, data: false });
    expect(m[5]).toEqual({ start: 16777216, length: 50331648, depth: 1, present: false, zero: true, data: false });
  });

  it("refuses output it cannot read", () => {
    expect(() => parseMap("nope")).toThrow(InternalError);
    expect(() => parseMap("{}")).toThrow(/no list/);
    expect(() => parseMap('[{"start": 0}]')).toThrow(/lacks start, length or depth/);
  });
});
