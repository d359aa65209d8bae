// Durations on the controller's command line: "600s", "10m", "1h", "1500ms", or a
// plain number of seconds. Pure.

const UNITS_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/** Milliseconds in `text`; throws an Error naming the flag when it is not a duration. */
export function parseDuration(flag: string, text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!m) throw new Error(`${flag} must be a duration such as 600s, 10m, 1h or 1500ms, got "${text}"`);
  const ms = Math.round(Number(m[1]) * UNITS_MS[m[2] ?? "s"]!);
  if (!(ms > 0)) throw new Error(`${flag} must be longer than zero, got "${text}"`);
  return ms;
}

/** "10m", "90s", "1500ms", "2h": the shortest exact form, for logs and messages. */
export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1_000 === 0) return `${ms / 1_000}s`;
  return `${ms}ms`;
}
