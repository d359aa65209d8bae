// Reflink dedup of pools, run by the leader: now on request (stowctl pool dedup)
// or by the schedule in the operator's pool settings (dedupDecision). The pool's
// filesystem is checked with the agent first, so a pool that cannot share extents
// is refused with nothing written; then the run is recorded (pool-dedup/NODE@POOL,
// state "running", refreshed while it runs so `stowctl job list` shows it alive)
// before the agent is called, and the result replaces it: `stowctl pool get`
// shows it. A run whose leader died shows stalled and is started again by the
// next leader's schedule; the agent never runs two on one pool.
import { JobState, type Job, type PoolDedup, type PoolDedupRun } from "../gen/stowage/v1/types.js";
import { errorMessage, FailedPreconditionError, NotFoundError } from "../lib/errors.js";
import type { Logger } from "../lib/logger.js";
import { validateName } from "../lib/names.js";
import type { AgentClients } from "./agents.js";
import type { ClusterView } from "./cluster-view.js";
import { dedupDecision, DEDUP_STALE_MS } from "./dedup-schedule.js";
import { keys } from "./keys.js";
import type { PoolDedupRecord, PoolSettings } from "./model.js";
import type { ClusterStore } from "./store.js";
import { agentPoolJobProgress, poolJobHeartbeat, poolJobProgressFields, schedulePoolJobs } from "./pool-job-schedule.js";

export interface PoolDedupDeps {
  store: ClusterStore;
  view: ClusterView;
  agents: AgentClients;
  isOnline: (node: string) => boolean;
  instance: string;
  log: Logger;
  /** How often the schedule is looked at (default 30 s). */
  checkEveryMs?: number;
  /** How often a running job's progress is asked of its agent and recorded (default 2 s). */
  heartbeatMs?: number;
  now?: () => Date;
}

export class PoolDedupJobs {
  private schedule?: { stop(): void };
  private readonly running = new Set<string>();

  constructor(private readonly d: PoolDedupDeps) {}

  start(): void {
    this.schedule = schedulePoolJobs({
      store: this.d.store,
      everyMs: this.d.checkEveryMs ?? 30_000,
      running: this.running,
      due: (node, pool, settings, now) => dedupDecision(settings, this.d.store.poolDedup(node, pool)?.value, this.d.isOnline(node), now).run,
      start: (node, pool) => this.run(node, pool, "schedule"),
      log: this.d.log,
      what: "dedup",
      now: this.d.now,
    });
  }

  stop(): void {
    this.schedule?.stop();
    this.schedule = undefined;
  }

