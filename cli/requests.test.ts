import { describe, expect, it } from "vitest";
import { ImageFormat, Preallocation } from "../gen/stowage/v1/types.js";
import { parseCountFlag, parsePoolRef, parseSecondsFlag, parseSizeFlag, splitAddresses, UsageError } from "./flags.js";
import { createVolumeRequest, getPoolRequest, listPoolsRequest, resizeVolumeRequest } from "./requests.js";

describe("createVolumeRequest", () => {
  it("maps flags to a CreateVolumeRequest with defaults", () => {
    expect(createVolumeRequest("vm1", { size: "10GiB" })).toEqual({
      spec: {
        name: "vm1",
        sizeBytes: 10 * 2 ** 30,
        replicas: 2,
        format: ImageFormat.IMAGE_FORMAT_QCOW2,
        preallocation: Preallocation.PREALLOCATION_OFF,
        pool: "",
      },
      dryRun: false,
    });
  });

  it("takes every flag", () => {
    const req = createVolumeRequest("db1", {
      size: "4096",
      replicas: "3",
      format: "raw",
      preallocation: "falloc",
      pool: "fast",
      dryRun: true,
    });
    expect(req).toEqual({
      spec: {
        name: "db1",
        sizeBytes: 4096,
        replicas: 3,
        format: ImageFormat.IMAGE_FORMAT_RAW,
        preallocation: Preallocation.PREALLOCATION_FALLOC,
        pool: "fast",
      },
      dryRun: true,
    });
  });

  it("accepts enum labels in any case", () => {
    expect(createVolumeRequest("v", { size: "1M", format: "QCOW2", preallocation: "Metadata" }).spec).toMatchObject({
      format: ImageFormat.IMAGE_FORMAT_QCOW2,
      preallocation: Preallocation.PREALLOCATION_METADATA,
    });
  });

  const usageErrors: Record<string, [string, Parameters<typeof createVolumeRequest>[1], RegExp]> = {
    "negative size": ["v", { size: "-1" }, /--size.*invalid size "-1"/],
    "zero size": ["v", { size: "0" }, /--size.*greater than zero/],
    "zero size with unit": ["v", { size: "0GiB" }, /greater than zero/],
    "garbage size": ["v", { size: "abc" }, /invalid size "abc"/],
    "unknown size unit": ["v", { size: "10XB" }, /invalid size/],
    "missing size": ["v", {}, /--size/],
    "zero replicas": ["v", { size: "1G", replicas: "0" }, /--replicas.*at least 1.*"0"/],
    "fractional replicas": ["v", { size: "1G", replicas: "1.5" }, /--replicas/],
    "word replicas": ["v", { size: "1G", replicas: "two" }, /--replicas/],
    "unknown format": ["v", { size: "1G", format: "vmdk" }, /--format.*"vmdk".*qcow2, raw/],
    "unknown preallocation": ["v", { size: "1G", preallocation: "some" }, /--preallocation.*off, metadata, falloc, full/],
    "metadata preallocation on raw": ["v", { size: "1G", format: "raw", preallocation: "metadata" }, /metadata.*qcow2/],
    "bad volume name": ["Bad/Name", { size: "1G" }, /invalid volume name/],
    "bad pool name": ["v", { size: "1G", pool: "../etc" }, /invalid pool name/],
  };
  for (const [title, [name, flags, message]] of Object.entries(usageErrors)) {
    it(`rejects ${title} as a usage error`, () => {
      expect(() => createVolumeRequest(name, flags)).toThrow(UsageError);
      expect(() => createVolumeRequest(name, flags)).toThrow(message);
    });
  }
});

describe("other requests", () => {
  it("resize parses the new size", () => {
    expect(resizeVolumeRequest("vm1", { size: "20GiB" })).toEqual({ name: "vm1", sizeBytes: 20 * 2 ** 30 });
    expect(() => resizeVolumeRequest("vm1", { size: "0" })).toThrow(UsageError);
  });

  it("pool list filters by node only when asked", () => {
    expect(listPoolsRequest({})).toEqual({ node: "" });
    expect(listPoolsRequest({ node: "host1" })).toEqual({ node: "host1" });
  });

  it("pool get takes NODE/POOL or NODE POOL", () => {
    expect(getPoolRequest("host1/default")).toEqual({ node: "host1", name: "default" });
    expect(getPoolRequest("host1", "default")).toEqual({ node: "host1", name: "default" });
    for (const bad of [["host1"], ["host1/"], ["/p"], ["a/b/c"], ["a/b", "c"]] as const) {
      expect(() => parsePoolRef(bad[0], bad[1])).toThrow(UsageError);
    }
  });
});

describe("flag parsers", () => {
  it("sizes take binary units and plain bytes", () => {
    expect(parseSizeFlag("--size", "512M")).toBe(512 * 2 ** 20);
    expect(parseSizeFlag("--size", "1.5TiB")).toBe(1.5 * 2 ** 40);
    expect(parseSizeFlag("--size", "1")).toBe(1);
  });

  it("counts and seconds", () => {
    expect(parseCountFlag("--replicas", "3")).toBe(3);
    expect(() => parseCountFlag("--replicas", "-1")).toThrow(UsageError);
    expect(parseSecondsFlag("--timeout", "2.5")).toBe(2500);
    expect(() => parseSecondsFlag("--timeout", "0")).toThrow(UsageError);
    expect(() => parseSecondsFlag("--timeout", "soon")).toThrow(UsageError);
  });

  it("address lists drop blanks", () => {
    expect(splitAddresses(" a:1, ,b:2,")).toEqual(["a:1", "b:2"]);
  });
});
