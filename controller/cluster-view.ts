// Derived capacity figures: what is provisioned on each node and pool, and the
// snapshot the scheduler places against. Pure reads of the store.
import { poolDedupToApi } from "./pool-dedup.js";
import { poolCompressToApi } from "./pool-compress.js";
import type { Pool } from "../gen/stowage/v1/types.js";
import { effectivePool, poolCapacity, type EffectivePool } from "./capacity.js";
import { poolToApi } from "./convert.js";
import type { PoolRecord, VolumeSpec } from "./model.js";
import type { ClusterSnapshot } from "./scheduler.js";
import type { ClusterStore } from "./store.js";

export interface Usage {
  provisionedBytes: number;
  replicaCount: number;
}

/**
 * Keeps provisioned bytes and replica counts per pool and per node up to date
 * as volume specs change, so placing a volume costs O(nodes), not O(volumes).
 */
export class ClusterView {
  private readonly counted = new Map<string, VolumeSpec>();
  private readonly poolUsage = new Map<string, Usage>();
  private readonly nodeReplicas = new Map<string, number>();

  constructor(private readonly store: ClusterStore) {
    for (const { value } of store.volumeSpecs()) this.recount(value.name);
    store.on("change", (c) => {
      if (c.kind === "volume-spec") this.recount(c.name);
    });
  }

  private recount(name: string): void {
    const old = this.counted.get(name);
    if (old) this.add(old, -1);
    const now = this.store.volumeSpec(name)?.value;
    if (now) this.add(now, 1);
    if (now) this.counted.set(name, now);
    else this.counted.delete(name);
  }

  private add(v: VolumeSpec, sign: 1 | -1): void {
    for (const p of v.placement) {
      const key = `${p.node}/${p.pool}`;
      const u = this.poolUsage.get(key) ?? { provisionedBytes: 0, replicaCount: 0 };
      u.provisionedBytes += sign * v.sizeBytes;
      u.replicaCount += sign;
      this.poolUsage.set(key, u);
      this.nodeReplicas.set(p.node, (this.nodeReplicas.get(p.node) ?? 0) + sign);
    }
  }

  /** Provisioned bytes and replica counts keyed by "node/pool" and by node. */
  usage(): { pools: ReadonlyMap<string, Usage>; nodes: ReadonlyMap<string, number> } {
    return { pools: this.poolUsage, nodes: this.nodeReplicas };
  }

  /**
   * Live pool figures when the node is online, the registered ones otherwise, with
   * the operator's settings (stowctl pool set) applied: the overcommit ratio here
   * is the one placement and resizing go by.
   */
  poolRecords(node: string): EffectivePool[] {
    const records: PoolRecord[] = this.store.nodeStatus(node)?.value.pools ?? this.store.nodeSpec(node)?.value.pools ?? [];
    const settings = this.store.nodeSpec(node)?.value.poolSettings;
    return records.map((p) => effectivePool(p, settings?.[p.name]));
  }

  pools(node: string, usage = this.usage()): Pool[] {
    return this.poolRecords(node).map((p) => {
      const u = usage.pools.get(`${node}/${p.name}`);
      const dedup = poolDedupToApi(this.store.nodeSpec(node)?.value.poolSettings?.[p.name], this.store.poolDedup(node, p.name)?.value, this.store.nodeStatus(node) !== undefined, new Date());
      const compress = poolCompressToApi(this.store.nodeSpec(node)?.value.poolSettings?.[p.name], this.store.poolCompress(node, p.name)?.value, this.store.nodeStatus(node) !== undefined, new Date());
      return { ...poolToApi(node, p, u?.provisionedBytes ?? 0, u?.replicaCount ?? 0), capacity: poolCapacity(p, u?.provisionedBytes ?? 0), dedup, compress };
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
