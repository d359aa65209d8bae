// What a volume's replica set should become: a pure function of the spec, what the
// last pass observed of each replica, the nodes (online, draining), the grace period
// and `now`. It returns replicas to add (some replacing one that is past its grace
// period), replicas to remove and notes for the status message; the keeper
// (replica-keeper.ts) places the new ones and writes the result. No I/O, no clock.
//
// The rules, in order:
//   1. More replicas than asked for (outside draining nodes): the least useful go
//      (chooseReplicasToRemove).
//   2. A replica unreachable or failed for longer than the grace period is replaced,
//      unless automatic rebuilds are paused (rebuildBrake) or it holds the only in-sync
//      copy.
//   3. Fewer replicas than asked for (outside draining nodes): new ones are added.
//   4. A replica on a draining node leaves once enough in-sync, healthy replicas are
//      elsewhere.
// Never removed: the last in-sync replica, and any in-sync replica while a live
// migration's two frontends serve the volume (one could still read it after the
// other stopped writing it).
import type { ReplicaPlacement, ReplicaStateName, VolumeSpec } from "./model.js";

/** What the last reconcile pass observed of one replica. */
export interface ObservedReplica {
  state: ReplicaStateName;
  unreachableSinceMs?: number;
}

export interface NodeFacts {
  online: boolean;
  draining: boolean;
}

/** Whether automatic rebuilds may start, judged over every registered node. */
export interface Brake {
  paused: boolean;
  offline: number;
  total: number;
  /** "2 of 3 nodes offline: automatic rebuilds paused" when paused, else "". */
  message: string;
}

/**
 * More than a third of the nodes offline at once looks like a network partition or
 * a power event, not failed disks: rebuilding then would flood the survivors with
 * copies of replicas that are probably fine. Rebuilds wait until enough nodes return.
 */
export function rebuildBrake(nodes: { online: boolean }[]): Brake {
  const total = nodes.length;
  const offline = nodes.filter((n) => !n.online).length;
  const paused = offline * 3 > total;
  return { paused, offline, total, message: paused ? `${offline} of ${total} nodes offline: automatic rebuilds paused` : "" };
}

export interface RemovalContext {
  /** Every replica of the volume (not only the candidates): the last in-sync one is never removed. */
  placement: ReplicaPlacement[];
  observed: ReadonlyMap<string, ObservedReplica>;
  /** Nodes the volume is attached to: their replica is the frontend's local one. */
  attachedNodes: ReadonlySet<string>;
  /** A live migration window is open: in-sync replicas stay. */
  migrating: boolean;
}

export interface Removal {
  id: string;
  node: string;
  reason: string;
}

/**
 * Picks `count` of `candidates` to remove: out-of-sync ones first (they hold nothing
 * the others lack), then unreachable or failed ones, then those not on a node the
 * volume is attached to, newest first within each group. Fewer come back when the
 * rest may not go (the last in-sync replica; in-sync ones during a live migration).
 */
export function chooseReplicasToRemove(candidates: ReplicaPlacement[], count: number, ctx: RemovalContext): Removal[] {
  const rank = (p: ReplicaPlacement): [number, string] => {
    const healthy = ctx.observed.get(p.id)?.state === "healthy";
    if (p.outOfSync) return healthy ? [1, "out of sync"] : [0, "out of sync and unreachable"];
    if (!healthy) return [2, ctx.observed.get(p.id)?.state ?? "not created yet"];
    if (!ctx.attachedNodes.has(p.node)) return [3, "in sync; not on a node the volume is attached to"];
    return [4, "in sync, on a node the volume is attached to"];
  };
  const order = candidates
    .map((p, i) => ({ p, i, r: rank(p) }))
    .sort((a, b) => a.r[0] - b.r[0] || b.i - a.i);
  const removed = new Set<string>();
  const out: Removal[] = [];
  for (const { p, r } of order) {
    if (out.length >= count) break;
    if (!p.outOfSync) {
      if (ctx.migrating) continue;
      const othersInSync = ctx.placement.some((x) => x.id !== p.id && !removed.has(x.id) && !x.outOfSync);
      if (!othersInSync) continue;
    }
    removed.add(p.id);
    out.push({ id: p.id, node: p.node, reason: r[1] });
  }
  return out;
}

export interface PlanInput {
  spec: VolumeSpec;
  observed: ReadonlyMap<string, ObservedReplica>;
  nodes: ReadonlyMap<string, NodeFacts>;
  now: number;
  graceMs: number;
  brake: Brake;
  /** Rule 2 (grace-period replacement): the reconciler's, not an operator command's. */
  replaceUnreachable?: boolean;
}

