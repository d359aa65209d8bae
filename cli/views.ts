// Table and detail views of API objects. Pure: objects (and `now`) in, text out.
import type { CreateVolumeResponse } from "../gen/stowage/v1/controller.js";
import { ReplicaState, type Node, type NodeRejection, type Volume } from "../gen/stowage/v1/types.js";
import { formatSize } from "../lib/sizes.js";
import { ATTACHMENT_STATE, enumLabel, IMAGE_FORMAT, PREALLOCATION, REPLICA_STATE, VOLUME_PHASE } from "./convert.js";
import { poolDetail, poolsTable, totalsFields, volumeCapacityField } from "./capacity-views.js";
import { drainDetail, replicaCopyLines } from "./job-views.js";
import { formatAge, formatFields, formatTable } from "./output.js";

function nodeStatus(n: Node): string {
  return (n.online ? "online" : "offline") + (n.cordoned ? ",cordoned" : "") + (n.drain ? (n.drain.replicasLeft > 0 ? ",draining" : ",drained") : "");
}

export function nodesTable(nodes: Node[], now: number): string {
  if (nodes.length === 0) return "no nodes registered\n";
  return formatTable(
    ["name", "status", "address", "zone", "rack", "pools", "heartbeat", "version"],
    nodes.map((n) => [
      n.name,
      nodeStatus(n),
      n.address,
      n.labels?.zone || "-",
      n.labels?.rack || "-",
      String(n.pools.length),
      formatAge(n.lastHeartbeatMs, now),
      n.agentVersion || "-",
    ]),
  );
}

export function nodeDetail(n: Node, now: number): string {
  const head = formatFields([
    ["Name", n.name],
    ["Status", nodeStatus(n)],
    ["Address", n.address],
    ["Zone", n.labels?.zone || "-"],
    ["Rack", n.labels?.rack || "-"],
    ["Last heartbeat", n.lastHeartbeatMs ? `${formatAge(n.lastHeartbeatMs, now)} ago` : "never"],
    ["Agent version", n.agentVersion || "-"],
    ["Replicas", String(n.replicaCount)],
  ]);
  const drain = n.drain ? drainDetail(n.drain) : "";
  const totals = n.capacity && n.pools.length > 0 ? formatFields(totalsFields(n.capacity)) : "";
  return (n.pools.length === 0 ? `${head}\nno pools\n` : `${head}${totals}\n${poolsTable(n.pools)}`) + (drain ? `\n${drain}` : "");
}

// Pool views live with the other capacity views.
export { poolDetail, poolsTable };

/** "2/2": healthy, in-sync replicas out of those asked for. */
function replicaCount(v: Volume): string {
  const healthy = v.replicas.filter((r) => r.state === ReplicaState.REPLICA_STATE_HEALTHY && !r.outOfSync).length;
  return `${healthy}/${v.spec?.replicas ?? v.replicas.length}`;
}

export function volumesTable(volumes: Volume[]): string {
  if (volumes.length === 0) return "no volumes found\n";
  return formatTable(
    ["name", "size", "replicas", "phase", "format", "attached"],
    volumes.map((v) => [
      v.spec?.name ?? "?",
      formatSize(v.spec?.sizeBytes ?? 0),
      replicaCount(v),
      enumLabel(VOLUME_PHASE, v.phase),
      enumLabel(IMAGE_FORMAT, v.spec?.format ?? 0),
      v.attachments.map((a) => a.node).join(",") || "-",
    ]),
  );
}

export function volumeDetail(v: Volume): string {
  const s = v.spec;
  const attached = v.attachments.map((a) =>
    `${a.node} (${enumLabel(ATTACHMENT_STATE, a.state)}) ${a.nbdUri}${a.message ? ` - ${a.message}` : ""}`.replace(/\s+$/, ""),
  );
  const head = formatFields([
    ["Name", s?.name ?? "?"],
    ["UID", v.uid || "-"],
    ["Phase", enumLabel(VOLUME_PHASE, v.phase)],
    ["Size", s ? `${formatSize(s.sizeBytes)} (${s.sizeBytes} bytes)` : "?"],
    ["Replicas", replicaCount(v)],
    ["Format", enumLabel(IMAGE_FORMAT, s?.format ?? 0)],
    ["Preallocation", enumLabel(PREALLOCATION, s?.preallocation ?? 0)],
    ["Pool", s?.pool || "(any)"],
    ...(s?.template ? ([["Template", `${s.template} (linked clone: its replicas read unwritten data from the template's copy on their node)`]] as Array<[string, string]>) : []),
    ["Created", v.createdAtMs ? new Date(v.createdAtMs).toISOString() : "-"],
    ...(volumeCapacityField(v) ? [volumeCapacityField(v)!] : []),
    ...(v.message ? ([["Message", v.message]] as Array<[string, string]>) : []),
    ...(attached.length > 0 ? ([["Attached", attached.join("; ")]] as Array<[string, string]>) : []),
  ]);
  if (v.replicas.length === 0) return `${head}\nno replicas yet\n`;
  const table = formatTable(
    ["id", "node", "pool", "state", "virtual size", "allocated", "path", "message"],
    v.replicas.map((r) => [
      r.id,
      r.node,
      r.pool,
      r.outOfSync ? "out-of-sync" : enumLabel(REPLICA_STATE, r.state),
      formatSize(r.virtualSizeBytes),
      formatSize(r.allocatedBytes),
      r.path || "-",
      r.message,
    ]),
  );
  const copies = replicaCopyLines(v);
  return `${head}\n${table}${copies ? `\n${copies}` : ""}`;
}

/** "  node3: cordoned; pool full" lines. */
export function rejectionLines(rejections: NodeRejection[]): string {
  return rejections.map((r) => `  ${r.node}: ${r.reasons.join("; ") || "no reason given"}\n`).join("");
}

/** What `volume create --dry-run` would do, and why the other nodes were not chosen. */
export function placementView(name: string, res: CreateVolumeResponse): string {
  let text = `dry run: volume ${name} would be placed on:\n`;
  text += formatTable(
    ["node", "pool", "score"],
    res.placement.map((p) => [p.node, p.pool, p.score.toFixed(3)]),
  );
  if (res.rejections.length > 0) text += `not chosen:\n${rejectionLines(res.rejections)}`;
  return `${text}nothing was created\n`;
}
