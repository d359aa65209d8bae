// A running frontend: the NBD server on the volume's unix socket, in front of
// the volume's replicas. Start and stop only; main.ts turns it into a process.
import type { Logger } from "pino";
import { NbdServer } from "../lib/nbd/server.js";
import type { FrontendArgs } from "./args.js";
import { Replica } from "./replica.js";
import { ReplicaSet } from "./replica-set.js";
import { SyncClient } from "./sync/sync-client.js";
import { ControlServer, controlSocketPath } from "./control.js";

export class Frontend {
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly server: NbdServer,
    readonly replicas: ReplicaSet,
    private readonly log: Logger,
    private readonly sync: SyncClient | undefined,
    private readonly control: ControlServer | undefined,
  ) {}

  /**
   * Connects to the replicas, then listens. Without controllers every replica must
   * answer; with them one is enough (the others are recorded out-of-sync, or
   * resynced when they answer again), provided the record says it is in-sync.
   * Fails (and cleans up) otherwise.
   */
  static async start(args: FrontendArgs, log: Logger): Promise<Frontend> {
    const opened = await Promise.allSettled(args.replicas.map((a) => Replica.open(a, args.connections, { log, stallTimeoutMs: args.stallTimeoutMs, sendBufferBytes: args.sendBufferBytes })));
    const replicas = opened.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    const unreachable = args.replicas.filter((_, i) => opened[i]!.status === "rejected");
    const failed = opened.find((r): r is PromiseRejectedResult => r.status === "rejected");
    let set: ReplicaSet | undefined;
    let control: ControlServer | undefined;
    const sync = args.controllers.length > 0 ? new SyncClient({ controllers: args.controllers, volume: args.exportName, node: args.node, log }) : undefined;
    try {
      if (failed && (!sync || replicas.length === 0)) throw failed.reason;
      for (const a of unreachable) log.warn({ replica: a.spec, err: (failed!.reason as Error).message }, "replica unreachable at start");
      set = new ReplicaSet(
        replicas,
        log,
        sync && {
          recorder: sync,
          generation: args.generation,
          stateDir: args.stateDir!,
          volume: args.exportName,
          connections: args.connections,
          copyRateBytes: args.copyRateMiB * 1024 * 1024,
          unreachable,
          node: args.node || undefined,
          stallTimeoutMs: args.stallTimeoutMs,
          sendBufferBytes: args.sendBufferBytes,
        },
      );
      const server = new NbdServer({ name: args.exportName, description: `stowage volume ${args.exportName}`, backend: set, log, sendBufferBytes: args.sendBufferBytes });
      set.onBusy = (busy) => server.setBackendBusy(busy);
      await set.warmUp();
      // With a replica away, serving needs the record's word that the others are in-sync.
      if (sync && !set.policy && unreachable.length > 0) {
        throw new Error(`cannot start with ${unreachable.map((a) => a.spec).join(", ")} unreachable: the sync record could not be read, or no replica recorded in-sync answers (see the log)`);
      }
      // Snapshots hold writes through the control socket; only with the sync record (a cluster's frontend).
      control = sync ? new ControlServer(set, controlSocketPath(args.socketPath), log) : undefined;
      await control?.listen();
      await server.listenUnix(args.socketPath, args.socketMode);
      log.info(
        { socket: args.socketPath, replicas: args.replicas.map((r) => r.spec), connections: args.connections, size: set.size },
        "frontend listening",
      );
      return new Frontend(server, set, log, sync, control);
    } catch (err) {
      await control?.close().catch(() => undefined);
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
      await this.control?.close(); // held writes go first, or the shutdown would wait for them
      await this.server.shutdown(timeoutMs);
      await this.replicas.close();
      this.sync?.close();
      this.log.info("frontend stopped");
    })();
    return this.stopping;
  }
}
