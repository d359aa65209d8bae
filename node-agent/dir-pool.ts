// A "dir" pool: replica images as files in one directory of the host. Owns the
// files named `${volume}.${replicaId}.${qcow2|raw}` (and their temp files) in
// that directory and nothing else; other files there are left alone.
import { randomBytes } from "node:crypto";
import { lstat, readdir, rename, statfs } from "node:fs/promises";
import type { Stats } from "node:fs";
import { join } from "node:path";
import { FailedPreconditionError, InsufficientCapacityError, InvalidArgumentError, NotFoundError } from "../lib/errors.js";
import { validateName } from "../lib/names.js";
import type { Logger } from "../lib/logger.js";
import type { PoolConfig } from "./config.js";
import { exists, syncDir, syncFile, unlinkIfExists } from "./file-ops.js";
import { KeyedMutex } from "../lib/keyed-mutex.js";
import { mapLimit } from "../lib/map-limit.js";
import { TEMPLATE_DIR } from "./template-images.js";
import {
  checkPreallocation,
  cloneImage,
  copyImage,
  createImage,
  imageInfo,
  resizeImage,
  revertImage,
  removeBitmaps,
  deleteImageSnapshot,
  createImageSnapshot,
  snapshotTags,
  type ImageFormatName,
  type ImageInfo,
  type PreallocationName,
} from "./qemu-img.js";
import {
  parseReplicaFileName,
  parseTempFileName,
  replicaFileName,
  tempFileName,
  validateReplicaId,
  type ReplicaFileName,
} from "./replica-file-name.js";
import { createLinkedClone } from "./template-images.js";
import { MetaContextMissingError } from "./qsd/nbd-extents.js";
import { copyTopLayer } from "./top-layer-copy.js";

export interface ReplicaSpec {
  id: string;
  volume: string;
  sizeBytes: number;
  format: ImageFormatName;
  preallocation: PreallocationName;
  /** A new image is made from this internal snapshot of another qcow2 image instead of empty. */
  source?: { path: string; tag: string };
  /** A new image is a linked clone: qcow2 with this template copy (on the node) as backing file. */
  backing?: { path: string };
}

/** A replica image as observed on disk. */
export interface ReplicaImage {
  id: string;
  volume: string;
  pool: string;
  path: string;
  format: ImageFormatName;
  virtualSizeBytes: number;
  /** Bytes the file occupies on the filesystem (st_blocks * 512). */
  allocatedBytes: number;
}

export interface EnsureReplicaResult {
  replica: ReplicaImage;
  created: boolean;
  resized: boolean;
}

export interface PoolStats {
  capacityBytes: number;
  availableBytes: number;
  allocatedBytes: number;
  replicaCount: number;
  /** Template copies (TEMPLATE_DIR) on disk: not replicas, so not in allocatedBytes. */
  templateBytes: number;
}

export interface DirPoolOptions {
  logger?: Logger;
  /** qemu-img info processes run at once during list(). */
  infoConcurrency?: number;
}

interface ScannedFile extends ReplicaFileName {
  path: string;
  stat: Stats;
}

interface CachedInfo {
  mtimeMs: number;
  size: number;
  info?: ImageInfo;
  error?: string;
}

export class DirPool {
  private readonly mutex = new KeyedMutex();
  /** qemu-img info per path, valid while the file's (mtimeMs, size) is unchanged. */
  private readonly infoCache = new Map<string, CachedInfo>();

  constructor(
    readonly config: PoolConfig,
    private readonly opts: DirPoolOptions = {},
  ) {}

  get name(): string {
    return this.config.name;
  }

  get path(): string {
    return this.config.path;
  }

