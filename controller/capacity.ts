// Capacity, pure: a pool's effective settings (the operator's, recorded in the
// node's spec, over the agent's config), its physical and provisioned use, the
// threshold levels with hysteresis, totals over pools, and the plan that turns
// levels into capacity events (raise, escalate, resolve). No I/O, no clock.
import type { CapacityTotals, Pool, PoolCapacity } from "../gen/stowage/v1/types.js";
import { formatSize } from "../lib/sizes.js";
import type { EventRecord, PoolRecord, PoolSettings } from "./model.js";
import { DEFAULT_OVERCOMMIT_RATIO } from "./scheduler.js";

export const DEFAULT_WARNING_PERCENT = 80;
export const DEFAULT_CRITICAL_PERCENT = 90;
/**
 * A level clears only this many percentage points below its threshold: a pool
 * hovering at 80% would otherwise raise and resolve an event on every heartbeat.
 */
export const CLEAR_MARGIN_PERCENT = 2;

export type Level = "ok" | "warning" | "critical";
const RANK: Record<Level, number> = { ok: 0, warning: 1, critical: 2 };

export interface Thresholds {
  warningPercent: number;
  criticalPercent: number;
}

/** A pool record with the operator's settings applied, and where each came from. */
export interface EffectivePool extends PoolRecord, Thresholds {
  overcommitSource: "agent" | "operator";
  configuredOvercommitRatio: number;
}

export function effectivePool(record: PoolRecord, settings: PoolSettings | undefined): EffectivePool {
  const configured = record.overcommitRatio > 0 ? record.overcommitRatio : DEFAULT_OVERCOMMIT_RATIO;
  const operator = settings?.overcommitRatio;
  return {
    ...record,
    overcommitRatio: operator ?? configured,
    overcommitSource: operator !== undefined ? "operator" : "agent",
    configuredOvercommitRatio: configured,
    warningPercent: settings?.warningPercent ?? DEFAULT_WARNING_PERCENT,
    criticalPercent: settings?.criticalPercent ?? DEFAULT_CRITICAL_PERCENT,
  };
}

/** Physical use of the pool's filesystem: what is not available (reserved blocks count as used). */
export function usedBytes(p: { capacityBytes: number; availableBytes: number }): number {
  return Math.max(0, p.capacityBytes - p.availableBytes);
}

export function provisionLimit(p: { capacityBytes: number; overcommitRatio: number }): number {
  // Kept a safe integer: the API carries it as one (an 8 PiB limit is plenty to say "no limit").
  return Math.min(Math.floor(p.capacityBytes * (p.overcommitRatio > 0 ? p.overcommitRatio : DEFAULT_OVERCOMMIT_RATIO)), Number.MAX_SAFE_INTEGER);
}

function percent(part: number, whole: number): number {
  if (whole <= 0) return part > 0 ? 100 : 0;
  return Math.round((part / whole) * 10_000) / 100;
}

export function levelOf(pct: number, t: Thresholds): Level {
  if (pct >= t.criticalPercent) return "critical";
  if (pct >= t.warningPercent) return "warning";
  return "ok";
}

/**
 * The level after a new reading, given the level so far: up at once, down only
 * once the figure is CLEAR_MARGIN_PERCENT below the threshold it had crossed.
 */
export function nextLevel(current: Level, pct: number, t: Thresholds, margin = CLEAR_MARGIN_PERCENT): Level {
  const raw = levelOf(pct, t);
  if (RANK[raw] >= RANK[current]) return raw;
  if (current === "critical" && pct >= t.criticalPercent - margin) return "critical";
  if (pct >= t.warningPercent - margin) return "warning";
  return "ok";
}

export function worse(a: Level, b: Level): Level {
  return RANK[a] >= RANK[b] ? a : b;
}

/** The derived figures of a pool for the API. */
export function poolCapacity(p: EffectivePool, provisionedBytes: number): PoolCapacity {
  const used = usedBytes(p);
  const limit = provisionLimit(p);
  const usedPercent = percent(used, p.capacityBytes);
  const provisionedPercent = percent(provisionedBytes, limit);
  return {
    usedBytes: used,
    provisionedLimitBytes: limit,
    overcommitSource: p.overcommitSource,
    configuredOvercommitRatio: p.configuredOvercommitRatio,
    usedPercent,
    provisionedPercent,
    warningPercent: p.warningPercent,
    criticalPercent: p.criticalPercent,
    level: worse(levelOf(usedPercent, p), levelOf(provisionedPercent, p)),
  };
}

