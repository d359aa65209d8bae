// Pure derivation of a volume's phase from its spec, the replicas observed and
// the operation in flight. No I/O: the reconciler feeds it and writes the result.
import type { FrontendStatus, OperationRecord, ReplicaStatusRecord, VolumePhaseName, VolumeSpec, VolumeStatus } from "./model.js";

export interface Derived {
  status: Omit<VolumeStatus, "updatedAtMs">;
  /** The operation in flight has reached its goal and can be removed. */
  operationDone: boolean;
}

export function deriveVolumeStatus(
  spec: VolumeSpec,
  replicas: ReplicaStatusRecord[],
  op: OperationRecord | undefined,
  frontends: FrontendStatus[] = [],
): Derived {
  if (spec.deleting) {
    return { status: { phase: "deleting", message: "", replicas, frontends }, operationDone: false };
  }
  const outOfSync = new Map(spec.placement.filter((p) => p.outOfSync).map((p) => [p.id, p.outOfSync!]));
  const current = replicas.filter((r) => r.state === "healthy" && r.virtualSizeBytes >= spec.sizeBytes && !outOfSync.has(r.id));
  const problems = replicas
    .filter((r) => !current.includes(r))
    .map((r) => {
      const o = outOfSync.get(r.id);
      return `replica ${r.id} on ${r.node}: ${o ? `out of sync since ${new Date(o.sinceMs).toISOString()}${o.reason ? ` (${o.reason})` : ""}` : r.message || r.state}`;
    });
  const message = problems.join("; ");
  let phase: VolumePhaseName;
  let operationDone = false;
  if (current.length >= spec.replicas) {
    phase = "healthy";
    operationDone = op !== undefined && op.kind !== "delete-volume";
  } else if (op?.kind === "create-volume") {
    phase = "creating";
  } else if (op?.kind === "resize-volume") {
    phase = "resizing";
  } else if (current.length > 0) {
    phase = "degraded";
  } else {
    phase = "failed";
  }
  return { status: { phase, message, replicas, frontends }, operationDone };
}

/** True when two statuses differ in anything but their timestamp. */
export function statusChanged(a: Omit<VolumeStatus, "updatedAtMs"> | undefined, b: Omit<VolumeStatus, "updatedAtMs">): boolean {
  if (!a) return true;
  return (
    a.phase !== b.phase ||
    a.message !== b.message ||
    JSON.stringify(a.replicas) !== JSON.stringify(b.replicas) ||
    JSON.stringify(a.frontends ?? []) !== JSON.stringify(b.frontends ?? [])
  );
}

/**
 * The replica record with the moment it was first seen unreachable or failed, carried
 * over from the previous status (so a new leader counts the grace period from the
 * same moment), or without it once the replica is fine again.
 */
export function withUnreachableSince(r: ReplicaStatusRecord, prev: ReplicaStatusRecord | undefined, now: number): ReplicaStatusRecord {
  const { unreachableSinceMs: _, ...rest } = r;
  if (r.state !== "unreachable" && r.state !== "failed") return rest;
  return { ...rest, unreachableSinceMs: prev?.unreachableSinceMs ?? now };
}
