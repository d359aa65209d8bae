// The replicas of one volume behind the frontend's NBD server: writes (and
// trims, write-zeroes, flushes) go to every replica, reads to the first
// healthy one (the local replica is listed first). With one replica a request
// is forwarded as received: the header is edited in place (only the cookie
// changes) and the payload slices are passed on, so nothing is copied.
//
// Write policy. Without a sync recorder (a single replica, tests, the
// benchmark) a write succeeds only if every replica took it. With one (the
// agent passes the controllers), the WritePolicy of sync/write-policy.ts
// decides: a replica that fails a write is recorded out-of-sync through the
// controller BEFORE the write is acknowledged, then gets nothing more, and
// reads fail over between in-sync replicas. Dirty-region tracking and resync
// slot in here next.
import type { Logger } from "pino";
import type { NbdBackend, NbdRequest } from "../lib/nbd/backend.js";
import type { NbdCompletion } from "../lib/nbd/client.js";
import { Cmd, DEFAULT_BLOCK_SIZES, Errno, TxFlag, type BlockSizes } from "../lib/nbd/protocol.js";
import { Gather, type Replica } from "./replica.js";
import type { SyncRecorder } from "./sync/sync-client.js";
import { WritePolicy, type WriteVerdict } from "./sync/write-policy.js";

/** Replica ids are their export names (the agent exports each replica under its id). */
const idOf = (r: Replica) => r.address.exportName;

/** Collects each target replica's result of one request, then has the set judge it. */
class PerReplica {
  readonly results = new Map<string, boolean>();
  readonly errors = new Map<string, number>();
  constructor(
    private pending: number,
    private readonly set: ReplicaSet,
    private readonly req: NbdRequest,
  ) {}

  /** The completion for one target. */
  for(id: string): NbdCompletion {
    return {
      nbdDone: (error) => {
        this.results.set(id, error === 0);
        if (error !== 0) this.errors.set(id, error);
        if (--this.pending === 0) this.set.settled(this.req, this);
      },
    };
  }
}

/** Capabilities every replica must have for the frontend to advertise them. */
const SHARED_CAPABILITIES = TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES;

export class ReplicaSet implements NbdBackend {
  readonly size: number;
  readonly txFlags: number;
  readonly blockSizes: BlockSizes;
  /** Called when backend congestion starts (true) and ends (false); pause intake meanwhile. */
  onBusy: ((busy: boolean) => void) | undefined;
  private congestedReplicas = 0;

