import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "./errors.js";
import { validateDomainName, validateName } from "./names.js";

describe("validateName", () => {
  for (const ok of ["a", "vol1", "db-data_01", "web.disk0", "x".repeat(63)]) {
    it(`accepts "${ok.length > 10 ? ok.slice(0, 8) + "…" : ok}"`, () => expect(() => validateName("volume", ok)).not.toThrow());
  }
  for (const bad of ["", "../x", "a/b", "a..b", "-lead", "trail-", "UPPER", "sp ace", "x".repeat(64), "é"]) {
    it(`rejects "${bad.length > 10 ? bad.slice(0, 8) + "…" : bad}"`, () => expect(() => validateName("volume", bad)).toThrow(InvalidArgumentError));
  }
  it("names the kind and the bad value", () => expect(() => validateName("pool", "a/b")).toThrow(/invalid pool name "a\/b"/));
});

describe("validateDomainName", () => {
  for (const ok of ["web1", "Web-1.prod", "a", "vm_2+x", "a".repeat(128)]) {
    it(`accepts "${ok.slice(0, 10)}"`, () => expect(() => validateDomainName(ok)).not.toThrow());
  }
  for (const bad of ["", "../etc", "a/b", "a..b", "-a", "a ", "a".repeat(129), "ünï"]) {
    it(`rejects "${bad.slice(0, 10)}"`, () => expect(() => validateDomainName(bad)).toThrow(InvalidArgumentError));
  }
});
