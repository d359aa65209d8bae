// The AgentService the controllers call: inventory, and idempotent ensure/delete
// of replica images, their NBD exports and volume frontends. Every call may be
// repeated; the answer describes what is on the node.
import type { AgentServiceService, ReplicaExport } from "../gen/stowage/v1/agent.js";
import { FailedPreconditionError } from "../lib/errors.js";
import type { AsyncService } from "../lib/grpc.js";
import type { AgentPools } from "./agent-pools.js";
import type { FrontendManager, RunningFrontend } from "./frontends.js";
import type { DomainManager } from "./libvirt/domains.js";
import { formatFromProto, preallocationFromProto, replicaToProto } from "./proto-mapping.js";
import type { QsdSupervisor } from "./qsd/supervisor.js";

function frontendToProto(f: RunningFrontend) {
  return { volume: f.volume, socketPath: f.socketPath, nbdUri: f.nbdUri, pid: f.pid };
}

export function createAgentService(
  pools: AgentPools,
  qsd: QsdSupervisor,
  frontends: FrontendManager,
  domains?: DomainManager,
): AsyncService<typeof AgentServiceService> {
  const vms = (): DomainManager => {
    if (!domains) throw new FailedPreconditionError(`node ${pools.node} has VM support turned off ("libvirt": false in its agent config)`);
    return domains;
  };
  const exportsById = async () => new Map((await qsd.exports.listExports()).map((e) => [e.replicaId, e]));

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
      const r = await pool.ensureReplica({
        id: req.id,
        volume: req.volume,
        sizeBytes: req.sizeBytes,
        format: formatFromProto(req.format),
        preallocation: preallocationFromProto(req.preallocation),
      });
      let exp: ReplicaExport | undefined;
      if (req.exported) {
        const d = await qsd.exports.ensureExport({ replicaId: req.id, path: r.replica.path, format: r.replica.format, writable: true });
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
  };
}
