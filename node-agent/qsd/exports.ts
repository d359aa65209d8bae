// NBD exports of replica images by the host's qemu-storage-daemon. Each replica
// is two block nodes (a `file` node opening the image, a qcow2/raw format node on
// it) and one NBD export with id = name = replica id. Every call observes the
// daemon (query-block-exports, query-named-block-nodes) before it acts, so it can
// be repeated, and an adopted daemon's exports are recognised and left alone.
import { createHash } from "node:crypto";
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import { KeyedMutex } from "../../lib/keyed-mutex.js";
import { validateReplicaId } from "../replica-file-name.js";
import { TEMPLATE_EXPORT_RE } from "../template-images.js";
import type { QmpClient } from "./qmp-client.js";
import type { AioMode, BlockDeviceInfo, BlockExportInfo } from "./qmp-commands.js";
import { QmpError } from "./qmp-protocol.js";
import { nbdUri, type NbdEndpoint } from "./qsd-args.js";

export type ExportFormat = "qcow2" | "raw";

export interface ExportSpec {
  replicaId: string;
  /** Absolute path of the replica image. */
  path: string;
  format: ExportFormat;
  writable: boolean;
}

/** How a client reaches one export. */
export interface ExportDescriptor {
  replicaId: string;
  exportName: string;
  unixSocket?: string;
  tcp?: { host: string; port: number };
  nbdUri: string;
}

/** An export as observed in the daemon. */
export interface ExportInfo extends ExportDescriptor {
  path: string;
  format: string;
  writable: boolean;
  virtualSizeBytes: number;
  /** block-export-del was accepted; the export goes once its last client disconnects. */
  shuttingDown: boolean;
}

/** How the `file` node opens the image: see README.md for the measurements behind the default. */
export interface FileBackend {
  aio: AioMode;
  /** O_DIRECT: bypass the host page cache. */
  direct: boolean;
}

export const DEFAULT_FILE_BACKEND: FileBackend = { aio: "native", direct: true };

export interface QsdExportsDeps {
  qmp: () => QmpClient;
  endpoint: () => NbdEndpoint;
  backend?: FileBackend;
  logger?: Logger;
  /** How long removeExport waits for BLOCK_EXPORT_DELETED (default 10000 ms). */
  removeTimeoutMs?: number;
}

/** Block node names of a replica. QEMU allows 31 characters; replica ids have up to 34, hence a digest. */
export function nodeNames(replicaId: string): { file: string; format: string } {
  const h = createHash("sha256").update(replicaId).digest("hex").slice(0, 24);
  return { file: `file-${h}`, format: `fmt-${h}` };
}

/** Export ids are replica ids, or `t-` ids of template copies exported read-only (node-agent/templates.ts). */
function validateExportId(id: string): void {
  if (!TEMPLATE_EXPORT_RE.test(id)) validateReplicaId(id);
}

interface Observed {
  exp?: BlockExportInfo;
  file?: BlockDeviceInfo;
  format?: BlockDeviceInfo;
}

export class QsdExports {
  private readonly mutex = new KeyedMutex();

  constructor(private readonly deps: QsdExportsDeps) {}

  descriptor(replicaId: string): ExportDescriptor {
    const ep = this.deps.endpoint();
    return {
      replicaId,
      exportName: replicaId,
      ...(ep.unixSocket ? { unixSocket: ep.unixSocket } : {}),
      ...(ep.tcp ? { tcp: { ...ep.tcp } } : {}),
      nbdUri: nbdUri(ep, replicaId),
    };
  }