  /** Creates the replica if missing, grows it if smaller; never shrinks. Idempotent. */
  async ensureReplica(spec: ReplicaSpec): Promise<EnsureReplicaResult> {
    validateReplicaId(spec.id);
    validateName("volume", spec.volume);
    checkPreallocation(spec.format, spec.preallocation);
    if (!Number.isSafeInteger(spec.sizeBytes) || spec.sizeBytes <= 0) {
      throw new InvalidArgumentError(`invalid replica size ${spec.sizeBytes}`, { hint: "give a positive number of bytes" });
    }
    return this.mutex.run(spec.id, async () => {
      const { files, temps } = await this.filesOf(spec.id);
      await Promise.all(temps.map((t) => unlinkIfExists(t)));
      const other = files.find((f) => f.volume !== spec.volume || f.format !== spec.format);
      if (other) {
        throw new FailedPreconditionError(
          `replica ${spec.id} already exists in pool ${this.name} as ${other.format} image of volume ${other.volume}`,
          { hint: "delete that replica first, or use a new replica id", resource: "replica", name: spec.id },
        );
      }
      const existing = files[0];
      if (!existing) return this.create(spec);
      let info = await this.freshInfo(existing.path, spec.format);
      let resized = false;
      if (info.virtualSizeBytes < spec.sizeBytes) {
        await this.checkSpace(spec.preallocation, spec.sizeBytes - info.virtualSizeBytes);
        await resizeImage({ path: existing.path, format: spec.format, sizeBytes: spec.sizeBytes, preallocation: spec.preallocation });
        info = await this.freshInfo(existing.path, spec.format);
        resized = true;
        this.opts.logger?.info({ pool: this.name, replica: spec.id, path: existing.path, sizeBytes: spec.sizeBytes }, "replica image grown");
      }
      const stat = await lstat(existing.path);
      return { replica: this.replica(existing, info, stat), created: false, resized };
    });
  }

  /**
   * Makes the replica's image a copy of an in-sync replica's NBD export (the
   * rebuild of a replica). The image must exist and not be exported. A linked
   * clone (an image with a backing file) gets only what the source holds over
   * its template (top-layer-copy.ts), so it stays thin; other images, and a
   * source whose export offers no allocation depth, get the whole content.
   */
  async copyFrom(id: string, sourceUri: string, rateLimitBytes: number): Promise<{ bytes: number; ms: number }> {
    validateReplicaId(id);
    return this.mutex.run(id, async () => {
      const { files } = await this.filesOf(id);
      const f = files[0];
      if (!f) throw new NotFoundError("replica", id, { hint: `pool ${this.name} has no image of it` });
      const t0 = Date.now();
      const linked = f.format === "qcow2" && (await this.freshInfo(f.path, f.format)).backingFile !== undefined;
      let how = "whole image";
      let copied: number | undefined; // a linked clone's: the bytes of its own layer copied
      try {
        if (linked) {
          const r = await copyTopLayer({ sourceUri, targetPath: f.path, rateLimitBytes });
          how = `top layer: ${r.dataBytes} bytes of data, ${r.zeroBytes} of zeros`;
          copied = r.dataBytes;
        } else {
          await copyImage({ sourceUri, targetPath: f.path, targetFormat: f.format, rateLimitBytes });
        }
      } catch (err) {
        if (!(err instanceof MetaContextMissingError)) throw err;
        // An export made before exports offered allocation depth (a daemon adopted across an upgrade).
        this.opts.logger?.warn({ pool: this.name, replica: id, source: sourceUri }, "the source export offers no allocation depth; copying the linked clone's whole content");
        await copyImage({ sourceUri, targetPath: f.path, targetFormat: f.format, rateLimitBytes });
      } finally {
        this.infoCache.delete(f.path);
      }
      const info = await this.freshInfo(f.path, f.format);
      this.opts.logger?.info({ pool: this.name, replica: id, source: sourceUri, ms: Date.now() - t0, how }, "replica copied from an in-sync replica");
      return { bytes: copied ?? info.virtualSizeBytes, ms: Date.now() - t0 };
    });
  }

