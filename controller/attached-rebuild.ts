// The rebuild of a NEW replica of an ATTACHED volume, done the way a detached
// volume's is: the replica's agent copies an in-sync replica's NBD export into
// the image (CopyReplica: qemu-img convert, one process, no frontend in the data
// path), while the volume's frontend marks every write in an empty dirty map.
// The frontend then copies only the regions written meanwhile (its
// returning-replica resync) and records the replica in-sync.
//
// Order, each step recorded in the volume spec before the next:
//   1. the replica is made but not exported; the record (SyncState) tells the
//      frontend `agentCopy`: it opens an empty dirty map named by a token and
//      reports it (TrackReplica -> outOfSync.agentCopy {token, node});
//   2. with one attachment, on that node, no other frontend still stopping and no
//      migration, the copy runs (job recorded first, progress as detached-resync.ts);
//   3. it is recorded as `copied` only if the same map still tracks for the same
//      single writer (same token, node, out-of-sync generation, attachment); then the
//      replica is exported and the frontend catches up.
// A new token (a frontend that lost its map, a writer elsewhere) voids a copy that
// started before it; a controller that dies mid-copy leaves no `copied`, so the next
// leader copies again. Copies run beside the reconcile pass, so a detach or a
// migration is handled while one runs.
import { ConflictError, errorMessage } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import type { Logger } from "../lib/logger.js";
import type { AgentClients } from "./agents.js";
import { agentCopy, followProgress, recordCopyStart } from "./detached-resync.js";
import { keys } from "./keys.js";
import type { FrontendStatus, JobRecord, ReplicaPlacement, ReplicaStatusRecord, VolumeSpec } from "./model.js";
import { NEW_REPLICA_REASON } from "./placement-edits.js";
import type { ClusterStore } from "./store.js";

/** A new replica whose bulk copy its agent is still to make (the frontend tracks writes meanwhile). */
export function awaitsAgentCopy(p: ReplicaPlacement): boolean {
  return p.outOfSync?.reason === NEW_REPLICA_REASON && !p.outOfSync.agentCopy?.copied;
}

/** What a copy was started for: it is valid only while all of it still holds. */
export interface CopyBasis {
  replica: string;
  generation: number;
  token: string;
  node: string;
}

export type CopyStart = { start: true; basis: CopyBasis; source: ReplicaStatusRecord } | { start: false; reason: string };

/**
 * Whether the agent may copy replica `p` now (pure). `frontends`: the volume's
 * frontends as last observed, including those still stopping after a detach.
 */
export function planAgentCopy(spec: VolumeSpec, p: ReplicaPlacement, replicas: ReplicaStatusRecord[], frontends: FrontendStatus[]): CopyStart {
  if (!awaitsAgentCopy(p)) return { start: false, reason: "no agent copy pending" };
  const attachments = spec.attachments ?? [];
  if (attachments.length !== 1 || attachments[0]!.migration) return { start: false, reason: "not attached to exactly one node (a migration's window?)" };
  if (spec.reverting) return { start: false, reason: "a revert is running" };
  const node = attachments[0]!.node;
  if (frontends.some((f) => f.node !== node)) return { start: false, reason: "a frontend elsewhere is not confirmed stopped" };
  const tracking = p.outOfSync!.agentCopy;
  if (!tracking?.token) return { start: false, reason: "waiting for the frontend to track writes" };
  if (tracking.node !== node) return { start: false, reason: `tracked by the frontend on ${tracking.node}, attached on ${node}` };
  const target = replicas.find((r) => r.id === p.id);
  if (target?.state !== "healthy") return { start: false, reason: "the replica is not made yet" };
  if (target.exportUri) return { start: false, reason: "the replica is still exported" };
  const inSync = new Set(spec.placement.filter((x) => !x.outOfSync).map((x) => x.id));
  const source = replicas.find((r) => r.state === "healthy" && r.exportUri && inSync.has(r.id));
  if (!source) return { start: false, reason: "no in-sync replica is exported" };
  return { start: true, basis: { replica: p.id, generation: p.outOfSync!.generation, token: tracking.token, node }, source };
}

/** Whether a copy made on `basis` still brings the replica up to the tracking map (pure). */
export function copyStillCovered(spec: VolumeSpec, basis: CopyBasis): boolean {
  const p = spec.placement.find((x) => x.id === basis.replica);
  const a = spec.attachments ?? [];
  return (
    p?.outOfSync !== undefined &&
    p.outOfSync.generation === basis.generation &&
    p.outOfSync.agentCopy?.token === basis.token &&
    p.outOfSync.agentCopy.node === basis.node &&
    !p.outOfSync.agentCopy.copied &&
    a.length === 1 &&
    a[0]!.node === basis.node &&
    !a[0]!.migration &&
    !spec.reverting
  );
}

export interface AttachedRebuildDeps {
  store: ClusterStore;
  agents: AgentClients;
  log: Logger;
  /** Bytes per second for each copy (0: unlimited). */
  copyRateBytes: number;
  /** A copy ended (recorded or not): look at the volume again. */
  enqueue: (volume: string) => void;
  progressEveryMs?: number;
  /** Wait after a failed copy before the next (default 10 s). */
  retryMs?: number;
}

