// Brings the out-of-sync replicas of a DETACHED volume in sync (repaired ones, new
// ones, replacements): the replica's agent overwrites it with an in-sync replica's
// NBD export (CopyReplica: qemu-img convert), then the replica is recorded in-sync.
// The copy is recorded as a job (jobs/REPLICA) before the agent is called, with the
// progress read from the target image's allocation every couple of seconds, so that
// `stowctl job list` and `volume get` show it. The job and progress helpers serve
// the attached volume's agent copy too (attached-rebuild.ts).
import { ConflictError, errorMessage } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import type { Logger } from "../lib/logger.js";
import type { AgentClients } from "./agents.js";
import { keys } from "./keys.js";
import type { JobRecord, ReplicaPlacement, ReplicaStatusRecord, VolumeSpec } from "./model.js";
import type { ClusterStore } from "./store.js";
import { withReplicaInSync } from "./sync-api.js";

export interface DetachedResyncDeps {
  store: ClusterStore;
  agents: AgentClients;
  log: Logger;
  /** Bytes per second for each copy (0: unlimited). */
  copyRateBytes: number;
  /** How often a running copy's progress is read and recorded. */
  progressEveryMs?: number;
}

export class DetachedResync {
  constructor(private readonly d: DetachedResyncDeps) {}

  /**
   * Copies each out-of-sync replica from an in-sync one, then records it in-sync, only
   * if the spec did not change during the copy: an attach meanwhile means a writer the
   * copy may have missed, so the next pass copies again. Returns when to look again.
   */
  async run(spec: VolumeSpec, specRevision: number, replicas: ReplicaStatusRecord[]): Promise<number> {
    const outOfSync = new Set(spec.placement.filter((p) => p.outOfSync).map((p) => p.id));
    const source = replicas.find((r) => r.state === "healthy" && r.exportUri && !outOfSync.has(r.id));
    if (!source) return 5_000;
    for (const p of spec.placement.filter((x) => x.outOfSync)) {
      const target = replicas.find((r) => r.id === p.id);
      if (target?.state !== "healthy" || target.exportUri) continue;
      const put = (job: JobRecord) => this.put(spec.name, specRevision, job);
      const job = await recordCopyStart(this.d.agents, spec, p, source, put);
      if (!job) return 500; // the spec changed: judge again
      faultPoint("resync:job-recorded", spec.name);
      this.d.log.info({ volume: spec.name, replica: p.id, source: source.id }, "resync of a detached volume: copying from an in-sync replica");
      const progress = followProgress(this.d.agents, this.d.store, spec.name, p, job, target.allocatedBytes, put, this.d.progressEveryMs);
      let res;
      try {
        res = await agentCopy(this.d.agents, p, source.exportUri!, this.d.copyRateBytes);
      } catch (err) {
        await progress.stop();
        this.d.log.warn({ volume: spec.name, replica: p.id, err: errorMessage(err) }, "resync copy failed; will retry");
        await this.put(spec.name, specRevision, { ...progress.job(), updatedAtMs: Date.now(), message: `copy failed, retrying: ${errorMessage(err)}` });
        return 10_000;
      }
      await progress.stop();
      const cur = this.d.store.volumeSpec(spec.name);
      if (!cur || cur.modRevision !== specRevision) return 500;
      const next = withReplicaInSync(cur.value, p.id, { kind: "full", bytes: res.bytes, ms: res.durationMs });
      try {
        specRevision = await this.d.store.write({
          unchanged: [[keys.volumeSpec(spec.name), specRevision]],
          put: [{ key: keys.volumeSpec(spec.name), value: next }],
          delete: [keys.job(p.id)],
        });
      } catch (err) {
        if (err instanceof ConflictError) return 500;
        throw err;
      }
      this.d.log.info(
        { volume: spec.name, replica: p.id, bytes: res.bytes, ms: res.durationMs, generation: next.generation },
        "replica resynced; recorded in-sync",
      );
    }
    return 500;
  }

