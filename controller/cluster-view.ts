// Derived capacity figures: what is provisioned on each node and pool, and the
// snapshot the scheduler places against. Pure reads of the store.
import type { Pool } from "../gen/stowage/v1/types.js";
import { poolToApi } from "./convert.js";
import type { PoolRecord } from "./model.js";
import type { ClusterSnapshot } from "./scheduler.js";
import type { ClusterStore } from "./store.js";

export interface Usage {
  provisionedBytes: number;
  replicaCount: number;
}

export class ClusterView {
  constructor(private readonly store: ClusterStore) {}

  /** Provisioned bytes and replica counts keyed by "node/pool" and by node. */
  usage(): { pools: Map<string, Usage>; nodes: Map<string, number> } {
    const pools = new Map<string, Usage>();
    const nodes = new Map<string, number>();
    for (const { value: v } of this.store.volumeSpecs()) {
      for (const p of v.placement) {
        const key = `${p.node}/${p.pool}`;
        const u = pools.get(key) ?? { provisionedBytes: 0, replicaCount: 0 };
        u.provisionedBytes += v.sizeBytes;
        u.replicaCount += 1;
        pools.set(key, u);
        nodes.set(p.node, (nodes.get(p.node) ?? 0) + 1);
      }
    }
    return { pools, nodes };
  }

  /** Live pool figures when the node is online, the registered ones otherwise. */
  poolRecords(node: string): PoolRecord[] {
    return this.store.nodeStatus(node)?.value.pools ?? this.store.nodeSpec(node)?.value.pools ?? [];
  }

  pools(node: string, usage = this.usage()): Pool[] {
    return this.poolRecords(node).map((p) => {
      const u = usage.pools.get(`${node}/${p.name}`);
      return poolToApi(node, p, u?.provisionedBytes ?? 0, u?.replicaCount ?? 0);
    });
  }

  snapshot(): ClusterSnapshot {
    const usage = this.usage();
    return {
      nodes: this.store.nodeSpecs().map(({ value: n }) => ({
        name: n.name,
        online: this.store.nodeStatus(n.name) !== undefined,
        cordoned: n.cordoned,
        labels: n.labels,
        replicaCount: usage.nodes.get(n.name) ?? 0,
        pools: this.poolRecords(n.name).map((p) => ({
          name: p.name,
          capacityBytes: p.capacityBytes,
          availableBytes: p.availableBytes,
          provisionedBytes: usage.pools.get(`${n.name}/${p.name}`)?.provisionedBytes ?? 0,
          overcommitRatio: p.overcommitRatio,
        })),
      })),
    };
  }
}