/** Sums API pools (with their capacity figures) into totals. */
export function capacityTotals(pools: Pool[]): CapacityTotals {
  const t: CapacityTotals = {
    capacityBytes: 0,
    availableBytes: 0,
    usedBytes: 0,
    allocatedBytes: 0,
    provisionedBytes: 0,
    provisionedLimitBytes: 0,
    poolCount: pools.length,
    replicaCount: 0,
    templateBytes: 0,
  };
  for (const p of pools) {
    t.capacityBytes += p.capacityBytes;
    t.availableBytes += p.availableBytes;
    t.usedBytes += p.capacity?.usedBytes ?? usedBytes(p);
    t.allocatedBytes += p.allocatedBytes;
    t.provisionedBytes += p.provisionedBytes;
    t.provisionedLimitBytes = Math.min(t.provisionedLimitBytes + (p.capacity?.provisionedLimitBytes ?? provisionLimit(p)), Number.MAX_SAFE_INTEGER);
    t.replicaCount += p.replicaCount;
    t.templateBytes += p.templateBytes;
  }
  return t;
}

// ---- Validation of the operator's settings ----

export type SettingsCheck = { ok: true; settings: PoolSettings } | { ok: false; message: string; hint: string };

/**
 * Merges a change into a pool's settings and checks the result: ratio > 0,
 * 0 < warning < critical <= 100. `undefined` fields stay as they are; `reset*`
 * forget the operator's values.
 */
export function mergeSettings(
  current: PoolSettings | undefined,
  change: { overcommitRatio?: number; warningPercent?: number; criticalPercent?: number; resetOvercommit?: boolean; resetThresholds?: boolean },
): SettingsCheck {
  const r = change.overcommitRatio;
  if (r !== undefined && (!Number.isFinite(r) || r <= 0)) {
    return { ok: false, message: `overcommit ratio must be a number greater than 0, got ${r}`, hint: "for example --overcommit 1 (no overcommit) or --overcommit 3 (promise up to 3x the disk)" };
  }
  if (r !== undefined && change.resetOvercommit) {
    return { ok: false, message: "give either an overcommit ratio or 'default', not both", hint: "--overcommit default returns to the agent's configured ratio" };
  }
  for (const [name, v] of [["warning", change.warningPercent], ["critical", change.criticalPercent]] as const) {
    if (v !== undefined && (!Number.isFinite(v) || v <= 0 || v > 100)) {
      return { ok: false, message: `${name} threshold must be a percentage above 0 and at most 100, got ${v}`, hint: "for example --warning 75 --critical 85" };
    }
  }
  const next: PoolSettings = { ...current };
  if (change.resetOvercommit) delete next.overcommitRatio;
  if (change.resetThresholds) {
    delete next.warningPercent;
    delete next.criticalPercent;
  }
  if (r !== undefined) next.overcommitRatio = r;
  if (change.warningPercent !== undefined) next.warningPercent = change.warningPercent;
  if (change.criticalPercent !== undefined) next.criticalPercent = change.criticalPercent;
  const warning = next.warningPercent ?? DEFAULT_WARNING_PERCENT;
  const critical = next.criticalPercent ?? DEFAULT_CRITICAL_PERCENT;
  if (warning >= critical) {
    return {
      ok: false,
      message: `the warning threshold (${warning}%) must be below the critical one (${critical}%)`,
      hint: "give both, for example --warning 70 --critical 85",
    };
  }
  return { ok: true, settings: next };
}

/** A ratio that would leave less room than is provisioned already: the message and hint, or undefined. */
export function ratioTooLow(nodePool: string, capacityBytes: number, ratio: number, provisionedBytes: number): { message: string; hint: string } | undefined {
  const limit = provisionLimit({ capacityBytes, overcommitRatio: ratio });
  if (provisionedBytes <= limit) return undefined;
  const needed = Math.ceil((provisionedBytes / Math.max(1, capacityBytes)) * 100) / 100;
  return {
    message:
      `pool ${nodePool} has ${formatSize(provisionedBytes)} provisioned; overcommit ${ratio} would allow only ` +
      `${formatSize(limit)} (${formatSize(capacityBytes)} x ${ratio}): the volumes already there would break the ratio`,
    hint: `give a ratio of at least ${needed}, delete or move volumes first, or add --force to set it anyway (new replicas are then refused there); nothing was changed`,
  };
}

// ---- Capacity events ----

/** One figure of one pool, judged against its thresholds. */
export interface Condition {
  /** "pool node1/default" */
  object: string;
  /** "pool-used" or "pool-provisioned" */
  reason: string;
  percent: number;
  thresholds: Thresholds;
  /** The message of an event at this level. */
  describe: (level: Exclude<Level, "ok">) => string;
}

