// qemu-img, the offline image tool: pure argument builders and output parsers,
// plus thin wrappers that run it through lib/exec.ts (the one door to the host).
import { InternalError, InvalidArgumentError } from "../lib/errors.js";
import { run } from "../lib/exec.js";

export const QEMU_IMG = "qemu-img";

export type ImageFormatName = "qcow2" | "raw";
export type PreallocationName = "off" | "metadata" | "falloc" | "full";

export const IMAGE_FORMATS: readonly ImageFormatName[] = ["qcow2", "raw"];
export const PREALLOCATIONS: readonly PreallocationName[] = ["off", "metadata", "falloc", "full"];

/** What `qemu-img info --output=json` says about one image. */
export interface ImageInfo {
  format: string;
  virtualSizeBytes: number;
  /** Bytes the file occupies on the host filesystem. */
  actualSizeBytes: number;
  dirty: boolean;
  clusterSizeBytes?: number;
  backingFile?: string;
}

export interface CreateImageSpec {
  path: string;
  format: ImageFormatName;
  sizeBytes: number;
  preallocation: PreallocationName;
}

export interface ResizeImageSpec {
  path: string;
  format: ImageFormatName;
  sizeBytes: number;
  /** Allocation of the added space; qemu-img's default (off) when absent. */
  preallocation?: PreallocationName;
  /** Allow a smaller size (the data past it is lost): only for images known to be zero there. */
  shrink?: boolean;
}

export interface InfoOptions {
  /** Never probe: a guest can write a header that makes a raw image look like qcow2. */
  format: ImageFormatName;
  /** Read the image even while another process (qemu-storage-daemon) holds its lock. */
  forceShare?: boolean;
}

/** Throws unless qemu-img accepts this preallocation for this format. */
export function checkPreallocation(format: ImageFormatName, preallocation: PreallocationName): void {
  if (!IMAGE_FORMATS.includes(format)) {
    throw new InvalidArgumentError(`unknown image format "${format}"`, { hint: `use one of ${IMAGE_FORMATS.join(", ")}` });
  }
  if (!PREALLOCATIONS.includes(preallocation)) {
    throw new InvalidArgumentError(`unknown preallocation "${preallocation}"`, {
      hint: `use one of ${PREALLOCATIONS.join(", ")}`,
    });
  }
  if (format === "raw" && preallocation === "metadata") {
    throw new InvalidArgumentError('preallocation "metadata" is not valid for raw images', {
      hint: 'use "off", "falloc" or "full" for raw, or the qcow2 format',
    });
  }
}

function checkSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    throw new InvalidArgumentError(`invalid image size ${sizeBytes}`, { hint: "give a positive number of bytes" });
  }
}

function checkPath(path: string): void {
  // An absolute path can never be read by qemu-img as "protocol:..." or "json:{...}".
  if (!path.startsWith("/")) throw new InvalidArgumentError(`image path "${path}" is not absolute`);
}

export function createArgs(spec: CreateImageSpec): string[] {
  checkPath(spec.path);
  checkSize(spec.sizeBytes);
  checkPreallocation(spec.format, spec.preallocation);
  return ["create", "-q", "-f", spec.format, "-o", `preallocation=${spec.preallocation}`, spec.path, String(spec.sizeBytes)];
}

export function infoArgs(path: string, opts: InfoOptions): string[] {
  checkPath(path);
  return ["info", "--output=json", "-f", opts.format, ...(opts.forceShare ? ["-U"] : []), path];
}

/** Only grows: qemu-img refuses to shrink without --shrink, which is never passed. */
export function resizeArgs(spec: ResizeImageSpec): string[] {
  checkPath(spec.path);
  checkSize(spec.sizeBytes);
  const pre = spec.preallocation === undefined ? [] : [`--preallocation=${spec.preallocation}`];
  if (spec.preallocation !== undefined) checkPreallocation(spec.format, spec.preallocation);
  return ["resize", "-q", "-f", spec.format, ...pre, ...(spec.shrink ? ["--shrink"] : []), spec.path, String(spec.sizeBytes)];
}