  /** Runs the pool's dedup and waits for it; the record it leaves. */
  async run(node: string, pool: string, trigger: PoolDedupRecord["trigger"]): Promise<PoolDedupRecord> {
    validateName("node", node);
    if (!this.d.store.nodeSpec(node)) throw new NotFoundError("node", node);
    const ref = `${node}/${pool}`;
    if (!this.d.view.poolRecords(node).some((p) => p.name === pool)) {
      throw new NotFoundError("pool", ref, { hint: `run 'stowctl pool list --node ${node}' to see its pools` });
    }
    if (!this.d.isOnline(node)) throw new FailedPreconditionError(`node ${node} is offline; pool ${ref} cannot be deduplicated now`, { hint: "nothing was changed" });
    const key = `${node}@${pool}`;
    const last = this.d.store.poolDedup(node, pool)?.value;
    if (this.running.has(key) || (last?.state === "running" && Date.now() - last.updatedAtMs < DEDUP_STALE_MS)) {
      throw new FailedPreconditionError(`a dedup of pool ${ref} is already running`, { hint: "follow it with 'stowctl job list'" });
    }
    this.running.add(key);
    try {
      const agent = this.d.agents.for(node);
      // Refused here (ext4, XFS without reflink) before anything is recorded.
      const check = await agent.dedupImages({ pool, checkOnly: true }, { timeoutMs: 30_000 });
      const started = Date.now();
      let rec: PoolDedupRecord = {
        node,
        pool,
        state: "running",
        trigger,
        runner: this.d.instance,
        startedAtMs: started,
        updatedAtMs: started,
        finishedAtMs: 0,
        filesystem: check.filesystem,
        deduplicatedBytes: 0,
        savedBytes: last?.savedBytes ?? 0,
        freedBytes: 0,
        scannedBytes: this.d.view.pools(node).find((p) => p.name === pool)?.allocatedBytes ?? 0,
        message: `deduplicating on ${check.filesystem}`,
      };
      await this.put(rec);
      this.d.log.info({ node, pool, trigger }, "dedup of a pool: started");
      const beat = poolJobHeartbeat(
        this.d.heartbeatMs ?? 2_000,
        () => agentPoolJobProgress(this.d.agents, node, pool, "dedup"),
        (progress) => this.put({ ...rec, updatedAtMs: Date.now(), progress }),
      );
      try {
        const r = await agent.dedupImages({ pool, checkOnly: false }, { timeoutMs: 12 * 3600_000 });
        const dedup = Math.max(0, r.sharedSavedBytes - r.sharedSavedBytesBefore);
        rec = {
          ...rec,
          state: "done",
          updatedAtMs: Date.now(),
          finishedAtMs: Date.now(),
          deduplicatedBytes: dedup,
          savedBytes: r.sharedSavedBytes,
          freedBytes: r.freedBytes,
          scannedBytes: r.scannedBytes,
          message: `${r.files} files scanned in ${(r.durationMs / 1000).toFixed(1)}s`,
        };
      } catch (err) {
        rec = { ...rec, state: "failed", updatedAtMs: Date.now(), finishedAtMs: Date.now(), message: errorMessage(err) };
      } finally {
        await beat.stop();
      }
      await this.put(rec);
      this.d.log.info({ node, pool, state: rec.state, deduplicated: rec.deduplicatedBytes, saved: rec.savedBytes, freed: rec.freedBytes }, "dedup of a pool: finished");
      return rec;
    } finally {
      this.running.delete(key);
    }
  }

  private async put(rec: PoolDedupRecord): Promise<void> {
    await this.d.store.write({ put: [{ key: keys.poolDedup(rec.node, rec.pool), value: rec }] });
  }
}

export function dedupRunToApi(r: PoolDedupRecord): PoolDedupRun {
  return {
    state: r.state,
    trigger: r.trigger,
    startedAtMs: r.startedAtMs,
    finishedAtMs: r.finishedAtMs,
    filesystem: r.filesystem,
    deduplicatedBytes: r.deduplicatedBytes,
    savedBytes: r.savedBytes,
    freedBytes: r.freedBytes,
    scannedBytes: r.scannedBytes,
    message: r.message,
  };
}

/** The pool's dedup block in the API (undefined when never set nor run). */
export function poolDedupToApi(settings: PoolSettings | undefined, last: PoolDedupRecord | undefined, online: boolean, now: Date): PoolDedup | undefined {
  if (!settings?.dedup && !settings?.quietHours && !last) return undefined;
  const d = dedupDecision(settings, last, online, now);
  return {
    schedule: settings?.dedup ?? "off",
    quietHours: settings?.quietHours ?? "",
    lastRun: last ? dedupRunToApi(last) : undefined,
    next: d.run ? "due now" : d.reason,
  };
}

/** Running dedup runs as jobs of `stowctl job list`. */
export function poolDedupJobs(records: PoolDedupRecord[], now: number): Job[] {
  return records
    .filter((r) => r.state === "running")
    .map((r) => {
      const stalled = now - r.updatedAtMs > DEDUP_STALE_MS;
      return {
        volume: "",
        replicaId: "",
        kind: "dedup",
        node: r.node,
        runner: r.runner,
        state: stalled ? JobState.JOB_STATE_STALLED : JobState.JOB_STATE_RUNNING,
        message: `pool ${r.node}/${r.pool}: ${stalled ? `no progress report for ${Math.round((now - r.updatedAtMs) / 1000)}s; its controller may have died` : r.progress?.phase || r.message}`,
        ...poolJobProgressFields(r.startedAtMs, r.progress, now, r.scannedBytes),
        startedAtMs: r.startedAtMs,
        updatedAtMs: r.updatedAtMs,
      };
    })
    .sort((a, b) => a.message.localeCompare(b.message));
}
