import { describe, expect, it } from "vitest";
import { applyCompressPolicy } from "./compress-policy.js";
import { coldAfterMs, compressDecision, parseColdAfter, parseCompressSchedule } from "./compress-schedule.js";
import type { PoolCompressRecord, PoolSettings } from "./model.js";
import { formatColdAfter, poolCompressJobs } from "./pool-compress.js";

const at = (h: number, m = 0, day = 27) => new Date(2026, 10, day, h, m);

function run(over: Partial<PoolCompressRecord>): PoolCompressRecord {
  return {
    node: "n1", pool: "default", state: "done", trigger: "schedule", runner: "c1", startedAtMs: 0, updatedAtMs: 0, finishedAtMs: 0, coldAfterMs: 0,
    bytesBefore: 0, bytesAfter: 0, savedBytes: 0, totalSavedBytes: 0, compressed: 0, skipped: 0, message: "", images: [], ...over,
  };
}

describe("parsing the policy", () => {
  it("takes daily or off, and cold-after in s, m, h or d", () => {
    expect(parseCompressSchedule(" Daily ")).toBe("daily");
    expect(parseCompressSchedule("weekly")).toEqual({ error: 'compress schedule must be "daily" or "off", got "weekly"' });
    expect([parseColdAfter("7d"), parseColdAfter("12h"), parseColdAfter("30m"), parseColdAfter("0s")]).toEqual([7 * 86_400_000, 12 * 3_600_000, 1_800_000, 0]);
    for (const bad of ["7", "-1d", "1.5d", "7 days", "", "400d"]) expect(parseColdAfter(bad)).toHaveProperty("error");
    expect(coldAfterMs(undefined)).toBe(7 * 86_400_000);
    expect(coldAfterMs({ coldAfter: "2h" })).toBe(7_200_000);
    expect([formatColdAfter(7 * 86_400_000), formatColdAfter(7_200_000), formatColdAfter(0)]).toEqual(["7d", "2h", "0s"]);
  });

  it("puts a good policy into the settings and refuses a bad one, leaving them as they were", () => {
    const s: PoolSettings = { dedup: "daily" };
    applyCompressPolicy("n1/default", s, { compress: "daily", coldAfter: "3d" });
    expect(s).toEqual({ dedup: "daily", compress: "daily", coldAfter: "3d" });
    applyCompressPolicy("n1/default", s, { coldAfter: "7d" });
    expect(s).toEqual({ dedup: "daily", compress: "daily" });
    expect(() => applyCompressPolicy("n1/default", s, { compress: "hourly" })).toThrow(/pool n1\/default: compress schedule must be "daily" or "off"/);
    expect(() => applyCompressPolicy("n1/default", s, { coldAfter: "soon" })).toThrow(/cold-after must be a whole number/);
    applyCompressPolicy("n1/default", s, { compress: "off" });
    expect(s).toEqual({ dedup: "daily" });
  });
});

describe("compressDecision", () => {
  const daily: PoolSettings = { compress: "daily", quietHours: "01:00-05:00" };
  const cases: Record<string, [PoolSettings | undefined, PoolCompressRecord | undefined, boolean, Date, true | string]> = {
    "off by default": [undefined, undefined, true, at(2), "compression is off"],
    "dedup's schedule does not turn it on": [{ dedup: "daily" }, undefined, true, at(2), "compression is off"],
    "due inside the quiet hours, never run": [daily, undefined, true, at(2), true],
    "not outside them": [daily, undefined, true, at(12), "outside the quiet hours 01:00-05:00"],
    "not twice in one window": [daily, run({ startedAtMs: at(1, 30).getTime() }), true, at(4), "already ran in this window"],
    "again in the next night's window": [daily, run({ startedAtMs: at(1, 30, 26).getTime() }), true, at(2), true],
    "a manual run in this window does not replace the scheduled one": [daily, run({ trigger: "manual", startedAtMs: at(1, 30).getTime() }), true, at(2), true],
    "a failed run in this window counts": [daily, run({ state: "failed", startedAtMs: at(1, 10).getTime() }), true, at(2), "already ran in this window"],
    "never beside a live run": [daily, run({ state: "running", startedAtMs: at(1).getTime(), updatedAtMs: at(2).getTime() - 5_000 }), true, at(2), "a run is under way"],
    "a stale running record (dead leader) is run again": [daily, run({ state: "running", startedAtMs: at(1).getTime(), updatedAtMs: at(1, 5).getTime() }), true, at(2), true],
    "not on an offline node": [daily, undefined, false, at(2), "node offline"],
    "any time of day once per day without quiet hours": [{ compress: "daily" }, run({ startedAtMs: at(0, 10).getTime() }), true, at(23), "already ran in this window"],
    "a window across midnight, in the morning part": [{ compress: "daily", quietHours: "23:00-02:00" }, run({ startedAtMs: at(23, 30, 25).getTime() }), true, at(1, 0, 27), true],
  };
  for (const [name, [settings, last, online, now, want]] of Object.entries(cases)) {
    it(name, () => {
      const d = compressDecision(settings, last, online, now);
      expect(d.run ? true : d.reason).toBe(want);
    });
  }
});

describe("poolCompressJobs", () => {
  it("lists running runs as compress jobs, stalled when not refreshed", () => {
    const jobs = poolCompressJobs([run({ state: "running", updatedAtMs: 1_000, message: "recompressing" }), run({ pool: "b" })], 120_000);
    expect(jobs).toHaveLength(1);
    expect(jobs[0]).toMatchObject({ kind: "compress", node: "n1" });
    expect(jobs[0]!.message).toMatch(/pool n1\/default: no progress report for 119s/);
  });
});