  /** Opens the image and exports it, unless an identical export exists. */
  async ensureExport(spec: ExportSpec): Promise<ExportDescriptor & { created: boolean }> {
    validateExportId(spec.replicaId);
    if (!spec.path.startsWith("/")) throw new InvalidArgumentError(`image path "${spec.path}" is not absolute`);
    if (spec.format !== "qcow2" && spec.format !== "raw") throw new InvalidArgumentError(`unknown image format "${spec.format}"`);
    return this.mutex.run(spec.replicaId, async () => {
      let o = await this.observe(spec.replicaId);
      if (o.exp?.["shutting-down"]) o = await this.waitDeleted(spec.replicaId);
      if (o.exp) {
        const diff = this.difference(spec, o);
        if (diff) {
          throw new FailedPreconditionError(`replica ${spec.replicaId} is already exported with ${diff}`, {
            hint: "remove the export first",
            resource: "export",
            name: spec.replicaId,
          });
        }
        return { ...this.descriptor(spec.replicaId), created: false };
      }
      await this.deleteNodes(o); // left by an ensure or remove that stopped half-way
      await this.create(spec);
      return { ...this.descriptor(spec.replicaId), created: true };
    });
  }

  /**
   * Removes the export and closes the image. Without `force` it fails while
   * clients are connected; with `force` it disconnects them. Idempotent.
   */
  async removeExport(replicaId: string, opts: { force?: boolean } = {}): Promise<{ removed: boolean }> {
    validateExportId(replicaId);
    return this.mutex.run(replicaId, async () => {
      let o = await this.observe(replicaId);
      const removed = o.exp !== undefined || o.file !== undefined || o.format !== undefined;
      if (o.exp && !o.exp["shutting-down"]) {
        await this.deleteExport(replicaId, opts.force ?? false);
        o = await this.observe(replicaId);
      } else if (o.exp) {
        o = await this.waitDeleted(replicaId);
      }
      await this.deleteNodes(o);
      if (removed) this.deps.logger?.info({ replica: replicaId }, "NBD export removed");
      return { removed };
    });
  }

  /** Stowage's exports in the daemon (id = replica id, on our node names); other exports are not reported. */
  async listExports(): Promise<ExportInfo[]> {
    const qmp = this.deps.qmp();
    const [exports, nodes] = await Promise.all([qmp.execute("query-block-exports"), qmp.execute("query-named-block-nodes", { flat: true })]);
    const byName = new Map(nodes.map((n) => [n["node-name"], n]));
    const out: ExportInfo[] = [];
    for (const exp of exports) {
      const names = nodeNames(exp.id);
      const format = byName.get(names.format);
      const file = byName.get(names.file);
      if (exp["node-name"] !== names.format || !format || !file) continue;
      out.push({
        ...this.descriptor(exp.id),
        path: file.file,
        format: format.drv,
        writable: !format.ro,
        virtualSizeBytes: format.image["virtual-size"],
        shuttingDown: exp["shutting-down"],
      });
    }
    return out.sort((a, b) => a.replicaId.localeCompare(b.replicaId));
  }

