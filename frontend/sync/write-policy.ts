// The write policy of a replicated volume, as a pure state machine (no I/O):
// which replicas a request goes to, and when a write may be acknowledged.
//
// Replica states, from the frontend's point of view:
//   in-sync      has every acknowledged write; read source; write target
//   faulted      failed a request; the frontend is asking the controller to
//                record it out-of-sync (etcd, bumped generation). Not a target.
//   out-of-sync  recorded as such; gets no requests; the dirty map tracks what it misses
//   resyncing    reconnected: gets every live write while dirty regions are copied
//                to it; still out-of-sync in etcd, never a read source
//
// The rule: a write is acknowledged only when it is on every in-sync replica,
// except replicas whose out-of-sync record the controller has confirmed, and on
// at least one in-sync replica. The last in-sync replica is never given up: if
// it fails, the write fails (EIO) and the replica stays in-sync (the controller
// refuses to mark it out-of-sync too).
//
// Out of space: when every in-sync replica that failed a write did so with ENOSPC
// and none took it, the write fails with ENOSPC (not EIO), and nothing is marked:
// no replica has a write the others lack. The guest sees a full disk and may retry
// once space is freed. When some in-sync replica took it, a full one is marked
// out-of-sync like any other failure and resynced later.

/** NBD_ENOSPC (lib/nbd/protocol.ts Errno.ENOSPC), kept here so the policy stays free of I/O modules. */
export const NO_SPACE = 28;

export type ReplicaSyncState = "in-sync" | "faulted" | "out-of-sync" | "resyncing";

/** What to do with a write once every target answered. */
export type WriteVerdict =
  | { kind: "ack" }
  /** Ask the controller to record these replicas out-of-sync; call `settle` again when done. */
  | { kind: "mark"; replicas: string[] }
  /** Fail the write (no in-sync replica has it): with `errno` (NO_SPACE) when given, else EIO. */
  | { kind: "fail"; reason: string; errno?: number };

export class WritePolicy {
  private readonly states = new Map<string, ReplicaSyncState>();
  /** Read sources and write targets, asked for on every request: kept until a state changes. */
  private cache: { reads: readonly string[]; targets: readonly string[]; degraded: boolean } | undefined;

  /** `replicas` in read preference order (the local one first), with their recorded state. */
  constructor(
    replicas: { id: string; inSync: boolean }[],
    public generation: number,
  ) {
    if (!replicas.some((r) => r.inSync)) throw new Error("a volume needs at least one in-sync replica");
    for (const r of replicas) this.states.set(r.id, r.inSync ? "in-sync" : "out-of-sync");
  }

  state(id: string): ReplicaSyncState {
    const s = this.states.get(id);
    if (!s) throw new Error(`unknown replica ${id}`);
    return s;
  }

  has(id: string): boolean {
    return this.states.has(id);
  }

  ids(): string[] {
    return [...this.states.keys()];
  }

  private put(id: string, state: ReplicaSyncState): void {
    this.states.set(id, state);
    this.cache = undefined;
  }

  private having(...wanted: ReplicaSyncState[]): string[] {
    return [...this.states].filter(([, s]) => wanted.includes(s)).map(([id]) => id);
  }

  private get cached(): NonNullable<WritePolicy["cache"]> {
    if (!this.cache) {
      const reads = this.having("in-sync");
      this.cache = { reads, targets: this.having("in-sync", "resyncing"), degraded: reads.length < this.states.size };
    }
    return this.cache;
  }

  /** Where reads go, best first: in-sync replicas only. */
  readSources(): readonly string[] {
    return this.cached.reads;
  }

  /** Where a write (or flush, trim, write-zeroes) goes now. */
  writeTargets(): readonly string[] {
    return this.cached.targets;
  }

  /** True while some replica misses writes (the dirty map must record them). */
  get degraded(): boolean {
    return this.cached.degraded;
  }

