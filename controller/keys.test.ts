import { describe, expect, it } from "vitest";
import { keys, parseKey, PREFIX } from "./keys.js";

describe("etcd keys", () => {
  it("round-trips every kind", () => {
    expect(parseKey(keys.nodeSpec("n1"))).toEqual({ kind: "node-spec", name: "n1" });
    expect(parseKey(keys.nodeStatus("n1"))).toEqual({ kind: "node-status", name: "n1" });
    expect(parseKey(keys.volumeSpec("vol.a"))).toEqual({ kind: "volume-spec", name: "vol.a" });
    expect(parseKey(keys.volumeStatus("v"))).toEqual({ kind: "volume-status", name: "v" });
    expect(parseKey(keys.operation("v"))).toEqual({ kind: "operation", name: "v" });
  });

  it("keeps everything under one prefix", () => {
    for (const k of [keys.nodeSpec("a"), keys.volumeStatus("b"), keys.operation("c"), keys.election]) {
      expect(k.startsWith(PREFIX)).toBe(true);
    }
  });

  it("rejects foreign and malformed keys", () => {
    expect(parseKey("/other/v1/volumes/spec/x")).toBeUndefined();
    expect(parseKey(PREFIX + "volumes/spec/")).toBeUndefined();
    expect(parseKey(PREFIX + "volumes/spec/a/b")).toBeUndefined();
    expect(parseKey(PREFIX + "unknown/x")).toBeUndefined();
  });
});
