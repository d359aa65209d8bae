// Human byte sizes: "10GiB", "512M", "1.5TiB", "4096". Binary units (1 KiB = 1024).
import { InvalidArgumentError } from "./errors.js";

const UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 2 ** 10,
  kb: 2 ** 10,
  kib: 2 ** 10,
  m: 2 ** 20,
  mb: 2 ** 20,
  mib: 2 ** 20,
  g: 2 ** 30,
  gb: 2 ** 30,
  gib: 2 ** 30,
  t: 2 ** 40,
  tb: 2 ** 40,
  tib: 2 ** 40,
  p: 2 ** 50,
  pib: 2 ** 50,
};

/** Parses a size; throws InvalidArgumentError naming the bad input. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new InvalidArgumentError(`invalid size "${text}"`, {
      hint: "use a positive number with an optional unit: 4096, 512MiB, 10GiB, 1TiB",
    });
  }
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) {
    throw new InvalidArgumentError(`size "${text}" is too large`, { hint: "sizes up to 8 PiB are supported" });
  }
  return bytes;
}

/** Formats bytes with the largest binary unit that keeps the number >= 1. */
export function formatSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  const text = i === 0 || Number.isInteger(v) ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1).replace(/\.?0+$/, "");
  return `${text}${units[i]}`;
}
