// stowage-controller: serves the public API and the agent registry, keeps a
// mirror of etcd, and reconciles while it is the elected leader.
import { parseArgs } from "node:util";
import { Etcd3 } from "etcd3";
import {
  AgentRegistryServiceService,
  ClusterServiceService,
  EventServiceService,
  JobServiceService,
  NodeServiceService,
  PoolServiceService,
  ReplicaSyncServiceService,
  SnapshotServiceService,
  BackupServiceService,
  ReplicationServiceService,
  TemplateServiceService,
  TransferServiceService,
  VmServiceService,
  VolumeServiceService,
} from "../gen/stowage/v1/controller.js";
import { errorMessage, NotLeaderError } from "../lib/errors.js";
import { addService, createServer, INSECURE, listen, shutdown } from "../lib/grpc.js";
import { KeyedMutex } from "../lib/keyed-mutex.js";
import { createLogger } from "../lib/logger.js";
import { AgentClients } from "./agents.js";
import { CapacityEvents } from "./capacity-events.js";
import { ClusterView } from "./cluster-view.js";
import { formatDuration, parseDuration } from "./durations.js";
import { eventApi } from "./event-api.js";
import { jobApi } from "./job-api.js";
import { LeaderElection } from "./leader.js";
import { collectMetrics, renderMetrics, serveMetrics } from "./metrics.js";
import { Migrator } from "./migrator.js";
import { nodeApis } from "./node-api.js";
import { NodeRegistry } from "./nodes.js";
import { PoolDedupJobs } from "./pool-dedup.js";
import { PoolCompressJobs } from "./pool-compress.js";
import { Reconciler } from "./reconciler.js";
import { backupApi } from "./backup-api.js";
import { Backups } from "./backups.js";
import { RestoreExports } from "./restore-exports.js";
import { Replications, replicationApi } from "./replications.js";
import { snapshotApi } from "./snapshot-api.js";
import { transferApi } from "./transfer-api.js";
import { Snapshots } from "./snapshots.js";
import { templateApi } from "./template-api.js";
import { Templates } from "./templates.js";
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
  --metrics-port PORT    serve Prometheus metrics at http://HOST:PORT/metrics, HOST being
                         --listen's (pool capacity, thresholds, volumes; default 0: off)
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
      "metrics-port": { type: "string", default: "0" },
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
  const metricsPort = Number(values["metrics-port"]);
  if (!Number.isInteger(metricsPort) || metricsPort < 0 || metricsPort > 65535) {
    throw new Error(`--metrics-port must be a port number 0-65535 (0: no metrics), got "${values["metrics-port"]}"`);
  }

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
  let snapshots: Snapshots | undefined;
  let backups: Backups | undefined;
  let restores: RestoreExports | undefined;
  let replications: Replications | undefined;
  let templates: Templates | undefined;
  let capacityEvents: CapacityEvents | undefined;
  let poolDedup: PoolDedupJobs | undefined;
  let poolCompress: PoolCompressJobs | undefined;
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
    poolDedup: () => poolDedup,
    poolCompress: () => poolCompress,
  });
  addService(server, NodeServiceService, apis.nodes);
  addService(server, PoolServiceService, apis.pools);
  addService(server, ClusterServiceService, apis.cluster);
  addService(server, AgentRegistryServiceService, apis.registry);
  const volumes = volumeApi({
    store,
    view,
    placing,
    instance,
    ensureLeader,
    enqueue: (v) => reconciler?.enqueueVolume(v),
    allocations: async (nodes) => {
      const out = new Map<string, number>();
      await Promise.all(
        nodes
          .filter((n) => registry.isOnline(n))
          .map(async (n) => {
            const inv = await agents.for(n).getInventory({}, { timeoutMs: 2_000 }).catch(() => undefined);
            for (const r of inv?.replicas ?? []) out.set(r.id, r.allocatedBytes);
          }),
      );
      return out;
    },
  });
  addService(server, VolumeServiceService, volumes);
  addService(server, EventServiceService, eventApi({ store, ensureLeader }));
  addService(server, JobServiceService, jobApi({ store, ensureLeader, brake: () => reconciler?.keeper.brake() }));
  addService(server, ReplicaSyncServiceService, syncApi({ store, ensureLeader, enqueue: (v) => reconciler?.enqueueVolume(v), copyRateBytes: Math.round(copyRateMib * 2 ** 20) }));
  addService(
    server,
    SnapshotServiceService,
    snapshotApi({ store, view, placing, instance, ensureLeader, enqueue: (v) => reconciler?.enqueueVolume(v), isOnline: (n) => registry.isOnline(n), snapshots: () => snapshots! }),
  );
  const backupHandlers = backupApi({ store, agents, isOnline: (n) => registry.isOnline(n), ensureLeader, enqueue: (v) => reconciler?.enqueueVolume(v), volumes, backups: () => backups!, restores: () => restores! });
  addService(server, BackupServiceService, backupHandlers);
  addService(server, ReplicationServiceService, replicationApi({ store, ensureLeader, backups: () => backups!, restore: backupHandlers.restoreBackup }));
  addService(
    server,
    TransferServiceService,
    transferApi({ store, agents, isOnline: (n) => registry.isOnline(n), ensureLeader, enqueue: (v) => reconciler?.enqueueVolume(v), volumes }),
  );
  addService(server, TemplateServiceService, templateApi({ store, ensureLeader, templates: () => templates! }));
  addService(server, VmServiceService, vmApi({ store, agents, registry, instance, ensureLeader, volumes, migrator: () => migrator }));

  election.on("elected", (fenceKey) => {
    store.fenceKey = fenceKey;
    templates = new Templates({
      store,
      agents,
      view,
      placing,
      isOnline: (n) => registry.isOnline(n),
      enqueue: (v) => reconciler?.enqueueVolume(v),
      instance,
      copyRateBytes: Math.round(copyRateMib * 2 ** 20),
      log: log.child({ part: "templates" }),
    });
    reconciler = new Reconciler(
      { etcd, store, agents, registry, view, placing, templates, log: log.child({ part: "reconciler" }) },
      { resyncSec, concurrency: 16, copyRateBytes: Math.round(copyRateMib * 2 ** 20), replicaGraceMs },
    );
    reconciler.start();
    migrator = new Migrator({ store, agents, registry }, (v) => reconciler?.enqueueVolume(v), log.child({ part: "migrator" }));
    migrator.start();
    snapshots = new Snapshots({ store, agents, isOnline: (n) => registry.isOnline(n), instance, log: log.child({ part: "snapshots" }) });
    snapshots.start();
    backups = new Backups({
      store,
      agents,
      enqueue: (v) => reconciler?.enqueueVolume(v),
      isOnline: (n) => registry.isOnline(n),
      onlineNodes: () => store.nodeSpecs().map((e) => e.value.name).filter((n) => registry.isOnline(n)),
      instance,
      log: log.child({ part: "backups" }),
    });
    backups.start();
    restores = new RestoreExports({ store, agents, isOnline: (n) => registry.isOnline(n), instance, log: log.child({ part: "restores" }) });
    restores.start();
    replications = new Replications({ store, backups, isOnline: (n) => registry.isOnline(n), log: log.child({ part: "replications" }) });
    replications.start();
    templates.start();
    capacityEvents = new CapacityEvents(store, view, log.child({ part: "capacity" }));
    capacityEvents.start();
    poolDedup = new PoolDedupJobs({ store, view, agents, isOnline: (n) => registry.isOnline(n), instance, log: log.child({ part: "pool-dedup" }) });
    poolDedup.start();
    poolCompress = new PoolCompressJobs({ store, view, agents, isOnline: (n) => registry.isOnline(n), instance, log: log.child({ part: "pool-compress" }) });
    poolCompress.start();
  });
  election.on("lost", () => {
    poolDedup?.stop();
    poolDedup = undefined;
    poolCompress?.stop();
    poolCompress = undefined;
    replications?.stop();
    replications = undefined;
    backups?.stop();
    backups = undefined;
    restores?.stop();
    restores = undefined;
    snapshots?.stop();
    snapshots = undefined;
    templates?.stop();
    templates = undefined;
    capacityEvents?.stop();
    capacityEvents = undefined;
    migrator?.stop();
    migrator = undefined;
    reconciler?.stop();
    reconciler = undefined;
    registry.stop();
    store.fenceKey = "";
  });
  election.start();
  let metrics: Awaited<ReturnType<typeof serveMetrics>> | undefined;
  if (metricsPort > 0) {
    const host = values.listen!.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1");
    metrics = await serveMetrics(host, metricsPort, () => renderMetrics(collectMetrics(store, view, election.isLeader)));
    log.info({ host, port: metrics.port }, "metrics served at /metrics");
  }
  log.info({ address: advertise, replicaGrace: formatDuration(replicaGraceMs) }, "controller serving");
  process.stdout.write(`stowage-controller serving on ${advertise}\n`);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping");
    migrator?.stop();
    capacityEvents?.stop();
    poolDedup?.stop();
    poolCompress?.stop();
    reconciler?.stop();
    registry.stop();
    metrics?.server.close();
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
