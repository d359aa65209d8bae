// Edits of a volume's placement, as pure functions: placing new replicas with the
// scheduler, and the spec with replicas added and removed. Callers write the result
// with one compare-and-swap on the spec, so an edit is all or nothing.
import { randomBytes } from "node:crypto";
import type { NodeRejection, PlacementItem } from "../gen/stowage/v1/types.js";
import type { ReplicaPlacement, VolumeSpec } from "./model.js";
import { place, type ClusterSnapshot } from "./scheduler.js";
import { generationOf } from "./sync-api.js";

/** The out-of-sync reason of a replica that was just added: nothing is on it yet. */
export const NEW_REPLICA_REASON = "new replica: needs a full copy";

export function newReplicaId(): string {
  return "r-" + randomBytes(6).toString("hex");
}

export function isThin(spec: Pick<VolumeSpec, "preallocation">): boolean {
  return spec.preallocation === "off" || spec.preallocation === "metadata";
}

export interface Placed {
  placement: PlacementItem[];
  /** Why the scheduler could not place the rest (when fewer than asked were placed). */
  reason?: string;
  rejections: NodeRejection[];
}

/**
 * Places up to `count` new replicas of `spec`, one at a time so that some can be
 * placed when not all can: never on a node that holds one already (`alsoExclude`
 * adds more), spread over zones and racks from the replicas it has, on `preferNodes`
 * first where spreading allows (a linked clone's template copies).
 */
export function placeReplicas(spec: VolumeSpec, count: number, snapshot: ClusterSnapshot, alsoExclude: string[] = [], preferNodes: string[] = []): Placed {
  const exclude = new Set([...spec.placement.map((p) => p.node), ...alsoExclude]);
  const out: Placed = { placement: [], rejections: [] };
  for (let i = 0; i < count; i++) {
    const r = place({ sizeBytes: spec.sizeBytes, replicas: 1, thin: isThin(spec), pool: spec.pool, excludeNodes: [...exclude], preferNodes }, snapshot);
    out.rejections = r.rejections;
    if (!r.ok) {
      out.reason = r.reason;
      break;
    }
    const chosen = r.placement[0]!;
    out.placement.push(chosen);
    exclude.add(chosen.node);
  }
  return out;
}

export interface PlacementChanges {
  add: { node: string; pool: string }[];
  remove: { id: string; reason: string }[];
}

/**
 * The spec with new replicas (out of sync until copied) and without removed ones
 * (kept in removedReplicas until their images are deleted), at the next generation.
 * The same spec when there is nothing to change.
 */
export function withPlacementChanges(spec: VolumeSpec, changes: PlacementChanges, now: number): VolumeSpec {
  const gone = new Map(changes.remove.map((r) => [r.id, r.reason]));
  const leaving = spec.placement.filter((p) => gone.has(p.id));
  if (changes.add.length === 0 && leaving.length === 0) return spec;
  const generation = generationOf(spec) + 1;
  const added: ReplicaPlacement[] = changes.add.map((a) => ({
    id: newReplicaId(),
    node: a.node,
    pool: a.pool,
    outOfSync: { sinceMs: now, reason: NEW_REPLICA_REASON, generation },
  }));
  return {
    ...spec,
    generation,
    placement: [...spec.placement.filter((p) => !gone.has(p.id)), ...added],
    removedReplicas: [
      ...(spec.removedReplicas ?? []),
      ...leaving.map((p) => ({ id: p.id, node: p.node, pool: p.pool, removedAtMs: now, reason: gone.get(p.id)! })),
    ],
  };
}
