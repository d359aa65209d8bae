// NodeService, PoolService, ClusterService and the agents' registry service.
import type {
  AgentRegistryServiceService,
  ClusterServiceService,
  NodeServiceService,
  PoolServiceService,
} from "../gen/stowage/v1/controller.js";
import { NotFoundError } from "../lib/errors.js";
import type { AsyncService } from "../lib/grpc.js";
import { validateName } from "../lib/names.js";
import type { ClusterView } from "./cluster-view.js";
import { nodeToApi } from "./convert.js";
import { keys } from "./keys.js";
import type { NodeRegistry } from "./nodes.js";
import type { ClusterStore } from "./store.js";

export interface NodeApiDeps {
  store: ClusterStore;
  view: ClusterView;
  registry: NodeRegistry;
  instance: string;
  heartbeatIntervalMs: number;
  ensureLeader: () => Promise<void>;
  leader: () => Promise<string>;
  isLeader: () => boolean;
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
    return nodeToApi(spec, d.store.nodeStatus(name)?.value, d.view.pools(name));
  };
  const setCordon = async (name: string, cordoned: boolean) => {
    await d.ensureLeader();
    const e = node(name);
    if (e.value.cordoned !== cordoned) {
      await d.store.write({
        unchanged: [[keys.nodeSpec(name), e.modRevision]],
        put: [{ key: keys.nodeSpec(name), value: { ...e.value, cordoned } }],
      });
    }
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
  };

  const cluster: AsyncService<typeof ClusterServiceService> = {
    async getLeader() {
      return { leader: await d.leader(), isLeader: d.isLeader(), instance: d.instance };
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
