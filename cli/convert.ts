// The one mapping between API enums and the words operators type and read
// ("qcow2", "healthy"), and the one converter from API messages to JSON output.
import { AttachmentState, BackupState, ImageFormat, JobState, MigrationPhase, Preallocation, ReplicaState, SnapshotState, TemplateState, VolumePhase } from "../gen/stowage/v1/types.js";

/** A ts-proto numeric enum (with its reverse mapping) and the prefix its value names share. */
export interface EnumInfo {
  readonly values: Record<string | number, string | number>;
  readonly prefix: string;
}

export const IMAGE_FORMAT: EnumInfo = { values: ImageFormat, prefix: "IMAGE_FORMAT_" };
export const PREALLOCATION: EnumInfo = { values: Preallocation, prefix: "PREALLOCATION_" };
export const REPLICA_STATE: EnumInfo = { values: ReplicaState, prefix: "REPLICA_STATE_" };
export const VOLUME_PHASE: EnumInfo = { values: VolumePhase, prefix: "VOLUME_PHASE_" };
export const ATTACHMENT_STATE: EnumInfo = { values: AttachmentState, prefix: "ATTACHMENT_STATE_" };
export const MIGRATION_PHASE: EnumInfo = { values: MigrationPhase, prefix: "MIGRATION_PHASE_" };
export const JOB_STATE: EnumInfo = { values: JobState, prefix: "JOB_STATE_" };
export const TEMPLATE_STATE: EnumInfo = { values: TemplateState, prefix: "TEMPLATE_STATE_" };
export const SNAPSHOT_STATE: EnumInfo = { values: SnapshotState, prefix: "SNAPSHOT_STATE_" };
export const BACKUP_STATE: EnumInfo = { values: BackupState, prefix: "BACKUP_STATE_" };

/** "VOLUME_PHASE_HEALTHY" (2) -> "healthy"; a value newer than this client -> "unknown-7". */
export function enumLabel(e: EnumInfo, value: number): string {
  const full = e.values[value];
  if (typeof full !== "string") return `unknown-${value}`;
  return (full.startsWith(e.prefix) ? full.slice(e.prefix.length) : full).toLowerCase();
}

/** The labels an operator may type (UNSPECIFIED and UNRECOGNIZED are not choices). */
export function enumChoices(e: EnumInfo): string[] {
  return Object.entries(e.values)
    .filter(([name, v]) => typeof v === "number" && v > 0 && name.startsWith(e.prefix))
    .map(([, v]) => enumLabel(e, v as number));
}

/** "raw" -> ImageFormat.IMAGE_FORMAT_RAW; undefined when it is not a choice. */
export function enumFromLabel(e: EnumInfo, label: string): number | undefined {
  const v = e.values[e.prefix + label.trim().toUpperCase()];
  return typeof v === "number" && v > 0 ? v : undefined;
}

// Enum-typed fields of the public API messages, by field name. Each name has one
// meaning across stowage.v1 (Volume.phase, VolumeSpec.format and .preallocation,
// ReplicaStatus.state), so the converter needs no per-message schema.
const ENUM_FIELDS: Record<string, EnumInfo> = {
  phase: VOLUME_PHASE,
  format: IMAGE_FORMAT,
  preallocation: PREALLOCATION,
  state: REPLICA_STATE,
};
// Inside an Attachment, `state` is an AttachmentState.
const ATTACHMENT_FIELDS: Record<string, EnumInfo> = { ...ENUM_FIELDS, state: ATTACHMENT_STATE };
// Inside a Migration, `phase` is a MigrationPhase.
const MIGRATION_FIELDS: Record<string, EnumInfo> = { ...ENUM_FIELDS, phase: MIGRATION_PHASE };
// Inside a Job (ListJobs, a replica's running copy, a drain's), `state` is a JobState.
const JOB_FIELDS: Record<string, EnumInfo> = { ...ENUM_FIELDS, state: JOB_STATE };
// Inside a Template, `state` is a TemplateState (its copies' states are plain words).
const TEMPLATE_FIELDS: Record<string, EnumInfo> = { ...ENUM_FIELDS, state: TEMPLATE_STATE };
// Inside a Snapshot or a Backup, `state` is theirs.
const SNAPSHOT_FIELDS: Record<string, EnumInfo> = { ...ENUM_FIELDS, state: SNAPSHOT_STATE };
const BACKUP_FIELDS: Record<string, EnumInfo> = { ...ENUM_FIELDS, state: BACKUP_STATE };
const SCOPES: Record<string, Record<string, EnumInfo>> = {
  snapshot: SNAPSHOT_FIELDS,
  snapshots: SNAPSHOT_FIELDS,
  backup: BACKUP_FIELDS,
  backups: BACKUP_FIELDS,
  // PruneBackups' answer.
  kept: BACKUP_FIELDS,
  deleted: BACKUP_FIELDS,
  template: TEMPLATE_FIELDS,
  templates: TEMPLATE_FIELDS,
  attachment: ATTACHMENT_FIELDS,
  attachments: ATTACHMENT_FIELDS,
  migration: MIGRATION_FIELDS,
  job: JOB_FIELDS,
  jobs: JOB_FIELDS,
};

/**
 * Turns a decoded API message into plain JSON: every field kept (defaults too, so
 * the shape never changes), enums as lower-case labels, sizes as numbers of bytes.
 */
export function toJson(value: unknown, field?: string, enums: Record<string, EnumInfo> = ENUM_FIELDS): unknown {
  if (field !== undefined && typeof value === "number" && enums[field]) {
    return enumLabel(enums[field], value);
  }
  if (Array.isArray(value)) return value.map((item) => toJson(item, field, enums));
  if (value !== null && typeof value === "object") {
    const inner = (field !== undefined && SCOPES[field]) || ENUM_FIELDS;
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      if (v !== undefined) out[k] = toJson(v, k, inner);
    }
    return out;
  }
  return value;
}

/** Pretty JSON text of an API message, with a final newline. */
export function jsonText(value: unknown): string {
  return `${JSON.stringify(toJson(value), null, 2)}\n`;
}
