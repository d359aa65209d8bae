// When a pool's scheduled recompression of cold images runs: the operator's
// policy ("daily" or "off", how long an image must be unmodified), the pool's
// quiet hours (shared with dedup), the last run and the clock in, "run now" or
// the reason why not out. Pure.
import { dailyDecision } from "./dedup-schedule.js";
import type { PoolCompressRecord, PoolSettings } from "./model.js";

export type CompressSchedule = "daily" | "off";

/** An image unmodified for a week is taken for cold unless the operator says otherwise. */
export const DEFAULT_COLD_AFTER = "7d";

/** A run that has not reported for this long is taken for dead (its leader died). */
export const COMPRESS_STALE_MS = 60_000;

const UNIT_MS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

export function parseCompressSchedule(text: string): CompressSchedule | { error: string } {
  const t = text.trim().toLowerCase();
  if (t === "daily" || t === "off") return t;
  return { error: `compress schedule must be "daily" or "off", got "${text}"` };
}

/** "7d", "12h", "30m", "90s", "0s" (0: any age) -> milliseconds; at most 365 days. */
export function parseColdAfter(text: string): number | { error: string } {
  const m = /^\s*(\d+)\s*([smhd])\s*$/.exec(text.toLowerCase());
  const ms = m ? Number(m[1]) * UNIT_MS[m[2]!]! : NaN;
  if (!m || !Number.isSafeInteger(ms) || ms > 365 * UNIT_MS["d"]!) {
    return { error: `cold-after must be a whole number of s, m, h or d up to 365d (for example 7d, 12h, 0s), got "${text}"` };
  }
  return ms;
}

/** The cold-after of a pool's settings, in milliseconds (the default when unset or unreadable). */
export function coldAfterMs(settings: PoolSettings | undefined): number {
  const v = parseColdAfter(settings?.coldAfter ?? DEFAULT_COLD_AFTER);
  return typeof v === "number" ? v : (parseColdAfter(DEFAULT_COLD_AFTER) as number);
}

export type CompressDecision = { run: true } | { run: false; reason: string };

/** Whether the pool's scheduled recompression should start now (see dailyDecision). */
export function compressDecision(settings: PoolSettings | undefined, last: PoolCompressRecord | undefined, online: boolean, now: Date): CompressDecision {
  return dailyDecision({ enabled: settings?.compress === "daily", off: "compression is off", quietHours: settings?.quietHours, staleMs: COMPRESS_STALE_MS }, last, online, now);
}
