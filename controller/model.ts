// Records the controller keeps in etcd. Specs (what was asked for) and statuses
// (what agents observed) are separate types and separate keys.

export type ImageFormatName = "qcow2" | "raw";
export type PreallocationName = "off" | "metadata" | "falloc" | "full";

export interface NodeLabelsRecord {
  zone: string;
  rack: string;
}

/** A pool as the agent last reported it. */
export interface PoolRecord {
  name: string;
  type: string;
  path: string;
  capacityBytes: number;
  availableBytes: number;
  allocatedBytes: number;
  /** Template copies in the pool, on disk (absent from agents before they reported it). */
  templateBytes?: number;
  overcommitRatio: number;
}

/** Written when an agent registers; cordon is the operator's part of it. */
export interface NodeSpec {
  name: string;
  address: string;
  labels: NodeLabelsRecord;
  cordoned: boolean;
  /** Changes at every agent (re)start: replicas are re-applied on a new epoch. */
  registeredAtMs: number;
  agentVersion: string;
  /** Pools as reported at registration, shown while the node is offline. */
  pools: PoolRecord[];
  /** How other nodes reach the node's libvirtd (absent: no VM support). */
  libvirt?: { uri: string; migrationHost: string };
  /**
   * Set by `stowctl node drain` (with cordoned), cleared by uncordon: every replica on
   * the node gets a replacement elsewhere, then leaves. Like cordoned, the operator's
   * part of the spec: kept across agent registrations.
   */
  drain?: { sinceMs: number };
  /**
   * The operator's settings per pool name (stowctl pool set), over the agent's
   * config. Like cordoned, kept across agent registrations.
   */
  poolSettings?: Record<string, PoolSettings>;
}

/** What the operator set for one pool; an absent field means the default (or the agent's ratio). */
export interface PoolSettings {
  overcommitRatio?: number;
  warningPercent?: number;
  criticalPercent?: number;
  /** Scheduled reflink dedup of the pool's images (absent: off). */
  dedup?: "daily" | "off";
  /** When scheduled jobs may run: "HH:MM-HH:MM", controller local time (absent: any time). */
  quietHours?: string;
  /** Scheduled recompression of cold images (absent: off). */
  compress?: "daily" | "off";
  /** How long an image must be unmodified to be recompressed: "7d", "12h" (absent: 7d). */
  coldAfter?: string;
}

/** How far a running pool job has got, as its agent last said (GetPoolJobProgress). */
export interface PoolJobProgressRecord {
  totalBytes: number;
  doneBytes: number;
  itemsTotal: number;
  itemsDone: number;
  /** What it does now: "hashing file 3 of 12 (vm1.r-1a2b.qcow2)". */
  phase: string;
}

/** A pool's dedup run, under way or the last one (pool-dedup/NODE@POOL): observed, not desired. */
export interface PoolDedupRecord {
  node: string;
  pool: string;
  state: "running" | "done" | "failed";
  trigger: "schedule" | "manual";
  /** Controller instance that runs it. */
  runner: string;
  startedAtMs: number;
  updatedAtMs: number;
  finishedAtMs: number;
  filesystem: string;
  deduplicatedBytes: number;
  savedBytes: number;
  freedBytes: number;
  scannedBytes: number;
  message: string;
  /** While it runs: how far it has got, as the agent said at the last heartbeat. */
  progress?: PoolJobProgressRecord;
}

/** One image of a compression run, as the agent reported it. */
export interface PoolCompressImageRecord {
  replicaId: string;
  volume: string;
  action: "compressed" | "kept" | "skipped";
  reason: string;
  bytesBefore: number;
  bytesAfter: number;
  durationMs: number;
}

/** A pool's recompression run, under way or the last one (pool-compress/NODE@POOL): observed, not desired. */
export interface PoolCompressRecord {
  node: string;
  pool: string;
  state: "running" | "done" | "failed";
  trigger: "schedule" | "manual";
  runner: string;
  startedAtMs: number;
  updatedAtMs: number;
  finishedAtMs: number;
  coldAfterMs: number;
  bytesBefore: number;
  bytesAfter: number;
  savedBytes: number;
  /** Saved by every run of this pool so far, this one included. */
  totalSavedBytes: number;
  compressed: number;
  skipped: number;
  message: string;
  images: PoolCompressImageRecord[];
  /** While it runs: how far it has got, as the agent said at the last heartbeat. */
  progress?: PoolJobProgressRecord;
}

