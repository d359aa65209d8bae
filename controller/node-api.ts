// NodeService, PoolService, ClusterService and the agents' registry service.
import type {
  AgentRegistryServiceService,
  ClusterServiceService,
  NodeServiceService,
  PoolServiceService,
} from "../gen/stowage/v1/controller.js";
import { FailedPreconditionError, InsufficientCapacityError, NotFoundError } from "../lib/errors.js";
import type { AsyncService } from "../lib/grpc.js";
import type { KeyedMutex } from "../lib/keyed-mutex.js";
import { validateName } from "../lib/names.js";
import { capacityTotals } from "./capacity.js";
import type { ClusterView } from "./cluster-view.js";
import { clusterStatus } from "./cluster-status.js";
import { nodeToApi } from "./convert.js";
import { drainView, planDrain } from "./drain.js";
import { jobsOf } from "./job-api.js";
import { keys } from "./keys.js";
import type { NodeSpec } from "./model.js";
import type { NodeRegistry } from "./nodes.js";
import { dedupRunToApi, type PoolDedupJobs } from "./pool-dedup.js";
import { compressRunToApi, type PoolCompressJobs } from "./pool-compress.js";
import { setPool } from "./pool-settings.js";
import { PLACEMENT_LOCK } from "./replica-keeper.js";
import type { ClusterStore } from "./store.js";

export interface NodeApiDeps {
  store: ClusterStore;
  view: ClusterView;
  registry: NodeRegistry;
  /** Shared with the volume API and the reconciler: placements are decided one at a time. */
  placing: KeyedMutex;
  instance: string;
  heartbeatIntervalMs: number;
  ensureLeader: () => Promise<void>;
  leader: () => Promise<string>;
  isLeader: () => boolean;
  /** The leader's pool dedup runner. */
  poolDedup?: () => PoolDedupJobs | undefined;
  /** The leader's pool compression runner. */
  poolCompress?: () => PoolCompressJobs | undefined;
}

