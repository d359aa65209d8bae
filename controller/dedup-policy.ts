// The dedup part of `stowctl pool set`: checks --dedup and --quiet-hours and puts
// them into the pool's settings (in place), or refuses before anything is written.
import type { SetPoolRequest } from "../gen/stowage/v1/controller.js";
import { InvalidArgumentError } from "../lib/errors.js";
import { parseDedupSchedule, parseQuietHours } from "./dedup-schedule.js";
import type { PoolSettings } from "./model.js";

export function applyDedupPolicy(ref: string, settings: PoolSettings, req: Pick<SetPoolRequest, "dedup" | "quietHours">): void {
  if (req.dedup !== undefined) {
    const s = parseDedupSchedule(req.dedup);
    if (typeof s !== "string") throw new InvalidArgumentError(`pool ${ref}: ${s.error}`, { hint: "--dedup daily or --dedup off; nothing was changed" });
    if (s === "off") delete settings.dedup;
    else settings.dedup = s;
  }
  if (req.quietHours !== undefined) {
    const q = parseQuietHours(req.quietHours);
    if (q && "error" in q) throw new InvalidArgumentError(`pool ${ref}: ${q.error}`, { hint: "for example --quiet-hours 01:00-05:00; nothing was changed" });
    if (q === undefined) delete settings.quietHours;
    else settings.quietHours = req.quietHours.trim();
  }
}
