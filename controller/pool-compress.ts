// Recompression of pools' cold images, run by the leader: now on request
// (stowctl pool compress) or by the schedule in the operator's pool settings
// (compressDecision). Bad input is refused before anything is written; then the
// run is recorded (pool-compress/NODE@POOL, state "running", refreshed while it
// runs so `stowctl job list` shows it alive) before the agent is called, and the
// result replaces it: `stowctl pool get` shows it with the bytes saved so far.
// Attach needs nothing from here: the agent rewrites an image only under the
// replica's lock, which it also holds to open the export an attach needs.
import { JobState, type Job, type PoolCompress, type PoolCompressRun } from "../gen/stowage/v1/types.js";
import { errorMessage, FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../lib/errors.js";
import type { Logger } from "../lib/logger.js";
import { validateName } from "../lib/names.js";
import type { AgentClients } from "./agents.js";
import type { ClusterView } from "./cluster-view.js";
import { coldAfterMs, compressDecision, COMPRESS_STALE_MS, DEFAULT_COLD_AFTER, parseColdAfter } from "./compress-schedule.js";
import { keys } from "./keys.js";
import type { PoolCompressImageRecord, PoolCompressRecord, PoolSettings } from "./model.js";
import type { ClusterStore } from "./store.js";
import { agentPoolJobProgress, poolJobHeartbeat, poolJobProgressFields, schedulePoolJobs } from "./pool-job-schedule.js";

/** Per-image lines kept in etcd; a pool with more images keeps the first ones (skips last). */
const MAX_IMAGES = 200;

export interface PoolCompressDeps {
  store: ClusterStore;
  view: ClusterView;
  agents: AgentClients;
  isOnline: (node: string) => boolean;
  instance: string;
  log: Logger;
  checkEveryMs?: number;
  /** How often a running job's progress is asked of its agent and recorded (default 2 s). */
  heartbeatMs?: number;
  now?: () => Date;
}

export class PoolCompressJobs {
  private schedule?: { stop(): void };
  private readonly running = new Set<string>();

  constructor(private readonly d: PoolCompressDeps) {}

  start(): void {
    this.schedule = schedulePoolJobs({
      store: this.d.store,
      everyMs: this.d.checkEveryMs ?? 30_000,
      running: this.running,
      due: (node, pool, settings, now) => compressDecision(settings, this.d.store.poolCompress(node, pool)?.value, this.d.isOnline(node), now).run,
      start: (node, pool) => this.run(node, pool, "schedule"),
      log: this.d.log,
      what: "compression",
      now: this.d.now,
    });
  }

  stop(): void {
    this.schedule?.stop();
    this.schedule = undefined;
  }

  /** Runs the pool's recompression and waits for it; the record it leaves. `coldAfter` overrides the policy ("0s": any age). */
  async run(node: string, pool: string, trigger: PoolCompressRecord["trigger"], coldAfter?: string): Promise<PoolCompressRecord> {
    validateName("node", node);
    const spec = this.d.store.nodeSpec(node);
    if (!spec) throw new NotFoundError("node", node);
    const ref = `${node}/${pool}`;
    if (!this.d.view.poolRecords(node).some((p) => p.name === pool)) {
      throw new NotFoundError("pool", ref, { hint: `run 'stowctl pool list --node ${node}' to see its pools` });
    }
    let cold = coldAfterMs(spec.value.poolSettings?.[pool]);
    if (coldAfter) {
      const v = parseColdAfter(coldAfter);
      if (typeof v !== "number") throw new InvalidArgumentError(v.error, { hint: "for example --cold-after 7d or --cold-after 0s; nothing was changed" });
      cold = v;
    }
    if (!this.d.isOnline(node)) throw new FailedPreconditionError(`node ${node} is offline; pool ${ref} cannot be compressed now`, { hint: "nothing was changed" });
    const key = `${node}@${pool}`;
    const last = this.d.store.poolCompress(node, pool)?.value;
    if (this.running.has(key) || (last?.state === "running" && Date.now() - last.updatedAtMs < COMPRESS_STALE_MS)) {
      throw new FailedPreconditionError(`a compression of pool ${ref} is already running`, { hint: "follow it with 'stowctl job list'" });
    }
    this.running.add(key);
    try {
      const started = Date.now();
      const previousTotal = last?.totalSavedBytes ?? 0;
      let rec: PoolCompressRecord = {
        node,
        pool,
        state: "running",
        trigger,
        runner: this.d.instance,
        startedAtMs: started,
        updatedAtMs: started,
        finishedAtMs: 0,
        coldAfterMs: cold,
        bytesBefore: 0,
        bytesAfter: 0,
        savedBytes: 0,
        totalSavedBytes: previousTotal,
        compressed: 0,
        skipped: 0,
        message: `recompressing images unmodified for ${formatColdAfter(cold)}`,
        images: [],
      };
      await this.put(rec);
      this.d.log.info({ node, pool, trigger, coldAfterMs: cold }, "compression of a pool: started");
      const beat = poolJobHeartbeat(
        this.d.heartbeatMs ?? 2_000,
        () => agentPoolJobProgress(this.d.agents, node, pool, "compress"),
        (progress) => this.put({ ...rec, updatedAtMs: Date.now(), progress }),
      );
      try {
        const r = await this.d.agents.for(node).compressImages({ pool, coldAfterMs: cold }, { timeoutMs: 24 * 3600_000 });
        const images: PoolCompressImageRecord[] = r.images.map((i) => ({ ...i, action: i.action as PoolCompressImageRecord["action"] }));
        const compressed = images.filter((i) => i.action === "compressed").length;
        rec = {
          ...rec,
          state: "done",
          updatedAtMs: Date.now(),
          finishedAtMs: Date.now(),
          bytesBefore: r.bytesBefore,
          bytesAfter: r.bytesAfter,
          savedBytes: r.savedBytes,
          totalSavedBytes: previousTotal + r.savedBytes,
          compressed,
          skipped: images.length - compressed,
          message: `${compressed} of ${images.length} images recompressed in ${(r.durationMs / 1000).toFixed(1)}s`,
          images: images.slice(0, MAX_IMAGES),
        };
      } catch (err) {
        rec = { ...rec, state: "failed", updatedAtMs: Date.now(), finishedAtMs: Date.now(), message: errorMessage(err) };
      } finally {
        await beat.stop();
      }
      await this.put(rec);
      this.d.log.info({ node, pool, state: rec.state, saved: rec.savedBytes, compressed: rec.compressed }, "compression of a pool: finished");
      return rec;
    } finally {
      this.running.delete(key);
    }
  }

  private async put(rec: PoolCompressRecord): Promise<void> {
    await this.d.store.write({ put: [{ key: keys.poolCompress(rec.node, rec.pool), value: rec }] });
  }
}

/** "7d", "12h", "30m", "90s": the form the operator types. */
export function formatColdAfter(ms: number): string {
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000]] as const) if (ms > 0 && ms % size === 0) return `${ms / size}${unit}`;
  return `${Math.round(ms / 1000)}s`;
}

