// Draining a node, as pure functions: whether every replica on it has somewhere to
// go (checked before a drain is recorded, so that a drain never starts that cannot
// finish), and what a drain still waits for (shown by `stowctl node get`). The moves
// themselves are the reconciler's (replica-plan.ts rules 3 and 4).
import type { ReplicaMove } from "../gen/stowage/v1/controller.js";
import type { DrainReplica, Job, NodeDrain, NodeRejection } from "../gen/stowage/v1/types.js";
import type { NodeSpec, VolumeSpec, VolumeStatus } from "./model.js";
import { placeReplicas } from "./placement-edits.js";
import type { ClusterSnapshot } from "./scheduler.js";

export interface DrainRefusal {
  volume: string;
  reason: string;
  rejections: NodeRejection[];
}

export interface DrainPlan {
  moves: ReplicaMove[];
  refusals: DrainRefusal[];
}

/**
 * Where each replica on `node` would go if the node were drained now: volume by
 * volume, each placement counted against the next (so two volumes never count the
 * same free space). A replica whose volume has enough replicas elsewhere already
 * (a replacement placed by an earlier drain, say) goes nowhere: it is only removed.
 */
export function planDrain(node: string, specs: VolumeSpec[], snapshot: ClusterSnapshot, drainingNodes: ReadonlySet<string>): DrainPlan {
  const snap: ClusterSnapshot = {
    nodes: snapshot.nodes.map((n) => ({ ...n, cordoned: n.cordoned || n.name === node, pools: n.pools.map((p) => ({ ...p })) })),
  };
  const plan: DrainPlan = { moves: [], refusals: [] };
  for (const spec of [...specs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const here = spec.placement.find((p) => p.node === node);
    if (!here || spec.deleting) continue;
    const kept = spec.placement.filter((p) => p.node !== node && !drainingNodes.has(p.node));
    const need = spec.replicas - kept.length;
    if (need <= 0) {
      plan.moves.push({ volume: spec.name, replicaId: here.id, fromNode: node, toNode: "", toPool: "" });
      continue;
    }
    const placed = placeReplicas(spec, need, snap);
    if (placed.placement.length < need) {
      plan.refusals.push({ volume: spec.name, reason: placed.reason ?? "no eligible node", rejections: placed.rejections });
      continue;
    }
    for (const p of placed.placement) {
      const pool = snap.nodes.find((n) => n.name === p.node)?.pools.find((x) => x.name === p.pool);
      if (pool) pool.provisionedBytes += spec.sizeBytes;
      plan.moves.push({ volume: spec.name, replicaId: here.id, fromNode: node, toNode: p.node, toPool: p.pool });
    }
  }
  return plan;
}

/** What a draining node still holds and what each replica waits for; undefined when it is not draining. */
export function drainView(
  node: NodeSpec,
  specs: VolumeSpec[],
  statusOf: (volume: string) => VolumeStatus | undefined,
  jobs: Job[],
): NodeDrain | undefined {
  if (!node.drain) return undefined;
  const jobOf = new Map(jobs.map((j) => [j.replicaId, j]));
  const replicas: DrainReplica[] = [];
  for (const spec of specs) {
    const here = spec.placement.find((p) => p.node === node.name);
    if (!here) continue;
    const status = statusOf(spec.name);
    const healthy = new Set((status?.replicas ?? []).filter((r) => r.state === "healthy").map((r) => r.id));
    const replacement = spec.placement.find((p) => p.node !== node.name && p.outOfSync);
    const elsewhere = spec.placement.filter((p) => p.node !== node.name && !p.outOfSync && healthy.has(p.id)).length;
    let message: string;
    let job: Job | undefined;
    if (spec.deleting) {
      message = "the volume is being deleted";
    } else if (replacement) {
      job = jobOf.get(replacement.id);
      message = `replacement ${replacement.id} on ${replacement.node} is being brought in sync`;
    } else if (elsewhere >= spec.replicas) {
      message = "removing: enough in-sync replicas elsewhere";
    } else {
      const why = (status?.message ?? "").split("; ").find((m) => m.startsWith("no node can take"));
      message = `waiting for a replacement to be placed${why ? `: ${why}` : ""}`;
    }
    replicas.push({ volume: spec.name, replicaId: here.id, message, job });
  }
  replicas.sort((a, b) => a.volume.localeCompare(b.volume));
  return { sinceMs: node.drain.sinceMs, replicasLeft: replicas.length, replicas };
}
