import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "./errors.js";
import { formatSize, parseSize } from "./sizes.js";

describe("parseSize", () => {
  const good: Record<string, number> = {
    "4096": 4096,
    "10GiB": 10 * 2 ** 30,
    "10G": 10 * 2 ** 30,
    "512MiB": 512 * 2 ** 20,
    "1.5TiB": 1.5 * 2 ** 40,
    "64k": 64 * 1024,
    " 2 GiB ": 2 * 2 ** 30,
    "3b": 3,
  };
  for (const [text, bytes] of Object.entries(good)) {
    it(`parses "${text}"`, () => expect(parseSize(text)).toBe(bytes));
  }
  for (const bad of ["", "-1", "abc", "10XB", "1e9", "GiB", "1,5G", "99999999999PiB"]) {
    it(`rejects "${bad}" with a hint`, () => {
      expect(() => parseSize(bad)).toThrow(InvalidArgumentError);
      try {
        parseSize(bad);
      } catch (e) {
        expect((e as InvalidArgumentError).hint).not.toBe("");
      }
    });
  }
});

describe("formatSize", () => {
  it("uses the largest binary unit", () => {
    expect(formatSize(0)).toBe("0B");
    expect(formatSize(1023)).toBe("1023B");
    expect(formatSize(1024)).toBe("1KiB");
    expect(formatSize(10 * 2 ** 30)).toBe("10GiB");
    expect(formatSize(1.5 * 2 ** 30)).toBe("1.5GiB");
    expect(formatSize(2 ** 40 + 2 ** 39)).toBe("1.5TiB");
  });
  it("round-trips through parseSize", () => {
    for (const n of [512, 2 ** 20, 3 * 2 ** 30, 7 * 2 ** 40]) expect(parseSize(formatSize(n))).toBe(n);
  });
});
