import { describe, expect, it } from "vitest";
import { StowageError } from "../lib/errors.js";
import { clusterFilePath, NO_CONTROLLER_HINT, resolveControllers, type AddressSources } from "./connect.js";
import { UsageError } from "./flags.js";

const FILE = "/home/op/.config/stowage/cluster.json";
const fileWith = (controllers: unknown) => ({ [FILE]: JSON.stringify({ controllers }) });

function sources(over: Partial<AddressSources> & { files?: Record<string, string> } = {}): AddressSources {
  const files = over.files ?? {};
  return { env: { HOME: "/home/op" }, readFile: (p) => files[p], ...over };
}

describe("resolveControllers", () => {
  it("prefers --controller over the environment and the file", () => {
    const r = resolveControllers(
      sources({ flag: "10.0.0.1:7400,10.0.0.2:7400", env: { HOME: "/home/op", STOWAGE_CONTROLLER: "e:1" }, files: fileWith(["f:1"]) }),
    );
    expect(r).toEqual({ addresses: ["10.0.0.1:7400", "10.0.0.2:7400"], source: "--controller" });
  });

  it("then STOWAGE_CONTROLLER, a comma-separated list", () => {
    const r = resolveControllers(sources({ env: { HOME: "/home/op", STOWAGE_CONTROLLER: "e:1, e:2" }, files: fileWith(["f:1"]) }));
    expect(r).toEqual({ addresses: ["e:1", "e:2"], source: "STOWAGE_CONTROLLER" });
  });

  it("then the local cluster file", () => {
    const r = resolveControllers(sources({ files: fileWith(["127.0.0.1:7400", "127.0.0.1:7401"]) }));
    expect(r).toEqual({ addresses: ["127.0.0.1:7400", "127.0.0.1:7401"], source: FILE });
  });

  it("treats an empty STOWAGE_CONTROLLER as unset", () => {
    const r = resolveControllers(sources({ env: { HOME: "/home/op", STOWAGE_CONTROLLER: " " }, files: fileWith(["f:1"]) }));
    expect(r.addresses).toEqual(["f:1"]);
  });

  it("fails with the cluster:up hint when nothing is configured", () => {
    try {
      resolveControllers(sources());
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(StowageError);
      expect((err as StowageError).message).toContain(FILE);
      expect((err as StowageError).hint).toBe(NO_CONTROLLER_HINT);
    }
  });

  it("reports a broken or empty file", () => {
    expect(() => resolveControllers(sources({ files: { [FILE]: "{nope" } }))).toThrow(/cannot parse/);
    expect(() => resolveControllers(sources({ files: { [FILE]: '{"controllers":"a:1"}' } }))).toThrow(/expected/);
    expect(() => resolveControllers(sources({ files: fileWith([]) }))).toThrow(/lists no controllers/);
  });

  it("rejects an empty --controller as a usage error", () => {
    expect(() => resolveControllers(sources({ flag: " , " }))).toThrow(UsageError);
  });
});

describe("clusterFilePath", () => {
  it("uses STOWAGE_CONFIG, then XDG_CONFIG_HOME, then HOME/.config", () => {
    expect(clusterFilePath({ STOWAGE_CONFIG: "/etc/s.json", XDG_CONFIG_HOME: "/x", HOME: "/h" })).toBe("/etc/s.json");
    expect(clusterFilePath({ XDG_CONFIG_HOME: "/x", HOME: "/h" })).toBe("/x/stowage/cluster.json");
    expect(clusterFilePath({ HOME: "/h" })).toBe("/h/.config/stowage/cluster.json");
    expect(clusterFilePath({}, "/fallback")).toBe("/fallback/.config/stowage/cluster.json");
  });
});
