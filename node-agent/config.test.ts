import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "../lib/errors.js";
import { parseHostPort, withPort } from "./address.js";
import { loadAgentConfig, parseAgentConfig, parseAgentFlags } from "./config.js";

const GOOD = {
  name: "node1",
  listen: "127.0.0.11:7500",
  controllers: ["127.0.0.1:7400", "127.0.0.1:7401"],
  labels: { zone: "z1", rack: "r1" },
  dataDir: "/var/lib/stowage/node1",
  pools: [{ name: "default", type: "dir", path: "/var/lib/stowage/node1/pools/default", overcommitRatio: 2.0 }],
};

function badConfig(patch: Record<string, unknown>, flags = {}): InvalidArgumentError {
  try {
    parseAgentConfig({ ...GOOD, ...patch }, flags);
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidArgumentError);
    return err as InvalidArgumentError;
  }
  throw new Error("expected the config to be rejected");
}

describe("parseAgentConfig", () => {
  it("accepts a good config", () => {
    expect(parseAgentConfig(GOOD)).toEqual({
      name: "node1",
      listen: "127.0.0.11:7500",
      advertise: "127.0.0.11:7500",
      controllers: ["127.0.0.1:7400", "127.0.0.1:7401"],
      labels: { zone: "z1", rack: "r1" },
      dataDir: "/var/lib/stowage/node1",
      pools: [{ name: "default", type: "dir", path: "/var/lib/stowage/node1/pools/default", overcommitRatio: 2 }],
      tls: {},
      frontendDir: "/run/stowage/volumes",
      nbd: { type: "tcp", host: "127.0.0.11", port: 10809 },
      libvirt: { uri: "qemu:///system", peerUri: "qemu+tcp://127.0.0.11/system", migrationHost: "127.0.0.11" },
    });
  });

  it("takes the libvirt endpoints from the file, can turn VM support off, and checks them", () => {
    const c = parseAgentConfig({ ...GOOD, libvirt: { uri: "qemu+tcp://127.0.0.1:16509/system", migrationHost: "10.0.0.1" } });
    expect(c.libvirt).toEqual({ uri: "qemu+tcp://127.0.0.1:16509/system", peerUri: "qemu+tcp://127.0.0.11/system", migrationHost: "10.0.0.1" });
    expect(parseAgentConfig({ ...GOOD, libvirt: false }).libvirt).toBeUndefined();
    expect(() => parseAgentConfig({ ...GOOD, libvirt: { uri: "system" } })).toThrow(/libvirt.uri must be a libvirt URI/);
    expect(() => parseAgentConfig({ ...GOOD, libvirt: { migrationHost: "a b" } })).toThrow(/migrationHost/);
    expect(() => parseAgentConfig({ ...GOOD, libvirt: { url: "x" } })).toThrow(/unknown key "url" in libvirt/);
  });

  it("takes the frontend dir and NBD transport from the file, and checks them", () => {
    const c = parseAgentConfig({ ...GOOD, frontendDir: "/srv/vols", nbd: { type: "tcp", port: 10900 } });
    expect(c.frontendDir).toBe("/srv/vols");
    expect(c.nbd).toEqual({ type: "tcp", host: "127.0.0.11", port: 10900 });
    expect(parseAgentConfig({ ...GOOD, nbd: { type: "unix" } }).nbd).toEqual({ type: "unix" });
    expect(() => parseAgentConfig({ ...GOOD, nbd: { type: "rdma" } })).toThrow(/nbd.type/);
    expect(() => parseAgentConfig({ ...GOOD, nbd: { port: 0 } })).toThrow(/nbd.port/);
    expect(() => parseAgentConfig({ ...GOOD, frontendDir: "run/vols" })).toThrow(/absolute/);
  });

  it("fills defaults: a default pool under dataDir, ratio 1, empty labels", () => {
    const c = parseAgentConfig({ name: "n2", listen: "127.0.0.12:0", controllers: ["c1:7400"], dataDir: "/d/" });
    expect(c.dataDir).toBe("/d");
    expect(c.labels).toEqual({ zone: "", rack: "" });
    expect(c.pools).toEqual([{ name: "default", type: "dir", path: "/d/pools/default", overcommitRatio: 1 }]);
  });

  it("lets flags override the file", () => {
    const flags = parseAgentFlags([
      "--name", "node9", "--listen", "127.0.0.19:7509", "--controllers", "10.0.0.1:7400, 10.0.0.2:7400",
      "--zone", "z9", "--rack", "r9", "--data-dir", "/srv/n9",
      "--pool", "default=/srv/n9/default", "--pool", "fast=/nvme/stowage",
    ]);
    const c = parseAgentConfig(GOOD, flags);
    expect(c.name).toBe("node9");
    expect(c.listen).toBe("127.0.0.19:7509");
    expect(c.controllers).toEqual(["10.0.0.1:7400", "10.0.0.2:7400"]);
    expect(c.labels).toEqual({ zone: "z9", rack: "r9" });
    expect(c.dataDir).toBe("/srv/n9");
    expect(c.pools).toEqual([
      { name: "default", type: "dir", path: "/srv/n9/default", overcommitRatio: 2 },
      { name: "fast", type: "dir", path: "/nvme/stowage", overcommitRatio: 1 },
    ]);
  });

  it("builds a whole config from flags alone", () => {
    const flags = parseAgentFlags(["--name", "n1", "--listen", "127.0.0.11:7500", "--controllers", "127.0.0.1:7400", "--data-dir", "/d"]);
    expect(parseAgentConfig(undefined, flags).pools[0]!.path).toBe("/d/pools/default");
  });

  it("rejects a pool type other than dir", () => {
    const e = badConfig({ pools: [{ name: "p", type: "lvm", path: "/p" }] });
    expect(e.message).toMatch(/pool "p" has type "lvm"; only "dir" is supported/);
  });

  it("rejects relative paths", () => {
    expect(badConfig({ dataDir: "var/lib/x" }).message).toMatch(/"dataDir" must be an absolute path/);
    expect(badConfig({ pools: [{ name: "p", path: "../p" }] }).message).toMatch(/pools\[0\].path" must be an absolute path/);
    expect(badConfig({}, { pool: ["p=rel/dir"] }).message).toMatch(/absolute path/);
  });

  it("rejects bad names", () => {
    expect(badConfig({ name: "Node_1!" }).message).toMatch(/invalid node name "Node_1!"/);
    expect(badConfig({ name: "" }).message).toMatch(/node name is empty/);
    expect(badConfig({ pools: [{ name: "../x", path: "/p" }] }).message).toMatch(/invalid pool name/);
    expect(badConfig({ labels: { zone: "Zone A" } }).message).toMatch(/invalid zone name/);
  });

  it("rejects bad ratios, addresses, duplicates, unknown keys and missing fields", () => {
    expect(badConfig({ pools: [{ name: "p", path: "/p", overcommitRatio: 0 }] }).message).toMatch(/overcommitRatio must be a number > 0/);
    expect(badConfig({ pools: [{ name: "p", path: "/p", overcommitRatio: "2" }] }).message).toMatch(/overcommitRatio/);
    expect(badConfig({ listen: "127.0.0.1" }).message).toMatch(/listen.*HOST:PORT/);
    expect(badConfig({ controllers: ["127.0.0.1:0"] }).message).toMatch(/controllers\[0\]/);
    expect(badConfig({ controllers: [] }).message).toMatch(/at least one controller/);
    expect(badConfig({ listen: "0.0.0.0:7500" }).message).toMatch(/wildcard/);
    expect(parseAgentConfig({ ...GOOD, listen: "0.0.0.0:7500", advertise: "10.1.1.1:7500" }).advertise).toBe("10.1.1.1:7500");
    expect(badConfig({ pools: [{ name: "a", path: "/p" }, { name: "a", path: "/q" }] }).message).toMatch(/two pools are named "a"/);
    expect(badConfig({ pools: [{ name: "a", path: "/p" }, { name: "b", path: "/p/" }] }).message).toMatch(/share the path/);
    expect(badConfig({ poools: [] }).message).toMatch(/unknown key "poools"/);
    expect(badConfig({ dataDir: undefined }).message).toMatch(/"dataDir" is required/);
    expect(badConfig({}, { pool: ["nopath"] }).message).toMatch(/NAME=PATH/);
    expect(() => parseAgentConfig([1, 2])).toThrow(InvalidArgumentError);
  });
});

describe("parseAgentFlags", () => {
  it("rejects unknown flags and stray arguments", () => {
    expect(() => parseAgentFlags(["--nmae", "x"])).toThrow(/^unknown flag --nmae$/);
    expect(() => parseAgentFlags(["--name"])).toThrow(InvalidArgumentError);
    expect(() => parseAgentFlags(["extra"])).toThrow(/unexpected argument/);
    expect(parseAgentFlags(["--help"]).help).toBe(true);
  });
});

describe("addresses", () => {
  it("parses and rewrites HOST:PORT", () => {
    expect(parseHostPort("127.0.0.11:7500")).toEqual({ host: "127.0.0.11", port: 7500 });
    expect(parseHostPort("[::1]:7500")).toEqual({ host: "::1", port: 7500 });
    expect(withPort("127.0.0.11:0", 41234)).toBe("127.0.0.11:41234");
    expect(withPort("[::1]:0", 5)).toBe("[::1]:5");
    expect(() => parseHostPort("host:70000")).toThrow(InvalidArgumentError);
    expect(() => parseHostPort(":7500")).toThrow(InvalidArgumentError);
    expect(() => parseHostPort("a b:1")).toThrow(InvalidArgumentError);
  });
});

describe("loadAgentConfig", () => {
  it("reads the file and creates the data and pool directories", async () => {
    const dir = await mkdtemp(join(tmpdir(), "agent-config-"));
    try {
      const file = join(dir, "node1.json");
      await writeFile(file, JSON.stringify({ ...GOOD, dataDir: join(dir, "data"), pools: [{ name: "default", path: join(dir, "pools/a") }] }));
      const c = await loadAgentConfig({ config: file });
      expect((await stat(join(dir, "data"))).isDirectory()).toBe(true);
      expect((await stat(c.pools[0]!.path)).isDirectory()).toBe(true);

      await writeFile(file, "{ not json");
      await expect(loadAgentConfig({ config: file })).rejects.toThrow(/not valid JSON/);
      await expect(loadAgentConfig({ config: join(dir, "missing.json") })).rejects.toThrow(/cannot read config file/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
