// The AgentService the controllers call: inventory, and idempotent ensure/delete
// of replica images, their NBD exports and volume frontends. Every call may be
// repeated; the answer describes what is on the node.
import type { AgentServiceService, ReplicaExport } from "../gen/stowage/v1/agent.js";
import { FailedPreconditionError, InvalidArgumentError } from "../lib/errors.js";
import type { AsyncService } from "../lib/grpc.js";
import type { AgentPools } from "./agent-pools.js";
import type { BackupShipper } from "./backup-ship.js";
import type { Backups } from "./backups.js";
import type { FrontendManager, RunningFrontend } from "./frontends.js";
import type { PoolDedup } from "./pool-dedup.js";
import type { PoolCompress } from "./pool-compress.js";
import type { DomainManager } from "./libvirt/domains.js";
import { formatFromProto, preallocationFromProto, replicaToProto } from "./proto-mapping.js";
import type { QsdSupervisor } from "./qsd/supervisor.js";
import { TemplateImages } from "./templates.js";

function templateRef(t: { name: string; uid: string; pool: string } | undefined) {
  if (!t) throw new InvalidArgumentError("the request names no template");
  return t;
}

function frontendToProto(f: RunningFrontend) {
  return { volume: f.volume, socketPath: f.socketPath, nbdUri: f.nbdUri, pid: f.pid };
}

