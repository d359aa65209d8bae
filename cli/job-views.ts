// Views of copies, replica changes and drains: the job table, one-line progress
// while a command waits, a volume's per-replica copy lines, and a node's drain.
// Pure: API objects in, text out.
import type { ReplicaMove, SetVolumeReplicasResponse } from "../gen/stowage/v1/controller.js";
import { JobState, ReplicaState, VolumePhase, type Job, type NodeDrain, type Volume } from "../gen/stowage/v1/types.js";
import { formatSize } from "../lib/sizes.js";
import { enumLabel, JOB_STATE } from "./convert.js";
import { formatTable, plural } from "./output.js";

/** "45%", or "-" when the size is not known (a job that has not started). */
export function jobPercent(j: Job): string {
  if (j.totalBytes <= 0) return "-";
  return `${Math.floor((100 * Math.min(j.copiedBytes, j.totalBytes)) / j.totalBytes)}%`;
}

/** "1m05s", "42s", "2h03m"; "-" for unknown. */
export function formatEta(seconds: number): string {
  if (!(seconds > 0)) return "-";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function rate(j: Job): string {
  return j.bytesPerSec > 0 ? `${formatSize(j.bytesPerSec)}/s` : "-";
}

export function jobsTable(jobs: Job[], rebuildsPaused = ""): string {
  const head = rebuildsPaused ? `${rebuildsPaused}\n` : "";
  if (jobs.length === 0) return `${head}no jobs: every replica is in sync\n`;
  return (
    head +
    formatTable(
      ["volume", "replica", "kind", "target", "state", "progress", "rate", "eta", "message"],
      jobs.map((j) => [
        j.volume,
        j.replicaId,
        j.kind || "-",
        j.node,
        enumLabel(JOB_STATE, j.state),
        j.totalBytes > 0 ? `${jobPercent(j)} of ${formatSize(j.totalBytes)}` : "-",
        rate(j),
        formatEta(j.etaSeconds),
        j.message,
      ]),
    )
  );
}

/** "copying (full) 45% of 64MiB, 12MiB/s, ETA 3s" or "waiting: node n2 offline". */
export function jobLine(j: Job): string {
  const state = enumLabel(JOB_STATE, j.state);
  if (j.state === JobState.JOB_STATE_RUNNING) {
    const parts = [`copying (${j.kind || "full"}) ${jobPercent(j)}${j.totalBytes > 0 ? ` of ${formatSize(j.totalBytes)}` : ""}`];
    if (j.bytesPerSec > 0) parts.push(rate(j));
    if (j.etaSeconds > 0) parts.push(`ETA ${formatEta(j.etaSeconds)}`);
    return parts.join(", ");
  }
  return j.message ? `${state}: ${j.message}` : state;
}

/** One line per replica with a copy running or waiting, or a last resync on record. */
export function replicaCopyLines(v: Volume): string {
  const lines: string[] = [];
  for (const r of v.replicas) {
    if (r.job) lines.push(`  ${r.id} on ${r.node}: ${jobLine(r.job)}`);
    else if (r.lastResync) {
      const l = r.lastResync;
      lines.push(`  ${r.id} on ${r.node}: last resync ${l.kind} ${formatSize(l.bytes)} in ${(l.durationMs / 1000).toFixed(1)}s at ${new Date(l.atMs).toISOString()}`);
    }
  }
  return lines.length > 0 ? `copies:\n${lines.join("\n")}\n` : "";
}

/** In sync and healthy: a replica the volume can count on. */
function ready(r: Volume["replicas"][number]): boolean {
  return r.state === ReplicaState.REPLICA_STATE_HEALTHY && !r.outOfSync;
}

/** "vm1: 2/3 replicas in sync; r-1a2b on n3 copying (full) 45% of 64MiB, 12MiB/s, ETA 3s" */
export function volumeProgressLine(v: Volume): string {
  const name = v.spec?.name ?? "?";
  const want = v.spec?.replicas ?? v.replicas.length;
  const parts = [`${name}: ${v.replicas.filter(ready).length}/${want} replicas in sync`];
  if (v.replicas.length > want) parts[0] += `, ${v.replicas.length - want} more leaving`;
  for (const r of v.replicas) if (r.job) parts.push(`${r.id} on ${r.node} ${jobLine(r.job)}`);
  if (v.phase === VolumePhase.VOLUME_PHASE_DEGRADED && v.message && !v.replicas.some((r) => r.job)) parts.push(v.message);
  return parts.join("; ");
}

export function setReplicasView(name: string, res: SetVolumeReplicasResponse, dryRun: boolean): string {
  const lines: string[] = [];
  const verb = dryRun ? "would " : "";
  for (const a of res.added) lines.push(`  ${verb}add a replica on ${a.node} (pool ${a.pool})`);
  for (const r of res.removed) lines.push(`  ${verb}remove ${r.id} on ${r.node} (${r.reason})`);
  if (lines.length === 0) return `volume ${name} already has ${plural(res.volume?.spec?.replicas ?? 0, "replica")}; nothing to change\n`;
  return `${dryRun ? "dry run: " : ""}volume ${name}:\n${lines.join("\n")}\n${dryRun ? "nothing was changed\n" : ""}`;
}

export function drainMovesView(node: string, moves: ReplicaMove[], dryRun: boolean): string {
  if (moves.length === 0) return `node ${node} holds no replicas${dryRun ? "; draining it would only cordon it" : ""}\n`;
  const table = formatTable(
    ["volume", "replica", "to node", "to pool"],
    moves.map((m) => [m.volume, m.replicaId, m.toNode || "(none: enough replicas elsewhere)", m.toPool || "-"]),
  );
  return dryRun ? `dry run: draining node ${node} would move:\n${table}nothing was changed\n` : `draining node ${node}:\n${table}`;
}

/** A drain's block in `node get`. */
export function drainDetail(d: NodeDrain): string {
  const head = `Draining since ${new Date(d.sinceMs).toISOString()}: ${d.replicasLeft === 0 ? "drained, no replicas left" : `${plural(d.replicasLeft, "replica")} left`}\n`;
  return head + d.replicas.map((r) => `  ${r.volume} ${r.replicaId}: ${r.message}${r.job ? `; ${jobLine(r.job)}` : ""}\n`).join("");
}

/** "node2: 3 replicas left; vm1: replacement ... copying 45%" */
export function drainProgressLine(node: string, d: NodeDrain): string {
  const first = d.replicas[0];
  const detail = first ? `; ${first.volume}: ${first.job ? jobLine(first.job) : first.message}` : "";
  return `${node}: ${plural(d.replicasLeft, "replica")} left${detail}`;
}
