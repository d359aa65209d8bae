// The frontend's line to the controller leader for the in-sync record
// (ReplicaSyncService). A mark must land before the write that needed it is
// acknowledged, so calls retry across controllers and through leader changes
// until a deadline; only the controller's refusal (the last in-sync replica)
// or the deadline ends them.
import { ReplicaSyncServiceService } from "../../gen/stowage/v1/controller.js";
import { errorMessage, FailedPreconditionError, NotLeaderError, UnavailableError, DeadlineError } from "../../lib/errors.js";
import { Channel, INSECURE, type TransportSecurity } from "../../lib/grpc.js";
import type { Logger } from "../../lib/logger.js";

/** What the replica set needs from the controller. */
export interface SyncRecorder {
  /** Records the replica out-of-sync; resolves with the new generation. Throws FailedPreconditionError when refused. */
  markOutOfSync(replicaId: string, reason: string): Promise<number>;
  /** The recorded state (replicas another frontend may have marked meanwhile). */
  syncState(): Promise<{ generation: number; outOfSync: string[] }>;
}

export interface SyncClientOptions {
  controllers: string[];
  volume: string;
  log?: Logger;
  security?: TransportSecurity;
  /** How long a mark may keep retrying (default 30 s): writes wait meanwhile. */
  deadlineMs?: number;
  callTimeoutMs?: number;
}

export class SyncClient implements SyncRecorder {
  private readonly channels = new Map<string, Channel>();
  private current: string;

  constructor(private readonly o: SyncClientOptions) {
    if (o.controllers.length === 0) throw new Error("the sync client needs controller addresses");
    this.current = o.controllers[0]!;
  }

  private client(address: string) {
    let ch = this.channels.get(address);
    if (!ch) {
      ch = new Channel(address, this.o.security ?? INSECURE);
      this.channels.set(address, ch);
    }
    return ch.service(ReplicaSyncServiceService);
  }

  async markOutOfSync(replicaId: string, reason: string): Promise<number> {
    const res = await this.call(`record replica ${replicaId} of ${this.o.volume} out-of-sync`, (client, timeoutMs) =>
      client.markOutOfSync({ volume: this.o.volume, replicaId, reason }, { timeoutMs }),
    );
    return res.state!.generation;
  }

  async syncState(): Promise<{ generation: number; outOfSync: string[] }> {
    const res = await this.call(`read the sync state of ${this.o.volume}`, (client, timeoutMs) => client.getSyncState({ volume: this.o.volume }, { timeoutMs }));
    return { generation: res.state!.generation, outOfSync: res.state!.outOfSync };
  }

  /** One call to the leader, following redirects and moving down the list until the deadline. */
  private async call<T>(what: string, fn: (client: ReturnType<SyncClient["client"]>, timeoutMs: number) => Promise<T>): Promise<T> {
    const deadline = Date.now() + (this.o.deadlineMs ?? 30_000);
    let i = Math.max(0, this.o.controllers.indexOf(this.current));
    let last: unknown;
    for (let attempt = 0; Date.now() < deadline; attempt++) {
      try {
        return await fn(this.client(this.current), Math.min(this.o.callTimeoutMs ?? 5_000, Math.max(1, deadline - Date.now())));
      } catch (err) {
        if (err instanceof FailedPreconditionError) throw err;
        last = err;
        if (err instanceof NotLeaderError && err.leader) {
          this.current = err.leader;
          continue;
        }
        if (!(err instanceof UnavailableError || err instanceof DeadlineError || err instanceof NotLeaderError)) {
          this.o.log?.warn({ err: errorMessage(err) }, `${what} failed; retrying`);
        }
        i = (i + 1) % this.o.controllers.length;
        this.current = this.o.controllers[i]!;
        // A full round without an answer: wait a little (a leader election takes 1-3 s).
        if (i === 0) await new Promise((r) => setTimeout(r, Math.min(500, 50 * (attempt + 1))));
      }
    }
    throw new DeadlineError(`could not ${what}: ${errorMessage(last)}`);
  }

  close(): void {
    for (const ch of this.channels.values()) ch.close();
    this.channels.clear();
  }
}
