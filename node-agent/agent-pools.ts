// The pools of this node, by name, and their reports (fresh statfs and usage)
// for inventories, registration and heartbeats.
import { errorMessage, NotFoundError } from "../lib/errors.js";
import type { Logger } from "../lib/logger.js";
import type { Pool } from "../gen/stowage/v1/types.js";
import type { AgentConfig } from "./config.js";
import { DirPool } from "./dir-pool.js";
import { poolToProto } from "./proto-mapping.js";

export class AgentPools {
  private readonly byName = new Map<string, DirPool>();
  /** Pools whose last stats() failed, so a broken pool is logged once, not every heartbeat. */
  private readonly failing = new Set<string>();

  constructor(
    readonly node: string,
    pools: DirPool[],
    private readonly logger?: Logger,
  ) {
    for (const p of pools) this.byName.set(p.name, p);
  }

  static fromConfig(config: AgentConfig, logger?: Logger): AgentPools {
    return new AgentPools(config.name, config.pools.map((p) => new DirPool(p, { logger })), logger);
  }

  /** The pool named `name`, or NotFoundError("pool", name). */
  get(name: string): DirPool {
    const pool = this.byName.get(name);
    if (!pool) {
      throw new NotFoundError("pool", name, { hint: `pools on node ${this.node}: ${[...this.byName.keys()].join(", ")}` });
    }
    return pool;
  }

  all(): DirPool[] {
    return [...this.byName.values()];
  }

  /** One Pool message per pool. A pool whose filesystem cannot be read reports zero capacity. */
  async report(): Promise<Pool[]> {
    return Promise.all(
      this.all().map(async (p) => {
        try {
          const stats = await p.stats();
          if (this.failing.delete(p.name)) this.logger?.info({ pool: p.name }, "pool readable again");
          return poolToProto(this.node, p.config, stats);
        } catch (err) {
          if (!this.failing.has(p.name)) this.logger?.error({ pool: p.name, path: p.path, err: errorMessage(err) }, "cannot read pool");
          this.failing.add(p.name);
          return poolToProto(this.node, p.config, { capacityBytes: 0, availableBytes: 0, allocatedBytes: 0, replicaCount: 0, templateBytes: 0 });
        }
      }),
    );
  }
}