export function nodeApis(d: NodeApiDeps) {
  const node = (name: string) => {
    validateName("node", name);
    const e = d.store.nodeSpec(name);
    if (!e) throw new NotFoundError("node", name);
    return e;
  };
  const nodeView = (name: string) => {
    const spec = node(name).value;
    let drain;
    if (spec.drain) {
      const specs = d.store.volumeSpecs().map((e) => e.value).filter((v) => v.placement.some((p) => p.node === name));
      drain = drainView(spec, specs, (v) => d.store.volumeStatus(v)?.value, jobsOf(d.store, specs));
    }
    const pools = d.view.pools(name);
    return { ...nodeToApi(spec, d.store.nodeStatus(name)?.value, pools, { replicaCount: d.view.usage().nodes.get(name) ?? 0, drain }), capacity: capacityTotals(pools) };
  };
  const writeNode = async (name: string, change: (spec: NodeSpec) => NodeSpec | undefined) => {
    const e = node(name);
    const next = change(e.value);
    if (next) await d.store.write({ unchanged: [[keys.nodeSpec(name), e.modRevision]], put: [{ key: keys.nodeSpec(name), value: next }] });
  };
  const setCordon = async (name: string, cordoned: boolean) => {
    await d.ensureLeader();
    // Uncordon also ends a drain: replicas not moved yet stay where they are.
    await writeNode(name, (n) => {
      if (n.cordoned === cordoned && (cordoned || !n.drain)) return undefined;
      const { drain: _, ...rest } = n;
      return cordoned ? { ...n, cordoned } : { ...rest, cordoned };
    });
    return { node: nodeView(name) };
  };

  const nodes: AsyncService<typeof NodeServiceService> = {
    async listNodes() {
      await d.ensureLeader();
      const names = d.store.nodeSpecs().map((e) => e.value.name).sort();
      return { nodes: names.map(nodeView) };
    },
    async getNode(req) {
      await d.ensureLeader();
      return { node: nodeView(req.name) };
    },
    cordonNode: (req) => setCordon(req.name, true),
    uncordonNode: (req) => setCordon(req.name, false),
    async drainNode(req) {
      await d.ensureLeader();
      return d.placing.run(PLACEMENT_LOCK, async () => {
        const already = node(req.name).value.drain !== undefined;
        const draining = new Set(d.store.nodeSpecs().filter((e) => e.value.drain && e.value.name !== req.name).map((e) => e.value.name));
        const plan = planDrain(req.name, d.store.volumeSpecs().map((e) => e.value), d.view.snapshot(), draining);
        // A drain under way is not refused again: asking once more shows (and waits for) its progress.
        if (plan.refusals.length > 0 && !already) {
          const first = plan.refusals[0]!;
          throw new InsufficientCapacityError(
            `cannot drain node ${req.name}: nowhere to move ${plan.refusals.map((r) => `the replica of volume ${r.volume} (${r.reason})`).join("; ")}`,
            {
              hint: "add nodes or free space, uncordon a node, or lower the volume's replica count (stowctl volume set VOL --replicas N); nothing was changed",
              rejections: first.rejections,
            },
          );
        }
        if (!req.dryRun) {
          await writeNode(req.name, (n) => (n.drain && n.cordoned ? undefined : { ...n, cordoned: true, drain: n.drain ?? { sinceMs: Date.now() } }));
        }
        return { node: nodeView(req.name), moves: plan.moves };
      });
    },
  };

  const pools: AsyncService<typeof PoolServiceService> = {
    async listPools(req) {
      await d.ensureLeader();
      if (req.node) node(req.node);
      const usage = d.view.usage();
      const names = d.store.nodeSpecs().map((e) => e.value.name).filter((n) => !req.node || n === req.node).sort();
      return { pools: names.flatMap((n) => d.view.pools(n, usage)) };
    },
    async getPool(req) {
      await d.ensureLeader();
      node(req.node);
      const pool = d.view.pools(req.node).find((p) => p.name === req.name);
      if (!pool) throw new NotFoundError("pool", `${req.node}/${req.name}`);
      return { pool };
    },
    async setPool(req) {
      await d.ensureLeader();
      return setPool(d.store, d.view, req);
    },
    async dedupPool(req) {
      await d.ensureLeader();
      const runner = d.poolDedup?.();
      if (!runner) throw new FailedPreconditionError("this controller runs no pool dedup", { hint: "retry in a moment" });
      const rec = await runner.run(req.node, req.name, "manual");
      return { pool: d.view.pools(req.node).find((p) => p.name === req.name), run: dedupRunToApi(rec) };
    },
    async compressPool(req) {
      await d.ensureLeader();
      const runner = d.poolCompress?.();
      if (!runner) throw new FailedPreconditionError("this controller runs no pool compression", { hint: "retry in a moment" });
      const rec = await runner.run(req.node, req.name, "manual", req.coldAfter || undefined);
      return { pool: d.view.pools(req.node).find((p) => p.name === req.name), run: compressRunToApi(rec) };
    },
  };

  const cluster: AsyncService<typeof ClusterServiceService> = {
    async getLeader() {
      return { leader: await d.leader(), isLeader: d.isLeader(), instance: d.instance };
    },
    async getClusterStatus() {
      await d.ensureLeader();
      const usage = d.view.usage();
      const nodes = d.store.nodeSpecs().map(({ value: n }) => ({
        name: n.name,
        online: d.store.nodeStatus(n.name) !== undefined,
        cordoned: n.cordoned,
        pools: d.view.pools(n.name, usage),
      }));
      const volumes = d.store.volumeSpecs().map(({ value: v }) => ({
        name: v.name,
        phase: v.deleting ? ("deleting" as const) : (d.store.volumeStatus(v.name)?.value.phase ?? "creating"),
      }));
      const active = d.store.events().map((e) => e.value).filter((e) => !e.resolvedAtMs);
      return clusterStatus({ nodes, volumes, active, leader: await d.leader() });
    },
  };

  const registry: AsyncService<typeof AgentRegistryServiceService> = {
    async registerNode(req) {
      await d.ensureLeader();
      await d.registry.register(req.name, req.address, req.labels, req.pools, req.agentVersion, req.libvirt);
      return { heartbeatIntervalMs: d.heartbeatIntervalMs };
    },
    async heartbeat(req) {
      await d.ensureLeader();
      return { reregister: !(await d.registry.heartbeat(req.name, req.pools)) };
    },
  };

  return { nodes, pools, cluster, registry };
}