export interface Addition {
  /** Set for a grace-period replacement: removed in the same write as the new one is added. */
  replaces?: Removal;
  reason: string;
}

export interface ReplicaPlan {
  add: Addition[];
  remove: Removal[];
  /** For the volume's status message. */
  notes: string[];
  /** When a grace period runs out: look again then. */
  recheckInMs?: number;
}

const iso = (ms: number) => new Date(ms).toISOString();

export function planReplicas(input: PlanInput): ReplicaPlan {
  const { spec, observed, now } = input;
  const plan: ReplicaPlan = { add: [], remove: [], notes: [] };
  const want = spec.replicas;
  const draining = (p: ReplicaPlacement) => input.nodes.get(p.node)?.draining ?? false;
  const healthy = (p: ReplicaPlacement) => observed.get(p.id)?.state === "healthy";
  const migration = (spec.attachments ?? []).find((a) => a.migration)?.migration;
  const ctx: RemovalContext = {
    placement: spec.placement,
    observed,
    attachedNodes: new Set((spec.attachments ?? []).map((a) => a.node)),
    migrating: migration !== undefined,
  };
  const stay = spec.placement.filter((p) => !draining(p));
  const leaving = spec.placement.filter(draining);

  // 1. Too many.
  let kept = stay;
  if (stay.length > want) {
    const extra = chooseReplicasToRemove(stay, stay.length - want, ctx);
    plan.remove.push(...extra);
    const gone = new Set(extra.map((r) => r.id));
    kept = stay.filter((p) => !gone.has(p.id));
    if (kept.length > want && migration) plan.notes.push(`live migration of ${migration} in progress: extra in-sync replicas are removed after it`);
  }
  const removedIds = () => new Set(plan.remove.map((r) => r.id));

  // 2. Past the grace period.
  const replaced = new Set<string>();
  for (const p of input.replaceUnreachable === false ? [] : kept) {
    const since = observed.get(p.id)?.unreachableSinceMs;
    if (since === undefined || healthy(p)) continue;
    if (input.brake.paused) {
      if (!plan.notes.includes(input.brake.message)) plan.notes.push(input.brake.message);
      continue;
    }
    const due = since + input.graceMs;
    if (now < due) {
      plan.notes.push(`replica ${p.id} on ${p.node} is replaced at ${iso(due)} unless it is back by then`);
      plan.recheckInMs = Math.min(plan.recheckInMs ?? Infinity, due - now);
      continue;
    }
    const gone = removedIds();
    const otherInSync = spec.placement.some((x) => x.id !== p.id && !x.outOfSync && !gone.has(x.id) && !replaced.has(x.id));
    if (!p.outOfSync && !otherInSync) {
      plan.notes.push(`replica ${p.id} on ${p.node} is not replaced: it holds the only in-sync copy`);
      continue;
    }
    if (!p.outOfSync && migration) {
      plan.notes.push(`replica ${p.id} on ${p.node} is replaced after the live migration of ${migration}`);
      continue;
    }
    replaced.add(p.id);
    plan.add.push({
      replaces: { id: p.id, node: p.node, reason: `unreachable since ${iso(since)}, past the grace period` },
      reason: `replaces ${p.id} on ${p.node} (unreachable since ${iso(since)})`,
    });
  }

  // 3. Too few.
  for (let i = kept.length; i < want; i++) {
    const moving = leaving[i - kept.length];
    plan.add.push({ reason: moving ? `replaces ${moving.id} on draining node ${moving.node}` : `${want} replicas wanted` });
  }

  // 4. Draining nodes: leave once enough in-sync replicas are healthy elsewhere.
  const ready = kept.filter((p) => !p.outOfSync && healthy(p) && !replaced.has(p.id)).length;
  for (const p of leaving) {
    const gone = removedIds();
    const otherInSync = spec.placement.some((x) => x.id !== p.id && !x.outOfSync && !gone.has(x.id));
    // An out-of-sync replica there holds nothing the others lack: it goes once its replacement is placed.
    if (p.outOfSync ? kept.length >= want : ready >= want && otherInSync && !migration) {
      plan.remove.push({ id: p.id, node: p.node, reason: `node ${p.node} is draining; ${ready} in-sync replica${ready === 1 ? "" : "s"} elsewhere` });
    } else {
      plan.notes.push(
        ready >= want && migration
          ? `replica ${p.id} on draining node ${p.node} leaves after the live migration of ${migration}`
          : `replica ${p.id} on draining node ${p.node} leaves once ${want} in-sync replicas are healthy elsewhere (${ready} now)`,
      );
    }
  }
  return plan;
}
