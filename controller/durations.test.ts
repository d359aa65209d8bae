import { describe, expect, it } from "vitest";
import { formatDuration, parseDuration } from "./durations.js";

describe("parseDuration", () => {
  const ok: Record<string, [string, number]> = {
    "seconds with a unit": ["600s", 600_000],
    "minutes": ["10m", 600_000],
    "hours": ["1h", 3_600_000],
    "milliseconds": ["1500ms", 1_500],
    "a plain number is seconds": ["30", 30_000],
    "fractions": ["1.5s", 1_500],
    "blanks around": [" 2m ", 120_000],
  };
  for (const [name, [text, ms]] of Object.entries(ok)) {
    it(name, () => expect(parseDuration("--replica-grace", text)).toBe(ms));
  }

  const bad: Record<string, string> = {
    "empty": "",
    "unknown unit": "10d",
    "negative": "-5s",
    "zero": "0s",
    "unit only": "m",
    "two numbers": "1m30s",
  };
  for (const [name, text] of Object.entries(bad)) {
    it(`refuses ${name}`, () => expect(() => parseDuration("--replica-grace", text)).toThrow(/--replica-grace/));
  }
});

describe("formatDuration", () => {
  const cases: Record<string, [number, string]> = {
    "whole hours": [7_200_000, "2h"],
    "whole minutes": [600_000, "10m"],
    "seconds": [90_000, "90s"],
    "milliseconds": [1_500, "1500ms"],
  };
  for (const [name, [ms, text]] of Object.entries(cases)) {
    it(name, () => expect(formatDuration(ms)).toBe(text));
  }
});
