// Pure helpers of the recompression of cold images: which replica images may be
// rewritten (and the named reason why not), the throttled qemu-img command lines,
// and the facts `qemu-img info --output=json` gives about one image.
import { InternalError } from "../lib/errors.js";

/** What the run needs to know about one replica image to decide. */
export interface ImageFacts {
  format: string;
  /** Held open by this node's qemu-storage-daemon (the volume is attached, or exported for a copy). */
  exported: boolean;
  snapshotCount: number;
  backingFile?: string;
  mtimeMs: number;
  allocatedBytes: number;
  /** The image is exactly as a previous run of ours left it (same inode, size, mtime). */
  compressedBefore: boolean;
}

export type Eligibility = { ok: true } | { ok: false; reason: string };

/**
 * Whether an image may be recompressed now. The order matters only for the
 * reason shown: the most fundamental first.
 */
export function eligibility(f: ImageFacts, coldAfterMs: number, now: number, freeBytes: number): Eligibility {
  if (f.format !== "qcow2") return { ok: false, reason: `a ${f.format} image (only qcow2 has compressed clusters)` };
  if (f.exported) return { ok: false, reason: "in use: exported by the storage daemon (volume attached or being copied)" };
  // convert copies only the active layer: internal snapshots would be lost.
  if (f.snapshotCount > 0) return { ok: false, reason: `has ${f.snapshotCount} internal snapshot${f.snapshotCount > 1 ? "s" : ""}, which a rewrite would lose` };
  if (f.backingFile) return { ok: false, reason: `a linked clone (backing file ${f.backingFile}); its template copy is shared and left alone` };
  const idleMs = now - f.mtimeMs;
  if (idleMs < coldAfterMs) return { ok: false, reason: `written ${formatAge(idleMs)} ago, not cold yet (cold after ${formatAge(coldAfterMs)})` };
  if (f.compressedBefore) return { ok: false, reason: "already recompressed, unchanged since" };
  if (f.allocatedBytes === 0) return { ok: false, reason: "empty" };
  // The copy is made beside the image before the image goes: it may need as much again.
  if (freeBytes < f.allocatedBytes) return { ok: false, reason: `not enough free space for the temporary copy (${f.allocatedBytes} bytes needed, ${freeBytes} free)` };
  return { ok: true };
}

/** "7d", "3h", "12m", "45s": the largest whole unit, for reasons and messages. */
export function formatAge(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s >= 86_400 && s % 86_400 === 0) return `${s / 86_400}d`;
  if (s >= 86_400) return `${(s / 86_400).toFixed(1)}d`;
  if (s >= 3600) return `${(s / 3600).toFixed(s % 3600 === 0 ? 0 : 1)}h`;
  if (s >= 60) return `${(s / 60).toFixed(s % 60 === 0 ? 0 : 1)}m`;
  return `${s}s`;
}

export interface CompressCommandOptions {
  src: string;
  tmp: string;
  /** qemu-img convert -r: bytes per second read from the source (0 or absent: no limit). */
  rateLimitBytes?: number;
}

/**
 * The throttled rewrite: lowest CPU priority, idle I/O class, one coroutine;
 * the source format is given (never probed), the target is qcow2 with zstd
 * compressed 64 KiB clusters. Without -U: qemu-img takes the image's lock, so
 * a daemon that opened it meanwhile makes the convert fail instead of racing.
 * `-p`: its progress on stdout (parseConvertProgress).
 */
export function compressCommand(o: CompressCommandOptions): { file: string; args: string[] } {
  const rate = o.rateLimitBytes && o.rateLimitBytes > 0 ? ["-r", String(Math.floor(o.rateLimitBytes))] : [];
  return {
    file: "nice",
    args: [
      "-n", "19", "ionice", "-c", "3",
      "qemu-img", "convert", "-p", "-f", "qcow2", "-O", "qcow2", "-c", "-o", "compression_type=zstd,cluster_size=65536", "-m", "1", ...rate, o.src, o.tmp,
    ],
  };
}

/** `qemu-img compare` of the image and its rewrite: exit 0 means identical guest-visible content. */
export function compareCommand(src: string, tmp: string): { file: string; args: string[] } {
  return { file: "nice", args: ["-n", "19", "ionice", "-c", "3", "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", src, tmp] };
}

/** The facts of `qemu-img info -U --output=json` that decide eligibility. */
export function parseImageFacts(stdout: string): { format: string; snapshotCount: number; backingFile?: string } {
  let j: { format?: unknown; snapshots?: unknown; "backing-filename"?: unknown };
  try {
    j = JSON.parse(stdout);
  } catch (err) {
    throw new InternalError(`qemu-img info printed something that is not JSON: ${stdout.slice(0, 200)}`, { cause: err });
  }
  if (typeof j.format !== "string") throw new InternalError(`qemu-img info output lacks "format": ${stdout.slice(0, 200)}`);
  const snapshotCount = Array.isArray(j.snapshots) ? j.snapshots.length : 0;
  const backing = typeof j["backing-filename"] === "string" ? j["backing-filename"] : undefined;
  return backing ? { format: j.format, snapshotCount, backingFile: backing } : { format: j.format, snapshotCount };
}

/** The fraction done in one line of `qemu-img convert -p` output ("    (42.17/100%)"), else undefined. */
export function parseConvertProgress(line: string): number | undefined {
  const m = /^\s*\((\d+(?:\.\d+)?)\/100%\)\s*$/.exec(line);
  return m ? Math.min(1, Number(m[1]) / 100) : undefined;
}
