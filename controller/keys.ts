// Typed builders and parsers for every etcd key Stowage uses. One prefix, one
// key per object; specs and statuses under separate keys.

export const PREFIX = "/stowage/v1/";

export type KeyKind = "node-spec" | "node-status" | "volume-spec" | "volume-status" | "operation" | "migration" | "job" | "event" | "snapshot" | "template" | "backup" | "pool-dedup" | "pool-compress" | "replication" | "restore-export";

const SEGMENTS: Record<KeyKind, string> = {
  "node-spec": "nodes/spec/",
  "node-status": "nodes/status/",
  "volume-spec": "volumes/spec/",
  "volume-status": "volumes/status/",
  operation: "operations/",
  migration: "migrations/",
  job: "jobs/",
  event: "events/",
  snapshot: "snapshots/",
  backup: "backups/",
  replication: "replications/",
  template: "templates/",
  "pool-dedup": "pool-dedup/",
  "pool-compress": "pool-compress/",
  "restore-export": "restore-exports/",
};

export const keys = {
  nodeSpec: (name: string) => PREFIX + SEGMENTS["node-spec"] + name,
  nodeStatus: (name: string) => PREFIX + SEGMENTS["node-status"] + name,
  volumeSpec: (name: string) => PREFIX + SEGMENTS["volume-spec"] + name,
  volumeStatus: (name: string) => PREFIX + SEGMENTS["volume-status"] + name,
  /** One operation at a time per volume. */
  operation: (volume: string) => PREFIX + SEGMENTS.operation + volume,
  /** The running or last live migration of a domain. */
  migration: (domain: string) => PREFIX + SEGMENTS.migration + domain,
  /** The resync or rebuild of one replica (named by the replica id). */
  job: (replica: string) => PREFIX + SEGMENTS.job + replica,
  /** An event (capacity thresholds); ids sort by time. */
  event: (id: string) => PREFIX + SEGMENTS.event + id,
  /** A snapshot of a volume: snapshots/VOLUME@NAME. */
  snapshot: (volume: string, name: string) => PREFIX + SEGMENTS.snapshot + `${volume}@${name}`,
  /** A template: templates/NAME. */
  template: (name: string) => PREFIX + SEGMENTS.template + name,
  /** A backup of a volume: backups/VOLUME@ID. */
  backup: (volume: string, id: string) => PREFIX + SEGMENTS.backup + `${volume}@${id}`,
  /** A pool's dedup run, running or the last: pool-dedup/NODE@POOL. */
  poolDedup: (node: string, pool: string) => PREFIX + SEGMENTS["pool-dedup"] + `${node}@${pool}`,
  /** A pool's recompression run, running or the last: pool-compress/NODE@POOL. */
  poolCompress: (node: string, pool: string) => PREFIX + SEGMENTS["pool-compress"] + `${node}@${pool}`,
  /** The asynchronous replication of a volume. */
  replication: (volume: string) => PREFIX + SEGMENTS.replication + volume,
  /** A read-only export of a backup that a restore copies from, while it may run: restore-exports/EXPORT-ID. */
  restoreExport: (exportId: string) => PREFIX + SEGMENTS["restore-export"] + exportId,
  prefixOf: (kind: KeyKind) => PREFIX + SEGMENTS[kind],
  /** Election keys live under this prefix (etcd3 adds its own suffix). */
  election: PREFIX + "leader",
};

export interface ParsedKey {
  kind: KeyKind;
  name: string;
}

/** Inverse of the builders; undefined for keys that are not ours. */
export function parseKey(key: string): ParsedKey | undefined {
  if (!key.startsWith(PREFIX)) return undefined;
  const rest = key.slice(PREFIX.length);
  for (const [kind, seg] of Object.entries(SEGMENTS) as [KeyKind, string][]) {
    if (rest.startsWith(seg)) {
      const name = rest.slice(seg.length);
      if (!name || name.includes("/")) return undefined;
      return { kind, name };
    }
  }
  return undefined;
}