/** Kept under a lease that the leader refreshes on each heartbeat: gone means offline. */
export interface NodeStatus {
  lastHeartbeatMs: number;
  pools: PoolRecord[];
}

export interface ReplicaPlacement {
  id: string;
  node: string;
  pool: string;
  /** Set while the replica misses acknowledged writes (recorded by a frontend). */
  outOfSync?: { sinceMs: number; reason: string; generation: number; agentCopy?: AgentCopyRecord };
  /** The last copy that brought the replica back in sync. */
  lastResync?: { atMs: number; kind: ResyncKind; bytes: number; ms: number };
}

/**
 * The bulk copy of a new replica of an attached volume by its agent
 * (controller/attached-rebuild.ts). `token` names the frontend's dirty map that
 * tracks every write since before the copy started (TrackReplica); `copied` is set
 * once the agent copied while that map tracked, and the replica is exported then
 * for the frontend to copy only what was written meanwhile.
 */
export interface AgentCopyRecord {
  token: string;
  /** The node whose frontend tracks. */
  node: string;
  sinceMs: number;
  copied?: { startedAtMs: number; atMs: number; bytes: number; ms: number };
}

/** incremental: only regions written while the replica was away; full: every allocated region. */
export type ResyncKind = "incremental" | "full";

/**
 * A copy that brings an out-of-sync replica back (key jobs/REPLICA_ID), written by
 * whoever copies (the attached volume's frontend through ReportResync, or the
 * controller for a detached volume) and deleted when the replica is recorded
 * in-sync or leaves the volume. `stowctl job list` shows these.
 */
export interface JobRecord {
  /** The replica being copied to. */
  replica: string;
  volume: string;
  kind: ResyncKind;
  /** Node holding the target replica. */
  node: string;
  /** Node whose frontend (or agent) runs the copy. */
  runner: string;
  totalBytes: number;
  copiedBytes: number;
  /** Recent copy rate, for the ETA. */
  bytesPerSec: number;
  startedAtMs: number;
  updatedAtMs: number;
  message: string;
}

export interface VolumeSpec {
  name: string;
  uid: string;
  sizeBytes: number;
  replicas: number;
  format: ImageFormatName;
  preallocation: PreallocationName;
  /** Only place in pools of this name ("" for any). */
  pool: string;
  createdAtMs: number;
  /** Set by delete; the reconciler removes replicas, then the spec. */
  deleting: boolean;
  /** Decided by the scheduler when the volume was created. */
  placement: ReplicaPlacement[];
  /** Bumped whenever the set of in-sync replicas changes (absent in older records: 1). */
  generation?: number;
  /** Nodes that should run a frontend for the volume (absent in older records). */
  attachments?: AttachmentSpec[];
  /**
   * Replicas taken out of the placement whose images are still to be deleted (their
   * node was offline, or frontends may still hold them for a moment). The reconciler
   * deletes each image, then the entry.
   */
  removedReplicas?: RemovedReplicaRecord[];
  /**
   * Set by `stowctl volume revert` until every reachable replica holding the
   * snapshot is rolled back (the others are then recorded out-of-sync). The volume
   * cannot be attached meanwhile.
   */
  reverting?: { snapshot: string; tag: string; sinceMs: number };
  /**
   * Set on a volume cloned from a snapshot until its replicas exist: a replica on a
   * node holding the snapshot is made from it there (`sources`: new replica id ->
   * source replica); the others are created out-of-sync and copied from those.
   */
  clone?: { volume: string; snapshot: string; tag: string; sources: Record<string, { replicaId: string; pool: string }> };
  /** Set by `stowctl volume import` until the source is copied in (attach is refused meanwhile). */
  importing?: { sinceMs: number; source: string };
  /**
   * Set by `stowctl volume export` while stowctl copies out of one in-sync replica,
   * which stays exported until untilMs (attach is refused meanwhile).
   */
  exporting?: { replica: string; untilMs: number };
  /**
   * Set while a backup runs: its in-sync replicas stay open in their storage daemons
   * (the backup's bitmaps and fleece live there); while `marking`, a detached volume
   * cannot be attached (its replicas must take their bitmaps at one write boundary).
   */
  backingUp?: { id: string; untilMs: number; marking: boolean };
  /**
   * A linked clone of this template (set at creation, never changed): every
   * replica is made as a qcow2 image with the template's copy on its node as
   * backing file, copied there first (controller/templates.ts).
   */
  template?: string;
}

