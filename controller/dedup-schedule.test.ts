import { describe, expect, it } from "vitest";
import { dedupDecision, parseDedupSchedule, parseQuietHours, windowStart, DEDUP_STALE_MS } from "./dedup-schedule.js";
import type { PoolDedupRecord, PoolSettings } from "./model.js";

// Local clock times: the schedule works in the controller's local time zone.
const at = (day: number, h: number, m = 0) => new Date(2026, 0, day, h, m);

function record(startedAt: Date, state: PoolDedupRecord["state"] = "done", updatedAt = startedAt): PoolDedupRecord {
  return {
    node: "n1",
    pool: "default",
    state,
    trigger: "schedule",
    runner: "c1",
    startedAtMs: startedAt.getTime(),
    updatedAtMs: updatedAt.getTime(),
    finishedAtMs: state === "running" ? 0 : updatedAt.getTime(),
    filesystem: "xfs",
    deduplicatedBytes: 0,
    savedBytes: 0,
    freedBytes: 0,
    scannedBytes: 0,
    message: "",
  };
}

describe("parsing", () => {
  it("accepts daily/off and HH:MM-HH:MM, refuses the rest", () => {
    expect(parseDedupSchedule("Daily")).toBe("daily");
    expect(parseDedupSchedule("weekly")).toEqual({ error: 'dedup schedule must be "daily" or "off", got "weekly"' });
    expect(parseQuietHours("01:00-05:00")).toEqual({ startMin: 60, endMin: 300 });
    expect(parseQuietHours("23:30-2:00")).toEqual({ startMin: 1410, endMin: 120 });
    expect(parseQuietHours("any")).toBeUndefined();
    expect(parseQuietHours("")).toBeUndefined();
    for (const bad of ["1-5", "25:00-05:00", "01:00-01:00", "01:00", "01:00-02:00-03:00", "01:60-02:00"]) {
      expect(parseQuietHours(bad), bad).toHaveProperty("error");
    }
  });
});

describe("window", () => {
  const tests: Record<string, [string, Date, Date | undefined]> = {
    "inside a daytime window": ["01:00-05:00", at(10, 3), at(10, 1)],
    "at its first minute": ["01:00-05:00", at(10, 1), at(10, 1)],
    "at its end (exclusive)": ["01:00-05:00", at(10, 5), undefined],
    "before it": ["01:00-05:00", at(10, 0, 59), undefined],
    "evening part of a window over midnight": ["23:00-02:00", at(10, 23, 30), at(10, 23)],
    "morning part of a window over midnight began yesterday": ["23:00-02:00", at(10, 1), at(9, 23)],
    "afternoon, outside a window over midnight": ["23:00-02:00", at(10, 14), undefined],
  };
  for (const [name, [hours, now, want]] of Object.entries(tests)) {
    it(name, () => {
      const q = parseQuietHours(hours);
      expect(q && "error" in q).toBeFalsy();
      expect(windowStart(q as never, now)).toEqual(want);
    });
  }
  it("without quiet hours the window is the day", () => expect(windowStart(undefined, at(10, 15))).toEqual(at(10, 0)));
});

describe("run now?", () => {
  const daily: PoolSettings = { dedup: "daily", quietHours: "01:00-05:00" };
  const cases: Record<string, [PoolSettings | undefined, PoolDedupRecord | undefined, boolean, Date, string | true]> = {
    "never ran, inside the window: runs": [daily, undefined, true, at(10, 2), true],
    "off: never": [{ dedup: "off" }, undefined, true, at(10, 2), "dedup is off"],
    "no policy: never": [undefined, undefined, true, at(10, 2), "dedup is off"],
    "outside the quiet hours: waits": [daily, undefined, true, at(10, 12), "outside the quiet hours 01:00-05:00"],
    "ran in this window already: waits": [daily, record(at(10, 1, 5)), true, at(10, 4), "already ran in this window"],
    "failed in this window: waits for the next one": [daily, record(at(10, 1, 5), "failed"), true, at(10, 4), "already ran in this window"],
    "ran yesterday: runs again": [daily, record(at(9, 1, 5)), true, at(10, 1, 1), true],
    "node offline: waits": [daily, undefined, false, at(10, 2), "node offline"],
    "a live run: waits": [daily, record(at(10, 1), "running", at(10, 2)), true, new Date(at(10, 2).getTime() + 1000), "a run is under way"],
    "a run whose leader died (stale): starts again": [daily, record(at(10, 1), "running", at(10, 1)), true, new Date(at(10, 1).getTime() + DEDUP_STALE_MS + 1), true],
    "manual run earlier today, outside the window: the window still runs": [daily, record(at(10, 0, 30), "done"), true, at(10, 2), true],
    "no quiet hours: once a day at any time": [{ dedup: "daily" }, record(at(10, 0, 30)), true, at(10, 18), "already ran in this window"],
  };
  for (const [name, [settings, last, online, now, want]] of Object.entries(cases)) {
    it(name, () => {
      const d = dedupDecision(settings, last, online, now);
      if (want === true) expect(d).toEqual({ run: true });
      else expect(d).toEqual({ run: false, reason: want });
    });
  }
});