export function createAgentService(
  pools: AgentPools,
  qsd: QsdSupervisor,
  frontends: FrontendManager,
  domains?: DomainManager,
  backups?: Backups,
  dedup?: PoolDedup,
  compress?: PoolCompress,
  shipper?: BackupShipper,
): AsyncService<typeof AgentServiceService> {
  const store = (): Backups => {
    if (!backups) throw new FailedPreconditionError(`node ${pools.node} keeps no backups`);
    return backups;
  };
  const vms = (): DomainManager => {
    if (!domains) throw new FailedPreconditionError(`node ${pools.node} has VM support turned off ("libvirt": false in its agent config)`);
    return domains;
  };
  const exportsById = async () => new Map((await qsd.exports.listExports()).map((e) => [e.replicaId, e]));
  const templates = new TemplateImages(pools, qsd.exports);

  return {
    getInventory: async () => {
      const [reports, lists, exported, running] = await Promise.all([
        pools.report(),
        Promise.all(pools.all().map((p) => p.list())),
        exportsById(),
        frontends.list(),
      ]);
      const replicas = lists.flat().map((r) => {
        const e = exported.get(r.id);
        return { ...replicaToProto(r), export: e ? { exportName: e.exportName, nbdUri: e.nbdUri } : undefined };
      });
      return { node: pools.node, pools: reports, replicas, frontends: running.map(frontendToProto) };
    },

    ensureReplica: async (req) => {
      const pool = pools.get(req.pool);
      const exported = (await exportsById()).get(req.id);
      // An exported image is locked by the daemon: it grows through QMP, not qemu-img.
      if (exported) await qsd.exports.resizeExport(req.id, req.sizeBytes);
      let source: { path: string; tag: string } | undefined;
      if (req.source) {
        const path = await pools.get(req.source.pool).imagePath(req.source.replicaId);
        if (!path) throw new FailedPreconditionError(`the source replica ${req.source.replicaId} of ${req.id} is not on this node`);
        source = { path, tag: req.source.snapshotTag };
      }
      const r = await pool.ensureReplica({
        source,
        // Used only if the image is made now: a linked clone of the template copy on this node.
        backing: req.backing && { path: templates.pathOf(req.backing) },
        id: req.id,
        volume: req.volume,
        sizeBytes: req.sizeBytes,
        format: formatFromProto(req.format),
        preallocation: preallocationFromProto(req.preallocation),
      });
      let exp: ReplicaExport | undefined;
      if (req.exported) {
        // Opened under the replica's lock, so a recompression never renames over an image the daemon has open.
        compress?.yieldTo(req.id);
        const d = await pool.withReplicaLock(req.id, () =>
          qsd.exports.ensureExport({ replicaId: req.id, path: r.replica.path, format: r.replica.format, writable: true }),
        );
        exp = { exportName: d.exportName, nbdUri: d.nbdUri };
      } else if (exported) {
        await qsd.exports.removeExport(req.id);
      }
      return { replica: { ...replicaToProto(r.replica), export: exp }, created: r.created, resized: r.resized };
    },

    deleteReplica: async (req) => {
      const pool = pools.get(req.pool);
      // Never unlink an image the daemon still writes to.
      if ((await exportsById()).has(req.id)) await qsd.exports.removeExport(req.id, { force: true });
      return pool.deleteReplica(req.id);
    },

    ensureFrontend: async (req) => {
      const r = await frontends.ensure(
        req.volume,
        req.backends.map((b) => ({ replicaId: b.replicaId, nbdUri: b.nbdUri })),
        req.generation || 1,
      );
      return { frontend: frontendToProto(r.frontend), started: r.started };
    },

    removeFrontend: async (req) => ({ removed: await frontends.remove(req.volume) }),

    copyReplica: async (req) => {
      const pool = pools.get(req.pool);
      if ((await exportsById()).has(req.id)) {
        throw new FailedPreconditionError(`replica ${req.id} is exported; it cannot be overwritten while in use`, { hint: "detach the volume first" });
      }
      const r = await pool.copyFrom(req.id, req.sourceNbdUri, req.rateLimitBytes);
      return { bytes: r.bytes, durationMs: r.ms };
    },

    getDomain: async (req) => {
      const domain = await vms().get(req.name);
      return { found: domain !== undefined, domain };
    },

    attachDisk: async (req) => vms().attachDisk(req),

    detachDisk: async (req) => ({ detached: await vms().detachDisk(req) }),

    migrateDomain: async (req) => ({ job: await vms().migrate(req) }),

    getDomainJob: async (req) => vms().job(req.domain),

    snapshotReplica: async (req) => {
      if (await qsd.exports.isExported(req.replicaId)) return qsd.exports.snapshot(req.replicaId, req.tag);
      return { created: await pools.get(req.pool).snapshot(req.replicaId, req.tag) };
    },

    deleteReplicaSnapshot: async (req) => {
      if (await qsd.exports.isExported(req.replicaId)) return qsd.exports.deleteSnapshot(req.replicaId, req.tag);
      return { deleted: await pools.get(req.pool).deleteSnapshot(req.replicaId, req.tag) };
    },

    revertReplica: async (req) => {
      const pool = pools.get(req.pool);
      // The daemon holds the image open: it is closed for the revert and opened again after.
      await qsd.exports.whileClosed(req.replicaId, () => pool.revert(req.replicaId, req.tag, req.sizeBytes));
      return {};
    },

    freezeFrontend: async (req) => frontends.freeze(req.volume, req.timeoutMs || 10_000),

    thawFrontend: async (req) => frontends.thaw(req.volume, Number(req.token)),


    writeBackup: async (req) => {
      const r = await store().backupFrom(req.name, req.sourceNbdUri, req.base ? { base: req.base, bitmap: req.bitmap } : undefined);
      return { logicalBytes: r.logicalBytes, dataBytes: r.dataBytes, newBytes: r.newBytes, storedBytes: r.storedBytes, durationMs: r.ms, readBytes: r.readBytes };
    },

    shipBackup: async (req) => {
      if (!shipper) throw new FailedPreconditionError(`node ${pools.node} ships no backups`);
      const r = await shipper.ship({ name: req.name, sourceUri: req.sourceNbdUri, incremental: req.base ? { base: req.base, bitmap: req.bitmap } : undefined, targetAddress: req.targetAddress });
      return { logicalBytes: r.logicalBytes, dataBytes: r.dataBytes, newBytes: r.newBytes, storedBytes: r.storedBytes, durationMs: r.ms, readBytes: r.readBytes, shippedBytes: r.shippedBytes, newChunks: r.newChunks, incremental: r.incremental };
    },

    verifyStore: async (req) => {
      const r = await store().verify(req.quarantine);
      const problems = [
        ...r.corrupt.map((c) => ({ chunkId: c.id, reason: `corrupt: ${c.reason}`, backups: c.manifests })),
        ...r.missing.map((m) => ({ chunkId: m.id, reason: "missing", backups: m.manifests })),
      ];
      const damaged = [...new Set([...r.damagedManifests.map((m) => m.name), ...r.badManifests.map((m) => m.name)])].sort();
      return {
        report: { node: pools.node, ok: r.ok, manifests: r.manifests, chunksChecked: r.chunksChecked, bytesChecked: r.bytesChecked, problems, damagedBackups: damaged, seconds: r.seconds, error: "" },
      };
    },

    listBackupBitmaps: async (req) => ({ bitmaps: await qsd.fleece.bitmaps(req.replicaId) }),

    prepareFleece: async (req) => {
      await qsd.fleece.prepare(req.replicaId, req.fleeceId, pools.get(req.pool).path);
      return {};
    },

    markBackupPoint: async (req) => {
      await qsd.fleece.mark(req.replicaId, req.next, req.base || undefined, req.fleeceId || undefined);
      return {};
    },

    exportFleece: async (req) => ({ nbdUri: await qsd.fleece.export(req.fleeceId, req.bitmap || undefined) }),

    releaseFleece: async (req) => {
      await qsd.fleece.release(req.fleeceId, pools.get(req.pool).path);
      return {};
    },

    settleBackupBitmaps: async (req) => {
      if (req.succeeded) {
        if (req.base) await qsd.fleece.dropBitmap(req.replicaId, req.base);
      } else {
        await qsd.fleece.undo(req.replicaId, req.next, req.base || undefined);
      }
      return {};
    },

    serveBackup: async (req) => ({ nbdUri: await store().serveBackup(req.exportId, req.name) }),

    stopExport: async (req) => ({ stopped: await store().stopExport(req.exportId) }),

    deleteStoredBackup: async (req) => ({ deleted: await store().deleteBackup(req.name) }),

    ensureTemplateImage: async (req) => {
      const src = req.sourceSnapshot
        ? ({ kind: "snapshot", replicaId: req.sourceSnapshot.replicaId, pool: req.sourceSnapshot.pool, tag: req.sourceSnapshot.snapshotTag } as const)
        : req.sourceNbdUri
          ? ({ kind: "nbd", uri: req.sourceNbdUri, rateLimitBytes: req.rateLimitBytes } as const)
          : undefined;
      const r = await templates.ensure(templateRef(req.template), src, req.sizeBytes);
      return { path: r.path, virtualSizeBytes: r.virtualSizeBytes, allocatedBytes: r.allocatedBytes, created: r.created };
    },

    deleteTemplateImage: async (req) => ({ deleted: await templates.delete(templateRef(req.template)) }),

    openTemplateExport: async (req) => ({ nbdUri: await templates.openExport(templateRef(req.template)) }),

    closeTemplateExport: async (req) => ({ closed: await templates.closeExport(templateRef(req.template)) }),

    dedupImages: async (req) => {
      if (!dedup) throw new FailedPreconditionError(`node ${pools.node} runs no dedup`);
      if (req.checkOnly) return { filesystem: await dedup.check(req.pool), freedBytes: 0, sharedSavedBytes: 0, sharedSavedBytesBefore: 0, scannedBytes: 0, files: 0, durationMs: 0 };
      return dedup.run(req.pool);
    },

    compressImages: async (req) => {
      if (!compress) throw new FailedPreconditionError(`node ${pools.node} runs no compression`);
      const r = await compress.run(req.pool, req.coldAfterMs);
      return { ...r, images: r.images.map((i) => ({ ...i })) };
    },

    getPoolJobProgress: async (req) => {
      if (req.kind !== "dedup" && req.kind !== "compress") throw new InvalidArgumentError(`unknown pool job kind "${req.kind}"; use "dedup" or "compress"`);
      const source = req.kind === "dedup" ? dedup : compress;
      return source ? source.progress.get(req.kind, req.pool) : { running: false, totalBytes: 0, doneBytes: 0, itemsTotal: 0, itemsDone: 0, phase: "" };
    },
  };
}