export interface RemovedReplicaRecord {
  id: string;
  node: string;
  pool: string;
  removedAtMs: number;
  reason: string;
}

export interface AttachmentSpec {
  node: string;
  sinceMs: number;
  /** Set on the destination's attachment while a live migration of this domain runs. */
  migration?: string;
}

export type AttachmentStateName = "attaching" | "attached" | "detaching" | "failed";

export interface FrontendStatus {
  node: string;
  migration?: string;
  socketPath: string;
  nbdUri: string;
  state: AttachmentStateName;
  message: string;
  /** When a detach was first seen not confirmed by the node's agent (the fence counts from here). */
  detachingSinceMs?: number;
}

export type ReplicaStateName = "creating" | "healthy" | "unreachable" | "failed" | "deleting";
export type VolumePhaseName = "creating" | "healthy" | "degraded" | "failed" | "deleting" | "resizing";

export interface ReplicaStatusRecord {
  id: string;
  node: string;
  pool: string;
  path: string;
  state: ReplicaStateName;
  virtualSizeBytes: number;
  allocatedBytes: number;
  message: string;
  /** The node's registeredAtMs when the agent last confirmed this replica. */
  nodeEpoch: number;
  /** NBD URI of the replica's export, when it is exported. */
  exportUri?: string;
  /**
   * When the replica was first seen unreachable or failed (absent while it is fine).
   * Kept in etcd so that a new leader counts the grace period from the same moment.
   */
  unreachableSinceMs?: number;
}

export interface VolumeStatus {
  phase: VolumePhaseName;
  message: string;
  replicas: ReplicaStatusRecord[];
  /** Frontends running (or being started or stopped) on nodes. */
  frontends?: FrontendStatus[];
  updatedAtMs: number;
}

/** A long operation, recorded before any agent is called. */
export interface OperationRecord {
  id: string;
  kind: "create-volume" | "delete-volume" | "resize-volume";
  volume: string;
  startedAtMs: number;
  /** Leader instance that started it. */
  startedBy: string;
}

export type MigrationPhaseName = "preparing" | "migrating" | "finishing" | "rolling-back" | "succeeded" | "failed";

/** A live migration of one domain, recorded before anything is started; the last one stays until the next. */
export interface MigrationRecord {
  id: string;
  domain: string;
  from: string;
  to: string;
  volumes: string[];
  phase: MigrationPhaseName;
  message: string;
  startedAtMs: number;
  finishedAtMs: number;
  startedBy: string;
  memoryTotalBytes: number;
  memoryProcessedBytes: number;
  memoryRemainingBytes: number;
  downtimeMs: number;
}

export type Severity = "info" | "warning" | "critical";

/**
 * Something the cluster noticed (key events/ID; ids sort by time). A capacity
 * event stays active until its condition clears, then gets resolvedAtMs. The
 * leader keeps the last MAX_EVENTS (controller/capacity-events.ts).
 */
export interface EventRecord {
  id: string;
  atMs: number;
  severity: Severity;
  /** "pool node1/default" */
  object: string;
  /** The condition: "pool-used", "pool-provisioned". */
  reason: string;
  message: string;
  resolvedAtMs?: number;
  resolution?: string;
}

export type SnapshotStateName = "creating" | "ready" | "deleting";

