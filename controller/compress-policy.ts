// The compression part of `stowctl pool set`: checks --compress and --cold-after
// and puts them into the pool's settings (in place), or refuses before anything
// is written. Quiet hours are shared with dedup (dedup-policy.ts).
import type { SetPoolRequest } from "../gen/stowage/v1/controller.js";
import { InvalidArgumentError } from "../lib/errors.js";
import { DEFAULT_COLD_AFTER, parseColdAfter, parseCompressSchedule } from "./compress-schedule.js";
import type { PoolSettings } from "./model.js";

export function applyCompressPolicy(ref: string, settings: PoolSettings, req: Pick<SetPoolRequest, "compress" | "coldAfter">): void {
  if (req.compress !== undefined) {
    const s = parseCompressSchedule(req.compress);
    if (typeof s !== "string") throw new InvalidArgumentError(`pool ${ref}: ${s.error}`, { hint: "--compress daily or --compress off; nothing was changed" });
    if (s === "off") delete settings.compress;
    else settings.compress = s;
  }
  if (req.coldAfter !== undefined) {
    const ms = parseColdAfter(req.coldAfter);
    if (typeof ms !== "number") throw new InvalidArgumentError(`pool ${ref}: ${ms.error}`, { hint: "for example --cold-after 7d; nothing was changed" });
    const text = req.coldAfter.trim().toLowerCase().replace(/\s+/g, "");
    if (text === DEFAULT_COLD_AFTER) delete settings.coldAfter;
    else settings.coldAfter = text;
  }
}
