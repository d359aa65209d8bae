// An in-memory stand-in for the controller's sync record, for unit tests of the
// replica set: the same rules as ReplicaSyncService (generation bumps, the last
// in-sync replica is never marked, a resync that started before a newer mark is
// refused, unknown replicas are NotFound). The real service is tested against
// etcd in the integration tests.
import { FailedPreconditionError, NotFoundError, UnavailableError } from "../../lib/errors.js";
import type { RecordedReplica, RecordedSyncState, ResyncProgress, SyncRecorder } from "../sync/sync-client.js";

export class FakeRecord implements SyncRecorder {
  generation = 1;
  readonly replicas: RecordedReplica[];
  readonly marks: string[] = [];
  readonly inSyncMarks: { id: string; kind: string; bytes: number }[] = [];
  readonly progress: ResyncProgress[] = [];
  /** False: every call fails as if no controller answered. */
  available = true;
  /** Delay of a mark, ms. */
  markDelayMs = 0;
  /** Marks fail (as past the deadline) while set. */
  refuseMarks = false;
  reads = 0;
  /** Nodes the volume is attached to (undefined: not reported). */
  attachedNodes: string[] | undefined;
  /** trackReplica calls, in order. */
  readonly tracked: { id: string; generation: number; token: string }[] = [];

  constructor(ids: string[], outOfSync: string[] = []) {
    this.replicas = ids.map((id) => ({ id, node: "", nbdUri: "", inSync: !outOfSync.includes(id), outOfSyncGeneration: outOfSync.includes(id) ? 1 : 0 }));
  }

  private find(id: string): RecordedReplica {
    const r = this.replicas.find((x) => x.id === id);
    if (!r) throw new NotFoundError("replica", id);
    return r;
  }

  private up(): void {
    if (!this.available) throw new UnavailableError("no controller");
  }

  async markOutOfSync(id: string): Promise<number> {
    this.up();
    this.marks.push(id);
    if (this.markDelayMs) await new Promise((r) => setTimeout(r, this.markDelayMs));
    if (this.refuseMarks) throw new Error("controller unreachable past the deadline");
    const r = this.find(id);
    if (!r.inSync) return this.generation;
    if (!this.replicas.some((x) => x !== r && x.inSync)) throw new FailedPreconditionError(`replica ${id} is the last in-sync replica`);
    r.inSync = false;
    r.outOfSyncGeneration = ++this.generation;
    return this.generation;
  }

  async markInSync(id: string, generation: number, copy: { kind: string; bytes: number }): Promise<number> {
    this.up();
    const r = this.find(id);
    if (r.inSync) return this.generation;
    if (r.outOfSyncGeneration > generation) throw new FailedPreconditionError(`replica ${id} was marked out-of-sync again`);
    r.inSync = true;
    r.outOfSyncGeneration = 0;
    this.inSyncMarks.push({ id, kind: copy.kind, bytes: copy.bytes });
    return ++this.generation;
  }

  async reportResync(_id: string, p: ResyncProgress): Promise<void> {
    this.progress.push(p);
  }

  async trackReplica(id: string, generation: number, token: string): Promise<void> {
    this.up();
    const r = this.find(id);
    if (!r.agentCopy) throw new FailedPreconditionError(`replica ${id} waits for no agent copy`);
    if (r.outOfSyncGeneration !== generation) throw new FailedPreconditionError(`replica ${id} was marked out-of-sync again`);
    this.tracked.push({ id, generation, token });
    r.trackingToken = token;
  }

  /** The agent copied the replica (the controller then exports it): the frontend catches up. */
  copied(id: string, nbdUri: string): void {
    const r = this.find(id);
    r.agentCopy = false;
    r.nbdUri = nbdUri;
  }

  async syncState(): Promise<RecordedSyncState> {
    this.up();
    this.reads++;
    return { generation: this.generation, replicas: this.replicas.map((r) => ({ ...r })), attachedNodes: this.attachedNodes && [...this.attachedNodes] };
  }

  /** Adds a replica the way the controller does (out of sync, to be copied; by its agent when `agentCopy`, not exported until then). */
  add(id: string, nbdUri: string, agentCopy = false): void {
    this.replicas.push({ id, node: "", nbdUri: agentCopy ? "" : nbdUri, inSync: false, outOfSyncGeneration: ++this.generation, ...(agentCopy ? { agentCopy, trackingToken: "" } : {}) });
  }

  remove(id: string): void {
    this.replicas.splice(this.replicas.indexOf(this.find(id)), 1);
    this.generation++;
  }
}
