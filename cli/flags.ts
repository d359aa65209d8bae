// Parsers for command-line values. They are pure and throw UsageError, which the
// program reports like commander's own errors (exit code 2) before any call is made.
import { StowageError } from "../lib/errors.js";
import { parseSize } from "../lib/sizes.js";
import { enumChoices, enumFromLabel, type EnumInfo } from "./convert.js";

/** The command line is wrong: nothing was sent to the controller. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** A size in bytes, greater than zero: "10GiB", "512M", "4096". */
export function parseSizeFlag(flag: string, text: string): number {
  let bytes: number;
  try {
    bytes = parseSize(text);
  } catch (err) {
    const hint = err instanceof StowageError && err.hint ? ` (${err.hint})` : "";
    throw new UsageError(`option '${flag}': invalid size "${text}"${hint}`);
  }
  if (bytes <= 0) throw new UsageError(`option '${flag}': size must be greater than zero, got "${text}"`);
  return bytes;
}

/** A whole number from `min` up. */
export function parseCountFlag(flag: string, text: string, min = 1): number {
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min) {
    throw new UsageError(`option '${flag}': expected a whole number of at least ${min}, got "${text}"`);
  }
  return n;
}

/** A positive number of seconds (fractions allowed), returned in milliseconds. */
export function parseSecondsFlag(flag: string, text: string): number {
  const s = /^\s*\d+(\.\d+)?\s*$/.test(text) ? Number(text) : NaN;
  if (!(s > 0)) throw new UsageError(`option '${flag}': expected a positive number of seconds, got "${text}"`);
  return Math.round(s * 1000);
}

/** One of the labels of an API enum ("qcow2", "raw"). */
export function parseEnumFlag(flag: string, e: EnumInfo, text: string): number {
  const v = enumFromLabel(e, text);
  if (v === undefined) {
    throw new UsageError(`option '${flag}': invalid value "${text}"; choose one of ${enumChoices(e).join(", ")}`);
  }
  return v;
}

/** A comma-separated list of HOST:PORT addresses, blanks dropped. */
export function splitAddresses(text: string): string[] {
  return text
    .split(",")
    .map((a) => a.trim())
    .filter((a) => a !== "");
}

/** "NODE/POOL", or NODE and POOL as two arguments. */
export function parsePoolRef(first: string, second?: string): { node: string; name: string } {
  const [node, name, ...rest] = second === undefined ? first.split("/") : [first, second];
  if (!node || !name || rest.length > 0 || (second !== undefined && first.includes("/"))) {
    throw new UsageError(`invalid pool "${[first, second].filter(Boolean).join(" ")}": expected NODE/POOL or NODE POOL`);
  }
  return { node, name };
}
