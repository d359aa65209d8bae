// This node's copies of template images (see template-images.ts for names and
// commands): made once from a source, never written again, removed on request.
// Every call is idempotent; calls for one template run one at a time.
import { randomBytes } from "node:crypto";
import { chmod, lstat, mkdir, readdir, rename } from "node:fs/promises";
import { FailedPreconditionError, InvalidArgumentError } from "../lib/errors.js";
import { KeyedMutex } from "../lib/keyed-mutex.js";
import type { Logger } from "../lib/logger.js";
import type { AgentPools } from "./agent-pools.js";
import { exists, syncDir, syncFile, unlinkIfExists } from "./file-ops.js";
import { cloneImage, imageInfo, resizeImage } from "./qemu-img.js";
import type { QsdExports } from "./qsd/exports.js";
import {
  isTemplateTempOf,
  TEMPLATE_DIR,
  templateExportId,
  templateFileName,
  templateFromNbd,
  templateTempFileName,
  validateTemplateRef,
} from "./template-images.js";

export interface TemplateRef {
  name: string;
  uid: string;
  pool: string;
}

export type TemplateSource =
  | { kind: "nbd"; uri: string; rateLimitBytes: number }
  | { kind: "snapshot"; replicaId: string; pool: string; tag: string };

export interface TemplateImage {
  path: string;
  virtualSizeBytes: number;
  allocatedBytes: number;
}

export class TemplateImages {
  private readonly mutex = new KeyedMutex();

  constructor(
    private readonly pools: AgentPools,
    private readonly exports: QsdExports,
    private readonly log?: Logger,
  ) {}

  private dir(ref: TemplateRef): string {
    return `${this.pools.get(ref.pool).path}/${TEMPLATE_DIR}`;
  }

  /** Where the template's copy is (or would be) in the pool. */
  pathOf(ref: TemplateRef): string {
    return `${this.dir(ref)}/${templateFileName(ref)}`;
  }

  /** Makes the copy from `source` unless it exists; `sizeBytes` cuts or grows a copy made from a snapshot. */
  async ensure(ref: TemplateRef, source: TemplateSource | undefined, sizeBytes: number): Promise<TemplateImage & { created: boolean }> {
    validateTemplateRef(ref);
    const dir = this.dir(ref);
    const path = this.pathOf(ref);
    return this.mutex.run(ref.uid, async () => {
      if (await exists(path)) return { ...(await this.describe(path)), created: false };
      if (!source) throw new InvalidArgumentError(`template ${ref.name} has no copy in pool ${ref.pool} and no source was given`);
      await mkdir(dir, { recursive: true });
      await this.removeTemps(ref, dir);
      // Made under a temp name and renamed: a crash never leaves a half-made copy under the real name.
      const tmp = `${dir}/${templateTempFileName(ref, randomBytes(6).toString("hex"))}`;
      const t0 = Date.now();
      try {
        if (source.kind === "snapshot") {
          const from = await this.pools.get(source.pool).imagePath(source.replicaId);
          if (!from) throw new FailedPreconditionError(`replica ${source.replicaId} is not on this node`);
          await cloneImage({ sourcePath: from, tag: source.tag, targetPath: tmp });
          // The copy takes the replica's current size; the snapshot may be smaller (zeroes past it).
          const made = (await imageInfo(tmp, { format: "qcow2" })).virtualSizeBytes;
          if (sizeBytes > 0 && made !== sizeBytes) await resizeImage({ path: tmp, format: "qcow2", sizeBytes, shrink: made > sizeBytes });
        } else {
          await templateFromNbd({ sourceUri: source.uri, targetPath: tmp, rateLimitBytes: source.rateLimitBytes });
        }
        await chmod(tmp, 0o444);
        await syncFile(tmp);
        await rename(tmp, path);
      } catch (err) {
        await unlinkIfExists(tmp);
        throw err;
      }
      await syncDir(dir);
      const image = await this.describe(path);
      this.log?.info({ template: ref.name, uid: ref.uid, path, from: source.kind, ms: Date.now() - t0, allocatedBytes: image.allocatedBytes }, "template copy made");
      return { ...image, created: true };
    });
  }

  /** Removes the copy, its export and any temp file. Idempotent. */
  async delete(ref: TemplateRef): Promise<boolean> {
    validateTemplateRef(ref);
    const dir = this.dir(ref);
    return this.mutex.run(ref.uid, async () => {
      await this.exports.removeExport(templateExportId(ref.uid), { force: true });
      await this.removeTemps(ref, dir);
      const deleted = await unlinkIfExists(this.pathOf(ref));
      if (deleted) {
        await syncDir(dir);
        this.log?.info({ template: ref.name, uid: ref.uid, pool: ref.pool }, "template copy deleted");
      }
      return deleted;
    });
  }

  /** Exports the copy read-only through the storage daemon, for another node to copy. */
  async openExport(ref: TemplateRef): Promise<string> {
    validateTemplateRef(ref);
    const path = this.pathOf(ref);
    if (!(await exists(path))) throw new FailedPreconditionError(`template ${ref.name} has no copy in pool ${ref.pool} of this node`);
    const d = await this.exports.ensureExport({ replicaId: templateExportId(ref.uid), path, format: "qcow2", writable: false });
    return d.nbdUri;
  }

  /** Takes the export down; fails (changing nothing) while a copy still reads from it. */
  async closeExport(ref: TemplateRef): Promise<boolean> {
    validateTemplateRef(ref);
    return (await this.exports.removeExport(templateExportId(ref.uid))).removed;
  }

  private async describe(path: string): Promise<TemplateImage> {
    const [info, st] = await Promise.all([imageInfo(path, { format: "qcow2", forceShare: true }), lstat(path)]);
    return { path, virtualSizeBytes: info.virtualSizeBytes, allocatedBytes: st.blocks * 512 };
  }

  private async removeTemps(ref: TemplateRef, dir: string): Promise<void> {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return;
    }
    await Promise.all(names.filter((n) => isTemplateTempOf(ref, n)).map((n) => unlinkIfExists(`${dir}/${n}`)));
  }
}