export function compressRunToApi(r: PoolCompressRecord): PoolCompressRun {
  return {
    state: r.state,
    trigger: r.trigger,
    startedAtMs: r.startedAtMs,
    finishedAtMs: r.finishedAtMs,
    coldAfterMs: r.coldAfterMs,
    bytesBefore: r.bytesBefore,
    bytesAfter: r.bytesAfter,
    savedBytes: r.savedBytes,
    compressed: r.compressed,
    skipped: r.skipped,
    message: r.message,
    images: r.images.map((i) => ({ ...i })),
  };
}

/** The pool's compression block in the API (undefined when never set nor run). */
export function poolCompressToApi(settings: PoolSettings | undefined, last: PoolCompressRecord | undefined, online: boolean, now: Date): PoolCompress | undefined {
  if (!settings?.compress && !settings?.coldAfter && !last) return undefined;
  const d = compressDecision(settings, last, online, now);
  return {
    schedule: settings?.compress ?? "off",
    coldAfter: settings?.coldAfter ?? DEFAULT_COLD_AFTER,
    quietHours: settings?.quietHours ?? "",
    lastRun: last ? compressRunToApi(last) : undefined,
    next: d.run ? "due now" : d.reason,
    totalSavedBytes: last?.totalSavedBytes ?? 0,
  };
}

/** Running compressions as jobs of `stowctl job list`. */
export function poolCompressJobs(records: PoolCompressRecord[], now: number): Job[] {
  return records
    .filter((r) => r.state === "running")
    .map((r) => {
      const stalled = now - r.updatedAtMs > COMPRESS_STALE_MS;
      return {
        volume: "",
        replicaId: "",
        kind: "compress",
        node: r.node,
        runner: r.runner,
        state: stalled ? JobState.JOB_STATE_STALLED : JobState.JOB_STATE_RUNNING,
        message: `pool ${r.node}/${r.pool}: ${stalled ? `no progress report for ${Math.round((now - r.updatedAtMs) / 1000)}s; its controller may have died` : r.progress?.phase || r.message}`,
        ...poolJobProgressFields(r.startedAtMs, r.progress, now, 0),
        startedAtMs: r.startedAtMs,
        updatedAtMs: r.updatedAtMs,
      };
    })
    .sort((a, b) => a.message.localeCompare(b.message));
}
