// A running frontend: the NBD server on the volume's unix socket, in front of
// the volume's replicas. Start and stop only; main.ts turns it into a process.
import type { Logger } from "pino";
import { NbdServer } from "../lib/nbd/server.js";
import type { FrontendArgs } from "./args.js";
import { Replica } from "./replica.js";
import { ReplicaSet } from "./replica-set.js";
import { SyncClient } from "./sync/sync-client.js";

export class Frontend {
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly server: NbdServer,
    readonly replicas: ReplicaSet,
    private readonly log: Logger,
    private readonly sync: SyncClient | undefined,
  ) {}

  /** Connects to every replica, then listens. Fails (and cleans up) if any replica is unreachable. */
  static async start(args: FrontendArgs, log: Logger): Promise<Frontend> {
    const opened = await Promise.allSettled(args.replicas.map((a) => Replica.open(a, args.connections, log)));
    const replicas = opened.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    const failed = opened.find((r): r is PromiseRejectedResult => r.status === "rejected");
    let set: ReplicaSet | undefined;
    const sync = args.controllers.length > 0 ? new SyncClient({ controllers: args.controllers, volume: args.exportName, log }) : undefined;
    try {
      if (failed) throw failed.reason;
      set = new ReplicaSet(replicas, log, sync && { recorder: sync, generation: args.generation });
      const server = new NbdServer({ name: args.exportName, description: `stowage volume ${args.exportName}`, backend: set, log });
      set.onBusy = (busy) => server.setBackendBusy(busy);
      await set.warmUp();
      await server.listenUnix(args.socketPath, args.socketMode);
      log.info(
        { socket: args.socketPath, replicas: args.replicas.map((r) => r.spec), connections: args.connections, size: set.size },
        "frontend listening",
      );
      return new Frontend(server, set, log, sync);
    } catch (err) {
      sync?.close();
      await Promise.all(replicas.map((r) => r.close().catch(() => undefined)));
      throw err;
    }
  }

  /**
   * Clean stop: no new connections; clients' requests in flight finish (new ones get
   * ESHUTDOWN); then every replica connection is flushed and sent NBD_CMD_DISC.
   */
  stop(timeoutMs = 10_000): Promise<void> {
    this.stopping ??= (async () => {
      await this.server.shutdown(timeoutMs);
      await this.replicas.close();
      this.sync?.close();
      this.log.info("frontend stopped");
    })();
    return this.stopping;
  }
}
