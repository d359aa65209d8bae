// Replica placement: a pure function from a placement request and a snapshot of the
// cluster to a placement, or to the reasons why not. No I/O and no clock, so the same
// inputs always give the same answer: the reconciler and `stowctl volume create --dry-run`
// call it with whatever snapshot they read, and tests need no cluster.
import type { NodeRejection, PlacementItem } from "../gen/stowage/v1/types.js";
import { formatSize } from "../lib/sizes.js";

export interface SchedPool {
  name: string;
  capacityBytes: number;
  availableBytes: number;
  /** sum of virtual sizes of replicas already placed here */
  provisionedBytes: number;
  overcommitRatio: number;
}

export interface SchedNode {
  name: string;
  online: boolean;
  cordoned: boolean;
  labels: { zone: string; rack: string };
  pools: SchedPool[];
  replicaCount: number;
}

export interface ClusterSnapshot {
  nodes: SchedNode[];
}

export interface PlacementRequest {
  sizeBytes: number;
  /** How many NEW replicas to place. */
  replicas: number;
  /** false for preallocation falloc/full: then the size must also fit in availableBytes. */
  thin: boolean;
  /** Only pools with this name ("" or undefined: any). */
  pool?: string;
  /** Nodes that already hold a replica of this volume: never reused, and their zone/rack count as used. */
  excludeNodes?: string[];
  /** Labels of nodes that already hold replicas, for spreading. */
  usedDomains?: { zone: string; rack: string }[];
  /**
   * Nodes to choose first among equally spread ones (data locality: those holding a
   * copy of a linked clone's template need none copied). Never beats zone or rack spreading.
   */
  preferNodes?: string[];
}

export type PlacementResult =
  | { ok: true; placement: PlacementItem[]; rejections: NodeRejection[] }
  | { ok: false; reason: string; rejections: NodeRejection[] };

/** Used for pools whose overcommit ratio is 0, unset or otherwise not positive. */
export const DEFAULT_OVERCOMMIT_RATIO = 1;

// Free space matters more than load: a full pool is an outage, a busy node is only slower.
const SPACE_WEIGHT = 0.7;
const LOAD_WEIGHT = 0.3;

interface Candidate {
  node: SchedNode;
  pool: string;
  score: number;
}

export function place(req: PlacementRequest, snapshot: ClusterSnapshot): PlacementResult {
  const invalid = validateRequest(req);
  if (invalid) return { ok: false, reason: invalid, rejections: [] };

  const excluded = new Set(req.excludeNodes ?? []);
  // Sorted copy: the caller's array stays untouched and every later step sees nodes by name.
  const nodes = [...snapshot.nodes].sort((a, b) => compareNames(a.name, b.name));

  const candidates: Candidate[] = [];
  const rejections: NodeRejection[] = [];
  for (const node of nodes) {
    const evaluated = evaluateNode(node, req, excluded);
    if ("reasons" in evaluated) rejections.push({ node: node.name, reasons: evaluated.reasons });
    else candidates.push(evaluated);
  }

  if (candidates.length < req.replicas) {
    return {
      ok: false,
      reason:
        `need ${plural(req.replicas, "host")} for ${plural(req.replicas, "replica")} ` +
        `but only ${candidates.length} ${candidates.length === 1 ? "is" : "are"} eligible`,
      rejections,
    };
  }

  const domains = new UsedDomains();
  for (const d of req.usedDomains ?? []) domains.add(d);
  // Excluded nodes hold replicas of this volume already, so their domains are taken.
  for (const node of nodes) if (excluded.has(node.name)) domains.add(node.labels);

  const placement: PlacementItem[] = [];
  const remaining = [...candidates];
  const preferred = new Set(req.preferNodes ?? []);
  for (let i = 0; i < req.replicas; i++) {
    remaining.sort((a, b) => compareForSpreading(a, b, domains, preferred));
    const chosen = remaining.shift()!;
    domains.add(chosen.node.labels);
    placement.push({ node: chosen.node.name, pool: chosen.pool, score: chosen.score });
  }

  for (const left of remaining) {
    rejections.push({ node: left.node.name, reasons: [notChosenReason(left, domains)] });
  }
  rejections.sort((a, b) => compareNames(a.node, b.node));
  return { ok: true, placement, rejections };
}

function validateRequest(req: PlacementRequest): string | undefined {
  if (!Number.isFinite(req.sizeBytes) || req.sizeBytes <= 0) {
    return `volume size must be positive, got ${req.sizeBytes} bytes`;
  }
  if (!Number.isInteger(req.replicas) || req.replicas < 1) {
    return `replica count must be a whole number of at least 1, got ${req.replicas}`;
  }
  return undefined;
}

