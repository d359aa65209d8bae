// The AgentService the controllers call: inventory, and idempotent ensure/delete
// of replica images. Every call may be repeated; the answer describes the disk.
import type { AsyncService } from "../lib/grpc.js";
import type { AgentServiceService } from "../gen/stowage/v1/agent.js";
import type { AgentPools } from "./agent-pools.js";
import { formatFromProto, preallocationFromProto, replicaToProto } from "./proto-mapping.js";

export function createAgentService(pools: AgentPools): AsyncService<typeof AgentServiceService> {
  return {
    getInventory: async () => {
      const [reports, lists] = await Promise.all([pools.report(), Promise.all(pools.all().map((p) => p.list()))]);
      return { node: pools.node, pools: reports, replicas: lists.flat().map(replicaToProto) };
    },

    ensureReplica: async (req) => {
      const pool = pools.get(req.pool);
      const r = await pool.ensureReplica({
        id: req.id,
        volume: req.volume,
        sizeBytes: req.sizeBytes,
        format: formatFromProto(req.format),
        preallocation: preallocationFromProto(req.preallocation),
      });
      return { replica: replicaToProto(r.replica), created: r.created, resized: r.resized };
    },

    deleteReplica: async (req) => {
      return pools.get(req.pool).deleteReplica(req.id);
    },
  };
}
