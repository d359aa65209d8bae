// stowage-controller: serves the public API and the agent registry, keeps a
// mirror of etcd, and reconciles while it is the elected leader.
import { parseArgs } from "node:util";
import { Etcd3 } from "etcd3";
import {
  AgentRegistryServiceService,
  ClusterServiceService,
  JobServiceService,
  NodeServiceService,
  PoolServiceService,
  ReplicaSyncServiceService,
  VmServiceService,
  VolumeServiceService,
} from "../gen/stowage/v1/controller.js";
import { errorMessage, NotLeaderError } from "../lib/errors.js";
import { addService, createServer, INSECURE, listen, shutdown } from "../lib/grpc.js";
import { KeyedMutex } from "../lib/keyed-mutex.js";
import { createLogger } from "../lib/logger.js";
import { AgentClients } from "./agents.js";
import { ClusterView } from "./cluster-view.js";
import { formatDuration, parseDuration } from "./durations.js";
import { jobApi } from "./job-api.js";
import { LeaderElection } from "./leader.js";
import { Migrator } from "./migrator.js";
import { nodeApis } from "./node-api.js";
import { NodeRegistry } from "./nodes.js";
import { Reconciler } from "./reconciler.js";
import { ClusterStore } from "./store.js";
import { syncApi } from "./sync-api.js";
import { vmApi } from "./vm-api.js";
import { volumeApi } from "./volume-api.js";

const USAGE = `usage: stowage-controller [options]

  --listen HOST:PORT     address of the gRPC API (default 127.0.0.1:7400)
  --advertise HOST:PORT  address other processes use to reach this instance (default: --listen)
  --etcd URL[,URL...]    etcd endpoints (default http://127.0.0.1:2379)
  --instance NAME        instance name in logs (default: the advertised address)
  --leader-ttl SECONDS   leader lease; a standby takes over this long after a crash (default 2)
  --node-ttl SECONDS     a node is offline this long after its last heartbeat (default 5)
  --heartbeat-ms MS      heartbeat interval asked of agents (default 1000)
  --resync SECONDS       full reconcile pass interval (default 30)
  --copy-rate-mib N      MiB/s for copies that bring a replica back (default 0: unlimited)
  --replica-grace DURATION
                         a replica unreachable or failed this long is replaced on another
                         node (600s, 10m, 1h, 1500ms; default 10m); paused while more
                         than a third of the nodes are offline
  -h, --help             show this help
`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      listen: { type: "string", default: "127.0.0.1:7400" },
      advertise: { type: "string" },
      etcd: { type: "string", default: "http://127.0.0.1:2379" },
      instance: { type: "string" },
      "leader-ttl": { type: "string", default: "2" },
      "node-ttl": { type: "string", default: "5" },
      "heartbeat-ms": { type: "string", default: "1000" },
      resync: { type: "string", default: "30" },
      "copy-rate-mib": { type: "string", default: "0" },
      "replica-grace": { type: "string", default: "10m" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const num = (flag: string, v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${flag} must be a positive number, got "${v}"`);
    return n;
  };
  const leaderTtl = num("leader-ttl", values["leader-ttl"]!);
  const nodeTtl = num("node-ttl", values["node-ttl"]!);
  const heartbeatIntervalMs = num("heartbeat-ms", values["heartbeat-ms"]!);
  const resyncSec = num("resync", values.resync!);
  const copyRateMib = Number(values["copy-rate-mib"]);
  if (!Number.isFinite(copyRateMib) || copyRateMib < 0) throw new Error(`--copy-rate-mib must be a number >= 0, got "${values["copy-rate-mib"]}"`);
  const replicaGraceMs = parseDuration("--replica-grace", values["replica-grace"]!);

  const server = createServer();
  const port = await listen(server, values.listen!, INSECURE);
  const advertise = values.advertise ?? values.listen!.replace(/:0$/, `:${port}`);
  const instance = values.instance ?? advertise;
  const log = createLogger("controller", { instance });

  const etcd = new Etcd3({ hosts: values.etcd!.split(","), dialTimeout: 3_000 });
  const store = new ClusterStore(etcd, log.child({ part: "store" }));
  await store.start();

  const election = new LeaderElection(etcd, advertise, leaderTtl, log.child({ part: "election" }));
  const agents = new AgentClients(store, INSECURE);
  let reconciler: Reconciler | undefined;
  let migrator: Migrator | undefined;
  const registry = new NodeRegistry(etcd, store, { heartbeatIntervalMs, nodeTtlSec: nodeTtl }, log.child({ part: "nodes" }), (n) =>
    reconciler?.nodeRegistered(n),
  );
  const view = new ClusterView(store);
  // Placements (creates, scaling, replacements, drains) are decided and written one at a time.
  const placing = new KeyedMutex();
  const ensureLeader = async () => {
    if (!election.isLeader || !reconciler) throw new NotLeaderError(await election.leader());
  };
  const apis = nodeApis({
    store,
    view,
    registry,
    placing,
    instance,
    heartbeatIntervalMs,
    ensureLeader,
    leader: () => election.leader(),
    isLeader: () => election.isLeader,
  });
  addService(server, NodeServiceService, apis.nodes);
  addService(server, PoolServiceService, apis.pools);
  addService(server, ClusterServiceService, apis.cluster);
  addService(server, AgentRegistryServiceService, apis.registry);
  const volumes = volumeApi({ store, view, placing, instance, ensureLeader, enqueue: (v) => reconciler?.enqueueVolume(v) });
  addService(server, VolumeServiceService, volumes);
  addService(server, JobServiceService, jobApi({ store, ensureLeader, brake: () => reconciler?.keeper.brake() }));
  addService(server, ReplicaSyncServiceService, syncApi({ store, ensureLeader, enqueue: (v) => reconciler?.enqueueVolume(v), copyRateBytes: Math.round(copyRateMib * 2 ** 20) }));
  addService(server, VmServiceService, vmApi({ store, agents, registry, instance, ensureLeader, volumes, migrator: () => migrator }));

  election.on("elected", (fenceKey) => {
    store.fenceKey = fenceKey;
    reconciler = new Reconciler(
      { etcd, store, agents, registry, view, placing, log: log.child({ part: "reconciler" }) },
      { resyncSec, concurrency: 16, copyRateBytes: Math.round(copyRateMib * 2 ** 20), replicaGraceMs },
    );
    reconciler.start();
    migrator = new Migrator({ store, agents, registry }, (v) => reconciler?.enqueueVolume(v), log.child({ part: "migrator" }));
    migrator.start();
  });
  election.on("lost", () => {
    migrator?.stop();
    migrator = undefined;
    reconciler?.stop();
    reconciler = undefined;
    registry.stop();
    store.fenceKey = "";
  });
  election.start();
  log.info({ address: advertise, replicaGrace: formatDuration(replicaGraceMs) }, "controller serving");
  process.stdout.write(`stowage-controller serving on ${advertise}\n`);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping");
    migrator?.stop();
    reconciler?.stop();
    registry.stop();
    await election.stop();
    await shutdown(server, 1_000);
    agents.close();
    await store.stop();
    etcd.close();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

main().catch((err) => {
  process.stderr.write(`stowage-controller: ${errorMessage(err)}\n`);
  process.exit(1);
});