/** Either the node's best pool as a candidate, or every reason the node cannot take a replica. */
function evaluateNode(
  node: SchedNode,
  req: PlacementRequest,
  excluded: Set<string>,
): Candidate | { reasons: string[] } {
  const reasons: string[] = [];
  if (!node.online) reasons.push("offline");
  if (node.cordoned) reasons.push("cordoned");
  if (excluded.has(node.name)) reasons.push("already holds a replica of this volume");

  const wantedPool = req.pool ?? "";
  const pools = wantedPool === "" ? node.pools : node.pools.filter((p) => p.name === wantedPool);
  if (pools.length === 0) reasons.push(wantedPool === "" ? "no pools" : `no pool named ${JSON.stringify(wantedPool)}`);

  const poolReasons: string[] = [];
  let best: { pool: string; score: number } | undefined;
  for (const pool of pools) {
    const misfits = poolMisfits(pool, req);
    if (misfits.length > 0) {
      poolReasons.push(...misfits);
      continue;
    }
    const score = scorePool(pool, node, req.sizeBytes);
    // Among pools of one node, ties go to the pool name so the answer never depends on report order.
    if (!best || score > best.score || (score === best.score && compareNames(pool.name, best.pool) < 0)) {
      best = { pool: pool.name, score };
    }
  }

  if (best && reasons.length === 0) return { node, ...best };
  // Pools that do not fit are only a reason when no pool of the node fits.
  return { reasons: best ? reasons : [...reasons, ...poolReasons] };
}

function overcommitRatio(pool: SchedPool): number {
  return pool.overcommitRatio > 0 ? pool.overcommitRatio : DEFAULT_OVERCOMMIT_RATIO;
}

/** The virtual bytes a pool may hold: thin images let it promise more than its disk. */
function provisionLimit(pool: SchedPool): number {
  return pool.capacityBytes * overcommitRatio(pool);
}

function poolMisfits(pool: SchedPool, req: PlacementRequest): string[] {
  const misfits: string[] = [];
  const limit = provisionLimit(pool);
  if (pool.provisionedBytes + req.sizeBytes > limit) {
    const free = Math.max(0, Math.floor(limit - pool.provisionedBytes));
    misfits.push(
      `pool ${pool.name}: not enough space: needs ${formatSize(req.sizeBytes)}, ${formatSize(free)} free ` +
        `of ${formatSize(pool.capacityBytes)} x overcommit ${overcommitRatio(pool)} ` +
        `(provisioned ${formatSize(pool.provisionedBytes)})`,
    );
  }
  // A preallocated image takes its full size on disk at once; overcommit cannot help it.
  if (!req.thin && req.sizeBytes > pool.availableBytes) {
    misfits.push(
      `pool ${pool.name}: not enough disk for a preallocated volume: needs ${formatSize(req.sizeBytes)}, ` +
        `${formatSize(Math.max(0, pool.availableBytes))} available`,
    );
  }
  return misfits;
}

/** 0..100, higher is better; rounded so that reports are readable and near-equal pools tie. */
function scorePool(pool: SchedPool, node: SchedNode, sizeBytes: number): number {
  const limit = provisionLimit(pool);
  const freeAfter = (limit - pool.provisionedBytes - sizeBytes) / limit;
  const lightness = 1 / (1 + Math.max(0, node.replicaCount));
  return Math.round(100 * (SPACE_WEIGHT * freeAfter + LOAD_WEIGHT * lightness) * 100) / 100;
}

/** Zones and racks that already hold a replica. Empty labels are unknown and never conflict. */
class UsedDomains {
  private readonly zones = new Set<string>();
  private readonly racks = new Set<string>();

  add(labels: { zone: string; rack: string }): void {
    if (labels.zone !== "") this.zones.add(labels.zone);
    if (labels.rack !== "") this.racks.add(rackKey(labels));
  }

  zoneUsed(labels: { zone: string }): boolean {
    return labels.zone !== "" && this.zones.has(labels.zone);
  }

  rackUsed(labels: { zone: string; rack: string }): boolean {
    return labels.rack !== "" && this.racks.has(rackKey(labels));
  }
}

// Rack names are only unique within a zone: "r1" in zone a and "r1" in zone b are two racks.
function rackKey(labels: { zone: string; rack: string }): string {
  return JSON.stringify([labels.zone, labels.rack]);
}

/** New zone first, then new rack, then preferred nodes, then score, then name: spreading beats locality beats free space. */
function compareForSpreading(a: Candidate, b: Candidate, domains: UsedDomains, preferred: Set<string> = new Set()): number {
  const zone = Number(domains.zoneUsed(a.node.labels)) - Number(domains.zoneUsed(b.node.labels));
  if (zone !== 0) return zone;
  const rack = Number(domains.rackUsed(a.node.labels)) - Number(domains.rackUsed(b.node.labels));
  if (rack !== 0) return rack;
  const pref = Number(preferred.has(b.node.name)) - Number(preferred.has(a.node.name));
  if (pref !== 0) return pref;
  if (a.score !== b.score) return b.score - a.score;
  return compareNames(a.node.name, b.node.name);
}

function notChosenReason(c: Candidate, domains: UsedDomains): string {
  const { zone, rack } = c.node.labels;
  // The rack is the more specific answer: a used rack implies its zone is used too.
  if (domains.rackUsed(c.node.labels)) {
    return `not chosen: rack ${JSON.stringify(rack)} in zone ${JSON.stringify(zone)} already holds a replica`;
  }
  if (domains.zoneUsed(c.node.labels)) return `not chosen: zone ${JSON.stringify(zone)} already holds a replica`;
  return `not chosen: lower score (${c.score})`;
}

// Code-unit order, not localeCompare: the tie break must not depend on the host's locale.
function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}
