// An in-process simulated agent for the memory part: many volumes without real images.
import type { Server } from "@grpc/grpc-js";
import { AgentServiceService, type AgentReplica } from "../../../gen/stowage/v1/agent.js";
import { AgentRegistryServiceService } from "../../../gen/stowage/v1/controller.js";
import type { Pool } from "../../../gen/stowage/v1/types.js";
import { DeadlineError, FailedPreconditionError, NotFoundError, NotLeaderError, UnavailableError } from "../../../lib/errors.js";
import { addService, Channel, createServer, INSECURE, listen, shutdown, type PromiseClient } from "../../../lib/grpc.js";

const PiB = 2 ** 50;

/** An in-process agent: AgentService backed by a Map, registered and heartbeating like node-agent. */
const noVms = async (): Promise<never> => {
  throw new FailedPreconditionError("simulated agents have no libvirt");
};
const NO_VMS = {
  copyReplica: noVms,
  getDomain: noVms,
  attachDisk: noVms,
  detachDisk: noVms,
  migrateDomain: noVms,
  getDomainJob: noVms,
  snapshotReplica: noVms,
  deleteReplicaSnapshot: noVms,
  revertReplica: noVms,
  freezeFrontend: noVms,
  thawFrontend: noVms,
  writeBackup: noVms,
  shipBackup: noVms,
  serveBackup: noVms,
  stopExport: noVms,
  deleteStoredBackup: noVms,
  listBackupBitmaps: noVms,
  prepareFleece: noVms,
  markBackupPoint: noVms,
  exportFleece: noVms,
  releaseFleece: noVms,
  settleBackupBitmaps: noVms,
  verifyStore: noVms,
  ensureTemplateImage: noVms,
  deleteTemplateImage: noVms,
  openTemplateExport: noVms,
  closeTemplateExport: noVms,
  dedupImages: noVms,
  compressImages: noVms,
  getPoolJobProgress: noVms,
};

export class SimAgent {
  private readonly replicas = new Map<string, AgentReplica>();
  private address = "";
  private stopped = false;
  private loop?: Promise<void>;
  private wake?: () => void;
  private readonly channels = new Map<string, Channel>();

  private constructor(
    readonly name: string,
    private readonly server: Server,
  ) {}

  static async start(name: string, controllers: string[]): Promise<SimAgent> {
    const server = createServer();
    const self = new SimAgent(name, server);
    addService(server, AgentServiceService, {
      ...NO_VMS,
      getInventory: async () => ({ node: name, pools: self.pools(), replicas: [...self.replicas.values()], frontends: [] }),
      ensureReplica: async (req) => {
        let replica = self.replicas.get(req.id);
        let created = false;
        let resized = false;
        if (!replica) {
          replica = {
            id: req.id,
            volume: req.volume,
            pool: req.pool,
            path: `/sim/${req.id}`,
            format: req.format,
            virtualSizeBytes: req.sizeBytes,
            allocatedBytes: 0,
          };
          self.replicas.set(req.id, replica);
          created = true;
        } else if (replica.virtualSizeBytes < req.sizeBytes) {
          replica.virtualSizeBytes = req.sizeBytes;
          resized = true;
        }
        return { replica, created, resized };
      },
      deleteReplica: async (req) => ({ deleted: self.replicas.delete(req.id) }),
      // The memory benchmark never attaches volumes.
      ensureFrontend: async () => {
        throw new FailedPreconditionError("simulated agents run no frontends");
      },
      removeFrontend: async () => ({ removed: false }),
    });
    const port = await listen(server, "127.0.0.1:0", INSECURE);
    self.address = `127.0.0.1:${port}`;
    self.loop = self.register(controllers);
    return self;
  }

  private pools(): Pool[] {
    return [
      {
        node: this.name,
        name: "default",
        type: "dir",
        path: "/sim",
        capacityBytes: PiB,
        availableBytes: PiB,
        allocatedBytes: 0,
        provisionedBytes: 0,
        overcommitRatio: 10,
        replicaCount: 0,
        templateBytes: 0,
      },
    ];
  }

  private client(address: string): PromiseClient<typeof AgentRegistryServiceService> {
    let ch = this.channels.get(address);
    if (!ch) {
      ch = new Channel(address, INSECURE);
      this.channels.set(address, ch);
    }
    return ch.service(AgentRegistryServiceService);
  }

  /** RegisterNode, then Heartbeat every interval; follows the leader, re-registers when asked. */
  private async register(controllers: string[]): Promise<void> {
    let current = controllers[0]!;
    let index = 0;
    let registered = false;
    let interval = 1_000;
    while (!this.stopped) {
      try {
        if (!registered) {
          const res = await this.client(current).registerNode(
            { name: this.name, address: this.address, labels: { zone: this.name, rack: "" }, pools: this.pools(), agentVersion: "sim" },
            { timeoutMs: 2_000 },
          );
          interval = res.heartbeatIntervalMs > 0 ? res.heartbeatIntervalMs : 1_000;
          registered = true;
        } else {
          const res = await this.client(current).heartbeat({ name: this.name, pools: this.pools() }, { timeoutMs: 2_000 });
          if (res.reregister) {
            registered = false;
            continue;
          }
        }
        await this.sleep(interval);
      } catch (err) {
        if (this.stopped) break;
        if (err instanceof NotFoundError) {
          registered = false;
          continue;
        }
        if (err instanceof NotLeaderError && err.leader && err.leader !== current) {
          current = err.leader;
        } else {
          index = (index + 1) % controllers.length;
          current = controllers[index]!;
        }
        await this.sleep(err instanceof NotLeaderError || err instanceof UnavailableError || err instanceof DeadlineError ? 200 : 1_000);
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.loop;
    for (const ch of this.channels.values()) ch.close();
    await shutdown(this.server, 200);
  }
}