  /** Set when writes follow the recorded write policy (several replicas and a recorder). */
  readonly policy: WritePolicy | undefined;
  private readonly byId = new Map<string, Replica>();
  /** Marks in flight, one per replica. */
  private readonly marking = new Map<string, Promise<void>>();
  /**
   * Whether the recorded sync state was read since start. Until then requests wait:
   * another frontend (the source of a live migration) may have marked a replica
   * out-of-sync after this one started, and reading from it would return stale data.
   */
  private synced = false;
  private waiting: (() => void)[] = [];
  private refreshing: Promise<void> | undefined;
  private refreshTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly replicas: readonly Replica[],
    private readonly log?: Logger,
    private readonly sync?: { recorder: SyncRecorder; generation: number },
  ) {
    if (replicas.length === 0) throw new Error("a replica set needs at least one replica");
    for (const r of replicas) this.byId.set(idOf(r), r);
    if (sync && replicas.length > 1) {
      this.policy = new WritePolicy(replicas.map((r) => ({ id: idOf(r), inSync: true })), sync.generation);
      // Later marks by others are picked up every 2 s as well.
      this.refreshTimer = setInterval(() => void this.refresh(), 2_000);
      this.refreshTimer.unref();
    }
    const infos = replicas.map((r) => r.info);
    const sizes = new Set(infos.map((i) => i.size));
    if (sizes.size !== 1) {
      throw new Error(`replicas disagree on the volume size: ${replicas.map((r) => `${r.address.spec}=${r.info.size}`).join(", ")}`);
    }
    this.size = infos[0]!.size;
    let caps = SHARED_CAPABILITIES;
    let readOnly = 0;
    for (const i of infos) {
      caps &= i.txFlags;
      readOnly |= i.txFlags & TxFlag.READ_ONLY;
    }
    this.txFlags = caps | readOnly;
    this.blockSizes = {
      minimum: Math.max(DEFAULT_BLOCK_SIZES.minimum, ...infos.map((i) => i.blockSizes.minimum)),
      preferred: Math.max(DEFAULT_BLOCK_SIZES.preferred, ...infos.map((i) => i.blockSizes.preferred)),
      maximum: Math.min(DEFAULT_BLOCK_SIZES.maximum, ...infos.map((i) => i.blockSizes.maximum)),
    };
    for (const r of replicas) {
      r.on("congestion", (on) => {
        const before = this.congestedReplicas;
        this.congestedReplicas += on ? 1 : -1;
        if ((before === 0) !== (this.congestedReplicas === 0)) this.onBusy?.(this.congestedReplicas > 0);
      });
      r.on("unhealthy", () => this.log?.error({ replica: r.address.spec }, "replica has no usable connection left"));
    }
  }

  read(req: NbdRequest): void {
    if (this.policy) {
      if (!this.synced) return this.afterSync(req, () => this.read(req));
      return this.readFrom(req, this.policy.readSources(), 0);
    }
    const rs = this.replicas;
    for (let i = 0; i < rs.length; i++) {
      const c = rs[i]!.pick();
      if (c !== undefined) return c.submit(Cmd.READ, req.flags, req.offset, req.length, undefined, req, req.header);
    }
    req.done(Errno.EIO);
  }

  write(req: NbdRequest): void {
    if (this.policy) return this.toTargets(req, req.data);
    this.toAll(req, req.data);
  }

  trim(req: NbdRequest): void {
    if (this.policy) return this.toTargets(req, undefined);
    this.toAll(req, undefined);
  }

  writeZeroes(req: NbdRequest): void {
    if (this.policy) return this.toTargets(req, undefined);
    this.toAll(req, undefined);
  }

  flush(req: NbdRequest): void {
    if (this.policy) return this.toTargets(req, undefined);
    const rs = this.replicas;
    if (rs.length === 1) return rs[0]!.flushAll(req.flags, req);
    const g = new Gather(rs.length, req);
    for (const r of rs) r.flushAll(req.flags, g);
  }

  /** Holds a request until the recorded sync state was read (failing it if that cannot be done). */
  private afterSync(req: NbdRequest, retry: () => void): void {
    if (this.waiting.length === 0) this.log?.info({ type: req.type }, "first request: reading the recorded sync state");
    this.waiting.push(() => (this.synced ? retry() : req.done(Errno.EIO)));
    const t0 = Date.now();
    void this.refresh().then(() => this.log?.info({ ms: Date.now() - t0, synced: this.synced }, "recorded sync state read"));
  }

  /**
   * Reads the recorded state once at start: it opens the connection to the
   * controller, so the read before the first request (which still happens: that
   * request may come much later, after a migration's switch-over) costs one round trip.
   */
  async warmUp(): Promise<void> {
    if (!this.policy) return;
    await this.sync!.recorder.syncState().then(
      (state) => this.apply(state),
      () => undefined,
    );
  }

  private apply(state: { generation: number; outOfSync: string[] }): void {
    for (const id of state.outOfSync) {
      if (this.byId.has(id) && this.policy!.state(id) !== "out-of-sync" && this.policy!.state(id) !== "faulted") {
        this.policy!.recordedOutOfSync(id);
        this.log?.warn({ replica: id, generation: state.generation }, "replica recorded out-of-sync by another frontend; no longer used");
      }
    }
    this.policy!.generation = Math.max(this.policy!.generation, state.generation);
  }

  /** Reads the recorded state and stops using replicas recorded out-of-sync; then runs waiting requests. */
  private refresh(): Promise<void> {
    this.refreshing ??= this.sync!.recorder.syncState()
      .then(
        (state) => {
          this.apply(state);
          this.synced = true;
        },
        (err: unknown) => this.log?.error({ err: err instanceof Error ? err.message : String(err) }, "cannot read the volume's sync state"),
      )
      .finally(() => {
        this.refreshing = undefined;
        for (const run of this.waiting.splice(0)) run();
      });
    return this.refreshing;
  }

  /** Reads from the first source with a usable connection; on an error, from the next one. */
  private readFrom(req: NbdRequest, sources: string[], from: number): void {
    for (let i = from; i < sources.length; i++) {
      const c = this.byId.get(sources[i]!)!.pick();
      if (c === undefined) continue;
      const next: NbdCompletion = {
        nbdDone: (error, data, header) => {
          if (error !== 0 && i + 1 < sources.length) {
            this.log?.warn({ replica: sources[i], error }, "read failed; trying the next in-sync replica");
            return this.readFrom(req, sources, i + 1);
          }
          req.nbdDone(error, data, header);
        },
      };
      return c.submit(Cmd.READ, req.flags, req.offset, req.length, undefined, next, req.header);
    }
    req.done(Errno.EIO);
  }

  /** Sends a write, trim, write-zeroes or flush to the policy's targets and judges the results. */
  private toTargets(req: NbdRequest, payload: Buffer[] | undefined): void {
    if (!this.synced) return this.afterSync(req, () => this.toTargets(req, payload));
    const targets = this.policy!.writeTargets();
    if (targets.length === 0) return req.done(Errno.EIO);
    const per = new PerReplica(targets.length, this, req);
    let headerUsed = false;
    for (const id of targets) {
      const r = this.byId.get(id)!;
      const done = per.for(id);
      if (req.type === Cmd.FLUSH) {
        r.flushAll(req.flags, done);
        continue;
      }
      const c = r.pick();
      if (c === undefined) {
        done.nbdDone(Errno.EIO, undefined, undefined);
        continue;
      }
      // Each connection writes its own cookie into the header: the first target gets the
      // received header edited in place, the others their own copy.
      const header = headerUsed ? Buffer.from(req.header) : req.header;
      headerUsed = true;
      c.submit(req.type, req.flags, req.offset, req.length, payload, done, header);
    }
  }

  /** Every target of a request answered: judge it by the write policy (called by PerReplica). */
  settled(req: NbdRequest, per: PerReplica): void {
    this.judge(req, per, this.policy!.settle(per.results));
  }

  private judge(req: NbdRequest, per: PerReplica, verdict: WriteVerdict): void {
    if (verdict.kind === "ack") return req.done(0);
    if (verdict.kind === "fail") {
      this.log?.error({ offset: req.offset, length: req.length, errors: Object.fromEntries(per.errors), reason: verdict.reason }, "write failed");
      return req.done(Errno.EIO);
    }
    // Record every faulted target out-of-sync first; only then may the write be acknowledged.
    void Promise.all(verdict.replicas.map((id) => this.mark(id, `errno ${per.errors.get(id) ?? "?"} on a ${Object.entries(Cmd).find(([, v]) => v === req.type)?.[0] ?? req.type}`))).then(() =>
      this.judge(req, per, this.policy!.finish(per.results)),
    );
  }

  /** Records a faulted replica out-of-sync through the controller (once, however many writes wait for it). */
  private mark(id: string, reason: string): Promise<void> {
    let p = this.marking.get(id);
    if (!p) {
      const policy = this.policy!;
      p = this.sync!.recorder.markOutOfSync(id, reason).then(
        (generation) => {
          policy.markConfirmed(id, generation);
          this.log?.error({ replica: id, generation, reason }, "replica recorded out-of-sync; writing to the others");
        },
        (err: unknown) => {
          policy.markRefused(id);
          this.log?.error({ replica: id, err: err instanceof Error ? err.message : String(err) }, "could not record the replica out-of-sync; failing the writes it missed");
        },
      );
      p = p.finally(() => this.marking.delete(id));
      this.marking.set(id, p);
    }
    return p;
  }

  /** Flushes and disconnects every replica. */
  async close(): Promise<void> {
    if (this.refreshTimer) clearInterval(this.refreshTimer);
    await Promise.all(this.replicas.map((r) => r.close()));
  }

  private toAll(req: NbdRequest, payload: Buffer[] | undefined): void {
    const rs = this.replicas;
    if (rs.length === 1) {
      const c = rs[0]!.pick();
      if (c === undefined) return req.done(Errno.EIO);
      return c.submit(req.type, req.flags, req.offset, req.length, payload, req, req.header);
    }
    const g: NbdCompletion = new Gather(rs.length, req);
    for (let i = 0; i < rs.length; i++) {
      const c = rs[i]!.pick();
      if (c === undefined) {
        g.nbdDone(Errno.EIO, undefined, undefined);
        continue;
      }
      // The first replica gets the received header edited in place; the others need their own
      // copy, because each connection writes its own cookie into it.
      const header = i === 0 ? req.header : Buffer.from(req.header);
      c.submit(req.type, req.flags, req.offset, req.length, payload, g, header);
    }
  }
}