export class AttachedRebuild {
  /** Copies running in this controller, by replica. */
  private readonly running = new Map<string, CopyBasis>();
  /** Replicas whose last copy failed, and until when not to try again. */
  private readonly failed = new Map<string, number>();
  private stopped = false;

  constructor(private readonly d: AttachedRebuildDeps) {}

  /**
   * Starts the copies that may start (each runs beside the pass). Returns when to
   * look again while some replica waits for one, or undefined.
   */
  run(spec: VolumeSpec, replicas: ReplicaStatusRecord[], frontends: FrontendStatus[]): number | undefined {
    let again: number | undefined;
    for (const p of spec.placement) {
      if (!awaitsAgentCopy(p)) continue;
      again = 2_000;
      if (this.running.has(p.id) || this.stopped) continue;
      if ((this.failed.get(p.id) ?? 0) > Date.now()) continue;
      const plan = planAgentCopy(spec, p, replicas, frontends);
      if (!plan.start) continue;
      this.running.set(p.id, plan.basis);
      void this.copy(spec, p, plan.basis, plan.source)
        .catch((err: unknown) => {
          this.failed.set(p.id, Date.now() + (this.d.retryMs ?? 10_000));
          this.d.log.warn({ volume: spec.name, replica: p.id, err: errorMessage(err) }, "agent copy of an attached volume's replica failed; will retry");
        })
        .finally(() => {
          this.running.delete(p.id);
          this.d.enqueue(spec.name);
        });
    }
    return again;
  }

  /** The leader stepped down: copies still running are not recorded (the next leader copies again). */
  stop(): void {
    this.stopped = true;
  }

  /** Bases of the copies running (tests). */
  runningCopies(): CopyBasis[] {
    return [...this.running.values()];
  }

  private async copy(spec: VolumeSpec, p: ReplicaPlacement, basis: CopyBasis, source: ReplicaStatusRecord): Promise<void> {
    const volume = spec.name;
    const log = this.d.log.child({ volume, replica: p.id });
    // Job records are written while the replica still waits for this copy; dropStaleJobs clears one left behind.
    const put = async (job: JobRecord) => {
      if (!this.stopped && this.d.store.volumeSpec(volume)?.value.placement.some((x) => x.id === p.id && x.outOfSync)) {
        await this.d.store.write({ put: [{ key: keys.job(p.id), value: job }] });
      }
      return true;
    };
    const job = (await recordCopyStart(this.d.agents, spec, p, source, put, `copying from ${source.id} on ${source.node}; the frontend on ${basis.node} tracks writes meanwhile`))!;
    const target = this.d.store.volumeStatus(volume)?.value.replicas.find((r) => r.id === p.id);
    const progress = followProgress(this.d.agents, this.d.store, volume, p, job, target?.allocatedBytes ?? 0, put, this.d.progressEveryMs);
    log.info({ source: source.id, tracker: basis.node, token: basis.token }, "rebuild of an attached volume's new replica: its agent copies, the frontend tracks writes");
    let res;
    try {
      res = await agentCopy(this.d.agents, p, source.exportUri!, this.d.copyRateBytes);
    } catch (err) {
      await progress.stop();
      this.failed.set(p.id, Date.now() + (this.d.retryMs ?? 10_000));
      log.warn({ err: errorMessage(err) }, "agent copy failed; will retry");
      await put({ ...progress.job(), updatedAtMs: Date.now(), message: `copy failed, retrying: ${errorMessage(err)}` }).catch(() => undefined);
      return;
    }
    await progress.stop();
    faultPoint("rebuild:copied", volume);
    this.failed.delete(p.id);
    for (let attempt = 0; attempt < 5 && !this.stopped; attempt++) {
      const cur = this.d.store.volumeSpec(volume);
      if (!cur || !copyStillCovered(cur.value, basis)) {
        log.warn({ token: basis.token }, "the copy is void (another map tracks now, or the writer changed); copying again");
        return;
      }
      const copied = { startedAtMs: job.startedAtMs, atMs: Date.now(), bytes: res.bytes, ms: res.durationMs };
      const next: VolumeSpec = {
        ...cur.value,
        placement: cur.value.placement.map((x) => (x.id === p.id && x.outOfSync?.agentCopy ? { ...x, outOfSync: { ...x.outOfSync, agentCopy: { ...x.outOfSync.agentCopy, copied } } } : x)),
      };
      const done: JobRecord = { ...progress.job(), copiedBytes: progress.job().totalBytes, updatedAtMs: Date.now(), message: `copied in ${res.durationMs} ms; the frontend on ${basis.node} copies what was written meanwhile` };
      try {
        await this.d.store.write({
          unchanged: [[keys.volumeSpec(volume), cur.modRevision]],
          put: [
            { key: keys.volumeSpec(volume), value: next },
            { key: keys.job(p.id), value: done },
          ],
        });
        log.info({ ms: res.durationMs, bytes: res.bytes }, "agent copy recorded; the replica is exported next and the frontend catches up");
        return;
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
      }
    }
  }
}
