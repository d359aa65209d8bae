// Command-line arguments -> API request objects. Pure: everything an operator can get
// wrong on the command line is caught here, before a controller is contacted.
import type {
  CreateVolumeRequest,
  GetPoolRequest,
  ListPoolsRequest,
  ResizeVolumeRequest,
  SetPoolRequest,
  SetVolumeReplicasRequest,
} from "../gen/stowage/v1/controller.js";
import { ImageFormat, Preallocation } from "../gen/stowage/v1/types.js";
import { StowageError } from "../lib/errors.js";
import { validateName } from "../lib/names.js";
import { IMAGE_FORMAT, PREALLOCATION } from "./convert.js";
import { parseCountFlag, parseEnumFlag, parsePoolRef, parseSizeFlag, UsageError } from "./flags.js";

export const DEFAULT_REPLICAS = 2;
export const DEFAULT_FORMAT = "qcow2";
export const DEFAULT_PREALLOCATION = "off";

/** The options of `volume create` as commander hands them over (strings, unparsed). */
export interface CreateVolumeFlags {
  size?: string;
  replicas?: string;
  format?: string;
  preallocation?: string;
  pool?: string;
  dryRun?: boolean;
  /** A linked clone of this template. */
  template?: string;
}

export function createVolumeRequest(name: string, flags: CreateVolumeFlags): CreateVolumeRequest {
  checkName("volume", name);
  if (flags.size === undefined) throw new UsageError("required option '--size <size>' not specified");
  const format = parseEnumFlag("--format", IMAGE_FORMAT, flags.format ?? DEFAULT_FORMAT);
  const preallocation = parseEnumFlag("--preallocation", PREALLOCATION, flags.preallocation ?? DEFAULT_PREALLOCATION);
  // qemu-img knows metadata preallocation only for qcow2.
  if (format === ImageFormat.IMAGE_FORMAT_RAW && preallocation === Preallocation.PREALLOCATION_METADATA) {
    throw new UsageError("option '--preallocation': 'metadata' needs --format qcow2; raw images take off, falloc or full");
  }
  const pool = flags.pool ?? "";
  if (pool !== "") checkName("pool", pool);
  if (flags.template !== undefined) {
    checkName("template", flags.template);
    if (format !== ImageFormat.IMAGE_FORMAT_QCOW2) throw new UsageError("option '--template': a linked clone is a qcow2 volume; leave out --format raw");
  }
  return {
    spec: {
      ...(flags.template !== undefined ? { template: flags.template } : {}),
      name,
      sizeBytes: parseSizeFlag("--size", flags.size),
      replicas: parseCountFlag("--replicas", flags.replicas ?? String(DEFAULT_REPLICAS)),
      format,
      preallocation,
      pool,
    },
    dryRun: flags.dryRun ?? false,
  };
}

export function resizeVolumeRequest(name: string, flags: { size?: string }): ResizeVolumeRequest {
  if (flags.size === undefined) throw new UsageError("required option '--size <size>' not specified");
  return { name, sizeBytes: parseSizeFlag("--size", flags.size) };
}

export function setReplicasRequest(name: string, flags: { replicas?: string; dryRun?: boolean }): SetVolumeReplicasRequest {
  checkName("volume", name);
  if (flags.replicas === undefined) throw new UsageError("required option '--replicas <count>' not specified");
  return { name, replicas: parseCountFlag("--replicas", flags.replicas), dryRun: flags.dryRun ?? false };
}

export function listPoolsRequest(flags: { node?: string }): ListPoolsRequest {
  return { node: flags.node ?? "" };
}

export function getPoolRequest(first: string, second?: string): GetPoolRequest {
  return parsePoolRef(first, second);
}

function checkName(kind: string, name: string): void {
  try {
    validateName(kind, name);
  } catch (err) {
    if (!(err instanceof StowageError)) throw err;
    throw new UsageError(err.hint ? `${err.message}: ${err.hint}` : err.message);
  }
}

/** The options of `pool set` as commander hands them over. */
export interface SetPoolFlags {
  overcommit?: string;
  warning?: string;
  critical?: string;
  thresholds?: string;
  force?: boolean;
  dedup?: string;
  quietHours?: string;
  compress?: string;
  coldAfter?: string;
}

/** A number > 0 (ratio) or a percentage in (0, 100]. */
function positiveNumber(flag: string, text: string, max?: number): number {
  const n = /^\s*\d+(\.\d+)?\s*$/.test(text) ? Number(text) : NaN;
  if (!(n > 0) || (max !== undefined && n > max)) {
    const what = max === undefined ? "a number greater than 0" : `a percentage above 0 and at most ${max}`;
    throw new UsageError(`option '${flag}': expected ${what}, got "${text}"`);
  }
  return n;
}

export function setPoolRequest(first: string, second: string | undefined, flags: SetPoolFlags): SetPoolRequest {
  const ref = parsePoolRef(first, second);
  const req: SetPoolRequest = { ...ref, resetOvercommit: false, resetThresholds: false, force: flags.force ?? false };
  if (flags.overcommit !== undefined) {
    if (flags.overcommit.trim() === "default") req.resetOvercommit = true;
    else req.overcommitRatio = positiveNumber("--overcommit", flags.overcommit);
  }
  if (flags.thresholds !== undefined) {
    if (flags.thresholds.trim() !== "default") throw new UsageError(`option '--thresholds': only "default" is accepted (80% and 90%), got "${flags.thresholds}"`);
    req.resetThresholds = true;
  }
  if (flags.warning !== undefined) req.warningPercent = positiveNumber("--warning", flags.warning.replace(/%$/, ""), 100);
  if (flags.critical !== undefined) req.criticalPercent = positiveNumber("--critical", flags.critical.replace(/%$/, ""), 100);
  if (req.warningPercent !== undefined && req.criticalPercent !== undefined && req.warningPercent >= req.criticalPercent) {
    throw new UsageError(`option '--warning': ${req.warningPercent}% must be below --critical ${req.criticalPercent}%`);
  }
  // The controller checks these two (daily|off, HH:MM-HH:MM) and refuses before writing.
  if (flags.dedup !== undefined) req.dedup = flags.dedup;
  if (flags.quietHours !== undefined) req.quietHours = flags.quietHours;
  if (flags.compress !== undefined) req.compress = flags.compress;
  if (flags.coldAfter !== undefined) req.coldAfter = flags.coldAfter;
  if (
    req.overcommitRatio === undefined &&
    !req.resetOvercommit &&
    req.warningPercent === undefined &&
    req.criticalPercent === undefined &&
    !req.resetThresholds &&
    req.dedup === undefined &&
    req.quietHours === undefined &&
    req.compress === undefined &&
    req.coldAfter === undefined
  ) {
    throw new UsageError(
      "nothing to set: give --overcommit RATIO, --warning PERCENT, --critical PERCENT, --thresholds default, --dedup daily|off, --compress daily|off, --cold-after 7d or --quiet-hours HH:MM-HH:MM",
    );
  }
  return req;
}