  /**
   * Grows an exported image with QMP block_resize (qemu-img cannot resize an image
   * the daemon holds open). Never shrinks; a smaller size is a no-op. An NBD export
   * in 7.2 does not share the resize permission of its node, and NBD has no way to
   * tell a client that the size changed, so the export is taken down (failing while
   * clients are connected, unless `force`), the node resized while it stays open,
   * and the export added again; clients see the new size when they reconnect.
   */
  async resizeExport(replicaId: string, sizeBytes: number, opts: { force?: boolean } = {}): Promise<{ virtualSizeBytes: number; resized: boolean }> {
    validateReplicaId(replicaId);
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) throw new InvalidArgumentError(`invalid size ${sizeBytes}`);
    return this.mutex.run(replicaId, async () => {
      const o = await this.observe(replicaId);
      if (!o.exp || !o.format || o.exp["shutting-down"]) {
        throw new NotFoundError("export", replicaId, { hint: "an image that is not exported is resized with qemu-img" });
      }
      const current = o.format.image["virtual-size"];
      if (sizeBytes <= current) return { virtualSizeBytes: current, resized: false };
      if (o.format.ro) throw new FailedPreconditionError(`export ${replicaId} is read-only and cannot be resized`);
      const node = o.format["node-name"]!;
      await this.deleteExport(replicaId, opts.force ?? false);
      try {
        await this.deps.qmp().execute("block_resize", { "node-name": node, size: sizeBytes });
      } finally {
        await this.addExport(replicaId, node, true); // back, resized or not
      }
      const after = (await this.observe(replicaId)).format?.image["virtual-size"] ?? sizeBytes;
      this.deps.logger?.info({ replica: replicaId, from: current, to: after }, "exported image grown");
      return { virtualSizeBytes: after, resized: true };
    });
  }

  /**
   * Records an internal snapshot named `tag` in an exported qcow2 replica, through
   * the daemon that holds it open (qemu-img cannot write to an image in use). It
   * lands at whatever write the image has reached: holding writes for a consistent
   * point is the caller's part. Idempotent.
   */
  async snapshot(replicaId: string, tag: string): Promise<{ created: boolean }> {
    validateReplicaId(replicaId);
    return this.mutex.run(replicaId, async () => {
      const format = await this.exportedQcow2(replicaId);
      if (format.image.snapshots?.some((s) => s.name === tag)) return { created: false };
      await this.deps.qmp().execute("blockdev-snapshot-internal-sync", { device: format["node-name"]!, name: tag });
      this.deps.logger?.info({ replica: replicaId, tag }, "snapshot recorded");
      return { created: true };
    });
  }

  /** Removes an internal snapshot from an exported replica; false when it had none of that name. */
  async deleteSnapshot(replicaId: string, tag: string): Promise<{ deleted: boolean }> {
    validateReplicaId(replicaId);
    return this.mutex.run(replicaId, async () => {
      const format = await this.exportedQcow2(replicaId);
      if (!format.image.snapshots?.some((s) => s.name === tag)) return { deleted: false };
      await this.deps.qmp().execute("blockdev-snapshot-delete-internal-sync", { device: format["node-name"]!, name: tag });
      this.deps.logger?.info({ replica: replicaId, tag }, "snapshot deleted");
      return { deleted: true };
    });
  }

  /** Whether the replica is exported by this daemon. */
  async isExported(replicaId: string): Promise<boolean> {
    return (await this.observe(replicaId)).exp !== undefined;
  }

  /**
   * Runs `fn` with the replica's export and image closed (for qemu-img commands
   * that need the image to themselves), then opens and exports it again as it was,
   * whether `fn` succeeded or not. Fails, changing nothing, while a client is connected.
   */
  async whileClosed<T>(replicaId: string, fn: () => Promise<T>): Promise<T> {
    validateReplicaId(replicaId);
    return this.mutex.run(replicaId, async () => {
      const o = await this.observe(replicaId);
      if (!o.exp || !o.file || !o.format || o.exp["shutting-down"]) return fn();
      const spec: ExportSpec = { replicaId, path: o.file.file, format: o.format.drv as ExportFormat, writable: !o.format.ro };
      await this.deleteExport(replicaId, false);
      await this.deleteNodes(await this.observe(replicaId));
      try {
        return await fn();
      } finally {
        await this.create(spec);
      }
    });
  }

  /** The format node of an exported qcow2 replica, or a clear error. */
  private async exportedQcow2(replicaId: string): Promise<BlockDeviceInfo> {
    const o = await this.observe(replicaId);
    if (!o.exp || !o.format || o.exp["shutting-down"]) {
      throw new NotFoundError("export", replicaId, { hint: "the replica is not open in this node's storage daemon; is the node up to date?" });
    }
    if (o.format.drv !== "qcow2") {
      throw new FailedPreconditionError(`replica ${replicaId} is a ${o.format.drv} image: snapshots need qcow2`, { hint: "snapshot qcow2 volumes only" });
    }
    return o.format;
  }

  private get removeTimeoutMs(): number {
    return this.deps.removeTimeoutMs ?? 10_000;
  }

  private async observe(replicaId: string): Promise<Observed> {
    const qmp = this.deps.qmp();
    const names = nodeNames(replicaId);
    const [exports, nodes] = await Promise.all([qmp.execute("query-block-exports"), qmp.execute("query-named-block-nodes", { flat: true })]);
    return {
      exp: exports.find((e) => e.id === replicaId),
      file: nodes.find((n) => n["node-name"] === names.file),
      format: nodes.find((n) => n["node-name"] === names.format),
    };
  }

  /** What differs between the spec and an existing export, or undefined when it matches. */
  private difference(spec: ExportSpec, o: Observed): string | undefined {
    if (o.exp?.["node-name"] !== nodeNames(spec.replicaId).format || !o.file || !o.format) return `node ${o.exp?.["node-name"]}`;
    if (o.file.file !== spec.path) return `path ${o.file.file}`;
    if (o.format.drv !== spec.format) return `format ${o.format.drv}`;
    if (o.format.ro === spec.writable) return o.format.ro ? "read-only access" : "write access";
    return undefined;
  }

  private async create(spec: ExportSpec): Promise<void> {
    const qmp = this.deps.qmp();
    const names = nodeNames(spec.replicaId);
    const backend = this.deps.backend ?? DEFAULT_FILE_BACKEND;
    // discard=unmap lets a guest's TRIM punch holes, so thin images stay thin.
    const common = { "read-only": !spec.writable, discard: "unmap" as const };
    const added: string[] = [];
    try {
      await qmp.execute("blockdev-add", {
        driver: "file",
        "node-name": names.file,
        filename: spec.path,
        aio: backend.aio,
        cache: { direct: backend.direct },
        ...common,
      });
      added.push(names.file);
      await qmp.execute("blockdev-add", { driver: spec.format, "node-name": names.format, file: names.file, ...common });
      added.push(names.format);
      await this.addExport(spec.replicaId, names.format, spec.writable);
    } catch (err) {
      for (const node of added.reverse()) await qmp.execute("blockdev-del", { "node-name": node }).catch(() => undefined);
      throw err;
    }
    this.deps.logger?.info({ replica: spec.replicaId, path: spec.path, format: spec.format, writable: spec.writable, backend }, "NBD export added");
  }

  private async addExport(replicaId: string, node: string, writable: boolean): Promise<void> {
    // allocation-depth: a rebuild of a linked clone's replica copies only what this image holds itself (../top-layer-copy.ts).
    await this.deps.qmp().execute("block-export-add", { type: "nbd", id: replicaId, "node-name": node, name: replicaId, writable, "allocation-depth": true });
  }

  /** block-export-del, then waits for BLOCK_EXPORT_DELETED. Mode safe fails while clients are connected; hard drops them. */
  private async deleteExport(replicaId: string, force: boolean): Promise<void> {
    const qmp = this.deps.qmp();
    const abort = new AbortController();
    const deleted = qmp.waitForEvent("BLOCK_EXPORT_DELETED", (d) => d.id === replicaId, { timeoutMs: this.removeTimeoutMs, signal: abort.signal });
    deleted.catch(() => undefined); // awaited below, unless the command fails
    try {
      await qmp.execute("block-export-del", { id: replicaId, mode: force ? "hard" : "safe" });
    } catch (err) {
      abort.abort();
      if (!(err instanceof QmpError)) throw err;
      throw new FailedPreconditionError(`cannot take down export ${replicaId}: ${err.desc}`, {
        hint: "NBD clients are still connected: disconnect them, or use force",
        resource: "export",
        name: replicaId,
        cause: err,
      });
    }
    await deleted;
  }

  /** Deletes the replica's nodes that exist, format node first (it holds the file node). */
  private async deleteNodes(o: Observed): Promise<void> {
    const qmp = this.deps.qmp();
    if (o.format) await qmp.execute("blockdev-del", { "node-name": o.format["node-name"]! });
    if (o.file) await qmp.execute("blockdev-del", { "node-name": o.file["node-name"]! });
  }

  /** Waits until an export that is shutting down is gone; returns what is left. */
  private async waitDeleted(replicaId: string): Promise<Observed> {
    const abort = new AbortController();
    const deleted = this.deps.qmp().waitForEvent("BLOCK_EXPORT_DELETED", (d) => d.id === replicaId, {
      timeoutMs: this.removeTimeoutMs,
      signal: abort.signal,
    });
    deleted.catch(() => undefined);
    const o = await this.observe(replicaId); // it may have gone before we subscribed
    if (!o.exp) {
      abort.abort();
      return o;
    }
    await deleted;
    return this.observe(replicaId);
  }
}
