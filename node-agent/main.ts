// Entry point of the node agent: `node dist/node-agent/main.js --config FILE [flags]`.
// Serves AgentService, keeps the node registered, and stops cleanly on SIGTERM/SIGINT.
import { logVerbosity, setLogVerbosity, type Server } from "@grpc/grpc-js";
import { errorMessage, StowageError } from "../lib/errors.js";
import { addDuplexService, addService, createServer, listen, shutdown, type TransportSecurity } from "../lib/grpc.js";
import { createLogger } from "../lib/logger.js";
import { AgentServiceService, BackupTransferServiceService } from "../gen/stowage/v1/agent.js";
import { parseHostPort, withPort } from "./address.js";
import { AgentPools } from "./agent-pools.js";
import { createAgentService } from "./agent-service.js";
import { PoolDedup } from "./pool-dedup.js";
import { PoolCompress } from "./pool-compress.js";
import { PoolJobProgress } from "./pool-job-progress.js";
import { AGENT_USAGE, loadAgentConfig, parseAgentFlags } from "./config.js";
import { backupTransferService } from "./backup-receive.js";
import { BackupShipper } from "./backup-ship.js";
import { Backups } from "./backups.js";
import { FrontendManager } from "./frontends.js";
import { DomainManager } from "./libvirt/domains.js";
import { Virsh } from "./libvirt/virsh.js";
import { QsdSupervisor } from "./qsd/supervisor.js";
import { Registration } from "./registration.js";
import { agentVersion } from "./version.js";

async function main(argv: string[]): Promise<void> {
  const flags = parseAgentFlags(argv);
  if (flags.help) {
    process.stdout.write(AGENT_USAGE);
    return;
  }
  const config = await loadAgentConfig(flags);
  const logger = createLogger("node-agent", { node: config.name });
  const pools = AgentPools.fromConfig(config, logger);

  // The host's qemu-storage-daemon: adopted if it survived an agent restart, else started.
  const qsd: QsdSupervisor = new QsdSupervisor({
    dataDir: config.dataDir,
    nbd: config.nbd,
    logger: logger.child({ part: "qsd" }),
    onLost: (reason) => {
      logger.error({ err: reason?.message }, "qemu-storage-daemon lost; starting a new one");
      // Re-registering makes the controller re-apply every replica and export of this node.
      // A pause between attempts, so a daemon that keeps dying is not restarted in a tight loop.
      setTimeout(() => {
        void qsd.ensureRunning([]).then(
          () => registration.reregister(),
          (err) => logger.error({ err: errorMessage(err) }, "cannot restart qemu-storage-daemon"),
        );
      }, 1_000);
    },
  });
  const qsdStatus = await qsd.ensureRunning([]);
  logger.info({ pid: qsdStatus.pid, adopted: qsdStatus.adopted }, qsdStatus.adopted ? "adopted qemu-storage-daemon" : "started qemu-storage-daemon");
  const frontends = new FrontendManager(config.dataDir, config.frontendDir, logger.child({ part: "frontends" }), config.controllers, config.name);

  const server = createServer();
  const domains = config.libvirt && new DomainManager(new Virsh(config.libvirt.uri), logger.child({ part: "libvirt" }));
  const backups = new Backups({ dataDir: config.dataDir, host: parseHostPort(config.advertise, { allowPortZero: true }).host, logger: logger.child({ part: "backups" }) });
  const poolJobs = new PoolJobProgress();
  const dedup = new PoolDedup(pools, config.dataDir, logger.child({ part: "dedup" }), poolJobs);
  const compress = new PoolCompress(pools, config.dataDir, {
    progress: poolJobs,
    exportedIds: async () => new Set((await qsd.exports.listExports()).map((e) => e.replicaId)),
    log: logger.child({ part: "compress" }),
  });
  const shipper = new BackupShipper({ dataDir: config.dataDir, security: config.tls, logger: logger.child({ part: "ship" }) });
  addService(server, AgentServiceService, createAgentService(pools, qsd, frontends, domains, backups, dedup, compress, shipper));
  addDuplexService(server, BackupTransferServiceService, backupTransferService(() => backups.chunkStore(), logger.child({ part: "receive" })));
  const port = await bind(server, config.listen, config.tls);
  const listening = withPort(config.listen, port);
  // With port 0 the port is known only now; the controllers must get the real one.
  const advertise = parseHostPort(config.advertise, { allowPortZero: true }).port === 0 ? withPort(config.advertise, port) : config.advertise;
  const version = agentVersion();

  const registration = new Registration({
    name: config.name,
    address: advertise,
    labels: config.labels,
    controllers: config.controllers,
    agentVersion: version,
    pools: () => pools.report(),
    libvirt: config.libvirt && { uri: config.libvirt.peerUri, migrationHost: config.libvirt.migrationHost },
    logger,
    security: config.tls,
  });
  registration.start();
  logger.info(
    { listen: listening, advertise, pools: config.pools.map((p) => `${p.name}=${p.path}`), version },
    `node agent ${config.name} serving on ${listening}`,
  );

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) process.exit(1); // a second signal: do not wait any longer
    stopping = true;
    logger.info({ signal }, "stopping");
    await registration.stop();
    await shutdown(server);
    // Leave the daemon and the frontends running: VMs keep their I/O across an agent restart.
    await qsd.detach();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

/** Binds, turning grpc-js's own bind error log and long message into one clear error. */
async function bind(server: Server, address: string, tls: TransportSecurity): Promise<number> {
  setLogVerbosity(logVerbosity.NONE);
  try {
    return await listen(server, address, tls);
  } catch (err) {
    // "No address added out of total 1 resolved errors: [listen EADDRINUSE: ...]" -> the part in brackets
    const inner = /\[(.+)\]\s*$/.exec(errorMessage(err))?.[1];
    throw new StowageError(`cannot listen on ${address}: ${inner ?? errorMessage(err)}`, {
      hint: "is another process using that address, and is it an address of this host?",
    });
  } finally {
    setLogVerbosity(logVerbosity.ERROR);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const hint = err instanceof StowageError && err.hint ? ` (${err.hint})` : "";
  process.stderr.write(`stowage-agent: ${errorMessage(err)}${hint}\n`);
  process.exit(1);
});