function num(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

/** Parses `qemu-img info --output=json` for a single image. */
export function parseInfo(stdout: string): ImageInfo {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(stdout);
  } catch (err) {
    throw new InternalError(`qemu-img info printed something that is not JSON: ${stdout.slice(0, 200)}`, { cause: err });
  }
  const format = j?.["format"];
  const virtualSize = num(j?.["virtual-size"]);
  if (typeof format !== "string" || virtualSize === undefined) {
    throw new InternalError(`qemu-img info output lacks "format" or "virtual-size": ${stdout.slice(0, 200)}`);
  }
  const info: ImageInfo = {
    format,
    virtualSizeBytes: virtualSize,
    actualSizeBytes: num(j["actual-size"]) ?? 0,
    dirty: j["dirty-flag"] === true,
  };
  const cluster = num(j["cluster-size"]);
  if (cluster !== undefined) info.clusterSizeBytes = cluster;
  if (typeof j["backing-filename"] === "string") info.backingFile = j["backing-filename"];
  return info;
}

export async function createImage(spec: CreateImageSpec, timeoutMs = 10 * 60_000): Promise<void> {
  // Preallocation "full" writes every byte, so it gets a long timeout.
  await run(QEMU_IMG, createArgs(spec), { timeoutMs });
}

export async function imageInfo(path: string, opts: InfoOptions): Promise<ImageInfo> {
  const r = await run(QEMU_IMG, infoArgs(path, opts), { timeoutMs: 30_000 });
  return parseInfo(r.stdout);
}

export async function resizeImage(spec: ResizeImageSpec, timeoutMs = 10 * 60_000): Promise<void> {
  await run(QEMU_IMG, resizeArgs(spec), { timeoutMs });
}

export interface CopySpec {
  /** nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH of an in-sync replica. */
  sourceUri: string;
  targetPath: string;
  targetFormat: ImageFormatName;
  /** Bytes per second; 0 = unlimited. */
  rateLimitBytes: number;
}

/**
 * Overwrites an existing image with the content of an NBD export: `-n` keeps the
 * target (no create), zero ranges become zero writes. `-t none` writes with O_DIRECT,
 * as the agent's storage daemon opens replicas, and flushes at the end: as fast as a
 * flushed page-cache copy, steadier (no write-back burst at the end) and it leaves the
 * node's page cache alone (test/bench/replication-resync.ts).
 */
