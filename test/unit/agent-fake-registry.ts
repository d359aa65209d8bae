// A fake controller for node-agent tests: serves AgentRegistryService on
// 127.0.0.1:0, records what agents send, and plays leader or follower.
import type { Server } from "@grpc/grpc-js";
import { NotLeaderError } from "../../lib/errors.js";
import { addService, createServer, INSECURE, listen, shutdown } from "../../lib/grpc.js";
import {
  AgentRegistryServiceService,
  type HeartbeatRequest,
  type RegisterNodeRequest,
} from "../../gen/stowage/v1/controller.js";

export class FakeRegistry {
  readonly registers: RegisterNodeRequest[] = [];
  readonly heartbeats: HeartbeatRequest[] = [];
  /**
   * undefined: this instance is the leader. Otherwise it is a follower answering
   * NotLeaderError with this leader address ("" when it knows of no leader).
   */
  leader: string | undefined = undefined;
  heartbeatIntervalMs = 50;
  /** Node names this controller knows; a heartbeat from any other gets reregister = true. */
  readonly known = new Set<string>();

  private constructor(
    private readonly server: Server,
    readonly address: string,
  ) {}

  static async start(): Promise<FakeRegistry> {
    const server = createServer();
    let self: FakeRegistry | undefined;
    addService(server, AgentRegistryServiceService, {
      registerNode: async (req) => self!.onRegister(req),
      heartbeat: async (req) => self!.onHeartbeat(req),
    });
    const port = await listen(server, "127.0.0.1:0", INSECURE);
    self = new FakeRegistry(server, `127.0.0.1:${port}`);
    return self;
  }

  /** Forgets a node, as a controller does when the node's lease expired. */
  forget(name: string): void {
    this.known.delete(name);
  }

  async stop(): Promise<void> {
    await shutdown(this.server, 100);
  }

  private onRegister(req: RegisterNodeRequest) {
    if (this.leader !== undefined) throw new NotLeaderError(this.leader);
    this.registers.push(req);
    this.known.add(req.name);
    return { heartbeatIntervalMs: this.heartbeatIntervalMs };
  }

  private onHeartbeat(req: HeartbeatRequest) {
    if (this.leader !== undefined) throw new NotLeaderError(this.leader);
    if (!this.known.has(req.name)) return { reregister: true };
    this.heartbeats.push(req);
    return { reregister: false };
  }
}
