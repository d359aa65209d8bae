// Node registration and liveness. A node's status key is attached to an etcd
// lease that the leader refreshes on every heartbeat: when heartbeats stop the
// lease expires, the key disappears, and the node is offline.
import type { Etcd3, Lease } from "etcd3";
import type { NodeLabels, Pool } from "../gen/stowage/v1/types.js";
import { InvalidArgumentError } from "../lib/errors.js";
import type { Logger } from "../lib/logger.js";
import { validateName } from "../lib/names.js";
import { keys } from "./keys.js";
import type { NodeSpec, NodeStatus, PoolRecord } from "./model.js";
import type { ClusterStore } from "./store.js";

export interface NodeRegistryOptions {
  heartbeatIntervalMs: number;
  /** Lease TTL in seconds: a node is offline this long after its last heartbeat. */
  nodeTtlSec: number;
}

export function poolRecords(pools: Pool[]): PoolRecord[] {
  return pools.map((p) => ({
    name: p.name,
    type: p.type,
    path: p.path,
    capacityBytes: p.capacityBytes,
    availableBytes: p.availableBytes,
    allocatedBytes: p.allocatedBytes,
    templateBytes: p.templateBytes,
    overcommitRatio: p.overcommitRatio,
  }));
}

export class NodeRegistry {
  private readonly leases = new Map<string, Lease>();

  constructor(
    private readonly etcd: Etcd3,
    private readonly store: ClusterStore,
    private readonly opts: NodeRegistryOptions,
    private readonly log: Logger,
    /** Called after a node (re)registers, to re-apply its replicas. */
    private readonly onRegistered: (node: string) => void,
  ) {}

  isOnline(node: string): boolean {
    return this.store.nodeStatus(node) !== undefined;
  }

  async register(
    name: string,
    address: string,
    labels: NodeLabels | undefined,
    pools: Pool[],
    agentVersion: string,
    libvirt?: { uri: string; migrationHost: string },
  ): Promise<void> {
    validateName("node", name);
    if (!/^[^\s/]+:\d+$/.test(address)) {
      throw new InvalidArgumentError(`invalid agent address "${address}"`, { hint: "use HOST:PORT" });
    }
    const prev = this.store.nodeSpec(name);
    const spec: NodeSpec = {
      name,
      address,
      labels: { zone: labels?.zone ?? "", rack: labels?.rack ?? "" },
      // The operator's part of the spec outlives agent restarts.
      cordoned: prev?.value.cordoned ?? false,
      ...(prev?.value.drain ? { drain: prev.value.drain } : {}),
      ...(prev?.value.poolSettings ? { poolSettings: prev.value.poolSettings } : {}),
      registeredAtMs: Date.now(),
      agentVersion,
      pools: poolRecords(pools),
      ...(libvirt?.uri ? { libvirt: { uri: libvirt.uri, migrationHost: libvirt.migrationHost } } : {}),
    };
    const lease = await this.freshLease(name);
    const status: NodeStatus = { lastHeartbeatMs: Date.now(), pools: poolRecords(pools) };
    await this.store.write({
      unchanged: prev ? [[keys.nodeSpec(name), prev.modRevision]] : undefined,
      absent: prev ? undefined : [keys.nodeSpec(name)],
      put: [
        { key: keys.nodeSpec(name), value: spec },
        { key: keys.nodeStatus(name), value: status, lease },
      ],
    });
    this.log.info({ node: name, address }, prev ? "node re-registered" : "node registered");
    this.onRegistered(name);
  }

  /** Returns false when the node must register again. */
  async heartbeat(name: string, pools: Pool[]): Promise<boolean> {
    if (!this.store.nodeSpec(name)) return false;
    const records = poolRecords(pools);
    let lease = this.leases.get(name);
    const status = this.store.nodeStatus(name);
    if (lease && status) {
      try {
        await lease.keepaliveOnce();
      } catch {
        lease = undefined;
      }
    } else {
      lease = undefined;
    }
    const changed = !status || JSON.stringify(status.value.pools) !== JSON.stringify(records);
    if (!lease || changed) {
      const leaseId = lease ? await lease.grant() : await this.freshLease(name);
      const value: NodeStatus = { lastHeartbeatMs: Date.now(), pools: records };
      await this.store.write({ put: [{ key: keys.nodeStatus(name), value, lease: leaseId }] });
      if (!status) this.log.info({ node: name }, "node online");
    }
    return true;
  }

  private async freshLease(name: string): Promise<string> {
    this.leases.get(name)?.release();
    const lease = this.etcd.lease(this.opts.nodeTtlSec, { autoKeepAlive: false });
    lease.on("lost", () => {
      if (this.leases.get(name) === lease) this.leases.delete(name);
    });
    const id = await lease.grant();
    this.leases.set(name, lease);
    return id;
  }

  /** Stops refreshing (without revoking) so a successor can take the nodes over. */
  stop(): void {
    for (const l of this.leases.values()) l.release();
    this.leases.clear();
  }
}