export function copyArgs(spec: CopySpec): string[] {
  checkPath(spec.targetPath);
  if (!/^nbd(\+unix)?:\/\//.test(spec.sourceUri)) throw new InvalidArgumentError(`copy source "${spec.sourceUri}" is not an NBD URI`);
  if (!Number.isSafeInteger(spec.rateLimitBytes) || spec.rateLimitBytes < 0) throw new InvalidArgumentError(`invalid rate limit ${spec.rateLimitBytes}`);
  return [
    "convert", "-n", "-t", "none", "-f", "raw", "-O", spec.targetFormat,
    ...(spec.rateLimitBytes > 0 ? ["-r", String(spec.rateLimitBytes)] : []),
    spec.sourceUri, spec.targetPath,
  ];
}

export async function copyImage(spec: CopySpec, timeoutMs = 24 * 3600_000): Promise<void> {
  await run(QEMU_IMG, copyArgs(spec), { timeoutMs });
}

/** One entry of `qemu-img map --output=json`: depth 0 is the image itself, 1 its backing file, and so on. */
export interface MapExtent {
  start: number;
  length: number;
  depth: number;
  /** Allocated somewhere in the chain (false: reads as zeros from nowhere). */
  present: boolean;
  zero: boolean;
  data: boolean;
}

/** The allocation of an image and its backing chain, read while no other process writes it. */
export function mapArgs(path: string, format: ImageFormatName): string[] {
  checkPath(path);
  return ["map", "--output=json", "-f", format, path];
}

/** Parses `qemu-img map --output=json` (a JSON array of extents). */
export function parseMap(stdout: string): MapExtent[] {
  let j: unknown;
  try {
    j = JSON.parse(stdout);
  } catch (err) {
    throw new InternalError(`qemu-img map printed something that is not JSON: ${stdout.slice(0, 200)}`, { cause: err });
  }
  if (!Array.isArray(j)) throw new InternalError(`qemu-img map printed no list: ${stdout.slice(0, 200)}`);
  return j.map((e: Record<string, unknown>) => {
    const start = num(e?.["start"]);
    const length = num(e?.["length"]);
    const depth = num(e?.["depth"]);
    if (start === undefined || length === undefined || depth === undefined) throw new InternalError(`qemu-img map extent lacks start, length or depth: ${JSON.stringify(e)}`);
    // "present" is newer than the rest (QEMU 6.0); without it every listed extent counts as allocated.
    return { start, length, depth, present: e["present"] !== false, zero: e["zero"] === true, data: e["data"] === true };
  });
}

export async function imageMap(path: string, format: ImageFormatName, timeoutMs = 10 * 60_000): Promise<MapExtent[]> {
  return parseMap((await run(QEMU_IMG, mapArgs(path, format), { timeoutMs })).stdout);
}

/** Internal snapshot tags Stowage writes: the controller's snapshot uid. */
const TAG_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

export function checkSnapshotTag(tag: string): void {
  if (!TAG_RE.test(tag)) throw new InvalidArgumentError(`invalid snapshot tag ${JSON.stringify(tag)}`, { hint: "letters, digits, - and _, at most 64" });
}

/** Rolls a qcow2 image back to an internal snapshot (the image must not be open elsewhere). */
export function revertArgs(path: string, tag: string): string[] {
  checkPath(path);
  checkSnapshotTag(tag);
  return ["snapshot", "-a", tag, path];
}

export async function revertImage(path: string, tag: string, timeoutMs = 10 * 60_000): Promise<void> {
  await run(QEMU_IMG, revertArgs(path, tag), { timeoutMs });
}

export interface CloneSpec {
  /** A qcow2 image holding the snapshot; it may be open in the storage daemon. */
  sourcePath: string;
  tag: string;
  targetPath: string;
}

/**
 * A new qcow2 image with the content of an internal snapshot of another image.
 * `-U`: the source stays open (and written) in the storage daemon; a snapshot's
 * clusters never change while it exists, so reading them alongside is safe.
 * Zero ranges stay holes; `-t writeback` flushes the copy at the end.
 */
export function cloneArgs(spec: CloneSpec): string[] {
  checkPath(spec.sourcePath);
  checkPath(spec.targetPath);
  checkSnapshotTag(spec.tag);
  return ["convert", "-U", "-f", "qcow2", "-l", `snapshot.name=${spec.tag}`, "-O", "qcow2", "-t", "writeback", spec.sourcePath, spec.targetPath];
}

export async function cloneImage(spec: CloneSpec, timeoutMs = 24 * 3600_000): Promise<void> {
  await run(QEMU_IMG, cloneArgs(spec), { timeoutMs });
}

/** The internal snapshot tags of an image (`-U`: it may be open in the storage daemon). */
export async function snapshotTags(path: string): Promise<string[]> {
  checkPath(path);
  const { stdout } = await run(QEMU_IMG, ["info", "-U", "-f", "qcow2", "--output=json", path], { timeoutMs: 60_000 });
  const info = JSON.parse(stdout) as { snapshots?: { name: string }[] };
  return (info.snapshots ?? []).map((s) => s.name);
}

/** Removes an internal snapshot from an image that is not open elsewhere. */
export async function deleteImageSnapshot(path: string, tag: string, timeoutMs = 10 * 60_000): Promise<void> {
  checkPath(path);
  checkSnapshotTag(tag);
  await run(QEMU_IMG, ["snapshot", "-d", tag, path], { timeoutMs });
}

/** Records an internal snapshot in an image that is not open elsewhere. */
export async function createImageSnapshot(path: string, tag: string, timeoutMs = 10 * 60_000): Promise<void> {
  checkPath(path);
  checkSnapshotTag(tag);
  await run(QEMU_IMG, ["snapshot", "-c", tag, path], { timeoutMs });
}

/**
 * Removes every dirty bitmap of a closed qcow2 image (`qemu-img snapshot -a` refuses
 * images with bitmaps, and a bitmap does not follow a rollback anyway: the next
 * backup of the volume is then a full one). Returns the names removed.
 */
export async function removeBitmaps(path: string): Promise<string[]> {
  checkPath(path);
  const { stdout } = await run(QEMU_IMG, ["info", "-f", "qcow2", "--output=json", path], { timeoutMs: 60_000 });
  const names = ((JSON.parse(stdout) as { "format-specific"?: { data?: { bitmaps?: { name: string }[] } } })["format-specific"]?.data?.bitmaps ?? []).map((b) => b.name);
  for (const name of names) await run(QEMU_IMG, ["bitmap", "--remove", path, name], { timeoutMs: 60_000 });
  return names;
}
