// Conversion between etcd records and API messages, in one place.
import {
  AttachmentState,
  ImageFormat,
  MigrationPhase,
  Preallocation,
  ReplicaState,
  VolumePhase,
  type Job,
  type Migration,
  type Node,
  type NodeDrain,
  type Pool,
  type Volume,
  type VolumeSpec as ApiVolumeSpec,
} from "../gen/stowage/v1/types.js";
import type {
  AttachmentStateName,
  ImageFormatName,
  MigrationPhaseName,
  MigrationRecord,
  NodeSpec,
  NodeStatus,
  PoolRecord,
  PreallocationName,
  ReplicaStateName,
  VolumePhaseName,
  VolumeSpec,
  VolumeStatus,
} from "./model.js";

export const formatToApi: Record<ImageFormatName, ImageFormat> = {
  qcow2: ImageFormat.IMAGE_FORMAT_QCOW2,
  raw: ImageFormat.IMAGE_FORMAT_RAW,
};

export const preallocationToApi: Record<PreallocationName, Preallocation> = {
  off: Preallocation.PREALLOCATION_OFF,
  metadata: Preallocation.PREALLOCATION_METADATA,
  falloc: Preallocation.PREALLOCATION_FALLOC,
  full: Preallocation.PREALLOCATION_FULL,
};

const replicaStateToApi: Record<ReplicaStateName, ReplicaState> = {
  creating: ReplicaState.REPLICA_STATE_CREATING,
  healthy: ReplicaState.REPLICA_STATE_HEALTHY,
  unreachable: ReplicaState.REPLICA_STATE_UNREACHABLE,
  failed: ReplicaState.REPLICA_STATE_FAILED,
  deleting: ReplicaState.REPLICA_STATE_DELETING,
};

const phaseToApi: Record<VolumePhaseName, VolumePhase> = {
  creating: VolumePhase.VOLUME_PHASE_CREATING,
  healthy: VolumePhase.VOLUME_PHASE_HEALTHY,
  degraded: VolumePhase.VOLUME_PHASE_DEGRADED,
  failed: VolumePhase.VOLUME_PHASE_FAILED,
  deleting: VolumePhase.VOLUME_PHASE_DELETING,
  resizing: VolumePhase.VOLUME_PHASE_RESIZING,
};

const attachmentStateToApi: Record<AttachmentStateName, AttachmentState> = {
  attaching: AttachmentState.ATTACHMENT_STATE_ATTACHING,
  attached: AttachmentState.ATTACHMENT_STATE_ATTACHED,
  detaching: AttachmentState.ATTACHMENT_STATE_DETACHING,
  failed: AttachmentState.ATTACHMENT_STATE_FAILED,
};

export function formatFromApi(f: ImageFormat): ImageFormatName | undefined {
  if (f === ImageFormat.IMAGE_FORMAT_UNSPECIFIED) return "qcow2";
  return (Object.keys(formatToApi) as ImageFormatName[]).find((k) => formatToApi[k] === f);
}

export function preallocationFromApi(p: Preallocation): PreallocationName | undefined {
  if (p === Preallocation.PREALLOCATION_UNSPECIFIED) return "off";
  return (Object.keys(preallocationToApi) as PreallocationName[]).find((k) => preallocationToApi[k] === p);
}

export function poolToApi(node: string, p: PoolRecord, provisionedBytes: number, replicaCount: number): Pool {
  return {
    node,
    name: p.name,
    type: p.type,
    path: p.path,
    capacityBytes: p.capacityBytes,
    availableBytes: p.availableBytes,
    allocatedBytes: p.allocatedBytes,
    provisionedBytes,
    overcommitRatio: p.overcommitRatio,
    replicaCount,
    templateBytes: p.templateBytes ?? 0,
  };
}

export function nodeToApi(spec: NodeSpec, status: NodeStatus | undefined, pools: Pool[], extra: { replicaCount?: number; drain?: NodeDrain } = {}): Node {
  return {
    name: spec.name,
    address: spec.address,
    labels: { zone: spec.labels.zone, rack: spec.labels.rack },
    cordoned: spec.cordoned,
    online: status !== undefined,
    lastHeartbeatMs: status?.lastHeartbeatMs ?? 0,
    pools,
    agentVersion: spec.agentVersion,
    libvirtUri: spec.libvirt?.uri ?? "",
    drain: extra.drain,
    replicaCount: extra.replicaCount ?? 0,
  };
}

