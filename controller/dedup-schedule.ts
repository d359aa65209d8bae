// When a pool's scheduled dedup runs: the operator's policy (daily or off, quiet
// hours "HH:MM-HH:MM" in the controller's local time, which may wrap midnight),
// the last run and the clock in, "run now" or the reason why not out. Pure.
import type { PoolDedupRecord, PoolSettings } from "./model.js";

export type DedupSchedule = "daily" | "off";

export interface QuietHours {
  /** Minutes after local midnight. */
  startMin: number;
  endMin: number;
}

/** A run that has not reported for this long is taken for dead (its leader died). */
export const DEDUP_STALE_MS = 60_000;

export function parseDedupSchedule(text: string): DedupSchedule | { error: string } {
  const t = text.trim().toLowerCase();
  if (t === "daily" || t === "off") return t;
  return { error: `dedup schedule must be "daily" or "off", got "${text}"` };
}

function minutes(hhmm: string): number | undefined {
  const m = /^(\d{1,2}):(\d{2})$/.exec(hhmm.trim());
  if (!m) return undefined;
  const h = Number(m[1]);
  const min = Number(m[2]);
  if (h > 23 || min > 59) return undefined;
  return h * 60 + min;
}

/** "01:00-05:00" -> the window; "" or "any" -> undefined (any time); an error for anything else. */
export function parseQuietHours(text: string): QuietHours | undefined | { error: string } {
  const t = text.trim().toLowerCase();
  if (t === "" || t === "any") return undefined;
  const [a, b, ...rest] = t.split("-");
  const startMin = a === undefined ? undefined : minutes(a);
  const endMin = b === undefined ? undefined : minutes(b);
  if (rest.length > 0 || startMin === undefined || endMin === undefined || startMin === endMin) {
    return { error: `quiet hours must be HH:MM-HH:MM (for example 01:00-05:00; 'any' for no limit), got "${text}"` };
  }
  return { startMin, endMin };
}

/** The start of the window occurrence that contains `now`, or undefined when `now` is outside the window. */
export function windowStart(q: QuietHours | undefined, now: Date): Date | undefined {
  const midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  if (!q) return midnight; // any time: one window per day
  const nowMin = now.getHours() * 60 + now.getMinutes();
  const at = (dayOffset: number, min: number) => new Date(now.getFullYear(), now.getMonth(), now.getDate() + dayOffset, Math.floor(min / 60), min % 60);
  if (q.startMin < q.endMin) return nowMin >= q.startMin && nowMin < q.endMin ? at(0, q.startMin) : undefined;
  // Wraps midnight (23:00-02:00): in the evening part the window began today, in the morning part yesterday.
  if (nowMin >= q.startMin) return at(0, q.startMin);
  if (nowMin < q.endMin) return at(-1, q.startMin);
  return undefined;
}

export type DedupDecision = { run: true } | { run: false; reason: string };

/** The last run of a pool job, as the schedule needs it. */
export interface LastRun {
  state: string;
  trigger: string;
  startedAtMs: number;
  updatedAtMs: number;
}

/**
 * Whether a pool's daily job (dedup, recompression) should start now: once per
 * quiet-hours window occurrence (a scheduled run started, or failed, in it counts;
 * a manual one does not), on an online node, never beside a live run (one that
 * reported within `staleMs`).
 */
export function dailyDecision(
  o: { enabled: boolean; off: string; quietHours: string | undefined; staleMs: number },
  last: LastRun | undefined,
  online: boolean,
  now: Date,
): DedupDecision {
  if (!o.enabled) return { run: false, reason: o.off };
  if (last?.state === "running" && now.getTime() - last.updatedAtMs < o.staleMs) return { run: false, reason: "a run is under way" };
  const q = parseQuietHours(o.quietHours ?? "");
  if (q && "error" in q) return { run: false, reason: q.error };
  const start = windowStart(q, now);
  if (!start) return { run: false, reason: `outside the quiet hours ${o.quietHours}` };
  if (last && last.trigger === "schedule" && last.startedAtMs >= start.getTime() && last.state !== "running") return { run: false, reason: "already ran in this window" };
  if (!online) return { run: false, reason: "node offline" };
  return { run: true };
}

/** Whether the pool's scheduled dedup should start now (see dailyDecision). */
export function dedupDecision(settings: PoolSettings | undefined, last: PoolDedupRecord | undefined, online: boolean, now: Date): DedupDecision {
  return dailyDecision({ enabled: settings?.dedup === "daily", off: "dedup is off", quietHours: settings?.quietHours, staleMs: DEDUP_STALE_MS }, last, online, now);
}