/** A snapshot of a volume (key snapshots/VOLUME@NAME): internal snapshots of its replicas' images. */
export interface SnapshotRecord {
  volume: string;
  name: string;
  /** The tag inside the images: unique, so a name used again never meets an old leftover. */
  tag: string;
  state: SnapshotStateName;
  createdAtMs: number;
  sizeBytes: number;
  /** Replicas holding it (while creating: those it is being taken on). */
  replicas: { id: string; node: string; pool: string }[];
  /** Writes were held on the frontend of this node while it was taken. */
  attachedTo?: string;
  heldMs: number;
  /** Leader instance that started the creation (a creation of another is stale). */
  startedBy: string;
  message: string;
}

export type TemplateStateName = "creating" | "ready" | "deleting";
export type TemplateCopyStateName = "copying" | "ready" | "deleting";

/** One node's copy of a template image (recorded before it is made or removed). */
export interface TemplateCopyRecord {
  node: string;
  pool: string;
  /** POOL/templates/NAME.UID.qcow2 on that node ("" until made). */
  path: string;
  state: TemplateCopyStateName;
  allocatedBytes: number;
  /** The copy made at creation: kept while the template exists. */
  home?: boolean;
  sinceMs: number;
  message: string;
}

/**
 * A template (key templates/NAME): a named, immutable qcow2 image that linked
 * clones use as backing file, with the nodes holding a copy of it.
 */
export interface TemplateRecord {
  name: string;
  /** Part of every copy's file name: a name used again never meets an old leftover. */
  uid: string;
  state: TemplateStateName;
  sizeBytes: number;
  /** "volume web1", "snapshot web1@gold", "file debian.qcow2". */
  source: string;
  createdAtMs: number;
  /** Leader instance that started the creation (a creation of another is stale). */
  startedBy: string;
  copies: TemplateCopyRecord[];
  message: string;
}

export type BackupStateName = "creating" | "ready" | "deleting";

/** A backup (key backups/VOLUME@ID): a snapshot of the volume copied into one node's chunk store. */
/** A backup served read-only for a restore (restore-exports/EXPORT-ID): recorded before it is served, removed once stopped. */
export interface RestoreExportRecord {
  exportId: string;
  /** The node keeping the backup, which serves it. */
  node: string;
  /** VOLUME@ID of the backup. */
  backup: string;
  /** The volume the restore makes. */
  volume: string;
  sinceMs: number;
  /** Controller instance running the restore. */
  runner: string;
}

export interface BackupRecord {
  volume: string;
  /** YYYYMMDD-HHMMSS (UTC), sortable; unique per volume. */
  id: string;
  state: BackupStateName;
  createdAtMs: number;
  /** The node whose chunk store holds it. */
  node: string;
  sizeBytes: number;
  dataBytes: number;
  newBytes: number;
  storedBytes: number;
  durationMs: number;
  /** Leader instance that started the creation (a creation of another is stale). */
  startedBy: string;
  message: string;
  /** incremental: only what changed since `base` was read. */
  kind?: "full" | "incremental";
  /** The previous backup's id (incremental). */
  base?: string;
  /** Bytes read from the replica. */
  readBytes?: number;
  /** A replication's copy: bytes its reader's node sent the store node (the manifest and the chunks that store lacked). */
  shippedBytes?: number;
  /** The replica read (its storage daemon keeps the fleece while the backup runs). */
  reader?: { id: string; node: string; pool: string };
  /** The dirty bitmap in the replicas that records changes since this backup (ready backups). */
  bitmap?: string;
  /** Taken by the volume's asynchronous replication (its own chain, pruned by it). */
  replication?: boolean;
}

/** Asynchronous replication of a volume (key replications/VOLUME): backups into a target node's store, every `everyMs`. */
export interface ReplicationRecord {
  volume: string;
  node: string;
  pool: string;
  everyMs: number;
  createdAtMs: number;
  /** The last backup shipped: the volume as it was at `atMs` is on the target. */
  lastSync?: { id: string; atMs: number; readBytes: number; durationMs: number; shippedBytes?: number };
  lastAttemptAtMs: number;
  message: string;
}
