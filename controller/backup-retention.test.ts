import { describe, expect, it } from "vitest";
import { applyRetention, isoWeek } from "./backup-retention.js";

const at = (iso: string) => ({ id: iso, createdAtMs: Date.parse(iso) });
const ids = (xs: { id: string }[]) => xs.map((x) => x.id);

describe("backup retention", () => {
  const backups = [
    at("2026-11-27T10:00:00Z"),
    at("2026-11-27T02:00:00Z"),
    at("2026-11-26T23:00:00Z"),
    at("2026-11-26T01:00:00Z"),
    at("2026-11-24T12:00:00Z"),
    at("2026-11-15T12:00:00Z"),
    at("2026-11-01T12:00:00Z"),
  ];

  it("keeps everything when no rule is given", () => {
    expect(applyRetention(backups, { keepLast: 0, keepDaily: 0, keepWeekly: 0 }).drop).toEqual([]);
  });

  it("keeps the newest N", () => {
    const r = applyRetention(backups, { keepLast: 2, keepDaily: 0, keepWeekly: 0 });
    expect(ids(r.keep)).toEqual(["2026-11-27T10:00:00Z", "2026-11-27T02:00:00Z"]);
    expect(r.drop).toHaveLength(5);
  });

  it("keeps the newest of each recent day and week; rules add up", () => {
    expect(ids(applyRetention(backups, { keepLast: 0, keepDaily: 3, keepWeekly: 0 }).keep)).toEqual([
      "2026-11-27T10:00:00Z",
      "2026-11-26T23:00:00Z",
      "2026-11-24T12:00:00Z",
    ]);
    // Weeks: 2026-W48 (23-29 Nov), W46 (9-15 Nov), W44 (26 Oct-1 Nov).
    expect(ids(applyRetention(backups, { keepLast: 0, keepDaily: 0, keepWeekly: 3 }).keep)).toEqual([
      "2026-11-27T10:00:00Z",
      "2026-11-15T12:00:00Z",
      "2026-11-01T12:00:00Z",
    ]);
    expect(ids(applyRetention(backups, { keepLast: 1, keepDaily: 2, keepWeekly: 2 }).keep)).toEqual([
      "2026-11-27T10:00:00Z",
      "2026-11-26T23:00:00Z",
      "2026-11-15T12:00:00Z",
    ]);
  });

  it("numbers ISO weeks across a year boundary", () => {
    expect(isoWeek(Date.parse("2026-11-27T00:00:00Z"))).toBe("2026-W48");
    expect(isoWeek(Date.parse("2027-01-01T00:00:00Z"))).toBe("2026-W53");
    expect(isoWeek(Date.parse("2024-12-30T00:00:00Z"))).toBe("2025-W01");
  });
});
