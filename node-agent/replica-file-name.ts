// File names of replica images in a dir pool: `${volume}.${replicaId}.${ext}`.
// Ids and volume names are validated before they become part of a path, so no
// request can reach outside the pool directory.
import { InvalidArgumentError } from "../lib/errors.js";
import { validateName } from "../lib/names.js";
import type { ImageFormatName } from "./qemu-img.js";

export const REPLICA_ID_RE = /^r-[0-9a-f]{8,32}$/;

export interface ReplicaFileName {
  volume: string;
  id: string;
  format: ImageFormatName;
}

/** A half-made image: `.${volume}.${id}.${ext}.tmp-${random}`. Never reported as a replica. */
export interface TempFileName extends ReplicaFileName {
  temp: true;
}

const FILE_RE = /^(.+)\.(r-[0-9a-f]{8,32})\.(qcow2|raw)$/;
const TEMP_RE = /^\.(.+)\.(r-[0-9a-f]{8,32})\.(qcow2|raw)\.tmp-[0-9a-f]+$/;

export function validateReplicaId(id: string): void {
  if (!REPLICA_ID_RE.test(id)) {
    throw new InvalidArgumentError(`invalid replica id "${id}"`, {
      hint: "a replica id is 'r-' followed by 8 to 32 lowercase hex digits",
      resource: "replica",
      name: id,
    });
  }
}

export function replicaFileName(r: ReplicaFileName): string {
  validateReplicaId(r.id);
  validateName("volume", r.volume);
  return `${r.volume}.${r.id}.${r.format}`;
}

export function tempFileName(r: ReplicaFileName, random: string): string {
  if (!/^[0-9a-f]+$/.test(random)) throw new InvalidArgumentError(`invalid temp suffix "${random}"`);
  return `.${replicaFileName(r)}.tmp-${random}`;
}

function validVolume(volume: string): boolean {
  try {
    validateName("volume", volume);
    return true;
  } catch {
    return false;
  }
}

/** Parses a directory entry; undefined for files that are not replicas (foreign or temp). */
export function parseReplicaFileName(name: string): ReplicaFileName | undefined {
  const m = FILE_RE.exec(name);
  if (!m || !validVolume(m[1]!)) return undefined;
  return { volume: m[1]!, id: m[2]!, format: m[3] as ImageFormatName };
}

/** Parses a temp file left by an interrupted create; undefined for anything else. */
export function parseTempFileName(name: string): TempFileName | undefined {
  const m = TEMP_RE.exec(name);
  if (!m || !validVolume(m[1]!)) return undefined;
  return { volume: m[1]!, id: m[2]!, format: m[3] as ImageFormatName, temp: true };
}
