// The leader's clock for scheduled pool jobs (dedup, recompression): every
// `everyMs` (first after at most 3 s), each pool with operator settings whose
// job is due and not already running on this leader is started in the background.
import { errorMessage } from "../lib/errors.js";
import type { Logger } from "../lib/logger.js";
import type { AgentClients } from "./agents.js";
import type { PoolJobProgressRecord, PoolSettings } from "./model.js";
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

/**
 * While a pool job runs: every `everyMs`, ask its agent how far it has got and
 * refresh the run's record with that (a record not refreshed shows stalled). `stop`
 * waits for a refresh under way, so it never lands after the run's final record.
 */
export function poolJobHeartbeat(everyMs: number, poll: () => Promise<PoolJobProgressRecord | undefined>, put: (progress: PoolJobProgressRecord | undefined) => Promise<void>): { stop(): Promise<void> } {
  let last: PoolJobProgressRecord | undefined;
  let chain: Promise<void> = Promise.resolve();
  const tick = async () => {
    // An agent that cannot answer keeps the last figures: the record still shows the run alive.
    last = (await poll().catch(() => undefined)) ?? last;
    await put(last);
  };
  const timer = setInterval(() => {
    chain = chain.then(tick).catch(() => undefined);
  }, everyMs);
  return {
    stop: async () => {
      clearInterval(timer);
      await chain;
    },
  };
}

/** How far the `kind` run on pool NODE/POOL has got, as its agent says (undefined: none runs there). */
export async function agentPoolJobProgress(agents: AgentClients, node: string, pool: string, kind: "dedup" | "compress"): Promise<PoolJobProgressRecord | undefined> {
  const p = await agents.for(node).getPoolJobProgress({ pool, kind }, { timeoutMs: 5_000 });
  return p.running ? { totalBytes: p.totalBytes, doneBytes: p.doneBytes, itemsTotal: p.itemsTotal, itemsDone: p.itemsDone, phase: p.phase } : undefined;
}

/** The progress fields of `stowctl job list` for a running pool job; `fallbackTotal` when the agent has not said yet. */
export function poolJobProgressFields(startedAtMs: number, progress: PoolJobProgressRecord | undefined, now: number, fallbackTotal = 0) {
  const totalBytes = progress?.totalBytes ?? fallbackTotal;
  const copiedBytes = Math.min(totalBytes, progress?.doneBytes ?? 0);
  const bytesPerSec = copiedBytes > 0 ? Math.round(copiedBytes / (Math.max(1, now - startedAtMs) / 1000)) : 0;
  const etaSeconds = bytesPerSec > 0 ? Math.ceil((totalBytes - copiedBytes) / bytesPerSec) : 0;
  return { totalBytes, copiedBytes, bytesPerSec, etaSeconds };
}