export interface EventPlan {
  raise: Omit<EventRecord, "id">[];
  resolve: { event: EventRecord; resolution: string }[];
}

const conditionKey = (object: string, reason: string) => `${reason}\u0000${object}`;

/**
 * Level-triggered: what to raise and resolve so that the active events match the
 * conditions. The level so far is the active event's severity (for hysteresis).
 * Active events of objects not evaluated are resolved unless `keep` says their
 * object is only unknown for now (an offline node's pools).
 */
export function planEvents(conditions: Condition[], active: EventRecord[], nowMs: number, keep: (object: string) => boolean = () => false): EventPlan {
  const plan: EventPlan = { raise: [], resolve: [] };
  const byKey = new Map<string, EventRecord[]>();
  for (const e of active) {
    const k = conditionKey(e.object, e.reason);
    byKey.set(k, [...(byKey.get(k) ?? []), e]);
  }
  const seen = new Set<string>();
  for (const c of conditions) {
    const k = conditionKey(c.object, c.reason);
    seen.add(k);
    const events = byKey.get(k) ?? [];
    // One active event per condition; a duplicate (two leaders' passes racing) is resolved.
    const current = events[events.length - 1];
    for (const dup of events.slice(0, -1)) plan.resolve.push({ event: dup, resolution: "superseded" });
    const was: Level = current?.severity === "critical" ? "critical" : current?.severity === "warning" ? "warning" : "ok";
    const level = nextLevel(was, c.percent, c.thresholds);
    if (level === was) continue;
    if (current) {
      const resolution =
        level === "ok"
          ? `back below ${was === "critical" ? c.thresholds.criticalPercent : c.thresholds.warningPercent}% (${c.percent}%)`
          : `${RANK[level] > RANK[was] ? "escalated" : "eased"} to ${level} (${c.percent}%)`;
      plan.resolve.push({ event: current, resolution });
    }
    if (level !== "ok") plan.raise.push({ atMs: nowMs, severity: level, object: c.object, reason: c.reason, message: c.describe(level) });
  }
  for (const [k, events] of byKey) {
    if (seen.has(k)) continue;
    for (const e of events) if (!keep(e.object)) plan.resolve.push({ event: e, resolution: "no longer reported" });
  }
  return plan;
}

/** The two conditions of a pool: physical use of its filesystem, and provisioned vs its limit. */
export function poolConditions(node: string, p: EffectivePool, provisionedBytes: number): Condition[] {
  const object = `pool ${node}/${p.name}`;
  const used = usedBytes(p);
  const limit = provisionLimit(p);
  const threshold = (level: Exclude<Level, "ok">) => (level === "critical" ? p.criticalPercent : p.warningPercent);
  return [
    {
      object,
      reason: "pool-used",
      percent: percent(used, p.capacityBytes),
      thresholds: p,
      describe: (level) =>
        `${object}: ${percent(used, p.capacityBytes)}% of its filesystem in use (${formatSize(used)} of ${formatSize(p.capacityBytes)}, ` +
        `${formatSize(p.availableBytes)} free), above the ${level} threshold of ${threshold(level)}%; writes to thin replicas there fail with ENOSPC ` +
        `once it is full: free space, add disk, or move replicas away (stowctl node drain ${node})`,
    },
    {
      object,
      reason: "pool-provisioned",
      percent: percent(provisionedBytes, limit),
      thresholds: p,
      describe: (level) =>
        `${object}: ${percent(provisionedBytes, limit)}% of its provisioning limit promised (${formatSize(provisionedBytes)} of ` +
        `${formatSize(limit)} = ${formatSize(p.capacityBytes)} x overcommit ${p.overcommitRatio}), above the ${level} threshold of ` +
        `${threshold(level)}%; new volumes will be refused there once it is reached: add disk, delete volumes, or raise the ratio ` +
        `(stowctl pool set ${node}/${p.name} --overcommit N)`,
    },
  ];
}

/** Which events to delete so that at most `limit` are kept: the oldest resolved ones (ids sort by time). */
export function eventsToPrune(events: EventRecord[], limit: number): EventRecord[] {
  const excess = events.length - limit;
  if (excess <= 0) return [];
  return events
    .filter((e) => e.resolvedAtMs)
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .slice(0, excess);
}

/** An event id that sorts by time: zero-padded milliseconds and a suffix against collisions. */
export function eventId(atMs: number, suffix: string): string {
  return `${String(Math.max(0, Math.floor(atMs))).padStart(14, "0")}-${suffix}`;
}
