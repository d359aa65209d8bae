// Conversions between the agent API's protobuf messages and the agent's own types.
import { InvalidArgumentError } from "../lib/errors.js";
import type { AgentReplica } from "../gen/stowage/v1/agent.js";
import { ImageFormat, Preallocation, type Pool } from "../gen/stowage/v1/types.js";
import type { PoolConfig } from "./config.js";
import type { PoolStats, ReplicaImage } from "./dir-pool.js";
import type { ImageFormatName, PreallocationName } from "./qemu-img.js";

/** UNSPECIFIED means the default, qcow2. */
export function formatFromProto(f: ImageFormat): ImageFormatName {
  switch (f) {
    case ImageFormat.IMAGE_FORMAT_UNSPECIFIED:
    case ImageFormat.IMAGE_FORMAT_QCOW2:
      return "qcow2";
    case ImageFormat.IMAGE_FORMAT_RAW:
      return "raw";
    default:
      throw new InvalidArgumentError(`unknown image format ${f}`, { hint: "use IMAGE_FORMAT_QCOW2 or IMAGE_FORMAT_RAW" });
  }
}

export function formatToProto(f: ImageFormatName): ImageFormat {
  return f === "raw" ? ImageFormat.IMAGE_FORMAT_RAW : ImageFormat.IMAGE_FORMAT_QCOW2;
}

/** UNSPECIFIED means the default, off (thin). */
export function preallocationFromProto(p: Preallocation): PreallocationName {
  switch (p) {
    case Preallocation.PREALLOCATION_UNSPECIFIED:
    case Preallocation.PREALLOCATION_OFF:
      return "off";
    case Preallocation.PREALLOCATION_METADATA:
      return "metadata";
    case Preallocation.PREALLOCATION_FALLOC:
      return "falloc";
    case Preallocation.PREALLOCATION_FULL:
      return "full";
    default:
      throw new InvalidArgumentError(`unknown preallocation ${p}`, { hint: "use OFF, METADATA, FALLOC or FULL" });
  }
}

export function replicaToProto(r: ReplicaImage): AgentReplica {
  return {
    id: r.id,
    volume: r.volume,
    pool: r.pool,
    path: r.path,
    format: formatToProto(r.format),
    virtualSizeBytes: r.virtualSizeBytes,
    allocatedBytes: r.allocatedBytes,
  };
}

export function poolToProto(node: string, pool: PoolConfig, stats: PoolStats): Pool {
  return {
    node,
    name: pool.name,
    type: pool.type,
    path: pool.path,
    capacityBytes: stats.capacityBytes,
    availableBytes: stats.availableBytes,
    allocatedBytes: stats.allocatedBytes,
    // Provisioned bytes are the controller's view (sum of placed replicas); the agent leaves it to it.
    provisionedBytes: 0,
    overcommitRatio: pool.overcommitRatio,
    replicaCount: stats.replicaCount,
    templateBytes: stats.templateBytes,
  };
}