  /**
   * Judges a write (or trim, write-zeroes, flush) once every target answered
   * (`results`: target -> took it). Failed in-sync targets become faulted (to be
   * marked); a failed resyncing target falls back to out-of-sync (it is recorded
   * as such already). After a "mark" verdict, record the marks, then call
   * `finish` with the same results (again after every further "mark").
   * `errors` (target -> NBD errno) tell a full replica (NO_SPACE) from a broken one.
   */
  settle(results: Map<string, boolean>, errors?: ReadonlyMap<string, number>): WriteVerdict {
    const faultedNow: string[] = [];
    for (const [id, ok] of results) {
      if (ok) continue;
      const s = this.states.get(id);
      if (s === "in-sync") {
        this.put(id, "faulted");
        faultedNow.push(id);
      } else if (s === "resyncing") {
        this.put(id, "out-of-sync");
      }
    }
    if (!this.held(results)) {
      // No in-sync replica has the write: it fails, and nothing is given up for it
      // (the replicas this write faulted hold no acknowledged write the others lack).
      for (const id of faultedNow) this.put(id, "in-sync");
      if (faultedNow.length > 0 && faultedNow.every((id) => errors?.get(id) === NO_SPACE)) {
        return { kind: "fail", reason: "no space left on any in-sync replica", errno: NO_SPACE };
      }
      return { kind: "fail", reason: "no in-sync replica took the write" };
    }
    return this.finish(results);
  }

  /**
   * The verdict once the state settled: wait while ANY replica is faulted (a
   * write that skipped it because it was faulted must not be acknowledged before
   * that replica is recorded out-of-sync either), then ack only if every replica
   * still in-sync took the write.
   */
  finish(results: Map<string, boolean>): WriteVerdict {
    const faulted = this.having("faulted");
    if (faulted.length > 0) return { kind: "mark", replicas: faulted };
    if (!this.held(results)) return { kind: "fail", reason: "no in-sync replica took the write" };
    for (const id of this.having("in-sync")) {
      if (!results.get(id)) return { kind: "fail", reason: `in-sync replica ${id} does not have the write (it could not be recorded out-of-sync)` };
    }
    return { kind: "ack" };
  }

  private held(results: Map<string, boolean>): boolean {
    for (const [id, ok] of results) if (ok && this.states.get(id) === "in-sync") return true;
    return false;
  }

  /** The controller recorded `id` out-of-sync at `generation`. */
  markConfirmed(id: string, generation: number): void {
    if (this.state(id) !== "faulted") throw new Error(`replica ${id} is ${this.state(id)}, not faulted`);
    this.put(id, "out-of-sync");
    this.generation = Math.max(this.generation, generation);
  }

  /**
   * The controller could not record it (unreachable past the deadline, or it
   * refused because no other replica is in-sync): the replica goes back to
   * in-sync and writes it does not have fail.
   */
  markRefused(id: string): void {
    if (this.state(id) !== "faulted") throw new Error(`replica ${id} is ${this.state(id)}, not faulted`);
    this.put(id, "in-sync");
  }

  /**
   * The controller's record says `id` is out-of-sync (another frontend marked it,
   * for example the other side of a live migration): stop using it at once.
   */
  recordedOutOfSync(id: string): void {
    const s = this.state(id);
    if (s === "in-sync" || s === "resyncing") this.put(id, "out-of-sync");
  }

  /** An out-of-sync replica is reachable again: it gets live writes from now on while dirty regions are copied. */
  reconnected(id: string): void {
    if (this.state(id) !== "out-of-sync") throw new Error(`replica ${id} is ${this.state(id)}, not out-of-sync`);
    this.put(id, "resyncing");
  }

  /**
   * A replica this frontend learned of after it started: a new or replacement one
   * (recorded out-of-sync: it needs a copy first); or, at the frontend's start, one
   * recorded in-sync that it cannot reach. The latter is faulted: it must be
   * recorded out-of-sync before any write is acknowledged.
   */
  added(id: string, recordedInSync = false): void {
    if (this.states.has(id)) throw new Error(`replica ${id} is known already`);
    this.put(id, recordedInSync ? "faulted" : "out-of-sync");
  }

  /**
   * The replica left the volume (its record is gone): it needs no more writes.
   * The last in-sync replica never leaves this way.
   */
  removed(id: string): void {
    const s = this.state(id);
    if (s === "in-sync" && this.having("in-sync").length === 1) throw new Error(`replica ${id} is the last in-sync replica`);
    this.states.delete(id);
    this.cache = undefined;
  }

  /** Copying finished and the controller recorded the replica in-sync at `generation`. */
  resynced(id: string, generation: number): void {
    if (this.state(id) !== "resyncing") throw new Error(`replica ${id} is ${this.state(id)}, not resyncing`);
    this.put(id, "in-sync");
    this.generation = Math.max(this.generation, generation);
  }
}
