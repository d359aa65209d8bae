// The daemon's command line both ways, and NBD URIs. Pure.
import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "../../lib/errors.js";
import { nbdEndpointOf, nbdUri, parseQemuOpts, parseQsdArgv, qsdArgs, qsdPaths } from "./qsd-args.js";

const paths = qsdPaths("/var/lib/stowage/node1");

describe("qsdPaths", () => {
  it("puts sockets and pidfile in ${dataDir}/qsd", () => {
    expect(paths).toEqual({
      stateDir: "/var/lib/stowage/node1/qsd",
      qmpSocket: "/var/lib/stowage/node1/qsd/qmp.sock",
      pidFile: "/var/lib/stowage/node1/qsd/qsd.pid",
      nbdSocket: "/var/lib/stowage/node1/qsd/nbd.sock",
    });
  });

  it("refuses relative dirs and socket paths a unix socket cannot have", () => {
    expect(() => qsdPaths("data")).toThrow(InvalidArgumentError);
    expect(() => qsdPaths(`/${"d".repeat(100)}`)).toThrow(/longer than 107 bytes/);
  });
});

describe("qsdArgs", () => {
  it("starts a daemonized QSD with QMP and a unix NBD server", () => {
    expect(qsdArgs(paths, { type: "unix" })).toEqual([
      "--chardev",
      "socket,id=qmp,path=/var/lib/stowage/node1/qsd/qmp.sock,server=on,wait=off",
      "--monitor",
      "chardev=qmp",
      "--pidfile",
      "/var/lib/stowage/node1/qsd/qsd.pid",
      "--nbd-server",
      "addr.type=unix,addr.path=/var/lib/stowage/node1/qsd/nbd.sock",
      "--daemonize",
    ]);
  });

  it("starts a TCP NBD server, with the TLS object before the server that names it", () => {
    const args = qsdArgs(paths, { type: "tcp", host: "10.0.0.1", port: 10809, tls: { id: "nbd-tls", dir: "/etc/stowage/tls" } });
    expect(args.slice(6)).toEqual([
      "--object",
      "tls-creds-x509,id=nbd-tls,dir=/etc/stowage/tls,endpoint=server,verify-peer=on",
      "--nbd-server",
      "addr.type=inet,addr.host=10.0.0.1,addr.port=10809,tls-creds=nbd-tls",
      "--daemonize",
    ]);
  });

  it("takes a TCP listening socket handed over as an fd (its address then comes from elsewhere)", () => {
    const args = qsdArgs(paths, { type: "tcp", host: "10.0.0.5", port: 10809 }, 3);
    expect(args[args.indexOf("--nbd-server") + 1]).toBe("addr.type=fd,addr.str=3");
    expect(parseQsdArgv(["qemu-storage-daemon", ...args])).toEqual({ qmpSocket: paths.qmpSocket });
  });

  it("escapes commas in paths", () => {
    expect(qsdArgs(qsdPaths("/data/a,b"), { type: "unix" })[1]).toBe("socket,id=qmp,path=/data/a,,b/qsd/qmp.sock,server=on,wait=off");
  });

  it("rejects port 0 and bad ports", () => {
    expect(() => qsdArgs(paths, { type: "tcp", host: "127.0.0.1", port: 0 })).toThrow(/invalid NBD port 0/);
    expect(() => qsdArgs(paths, { type: "tcp", host: "", port: 10809 })).toThrow(InvalidArgumentError);
  });
});

describe("parseQsdArgv", () => {
  it("reads back what qsdArgs started", () => {
    const tcp = { type: "tcp" as const, host: "127.0.0.1", port: 10809 };
    expect(parseQsdArgv(["/usr/bin/qemu-storage-daemon", ...qsdArgs(paths, tcp)])).toEqual({
      qmpSocket: paths.qmpSocket,
      nbd: { tcp: { host: "127.0.0.1", port: 10809 } },
    });
    const comma = qsdPaths("/data/a,b");
    expect(parseQsdArgv(["qemu-storage-daemon", ...qsdArgs(comma, { type: "unix" })])).toEqual({
      qmpSocket: comma.qmpSocket,
      nbd: { unixSocket: comma.nbdSocket },
    });
    const tls = parseQsdArgv(["qemu-storage-daemon", ...qsdArgs(paths, { ...tcp, tls: { id: "t", dir: "/x" } })]);
    expect(tls?.nbd).toEqual({ tcp: { host: "127.0.0.1", port: 10809 }, tlsCredsId: "t" });
  });

  it("is undefined for another program (a reused pid)", () => {
    expect(parseQsdArgv(["/usr/bin/sleep", "100"])).toBeUndefined();
    expect(parseQsdArgv([])).toBeUndefined();
  });
});

describe("parseQemuOpts", () => {
  it("splits on single commas and unescapes double ones", () => {
    expect(parseQemuOpts("socket,id=qmp,path=/a,,b,server=on")).toEqual({ socket: "", id: "qmp", path: "/a,b", server: "on" });
  });
});

describe("nbdUri", () => {
  it("builds libnbd URIs for unix and TCP endpoints", () => {
    expect(nbdUri(nbdEndpointOf({ type: "unix" }, paths), "r-0000aaaa")).toBe("nbd+unix:///r-0000aaaa?socket=/var/lib/stowage/node1/qsd/nbd.sock");
    expect(nbdUri({ tcp: { host: "127.0.0.1", port: 10809 } }, "r-0000aaaa")).toBe("nbd://127.0.0.1:10809/r-0000aaaa");
    expect(nbdUri({ tcp: { host: "::1", port: 10809 }, tlsCredsId: "t" }, "r-0000aaaa")).toBe("nbds://[::1]:10809/r-0000aaaa");
  });
});
