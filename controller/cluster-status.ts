// The cluster at a glance (stowctl cluster status): capacity totals, node and
// volume counts, active capacity events, and one health word with its reasons.
// Pure: figures in, the API message out.
import type { GetClusterStatusResponse } from "../gen/stowage/v1/controller.js";
import type { Event, Pool } from "../gen/stowage/v1/types.js";
import { capacityTotals, worse, type Level } from "./capacity.js";
import type { EventRecord, VolumePhaseName } from "./model.js";

export interface ClusterFacts {
  nodes: { name: string; online: boolean; cordoned: boolean; pools: Pool[] }[];
  volumes: { name: string; phase: VolumePhaseName }[];
  /** Events not resolved yet. */
  active: EventRecord[];
  leader: string;
}

export function eventToApi(e: EventRecord): Event {
  return {
    id: e.id,
    atMs: e.atMs,
    severity: e.severity,
    object: e.object,
    reason: e.reason,
    message: e.message,
    resolvedAtMs: e.resolvedAtMs ?? 0,
    resolution: e.resolution ?? "",
  };
}

export function clusterStatus(f: ClusterFacts): GetClusterStatusResponse {
  const byPhase: Record<string, number> = {};
  for (const v of f.volumes) byPhase[v.phase] = (byPhase[v.phase] ?? 0) + 1;
  let health: Level = "ok";
  const problems: string[] = [];
  const offline = f.nodes.filter((n) => !n.online).map((n) => n.name);
  if (offline.length > 0) {
    health = worse(health, "warning");
    problems.push(`${offline.length} of ${f.nodes.length} nodes offline: ${offline.join(", ")}`);
  }
  const failed = f.volumes.filter((v) => v.phase === "failed").map((v) => v.name);
  if (failed.length > 0) {
    health = "critical";
    problems.push(`${failed.length} volume${failed.length === 1 ? "" : "s"} failed: ${failed.slice(0, 10).join(", ")}${failed.length > 10 ? ", ..." : ""}`);
  }
  const degraded = f.volumes.filter((v) => v.phase === "degraded").map((v) => v.name);
  if (degraded.length > 0) {
    health = worse(health, "warning");
    problems.push(`${degraded.length} volume${degraded.length === 1 ? "" : "s"} degraded: ${degraded.slice(0, 10).join(", ")}${degraded.length > 10 ? ", ..." : ""}`);
  }
  const active = [...f.active].sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
  for (const e of active) {
    if (e.severity === "warning" || e.severity === "critical") health = worse(health, e.severity);
    problems.push(`${e.severity}: ${e.object}: ${e.reason === "pool-used" ? "filesystem use" : e.reason === "pool-provisioned" ? "provisioned" : e.reason} above threshold`);
  }
  if (f.nodes.length === 0) problems.push("no nodes registered");
  return {
    capacity: capacityTotals(f.nodes.flatMap((n) => n.pools)),
    nodeCount: f.nodes.length,
    nodesOnline: f.nodes.length - offline.length,
    nodesCordoned: f.nodes.filter((n) => n.cordoned).length,
    volumeCount: f.volumes.length,
    volumesByPhase: byPhase,
    health,
    problems,
    activeEvents: active.map(eventToApi),
    leader: f.leader,
  };
}