export function volumeSpecToApi(spec: VolumeSpec): ApiVolumeSpec {
  return {
    name: spec.name,
    sizeBytes: spec.sizeBytes,
    replicas: spec.replicas,
    format: formatToApi[spec.format],
    preallocation: preallocationToApi[spec.preallocation],
    pool: spec.pool,
    ...(spec.template ? { template: spec.template } : {}),
  };
}

/** `jobs`: the volume's copies (controller/jobs.ts), shown with their replica. */
export function volumeToApi(spec: VolumeSpec, status: VolumeStatus | undefined, jobs: Job[] = []): Volume {
  const jobOf = new Map(jobs.map((j) => [j.replicaId, j]));
  const observed = new Map((status?.replicas ?? []).map((r) => [r.id, r]));
  const frontends = new Map((status?.frontends ?? []).map((f) => [f.node, f]));
  const wanted = new Map((spec.attachments ?? []).map((a) => [a.node, a]));
  // Desired attachments first (attaching until a frontend reports), then frontends still being removed.
  const attachments = [
    ...(spec.attachments ?? []).map((a) => frontends.get(a.node) ?? { node: a.node, socketPath: "", nbdUri: "", state: "attaching" as const, message: "" }),
    ...[...frontends.values()].filter((f) => !wanted.has(f.node)).map((f) => ({ ...f, state: "detaching" as const })),
  ].map((f) => ({
    node: f.node,
    socketPath: f.socketPath,
    nbdUri: f.nbdUri,
    state: attachmentStateToApi[f.state],
    message: f.message,
    migration: wanted.get(f.node)?.migration ?? "",
    unconfirmedSinceMs: "detachingSinceMs" in f ? (f.detachingSinceMs ?? 0) : 0,
  }));
  return {
    attachments,
    // Logical: what the replicas are promised; allocated: what their images take on disk.
    capacity: {
      logicalBytes: spec.sizeBytes * spec.placement.length,
      allocatedBytes: spec.placement.reduce((sum, p) => sum + (observed.get(p.id)?.allocatedBytes ?? 0), 0),
    },
    spec: volumeSpecToApi(spec),
    phase: phaseToApi[spec.deleting ? "deleting" : (status?.phase ?? "creating")],
    message: status?.message ?? "",
    createdAtMs: spec.createdAtMs,
    uid: spec.uid,
    generation: spec.generation ?? 1,
    replicas: spec.placement.map((p) => {
      const r = observed.get(p.id);
      return {
        id: p.id,
        node: p.node,
        pool: p.pool,
        path: r?.path ?? "",
        state: replicaStateToApi[spec.deleting ? "deleting" : (r?.state ?? "creating")],
        virtualSizeBytes: r?.virtualSizeBytes ?? 0,
        allocatedBytes: r?.allocatedBytes ?? 0,
        message: r?.message ?? "",
        outOfSync: p.outOfSync !== undefined,
        outOfSyncSinceMs: p.outOfSync?.sinceMs ?? 0,
        lastResync: p.lastResync
          ? { atMs: p.lastResync.atMs, kind: p.lastResync.kind, bytes: p.lastResync.bytes, durationMs: p.lastResync.ms }
          : undefined,
        job: jobOf.get(p.id),
        unreachableSinceMs: r?.unreachableSinceMs ?? 0,
      };
    }),
  };
}

const migrationPhaseToApi: Record<MigrationPhaseName, MigrationPhase> = {
  preparing: MigrationPhase.MIGRATION_PHASE_PREPARING,
  migrating: MigrationPhase.MIGRATION_PHASE_MIGRATING,
  finishing: MigrationPhase.MIGRATION_PHASE_FINISHING,
  "rolling-back": MigrationPhase.MIGRATION_PHASE_ROLLING_BACK,
  succeeded: MigrationPhase.MIGRATION_PHASE_SUCCEEDED,
  failed: MigrationPhase.MIGRATION_PHASE_FAILED,
};

export function migrationToApi(m: MigrationRecord): Migration {
  return {
    id: m.id,
    domain: m.domain,
    fromNode: m.from,
    toNode: m.to,
    volumes: m.volumes,
    phase: migrationPhaseToApi[m.phase],
    message: m.message,
    startedAtMs: m.startedAtMs,
    finishedAtMs: m.finishedAtMs,
    memoryTotalBytes: m.memoryTotalBytes,
    memoryProcessedBytes: m.memoryProcessedBytes,
    memoryRemainingBytes: m.memoryRemainingBytes,
    downtimeMs: m.downtimeMs,
  };
}
