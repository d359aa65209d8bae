// The frontend's line to the controller leader for the in-sync record
// (ReplicaSyncService). A mark must land before the write that needed it is
// acknowledged, so calls retry across controllers and through leader changes
// until a deadline; only the controller's refusal (the last in-sync replica)
// or the deadline ends them.
import { ReplicaSyncServiceService } from "../../gen/stowage/v1/controller.js";
import { errorMessage, FailedPreconditionError, NotFoundError, NotLeaderError, UnavailableError, DeadlineError } from "../../lib/errors.js";
import { Controllers } from "../../lib/controllers.js";
import { INSECURE, type PromiseClient, type TransportSecurity } from "../../lib/grpc.js";
import type { Logger } from "../../lib/logger.js";

/** One replica as recorded (see SyncReplica in the API). */
export interface RecordedReplica {
  id: string;
  node: string;
  /** Its NBD export as last reported ("" when not exported). */
  nbdUri: string;
  inSync: boolean;
  /** When out of sync: the generation it was recorded at. */
  outOfSyncGeneration: number;
  /** A new replica whose agent makes the bulk copy: track its writes (trackReplica), copy nothing. */
  agentCopy?: boolean;
  /** The dirty-map token recorded by trackReplica ("" or absent: none). */
  trackingToken?: string;
}

export interface RecordedSyncState {
  generation: number;
  replicas: RecordedReplica[];
  /** Limit for resync copies, bytes/s (0: none). */
  copyRateBytes?: number;
  /** Nodes the volume is attached to (absent: not known, as in tests). */
  attachedNodes?: string[];
}

export interface ResyncProgress {
  kind: "incremental" | "full";
  totalBytes: number;
  copiedBytes: number;
  bytesPerSec: number;
  startedAtMs: number;
}

/** What the replica set needs from the controller. */
export interface SyncRecorder {
  /**
   * Records the replica out-of-sync; resolves with the new generation. Throws
   * FailedPreconditionError when refused, NotFoundError when the replica left the volume.
   */
  markOutOfSync(replicaId: string, reason: string): Promise<number>;
  /** Records a resynced replica in-sync; resolves with the new generation. */
  markInSync(replicaId: string, generation: number, copy: { kind: ResyncProgress["kind"]; bytes: number; ms: number }): Promise<number>;
  /** Progress of a running copy (best effort). */
  reportResync(replicaId: string, progress: ResyncProgress): Promise<void>;
  /** The recorded state (replicas another frontend may have marked meanwhile, replicas added or removed). */
  syncState(): Promise<RecordedSyncState>;
  /**
   * Records that this frontend's dirty map `token` tracks every write to the replica
   * from now on (its agent may then copy it). Throws FailedPreconditionError when
   * refused (no agent copy pending, or marked again since `generation`).
   */
  trackReplica(replicaId: string, generation: number, token: string): Promise<void>;
}

export interface SyncClientOptions {
  controllers: string[];
  volume: string;
  /** The node this frontend runs on (for job records). */
  node?: string;
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

  async markInSync(replicaId: string, generation: number, copy: { kind: ResyncProgress["kind"]; bytes: number; ms: number }): Promise<number> {
    const res = await this.call(`record replica ${replicaId} of ${this.o.volume} in-sync`, (timeoutMs) =>
      this.service.markInSync({ volume: this.o.volume, replicaId, generation, kind: copy.kind, copiedBytes: copy.bytes, durationMs: copy.ms }, { timeoutMs }),
    );
    return res.state!.generation;
  }

  async reportResync(replicaId: string, p: ResyncProgress): Promise<void> {
    await this.service.reportResync(
      { volume: this.o.volume, replicaId, kind: p.kind, totalBytes: p.totalBytes, copiedBytes: p.copiedBytes, bytesPerSec: Math.round(p.bytesPerSec), startedAtMs: p.startedAtMs, runner: this.o.node ?? "" },
      { timeoutMs: 2_000 },
    );
  }

  async trackReplica(replicaId: string, generation: number, token: string): Promise<void> {
    await this.call(`record that this frontend tracks replica ${replicaId} of ${this.o.volume}`, (timeoutMs) =>
      this.service.trackReplica({ volume: this.o.volume, replicaId, generation, token, node: this.o.node ?? "" }, { timeoutMs }),
    );
  }

  async syncState(): Promise<RecordedSyncState> {
    const res = await this.call(`read the sync state of ${this.o.volume}`, (timeoutMs) => this.service.getSyncState({ volume: this.o.volume }, { timeoutMs }));
    return { generation: res.state!.generation, replicas: res.state!.replicas, copyRateBytes: res.state!.copyRateBytes, attachedNodes: res.state!.attachedNodes };
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
        if (err instanceof FailedPreconditionError || err instanceof NotFoundError) throw err;
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
