import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "./errors.js";
import { formatNbdUri, parseNbdUri } from "./nbd-uri.js";

describe("NBD URIs", () => {
  const cases: Record<string, { uri: string; addr: ReturnType<typeof parseNbdUri> }> = {
    "unix socket": { uri: "nbd+unix:///r-0123abcd?socket=/run/stowage/qsd/nbd.sock", addr: { exportName: "r-0123abcd", socketPath: "/run/stowage/qsd/nbd.sock" } },
    "tcp with port": { uri: "nbd://127.0.0.12:10809/r-0123abcd", addr: { exportName: "r-0123abcd", host: "127.0.0.12", port: 10809 } },
    "ipv6": { uri: "nbd://[::1]:10810/vol", addr: { exportName: "vol", host: "::1", port: 10810 } },
  };
  for (const [name, c] of Object.entries(cases)) {
    it(`round-trips ${name}`, () => {
      expect(parseNbdUri(c.uri)).toEqual(c.addr);
      expect(parseNbdUri(formatNbdUri(c.addr))).toEqual(c.addr);
    });
  }
  for (const bad of ["", "http://x/y", "nbd+unix:///?socket=/s", "nbd+unix:///x", "nbd://:1/x", "nbd://h:1/"]) {
    it(`rejects "${bad}"`, () => expect(() => parseNbdUri(bad)).toThrow(InvalidArgumentError));
  }
});

describe("NBD URIs with TLS", () => {
  it("uses the nbds schemes and keeps the flag through a round trip", () => {
    const tcp = { exportName: "r-1", host: "10.0.0.5", port: 10809, tls: true };
    expect(formatNbdUri(tcp)).toBe("nbds://10.0.0.5:10809/r-1");
    expect(parseNbdUri(formatNbdUri(tcp))).toEqual(tcp);
    const unix = { exportName: "r-1", socketPath: "/run/a b/nbd.sock", tls: true };
    expect(formatNbdUri(unix)).toBe("nbds+unix:///r-1?socket=/run/a%20b/nbd.sock");
    expect(parseNbdUri(formatNbdUri(unix))).toEqual(unix);
  });
});
