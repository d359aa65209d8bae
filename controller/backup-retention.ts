// Which backups a retention policy keeps: pure, so it is tested with tables.
// A backup is kept when any rule keeps it:
// - keepLast N: the newest N;
// - keepDaily N: the newest backup of each of the N most recent days that have one (UTC);
// - keepWeekly N: the newest backup of each of the N most recent ISO weeks that have one.
// With no rule at all, everything is kept (a policy never deletes by omission).

export interface RetentionPolicy {
  keepLast: number;
  keepDaily: number;
  keepWeekly: number;
}

export interface Dated {
  id: string;
  createdAtMs: number;
}

const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);

/** ISO week "YYYY-Www" of a time (UTC). */
export function isoWeek(ms: number): string {
  const d = new Date(ms);
  const date = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const dow = date.getUTCDay() || 7;
  date.setUTCDate(date.getUTCDate() + 4 - dow); // the Thursday of this week decides the year
  const yearStart = Date.UTC(date.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((date.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return `${date.getUTCFullYear()}-W${String(week).padStart(2, "0")}`;
}

function newestPerBucket<T extends Dated>(newestFirst: T[], bucket: (ms: number) => string, n: number): Set<string> {
  const kept = new Set<string>();
  const seen = new Set<string>();
  for (const b of newestFirst) {
    if (seen.size >= n) break;
    const k = bucket(b.createdAtMs);
    if (seen.has(k)) continue;
    seen.add(k);
    kept.add(b.id);
  }
  return kept;
}

export function applyRetention<T extends Dated>(backups: T[], p: RetentionPolicy): { keep: T[]; drop: T[] } {
  const newestFirst = [...backups].sort((a, b) => b.createdAtMs - a.createdAtMs || b.id.localeCompare(a.id));
  if (p.keepLast <= 0 && p.keepDaily <= 0 && p.keepWeekly <= 0) return { keep: newestFirst, drop: [] };
  const kept = new Set(newestFirst.slice(0, Math.max(p.keepLast, 0)).map((b) => b.id));
  for (const id of newestPerBucket(newestFirst, day, p.keepDaily)) kept.add(id);
  for (const id of newestPerBucket(newestFirst, isoWeek, p.keepWeekly)) kept.add(id);
  return { keep: newestFirst.filter((b) => kept.has(b.id)), drop: newestFirst.filter((b) => !kept.has(b.id)) };
}
