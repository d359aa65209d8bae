// The frontend's line to the controller leader for the in-sync record
// (ReplicaSyncService). A mark must land before the write that needed it is
// acknowledged, so calls retry across controllers and through leader changes
// until a deadline; only the controller's refusal (the last in-sync replica)
// or the deadline ends them.
import { ReplicaSyncServiceService } from "../../gen/stowage/v1/controller.js";
import { errorMessage, FailedPreconditionError, NotLeaderError, UnavailableError, DeadlineError } from "../../lib/errors.js";
import { Controllers } from "../../lib/controllers.js";
import { INSECURE, type PromiseClient, type TransportSecurity } from "../../lib/grpc.js";
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
  private readonly controllers: Controllers;
  private readonly service: PromiseClient<typeof ReplicaSyncServiceService>;

  constructor(private readonly o: SyncClientOptions) {
    if (o.controllers.length === 0) throw new Error("the sync client needs controller addresses");
    this.controllers = new Controllers(o.controllers, { security: o.security ?? INSECURE, timeoutMs: o.callTimeoutMs ?? 5_000 });
    this.service = this.controllers.service(ReplicaSyncServiceService);
  }

  async markOutOfSync(replicaId: string, reason: string): Promise<number> {
    const res = await this.call(`record replica ${replicaId} of ${this.o.volume} out-of-sync`, (timeoutMs) =>
      this.service.markOutOfSync({ volume: this.o.volume, replicaId, reason }, { timeoutMs }),
    );
    return res.state!.generation;
  }

  async syncState(): Promise<{ generation: number; outOfSync: string[] }> {
    const res = await this.call(`read the sync state of ${this.o.volume}`, (timeoutMs) => this.service.getSyncState({ volume: this.o.volume }, { timeoutMs }));
    return { generation: res.state!.generation, outOfSync: res.state!.outOfSync };
  }

  /**
   * One call to the leader (Controllers follows redirects and moves down the
   * list), repeated until the deadline: a leader election takes 1-3 s.
   */
  private async call<T>(what: string, fn: (timeoutMs: number) => Promise<T>): Promise<T> {
    const deadline = Date.now() + (this.o.deadlineMs ?? 30_000);
    let last: unknown;
    for (let attempt = 0; Date.now() < deadline; attempt++) {
      try {
        return await fn(Math.min(this.o.callTimeoutMs ?? 5_000, Math.max(1, deadline - Date.now())));
      } catch (err) {
        if (err instanceof FailedPreconditionError) throw err;
        last = err;
        if (!(err instanceof UnavailableError || err instanceof DeadlineError || err instanceof NotLeaderError)) {
          this.o.log?.warn({ err: errorMessage(err) }, `${what} failed; retrying`);
        }
        await new Promise((r) => setTimeout(r, Math.min(500, 50 * (attempt + 1))));
      }
    }
    throw new DeadlineError(`could not ${what}: ${errorMessage(last)}`);
  }

  close(): void {
    this.controllers.close();
  }
}
