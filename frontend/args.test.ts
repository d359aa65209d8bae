import { describe, expect, it } from "vitest";
import { ArgsError, parseFrontendArgs, parseReplicaSpec } from "./args.js";
import { FRONTEND_GLIBC_TUNABLES, frontendArgv, frontendEnv } from "./launch.js";

describe("parseReplicaSpec", () => {
  const ok: Record<string, object> = {
    "unix:/run/stowage/r1.sock:vol-1": { socketPath: "/run/stowage/r1.sock", exportName: "vol-1" },
    "unix:/odd:path/x.sock:vol": { socketPath: "/odd:path/x.sock", exportName: "vol" },
    "tcp:127.0.0.42:10809:vol": { host: "127.0.0.42", port: 10809, exportName: "vol" },
    "tcp:[::1]:10809:vol": { host: "::1", port: 10809, exportName: "vol" },
    "tcp:host.example:1:v": { host: "host.example", port: 1, exportName: "v" },
  };
  for (const [spec, want] of Object.entries(ok)) it(`parses ${spec}`, () => expect(parseReplicaSpec(spec)).toEqual({ spec, ...want }));

  const bad: Record<string, RegExp> = {
    "unix:/x.sock:": /no export name/,
    "unix::vol": /no socket path/,
    "tcp:host:0:vol": /valid port/,
    "tcp:host:65536:vol": /valid port/,
    "tcp:host:http:vol": /valid port/,
    "tcp::10809:vol": /no host/,
    "ssh:host:vol": /must start with/,
    "vol": /no export name/,
  };
  for (const [spec, why] of Object.entries(bad)) it(`refuses ${spec}`, () => expect(() => parseReplicaSpec(spec)).toThrow(why));
});

describe("parseFrontendArgs", () => {
  it("parses a full command line, with replicas given both ways", () => {
    const a = parseFrontendArgs([
      "--socket", "/run/stowage/vol.sock",
      "--export", "vol",
      "--backend", "unix:/a.sock:vol,tcp:127.0.0.2:10809:vol",
      "--backend", "unix:/b.sock:vol",
      "--connections", "4",
      "--socket-mode", "0660",
    ]);
    expect(a).toMatchObject({ socketPath: "/run/stowage/vol.sock", exportName: "vol", connections: 4, socketMode: 0o660 });
    expect(a.replicas.map((r) => r.spec)).toEqual(["unix:/a.sock:vol", "tcp:127.0.0.2:10809:vol", "unix:/b.sock:vol"]);
  });

  it("defaults to two connections per replica and a socket libvirt's QEMU can open", () => {
    const a = parseFrontendArgs(["--socket", "/s", "--export", "v", "--backend", "unix:/b:v"]);
    expect(a.connections).toBe(2);
    expect(a.socketMode).toBe(0o666);
    // No controllers: no in-sync record, a write needs every replica.
    expect(a.controllers).toEqual([]);
    expect(a.generation).toBe(1);
  });

  const bad: [string[], RegExp][] = [
    [["--export", "v", "--backend", "unix:/b:v"], /--socket is required/],
    [["--socket", "/s", "--backend", "unix:/b:v"], /--export is required/],
    [["--socket", "/s", "--export", "v"], /--backend is required/],
    [["--socket", "/s", "--export", "v", "--backend", "unix:/b:v", "--connections", "0"], /--connections/],
    [["--socket", "/s", "--export", "v", "--backend", "unix:/b:v", "--connections", "2.5"], /--connections/],
    [["--socket", "/s", "--export", "v", "--backend", "unix:/b:v", "--socket-mode", "rw"], /--socket-mode/],
    [["--socket", "/s", "--export", "v", "--backend", "unix:/b:v", "--bogus"], /bogus/],
    [["--socket", "/s", "--export", "v", "--backend", "unix:/b:v", "--generation", "0"], /--generation/],
    [["--socket", "/s", "--export", "v", "--backend", "unix:/b:v", "stray"], /stray/],
  ];
  for (const [argv, why] of bad) {
    it(`refuses ${argv.join(" ")}`, () => {
      expect(() => parseFrontendArgs(argv)).toThrow(ArgsError);
      expect(() => parseFrontendArgs(argv)).toThrow(why);
    });
  }
});

describe("launch", () => {
  it("builds a command line that parses back to the same frontend", () => {
    const replicas = [
      { socketPath: "/run/r1.sock", exportName: "vol" },
      { host: "::1", port: 10809, exportName: "vol" },
      { host: "127.0.0.3", port: 10810, exportName: "vol" },
    ];
    const argv = frontendArgv({ socketPath: "/run/vol.sock", exportName: "vol", replicas, connections: 3, socketMode: 0o660, controllers: ["c1:7400", "c2:7400"], generation: 4, stateDir: "/var/lib/stowage/frontends", node: "n1", copyRateMiB: 50 });
    const back = parseFrontendArgs(argv);
    expect(back).toMatchObject({ socketPath: "/run/vol.sock", exportName: "vol", connections: 3, socketMode: 0o660, controllers: ["c1:7400", "c2:7400"], generation: 4, stateDir: "/var/lib/stowage/frontends", node: "n1", copyRateMiB: 50 });
    expect(back.replicas.map(({ spec: _, ...r }) => r)).toEqual(replicas);
  });

  it("adds the malloc settings to the environment, keeping any already there", () => {
    expect(frontendEnv({ PATH: "/bin" })).toEqual({ PATH: "/bin", GLIBC_TUNABLES: FRONTEND_GLIBC_TUNABLES });
    expect(frontendEnv({ GLIBC_TUNABLES: "glibc.x=1" }).GLIBC_TUNABLES).toBe(`glibc.x=1:${FRONTEND_GLIBC_TUNABLES}`);
  });
});
