// The leader's clock for scheduled pool jobs (dedup, recompression): every
// `everyMs` (first after at most 3 s), each pool with operator settings whose
// job is due and not already running on this leader is started in the background.
import { errorMessage } from "../lib/errors.js";
import type { Logger } from "../lib/logger.js";
import type { PoolSettings } from "./model.js";
import type { ClusterStore } from "./store.js";

export interface PoolJobScheduleOptions {
  store: ClusterStore;
  everyMs: number;
  /** NODE@POOL of runs under way on this leader. */
  running: ReadonlySet<string>;
  due: (node: string, pool: string, settings: PoolSettings, now: Date) => boolean;
  start: (node: string, pool: string) => Promise<unknown>;
  log: Logger;
  /** For the log: "dedup", "compression". */
  what: string;
  now?: () => Date;
}

export function schedulePoolJobs(o: PoolJobScheduleOptions): { stop(): void } {
  let timer: NodeJS.Timeout | undefined;
  const tick = () => {
    const now = o.now?.() ?? new Date();
    for (const { value: spec } of o.store.nodeSpecs()) {
      for (const [pool, settings] of Object.entries(spec.poolSettings ?? {})) {
        if (o.running.has(`${spec.name}@${pool}`) || !o.due(spec.name, pool, settings, now)) continue;
        o.start(spec.name, pool).catch((err) => o.log.warn({ node: spec.name, pool, err: errorMessage(err) }, `scheduled ${o.what} not run`));
      }
    }
    timer = setTimeout(tick, o.everyMs);
  };
  timer = setTimeout(tick, Math.min(o.everyMs, 3_000));
  return { stop: () => clearTimeout(timer) };
}