  /**
   * Runs fn holding the replica's lock, the one every change of its image takes
   * (ensure, copy, revert, snapshot, delete): the agent opens an export under it
   * and recompression rewrites the image under it, so neither sees the other half-done.
   */
  async withReplicaLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    validateReplicaId(id);
    return this.mutex.run(id, fn);
  }

  /** Forgets what qemu-img info said about a path whose file was replaced. */
  forgetInfo(path: string): void {
    this.infoCache.delete(path);
  }

  /** The path of the replica's image, or undefined when the pool has none. */
  async imagePath(id: string): Promise<string | undefined> {
    validateReplicaId(id);
    return (await this.filesOf(id)).files[0]?.path;
  }

  /** Rolls the replica's image back to an internal snapshot, at the volume's size. The image must not be open (exported). */
  async revert(id: string, tag: string, sizeBytes: number): Promise<void> {
    validateReplicaId(id);
    return this.mutex.run(id, async () => {
      const f = (await this.filesOf(id)).files[0];
      if (!f) throw new NotFoundError("replica", id, { hint: `pool ${this.name} has no image of it` });
      if (f.format === "qcow2") await removeBitmaps(f.path);
      await revertImage(f.path, tag);
      // The image is back at the size it had then; the volume may have grown since.
      if ((await this.freshInfo(f.path, f.format)).virtualSizeBytes < sizeBytes) await resizeImage({ path: f.path, format: f.format, sizeBytes });
      await syncFile(f.path);
      this.infoCache.delete(f.path);
      this.opts.logger?.info({ pool: this.name, replica: id, tag }, "replica image reverted to a snapshot");
    });
  }

  /** Records an internal snapshot in the replica's qcow2 image (not open elsewhere); false when it had it already. */
  async snapshot(id: string, tag: string): Promise<boolean> {
    validateReplicaId(id);
    return this.mutex.run(id, async () => {
      const f = (await this.filesOf(id)).files[0];
      if (!f) throw new NotFoundError("replica", id, { hint: `pool ${this.name} has no image of it` });
      if (f.format !== "qcow2") throw new FailedPreconditionError(`replica ${id} is a ${f.format} image: snapshots need qcow2`);
      if ((await snapshotTags(f.path)).includes(tag)) return false;
      await createImageSnapshot(f.path, tag);
      this.infoCache.delete(f.path);
      this.opts.logger?.info({ pool: this.name, replica: id, tag }, "snapshot recorded");
      return true;
    });
  }

  /** Removes an internal snapshot from the replica's image (not open elsewhere); false when it had none. */
  async deleteSnapshot(id: string, tag: string): Promise<boolean> {
    validateReplicaId(id);
    return this.mutex.run(id, async () => {
      const f = (await this.filesOf(id)).files[0];
      if (!f || f.format !== "qcow2" || !(await snapshotTags(f.path)).includes(tag)) return false;
      await deleteImageSnapshot(f.path, tag);
      this.infoCache.delete(f.path);
      return true;
    });
  }

  /** Removes the replica's image (in whatever format). Idempotent. */
  async deleteReplica(id: string): Promise<{ deleted: boolean }> {
    validateReplicaId(id);
    return this.mutex.run(id, async () => {
      const { files, temps } = await this.filesOf(id);
      await Promise.all(temps.map((t) => unlinkIfExists(t)));
      const removed = await Promise.all(files.map((f) => unlinkIfExists(f.path)));
      for (const f of files) this.infoCache.delete(f.path);
      const deleted = removed.some(Boolean);
      if (deleted) {
        await syncDir(this.path);
        this.opts.logger?.info({ pool: this.name, replica: id, paths: files.map((f) => f.path) }, "replica image deleted");
      }
      return { deleted };
    });
  }

  /** Every replica image in the pool; files that qemu-img cannot read are logged and skipped. */
  async list(): Promise<ReplicaImage[]> {
    const files = await this.scan();
    const seen = new Set(files.map((f) => f.path));
    for (const path of this.infoCache.keys()) if (!seen.has(path)) this.infoCache.delete(path);
    const out = await mapLimit(files, this.opts.infoConcurrency ?? 8, async (f) => {
      const info = await this.cachedInfo(f);
      return info && this.replica(f, info, f.stat);
    });
    return out.filter((r): r is ReplicaImage => r !== undefined).sort((a, b) => a.path.localeCompare(b.path));
  }

  async stats(): Promise<PoolStats> {
    const [fs, files, templateBytes] = await Promise.all([statfs(this.path), this.scan(), this.templateBytes()]);
    return {
      capacityBytes: fs.blocks * fs.bsize,
      availableBytes: fs.bavail * fs.bsize,
      allocatedBytes: files.reduce((sum, f) => sum + f.stat.blocks * 512, 0),
      replicaCount: files.length,
      templateBytes,
    };
  }

  /** Bytes on disk of the files under the pool's template directory (none yet: 0). */
  private async templateBytes(): Promise<number> {
    const dir = join(this.path, TEMPLATE_DIR);
    const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return [];
      throw err;
    });
    const sizes = await mapLimit(
      entries.filter((e) => e.isFile()),
      64,
      (e) => lstat(join(e.parentPath ?? e.path, e.name)).then((st) => st.blocks * 512, () => 0),
    );
    return sizes.reduce((a, b) => a + b, 0);
  }

  private async create(spec: ReplicaSpec): Promise<EnsureReplicaResult> {
    await this.checkSpace(spec.preallocation, spec.sizeBytes);
    const name: ReplicaFileName = { id: spec.id, volume: spec.volume, format: spec.format };
    const path = `${this.path}/${replicaFileName(name)}`;
    // Made under a temp name and renamed, so a crash never leaves a half-made image under the real name.
    const tmp = `${this.path}/${tempFileName(name, randomBytes(6).toString("hex"))}`;
    try {
      if (spec.source) {
        if (spec.format !== "qcow2") throw new InvalidArgumentError("an image made from a snapshot is qcow2");
        await cloneImage({ sourcePath: spec.source.path, tag: spec.source.tag, targetPath: tmp });
        // The copy takes the source's current size; the snapshot (and so the clone) may be smaller,
        // and reads as zeroes past its own size.
        const made = (await imageInfo(tmp, { format: "qcow2" })).virtualSizeBytes;
        if (made !== spec.sizeBytes) await resizeImage({ path: tmp, format: "qcow2", sizeBytes: spec.sizeBytes, shrink: made > spec.sizeBytes });
      } else if (spec.backing) {
        if (spec.format !== "qcow2") throw new InvalidArgumentError("a linked clone is a qcow2 image");
        await createLinkedClone({ path: tmp, backingPath: spec.backing.path, sizeBytes: spec.sizeBytes });
      } else {
        await createImage({ path: tmp, format: spec.format, sizeBytes: spec.sizeBytes, preallocation: spec.preallocation });
      }
      await syncFile(tmp);
      await rename(tmp, path);
    } catch (err) {
      await unlinkIfExists(tmp);
      throw err;
    }
    await syncDir(this.path);
    const info = await this.freshInfo(path, spec.format);
    const stat = await lstat(path);
    this.opts.logger?.info({ pool: this.name, replica: spec.id, volume: spec.volume, path, from: spec.source }, "replica image created");
    return { replica: this.replica({ ...name, path }, info, stat), created: true, resized: false };
  }

  private async checkSpace(preallocation: PreallocationName, bytes: number): Promise<void> {
    // Thin images allocate on write; only preallocated ones need the space now.
    if (preallocation !== "falloc" && preallocation !== "full") return;
    const fs = await statfs(this.path);
    const available = fs.bavail * fs.bsize;
    if (bytes > available) {
      throw new InsufficientCapacityError(`pool ${this.name} has ${available} bytes free, ${bytes} needed`, {
        neededBytes: bytes,
        availableBytes: available,
        hint: "free space in the pool, or use preallocation off",
      });
    }
  }

  private replica(f: ReplicaFileName & { path: string }, info: ImageInfo, stat: Stats): ReplicaImage {
    return {
      id: f.id,
      volume: f.volume,
      pool: this.name,
      path: f.path,
      format: f.format,
      virtualSizeBytes: info.virtualSizeBytes,
      allocatedBytes: stat.blocks * 512,
    };
  }

  private async freshInfo(path: string, format: ImageFormatName): Promise<ImageInfo> {
    return imageInfo(path, { format, forceShare: true });
  }

  private async cachedInfo(f: ScannedFile): Promise<ImageInfo | undefined> {
    const hit = this.infoCache.get(f.path);
    if (hit && hit.mtimeMs === f.stat.mtimeMs && hit.size === f.stat.size) return hit.info;
    const entry: CachedInfo = { mtimeMs: f.stat.mtimeMs, size: f.stat.size };
    try {
      entry.info = await this.freshInfo(f.path, f.format);
    } catch (err) {
      if (!(await exists(f.path))) return undefined; // deleted while we looked
      entry.error = err instanceof Error ? err.message : String(err);
      this.opts.logger?.warn({ pool: this.name, path: f.path, err: entry.error }, "cannot read replica image; leaving it out");
    }
    this.infoCache.set(f.path, entry);
    return entry.info;
  }

  /** Replica image files (regular files with a replica name) with their lstat. */
  private async scan(): Promise<ScannedFile[]> {
    const entries = await readdir(this.path, { withFileTypes: true });
    const out = await mapLimit(entries, 64, async (e) => {
      const parsed = e.isFile() ? parseReplicaFileName(e.name) : undefined;
      if (!parsed) return undefined;
      const path = `${this.path}/${e.name}`;
      try {
        return { ...parsed, path, stat: await lstat(path) };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw err;
      }
    });
    return out.filter((f): f is ScannedFile => f !== undefined && f.stat.isFile());
  }

  /** The images and temp files of one replica id. */
  private async filesOf(id: string): Promise<{ files: (ReplicaFileName & { path: string })[]; temps: string[] }> {
    const entries = await readdir(this.path, { withFileTypes: true });
    const files: (ReplicaFileName & { path: string })[] = [];
    const temps: string[] = [];
    for (const e of entries) {
      if (!e.name.includes(id) || !e.isFile()) continue;
      const r = parseReplicaFileName(e.name);
      if (r?.id === id) files.push({ ...r, path: `${this.path}/${e.name}` });
      else if (parseTempFileName(e.name)?.id === id) temps.push(`${this.path}/${e.name}`);
    }
    return { files, temps };
  }
}
