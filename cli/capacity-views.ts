// Views of capacity: pool figures with their thresholds, node and cluster totals,
// a volume's logical and allocated bytes, and events. Pure: objects (and `now`) in, text out.
import type { GetClusterStatusResponse } from "../gen/stowage/v1/controller.js";
import type { CapacityTotals, Event, Pool, PoolCapacity, Volume } from "../gen/stowage/v1/types.js";
import { formatSize } from "../lib/sizes.js";
import { dedupFields } from "./dedup-views.js";
import { compressFields } from "./compress-views.js";
import { formatAge, formatFields, formatTable } from "./output.js";

/** A pool's derived figures; computed here for a controller that does not send them. */
export function poolFigures(p: Pool): PoolCapacity {
  if (p.capacity) return p.capacity;
  const used = Math.max(0, p.capacityBytes - p.availableBytes);
  const limit = Math.floor(p.capacityBytes * (p.overcommitRatio || 1));
  const pct = (a: number, b: number) => (b > 0 ? Math.round((a / b) * 10_000) / 100 : 0);
  return {
    usedBytes: used,
    provisionedLimitBytes: limit,
    overcommitSource: "agent",
    configuredOvercommitRatio: p.overcommitRatio,
    usedPercent: pct(used, p.capacityBytes),
    provisionedPercent: pct(p.provisionedBytes, limit),
    warningPercent: 0,
    criticalPercent: 0,
    level: "",
  };
}

/** "80%", "12.5%" */
export function formatPercent(pct: number): string {
  return `${Math.round(pct * 10) / 10}%`;
}

export function poolsTable(pools: Pool[]): string {
  if (pools.length === 0) return "no pools found\n";
  return formatTable(
    ["node", "name", "capacity", "used", "available", "allocated", "provisioned", "overcommit", "replicas", "level"],
    pools.map((p) => {
      const f = poolFigures(p);
      return [
        p.node,
        p.name,
        formatSize(p.capacityBytes),
        `${formatSize(f.usedBytes)} ${formatPercent(f.usedPercent)}`,
        formatSize(p.availableBytes),
        formatSize(p.allocatedBytes),
        `${formatSize(p.provisionedBytes)} ${formatPercent(f.provisionedPercent)}`,
        `${p.overcommitRatio}x`,
        String(p.replicaCount),
        f.level || "-",
      ];
    }),
  );
}

export function poolDetail(p: Pool): string {
  const f = poolFigures(p);
  const source = f.overcommitSource === "operator" ? `set by the operator; the agent's config says ${f.configuredOvercommitRatio}x` : "from the agent's config";
  return formatFields([
    ["Node", p.node],
    ["Name", p.name],
    ["Type", p.type],
    ["Path", p.path],
    ["Capacity", formatSize(p.capacityBytes)],
    ["Used", `${formatSize(f.usedBytes)} (${formatPercent(f.usedPercent)} of capacity; physical, the whole filesystem)`],
    ["Available", formatSize(p.availableBytes)],
    ["Allocated", `${formatSize(p.allocatedBytes)} (the pool's replica images on disk)`],
    ...(p.templateBytes > 0 ? ([["Templates", `${formatSize(p.templateBytes)} (template copies for linked clones, on disk)`]] as Array<[string, string]>) : []),
    ["Provisioned", `${formatSize(p.provisionedBytes)} (${formatPercent(f.provisionedPercent)} of the limit ${formatSize(f.provisionedLimitBytes)}; logical)`],
    ["Overcommit", `${p.overcommitRatio}x (${source})`],
    ...(f.warningPercent > 0
      ? ([["Thresholds", `warning ${f.warningPercent}%, critical ${f.criticalPercent}% (of used and of provisioned)`]] as Array<[string, string]>)
      : []),
    ...(f.level ? ([["Level", f.level]] as Array<[string, string]>) : []),
    ["Replicas", String(p.replicaCount)],
    ...dedupFields(p.dedup),
    ...compressFields(p.compress),
  ]);
}

/** "Capacity: 192GiB, used 40GiB (21%), ..." lines of a node's or the cluster's totals. */
export function totalsFields(t: CapacityTotals): Array<[string, string]> {
  const pct = (a: number, b: number) => (b > 0 ? formatPercent((100 * a) / b) : "-");
  return [
    ["Capacity", `${formatSize(t.capacityBytes)} in ${t.poolCount} pool${t.poolCount === 1 ? "" : "s"}`],
    ["Used", `${formatSize(t.usedBytes)} (${pct(t.usedBytes, t.capacityBytes)}; physical)`],
    ["Available", formatSize(t.availableBytes)],
    ["Allocated", `${formatSize(t.allocatedBytes)} (replica images on disk)`],
    ...(t.templateBytes > 0 ? ([["Templates", `${formatSize(t.templateBytes)} (template copies on disk)`]] as Array<[string, string]>) : []),
    ["Provisioned", `${formatSize(t.provisionedBytes)} (${pct(t.provisionedBytes, t.provisionedLimitBytes)} of the limit ${formatSize(t.provisionedLimitBytes)}; logical)`],
    [
      "Thin savings",
      t.provisionedBytes > 0 ? `${formatSize(Math.max(0, t.provisionedBytes - t.allocatedBytes))} promised but not allocated` : "-",
    ],
  ];
}

/** The volume's totals line: logical vs allocated. */
export function volumeCapacityField(v: Volume): [string, string] | undefined {
  if (!v.capacity) return undefined;
  const { logicalBytes, allocatedBytes } = v.capacity;
  const pct = logicalBytes > 0 ? ` (${formatPercent((100 * allocatedBytes) / logicalBytes)})` : "";
  return ["Space", `${formatSize(allocatedBytes)} allocated of ${formatSize(logicalBytes)} provisioned over all replicas${pct}`];
}

export function clusterStatusView(s: GetClusterStatusResponse, now: number): string {
  const phases = Object.entries(s.volumesByPhase)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([phase, n]) => `${n} ${phase}`)
    .join(", ");
  const head = formatFields([
    ["Health", s.health || "-"],
    ["Leader", s.leader || "(none elected yet)"],
    ["Nodes", `${s.nodeCount} (${s.nodesOnline} online${s.nodesCordoned ? `, ${s.nodesCordoned} cordoned` : ""})`],
    ["Volumes", `${s.volumeCount}${phases ? ` (${phases})` : ""}`],
    ...(s.capacity ? totalsFields(s.capacity) : []),
  ]);
  const problems = s.problems.length > 0 ? `\nProblems:\n${s.problems.map((p) => `  ${p}\n`).join("")}` : "";
  const events = s.activeEvents.length > 0 ? `\nActive events:\n${eventsTable(s.activeEvents, now)}` : "\nNo active events.\n";
  return head + problems + events;
}

export function eventsTable(events: Event[], now: number): string {
  if (events.length === 0) return "no events\n";
  return formatTable(
    ["age", "severity", "state", "object", "message"],
    events.map((e) => [
      formatAge(e.atMs, now),
      e.severity,
      e.resolvedAtMs ? `resolved ${formatAge(e.resolvedAtMs, now)} ago: ${e.resolution}` : "active",
      e.object,
      e.message,
    ]),
  );
}
