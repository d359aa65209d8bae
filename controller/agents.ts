// gRPC clients for node agents, one channel per agent address.
import { AgentServiceService } from "../gen/stowage/v1/agent.js";
import { UnavailableError } from "../lib/errors.js";
import { Channel, type PromiseClient, type TransportSecurity } from "../lib/grpc.js";
import type { ClusterStore } from "./store.js";

export type AgentClient = PromiseClient<typeof AgentServiceService>;

export class AgentClients {
  private readonly channels = new Map<string, { channel: Channel; client: AgentClient }>();

  constructor(
    private readonly store: ClusterStore,
    private readonly security: TransportSecurity,
  ) {}

  /** The client for a node's agent at its registered address. */
  for(node: string): AgentClient {
    const spec = this.store.nodeSpec(node);
    if (!spec) throw new UnavailableError(`node ${node} is not registered`);
    const address = spec.value.address;
    let entry = this.channels.get(address);
    if (!entry) {
      const channel = new Channel(address, this.security);
      entry = { channel, client: channel.service(AgentServiceService) };
      this.channels.set(address, entry);
    }
    return entry.client;
  }

  close(): void {
    for (const { channel } of this.channels.values()) channel.close();
    this.channels.clear();
  }
}