  /** Conditional on the spec: a job is never recorded for a replica that left meanwhile. */
  private async put(volume: string, revision: number, job: JobRecord): Promise<boolean> {
    try {
      await this.d.store.write({ unchanged: [[keys.volumeSpec(volume), revision]], put: [{ key: keys.job(job.replica), value: job }] });
      return true;
    } catch (err) {
      if (err instanceof ConflictError) return false;
      throw err;
    }
  }
}

/**
 * Records the job of a copy about to start (through `put`); undefined when `put`
 * refused (the spec moved).
 */
/** Replica `p`'s agent overwrites it with the NBD export at `sourceUri` (CopyReplica), at most `rateBytes` per second (0: no limit). */
export function agentCopy(agents: AgentClients, p: ReplicaPlacement, sourceUri: string, rateBytes: number) {
  return agents.for(p.node).copyReplica({ id: p.id, pool: p.pool, sourceNbdUri: sourceUri, rateLimitBytes: rateBytes }, { timeoutMs: 24 * 3600_000 });
}

export async function recordCopyStart(
  agents: AgentClients,
  spec: VolumeSpec,
  p: ReplicaPlacement,
  source: ReplicaStatusRecord,
  put: (job: JobRecord) => Promise<boolean>,
  message = `copying from ${source.id} on ${source.node}`,
): Promise<JobRecord | undefined> {
  const now = Date.now();
  // The source's allocation is what the copy has to move (thin images); fresh from its agent when possible.
  const inventory = await agents
    .for(source.node)
    .getInventory({}, { timeoutMs: 10_000 })
    .catch(() => undefined);
  const sourceBytes = inventory?.replicas.find((r) => r.id === source.id)?.allocatedBytes ?? source.allocatedBytes;
  const job: JobRecord = {
    replica: p.id,
    volume: spec.name,
    kind: "full",
    node: p.node,
    runner: p.node,
    totalBytes: preallocated(spec) ? spec.sizeBytes : Math.max(sourceBytes, 1),
    copiedBytes: 0,
    bytesPerSec: 0,
    startedAtMs: now,
    updatedAtMs: now,
    message,
  };
  return (await put(job)) ? job : undefined;
}

/**
 * Reads the target image's allocation while the copy runs and records it as the
 * job's progress through `put` (thin images only: a preallocated one is fully
 * allocated already, so its job only shows that it is alive).
 */
export function followProgress(
  agents: AgentClients,
  store: ClusterStore,
  volume: string,
  p: ReplicaPlacement,
  start: JobRecord,
  startAllocated: number,
  put: (job: JobRecord) => Promise<boolean>,
  everyMs = 2_000,
) {
  let job = start;
  let writing: Promise<unknown> = Promise.resolve();
  const thin = !preallocated(store.volumeSpec(volume)?.value);
  const tick = async () => {
    let copied = job.copiedBytes;
    if (thin) {
      const inv = await agents.for(p.node).getInventory({}, { timeoutMs: 5_000 });
      const allocated = inv.replicas.find((r) => r.id === p.id)?.allocatedBytes;
      if (allocated !== undefined) copied = Math.min(job.totalBytes, Math.max(0, allocated - startAllocated));
    }
    const now = Date.now();
    const elapsed = Math.max(1, now - job.startedAtMs) / 1000;
    job = { ...job, copiedBytes: copied, bytesPerSec: Math.round(copied / elapsed), updatedAtMs: now };
    await put(job);
  };
  const timer = setInterval(() => {
    writing = writing.then(tick).catch(() => undefined);
  }, everyMs);
  return {
    job: () => job,
    stop: async () => {
      clearInterval(timer);
      await writing;
    },
  };
}

function preallocated(spec: VolumeSpec | undefined): boolean {
  return spec?.preallocation === "falloc" || spec?.preallocation === "full";
}
