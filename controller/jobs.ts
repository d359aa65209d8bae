// The copies that bring out-of-sync replicas in sync, as operators see them: one job
// per out-of-sync replica, running when its copier reports progress (jobs/REPLICA,
// written by the frontend of an attached volume or by the controller for a detached
// one), otherwise queued or waiting with the reason. Pure: records and `now` in.
import { JobState, type Job } from "../gen/stowage/v1/types.js";
import type { JobRecord, ResyncKind, VolumeSpec, VolumeStatus } from "./model.js";
import { awaitsAgentCopy } from "./attached-rebuild.js";
import { NEW_REPLICA_REASON } from "./placement-edits.js";

/** A job whose runner has not reported for this long shows as stalled. */
export const STALLED_AFTER_MS = 30_000;

export function volumeJobs(
  spec: VolumeSpec,
  status: VolumeStatus | undefined,
  records: ReadonlyMap<string, JobRecord>,
  online: (node: string) => boolean,
  now: number,
): Job[] {
  if (spec.deleting) return [];
  const observed = new Map((status?.replicas ?? []).map((r) => [r.id, r]));
  const attachedTo = (spec.attachments ?? []).map((a) => a.node);
  const sourceReady = spec.placement.some((p) => !p.outOfSync && observed.get(p.id)?.state === "healthy");
  const jobs: Job[] = [];
  for (const p of spec.placement) {
    if (!p.outOfSync) continue;
    const rec = records.get(p.id);
    if (rec) {
      jobs.push(runningJob(rec, now));
      continue;
    }
    // A frontend with a dirty map copies only what the replica missed; a new replica, or a detached volume, gets everything.
    const kind: ResyncKind = p.outOfSync.reason === NEW_REPLICA_REASON || attachedTo.length === 0 ? "full" : "incremental";
    const target = observed.get(p.id);
    let state = JobState.JOB_STATE_QUEUED;
    let message: string;
    if (!online(p.node)) {
      state = JobState.JOB_STATE_WAITING;
      message = `node ${p.node} offline`;
    } else if (target?.state !== "healthy") {
      state = JobState.JOB_STATE_WAITING;
      message = `replica not ready on ${p.node}: ${target?.message || target?.state || "creating"}`;
    } else if (!sourceReady) {
      state = JobState.JOB_STATE_WAITING;
      message = "no in-sync replica is reachable to copy from";
    } else if (attachedTo.length > 0 && awaitsAgentCopy(p)) {
      // attached-rebuild.ts: the frontend tracks writes, then the replica's agent copies.
      message = p.outOfSync.agentCopy?.token
        ? `its agent copies it next; the frontend on ${p.outOfSync.agentCopy.node} tracks writes`
        : `waiting for the frontend on ${attachedTo.join(", ")} to track writes; then its agent copies it`;
    } else if (attachedTo.length > 0) {
      message = `the frontend on ${attachedTo.join(", ")} copies it`;
    } else if ((status?.frontends ?? []).length > 0) {
      message = "waiting for the volume's frontend to stop";
    } else {
      message = "the controller copies it next";
    }
    jobs.push({
      volume: spec.name,
      replicaId: p.id,
      kind,
      node: p.node,
      runner: "",
      state,
      message,
      totalBytes: 0,
      copiedBytes: 0,
      bytesPerSec: 0,
      startedAtMs: 0,
      updatedAtMs: p.outOfSync.sinceMs,
      etaSeconds: 0,
    });
  }
  return jobs;
}

function runningJob(rec: JobRecord, now: number): Job {
  const quiet = now - rec.updatedAtMs;
  const stalled = quiet > STALLED_AFTER_MS;
  const left = Math.max(0, rec.totalBytes - rec.copiedBytes);
  return {
    volume: rec.volume,
    replicaId: rec.replica,
    kind: rec.kind,
    node: rec.node,
    runner: rec.runner,
    state: stalled ? JobState.JOB_STATE_STALLED : JobState.JOB_STATE_RUNNING,
    message: stalled ? `no progress report for ${Math.round(quiet / 1000)}s${rec.message ? `; last: ${rec.message}` : ""}` : rec.message,
    totalBytes: rec.totalBytes,
    copiedBytes: rec.copiedBytes,
    bytesPerSec: rec.bytesPerSec,
    startedAtMs: rec.startedAtMs,
    updatedAtMs: rec.updatedAtMs,
    etaSeconds: rec.bytesPerSec > 0 && !stalled ? Math.ceil(left / rec.bytesPerSec) : 0,
  };
}
