// The replicas of one volume behind the frontend's NBD server: writes (and
// trims, write-zeroes, flushes) go to every replica, reads to the first
// healthy one (the local replica is listed first). With one replica a request
// is forwarded as received: the header is edited in place (only the cookie
// changes) and the payload slices are passed on, so nothing is copied.
//
// Without a sync recorder (tests, the benchmark) a write succeeds only if every
// replica took it. With one (the agent passes the controllers), the replica set
// follows the volume's record:
// - the WritePolicy of sync/write-policy.ts decides: a replica that fails a
//   write is recorded out-of-sync through the controller BEFORE the write is
//   acknowledged, then gets nothing more; reads fail over between in-sync replicas;
// - while a replica is out of sync, every region written is marked in its
//   dirty map (sync/dirty-map.ts, a file) before the write is sent;
// - every 2 s it reads the record: replicas marked by another frontend are
//   dropped, replicas that joined the volume are added (out of sync), replicas
//   that left are closed; an out-of-sync replica whose export answers again is
//   reconnected and resynced (sync/resync.ts): it gets live writes while its
//   dirty regions are copied under region locks, then it is recorded in-sync;
// - a NEW replica of the volume is copied by its agent instead (the record says
//   agentCopy; it is not exported meanwhile): its dirty map starts empty and
//   named by a token, the controller is told (TrackReplica), and once the agent
//   copied and the replica is exported, only the regions written since are
//   copied here (the returning-replica path above).
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import type { Logger } from "pino";
import type { NbdBackend, NbdRequest } from "../lib/nbd/backend.js";
import type { NbdClient, NbdCompletion } from "../lib/nbd/client.js";
import { Cmd, DEFAULT_BLOCK_SIZES, Errno, TxFlag, type BlockSizes } from "../lib/nbd/protocol.js";
import { NotFoundError, errorMessage } from "../lib/errors.js";
import { NbdError } from "../lib/nbd/errors.js";
import { formatNbdUri, parseNbdUri } from "../lib/nbd-uri.js";
import { exportMap, markDataRegions } from "./sync/allocation.js";
import type { ReplicaAddress } from "./args.js";
import { Gather, Replica, type OpenOptions } from "./replica.js";
import { DirtyMap } from "./sync/dirty-map.js";
import { RegionLocks, type Token } from "./sync/region-locks.js";
import { copyDirtyRegions, ResyncAborted } from "./sync/resync.js";
import type { RecordedSyncState, SyncRecorder } from "./sync/sync-client.js";
import { WritePolicy, type WriteVerdict } from "./sync/write-policy.js";

/** Replica ids are their export names (the agent exports each replica under its id). */
const idOf = (r: Replica) => r.address.exportName;

/** Dirty-map and copy granularity: a qcow2 cluster. */
export const REGION_BYTES = 64 * 1024;

/** Collects each target replica's result of one request, then has the set judge it. */
class PerReplica {
  readonly results = new Map<string, boolean>();
  readonly errors = new Map<string, number>();
  constructor(
    private pending: number,
    private readonly set: ReplicaSet,
    private readonly req: NbdRequest,
    /** Region-lock token of a write (none for a flush). */
    readonly token: Token | undefined,
    /** For a FLUSH: the regions written before it, forgotten once it is acknowledged. */
    readonly flushed?: Set<number>,
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

/** One replica of the volume as the synced replica set knows it. */
interface Member {
  id: string;
  address?: ReplicaAddress;
  replica?: Replica;
  /** Regions it misses while out of sync (absent: unknown, so a full copy). */
  map?: DirtyMap;
  mapOpening?: Promise<void>;
  /** Being reconnected or resynced. */
  busy: boolean;
  /** The record says its agent makes its bulk copy: this frontend only tracks writes for it. */
  agentCopy?: boolean;
  /** The map token the record names ("" when none). */
  recordedToken?: string;
  /** A TrackReplica call in flight. */
  tracking?: Promise<void>;
  /** Ran out of space (ENOSPC): no resync before `until`; the wait doubles each time. */
  noSpace?: { until: number; backoffMs: number };
}

/** Resync attempts on a replica that ran out of space wait this long, doubling up to the max. */
export const NO_SPACE_BACKOFF_MS = { first: 5_000, max: 60_000 };

export interface SyncOptions {
  recorder: SyncRecorder;
  generation: number;
  /** Where dirty maps are kept (they must survive a frontend restart). */
  stateDir: string;
  volume: string;
  /** NBD connections per replica opened later. */
  connections?: number;
  /** Resync copy limit in bytes per second (0: none). */
  copyRateBytes?: number;
  /** Addresses of replicas that could not be opened at start. */
  unreachable?: ReplicaAddress[];
  /** How often the record is read (default 2 s). */
  refreshMs?: number;
  /**
   * The frontend's lease (default 6 s): I/O is served only within this time from
   * the start of the last successful read of the record. The controller starts
   * another frontend for the volume elsewhere only once this one's lease ran out.
   */
  leaseMs?: number;
  /** This frontend's node: once the record no longer lists it as attached, I/O stops for good. */
  node?: string;
  /** Stall timeout of replica connections opened later (see Replica). */
  stallTimeoutMs?: number;
  /** Send buffer of unix replica connections opened later (see Replica.open). */
  sendBufferBytes?: number;
}

/** The default frontend lease; the controller waits longer (FENCE_MS) after a detach it could not confirm. */
export const LEASE_MS = 6_000;

/** Capabilities every replica must have for the frontend to advertise them. */
const SHARED_CAPABILITIES = TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES;

const specOf = (uri: string): ReplicaAddress | undefined => {
  try {
    const a = parseNbdUri(uri);
    return { ...a, spec: uri };
  } catch {
    return undefined;
  }
};

/** Opens a replica, or gives up after `ms` (undefined: it did not answer). */
async function openWithin(address: ReplicaAddress, connections: number, ms: number, opts: OpenOptions): Promise<Replica | undefined> {
  const opening = Replica.open(address, connections, opts).catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), ms)));
  const r = await Promise.race([opening, late]);
  clearTimeout(timer);
  if (r !== "late") return r;
  void opening.then((x) => x?.destroy());
  return undefined;
}

export class ReplicaSet implements NbdBackend {
  readonly size: number;
  readonly txFlags: number;
  readonly blockSizes: BlockSizes;
  /** Called when backend congestion starts (true) and ends (false); pause intake meanwhile. */
  onBusy: ((busy: boolean) => void) | undefined;
  private congestedReplicas = 0;

  /** Set (once the record was first read) when writes follow the recorded write policy. */
  policy: WritePolicy | undefined;
  private readonly members = new Map<string, Member>();
  /** Marks in flight, one per replica. */
  private readonly marking = new Map<string, Promise<void>>();
  /**
   * When the last successful read of the record began (performance.now()). Requests
   * wait for a read while there was none within the lease: another frontend (the
   * source of a live migration) may have marked a replica out-of-sync after this one
   * started, and reading from it would return stale data; and a frontend that cannot
   * reach the controller may have been detached and replaced elsewhere.
   */
  private readAt: number | undefined;
  /** Set when the record says the volume is no longer attached to this node. */
  private fenced = false;
  /** The record lists more than one attached node (a live migration's window). */
  private sharedWrites = false;
  private waiting: (() => void)[] = [];
  private refreshing: Promise<void> | undefined;
  private refreshTimer: NodeJS.Timeout | undefined;
  private readonly locks = new RegionLocks(REGION_BYTES);
  /** Set while writes are held for a snapshot (see freeze): the writes waiting. */
  private held: (() => void)[] | undefined;
  /**
   * Regions written since the last flush began: a replica that fails may have lost
   * them (its QSD's caches), so they go into its dirty map with everything after.
   */
  private unflushed = new Set<number>();
  private readonly flushing = new Set<Set<number>>();
  private closed = false;
  /** Resync copy limit, bytes/s (the record's, else the command line's). */
  private copyRateBytes: number;
  /** Dirty maps opened so far: a write that waited for marks checks it did not miss a new one. */
  private mapsOpened = 0;
  /** Resync copies done (tests and logs). */
  readonly resyncs: { replica: string; kind: string; bytes: number; ms: number }[] = [];

  constructor(
    readonly replicas: readonly Replica[],
    private readonly log?: Logger,
    private readonly sync?: SyncOptions,
  ) {
    if (replicas.length === 0) throw new Error("a replica set needs at least one replica");
    for (const r of replicas) this.members.set(idOf(r), { id: idOf(r), address: r.address, replica: r, busy: false });
    this.copyRateBytes = sync?.copyRateBytes ?? 0;
    for (const a of sync?.unreachable ?? []) this.members.set(a.exportName, { id: a.exportName, address: a, busy: false });
    if (sync) {
      // Later marks by others, and replicas joining or leaving, are picked up every 2 s.
      this.refreshTimer = setInterval(() => void this.refresh(), sync.refreshMs ?? 2_000);
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
    for (const r of replicas) this.watch(r);
  }

  private watch(r: Replica): void {
    r.on("congestion", (on) => {
      const before = this.congestedReplicas;
      this.congestedReplicas += on ? 1 : -1;
      if ((before === 0) !== (this.congestedReplicas === 0)) this.onBusy?.(this.congestedReplicas > 0);
    });
    r.on("unhealthy", () => this.log?.error({ replica: r.address.spec }, "replica has no usable connection left"));
  }

  /** True while the record was read within the lease and still lists this node. */
  private get synced(): boolean {
    return !this.fenced && this.readAt !== undefined && performance.now() - this.readAt < (this.sync!.leaseMs ?? LEASE_MS);
  }

  /** How replicas opened later (reconnects, replicas added) are opened. */
  private replicaOptions(): OpenOptions {
    return { log: this.log, stallTimeoutMs: this.sync!.stallTimeoutMs, sendBufferBytes: this.sync!.sendBufferBytes };
  }

  private replicaOf(id: string): Replica | undefined {
    return this.members.get(id)?.replica;
  }

  read(req: NbdRequest): void {
    if (this.sync) {
      if (!this.synced) return this.afterSync(req, () => this.read(req));
      return this.readFrom(req, this.policy!.readSources(), 0);
    }
    const rs = this.replicas;
    for (let i = 0; i < rs.length; i++) {
      const c = rs[i]!.pick();
      if (c !== undefined) return c.submit(Cmd.READ, req.flags, req.offset, req.length, undefined, req, req.header);
    }
    req.done(Errno.EIO);
  }

  write(req: NbdRequest): void {
    if (this.sync) return this.toTargets(req, req.data);
    this.toAll(req, req.data);
  }

  trim(req: NbdRequest): void {
    if (this.sync) return this.toTargets(req, undefined);
    this.toAll(req, undefined);
  }

  writeZeroes(req: NbdRequest): void {
    if (this.sync) return this.toTargets(req, undefined);
    this.toAll(req, undefined);
  }

  flush(req: NbdRequest): void {
    if (this.sync) return this.toTargets(req, undefined);
    const rs = this.replicas;
    if (rs.length === 1) return rs[0]!.flushAll(req.flags, req);
    const g = new Gather(rs.length, req);
    for (const r of rs) r.flushAll(req.flags, g);
  }

  /** Holds a request until the recorded sync state was read (failing it if that cannot be done). */
  private afterSync(req: NbdRequest, retry: () => void): void {
    if (this.waiting.length === 0) this.log?.info({ type: req.type }, "reading the recorded sync state before serving (first request, or the lease ran out)");
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
    if (!this.sync) return;
    await this.refresh();
  }

  /** Follows the record: the policy at first, then replicas marked, added or removed. */
  private async apply(state: RecordedSyncState): Promise<void> {
    if (state.copyRateBytes !== undefined) this.copyRateBytes = state.copyRateBytes;
    const node = this.sync!.node;
    this.sharedWrites = (state.attachedNodes?.length ?? 1) > 1;
    if (node && state.attachedNodes && !state.attachedNodes.includes(node)) {
      if (!this.fenced) this.log?.error({ node, attached: state.attachedNodes }, "the volume is no longer attached to this node: no more I/O here");
      this.fenced = true;
      return;
    }
    const recorded = new Map(state.replicas.map((r) => [r.id, r]));
    for (const r of state.replicas) {
      let m = this.members.get(r.id);
      if (!m) {
        m = { id: r.id, busy: false };
        this.members.set(r.id, m);
      }
      const address = r.nbdUri ? specOf(r.nbdUri) : undefined;
      if (address && address.spec !== m.address?.spec) m.address = address;
      m.agentCopy = !r.inSync && r.agentCopy === true;
      m.recordedToken = r.trackingToken ?? "";
    }
    if (!this.policy) {
      // Replicas recorded in-sync that were not given (or did not answer) at start: try them once.
      await Promise.all(
        [...this.members.values()]
          .filter((m) => recorded.get(m.id)?.inSync && !m.replica?.healthy && m.address)
          .map(async (m) => {
            const r = await openWithin(m.address!, this.sync!.connections ?? 2, 2_000, this.replicaOptions());
            if (r && r.info.size === this.size) {
              m.replica?.destroy();
              m.replica = r;
              this.watch(r);
            } else r?.destroy();
          }),
      );
      // First read: only replicas recorded in-sync and open now may serve. One recorded
      // in-sync that this frontend cannot reach must be recorded out-of-sync before
      // any write is acknowledged; an out-of-sync one is never used until resynced.
      const ids = [...this.members.keys()].filter((id) => recorded.has(id));
      const serving = ids.filter((id) => recorded.get(id)!.inSync && this.replicaOf(id)?.healthy);
      if (serving.length === 0) {
        throw new Error(
          `no replica recorded in-sync is reachable (in-sync: ${state.replicas.filter((r) => r.inSync).map((r) => r.id).join(", ") || "none"})`,
        );
      }
      const policy = new WritePolicy(serving.map((id) => ({ id, inSync: true })), state.generation);
      for (const id of ids) if (!policy.has(id)) policy.added(id, recorded.get(id)!.inSync);
      this.policy = policy;
      for (const id of ids) {
        if (policy.state(id) === "faulted") void this.mark(id, "unreachable when the frontend started");
        if (policy.state(id) === "out-of-sync") await this.openMapFor(id, recorded.get(id)!.outOfSyncGeneration);
      }
    } else {
      const policy = this.policy;
      for (const r of state.replicas) {
        if (!policy.has(r.id)) {
          policy.added(r.id, r.inSync);
          this.log?.warn({ replica: r.id, inSync: r.inSync }, "replica joined the volume");
          if (r.inSync) void this.mark(r.id, "recorded in-sync but unknown to this frontend");
          else await this.openMapFor(r.id, r.outOfSyncGeneration);
          continue;
        }
        const s = policy.state(r.id);
        // A resyncing replica is still out of sync in the record; only a newer mark (by
        // another frontend) than the one its copy works from stops the copy.
        const markedAgain = s === "resyncing" && r.outOfSyncGeneration > (this.members.get(r.id)?.map?.options.generation ?? 0);
        if (!r.inSync && (s === "in-sync" || markedAgain)) {
          policy.recordedOutOfSync(r.id);
          this.log?.warn({ replica: r.id, generation: r.outOfSyncGeneration }, "replica recorded out-of-sync by another frontend; no longer used");
          await this.openMapFor(r.id, r.outOfSyncGeneration);
        }
      }
      policy.generation = Math.max(policy.generation, state.generation);
      for (const r of state.replicas) {
        const m = this.members.get(r.id);
        if (!m || !policy.has(r.id) || policy.state(r.id) !== "out-of-sync") continue;
        await this.openMapFor(r.id, r.outOfSyncGeneration);
      }
    }
    for (const m of this.members.values()) if (m.agentCopy && !this.sharedWrites && m.map?.token && m.map.token !== m.recordedToken) void this.track(m);
    for (const id of [...this.members.keys()]) if (!recorded.has(id)) await this.drop(id);
  }

  /**
   * The map an out-of-sync replica needs now: a tracking one (empty from now on,
   * with a token) while its agent is to copy it; else the one found, unless it
   * carries a token the record does not name (it does not cover the copy the
   * agent made: everything is copied).
   */
  private openMapFor(id: string, generation: number): Promise<void> {
    const m = this.members.get(id);
    if (!m) return Promise.resolve();
    if (m.agentCopy) return this.ensureMap(id, generation, "track");
    return this.ensureMap(id, generation, "found", m.recordedToken ?? "");
  }

  /**
   * Tells the controller that the replica's map (with its token) tracks every write
   * from now on. Writes sent before the map opened are waited for first: the agent's
   * copy may start as soon as this is recorded, and must read them.
   */
  private track(m: Member): Promise<void> {
    if (m.tracking) return m.tracking;
    const map = m.map!;
    m.tracking = (async () => {
      this.locks.activate();
      try {
        await this.locks.drained();
      } finally {
        this.locks.deactivate();
      }
      if (this.closed || m.map !== map) return;
      await this.sync!.recorder.trackReplica(m.id, map.options.generation, map.token);
      m.recordedToken = map.token;
      this.log?.info({ replica: m.id, token: map.token, generation: map.options.generation }, "tracking writes to the new replica while its agent copies it");
    })()
      .catch((err: unknown) => this.log?.warn({ replica: m.id, err: errorMessage(err) }, "could not record that this frontend tracks the new replica; trying again"))
      .finally(() => (m.tracking = undefined));
    return m.tracking;
  }

  /** A replica left the volume: no more requests, and its dirty map goes. */
  private async drop(id: string): Promise<void> {
    const policy = this.policy;
    if (policy?.has(id)) {
      try {
        policy.removed(id);
      } catch (err) {
        this.log?.error({ replica: id, err: errorMessage(err) }, "the record dropped this frontend's last in-sync replica; keeping it");
        return;
      }
    }
    const m = this.members.get(id);
    if (!m) return;
    this.members.delete(id);
    this.log?.warn({ replica: id }, "replica left the volume; disconnected");
    m.replica?.destroy();
    await this.discardMap(m);
  }

  private mapPath(id: string): string {
    return join(this.sync!.stateDir, `${this.sync!.volume}.${id}.dirty`);
  }

  /**
   * Opens the dirty map of an out-of-sync replica for the generation it was recorded
   * at. "fresh": this frontend recorded it just now, so it knows every write the
   * replica misses. "found": a map from before (a restart) is used as found, and a
   * missing or different one (or one whose token is not `token`) means nothing is
   * known: every region is dirty. "track": a map with a token found is kept (this
   * frontend restarted while tracking); else a new, empty one gets a new token.
   */
  private ensureMap(id: string, generation: number, how: "fresh" | "found" | "track", token = ""): Promise<void> {
    const m = this.members.get(id);
    if (!m) return Promise.resolve();
    const cur = m.map;
    if (cur && cur.options.generation === generation && (how === "track" ? cur.token !== "" : how === "fresh" || !cur.token || cur.token === token)) return Promise.resolve();
    if (m.mapOpening) return m.mapOpening;
    this.mapsOpened++;
    m.mapOpening = (async () => {
      try {
        const old = m.map;
        m.map = undefined;
        await old?.close();
        const options = { sizeBytes: this.size, regionBytes: REGION_BYTES, generation };
        let { map, state } = await DirtyMap.open(this.mapPath(id), options);
        const stale = how === "track" ? state !== "loaded" || map.token === "" : how === "found" && map.token !== "" && map.token !== token;
        if (stale) {
          await map.close();
          await DirtyMap.remove(map.path);
          ({ map, state } = await DirtyMap.open(this.mapPath(id), options));
        }
        const fresh = how === "fresh" || (how === "track" && stale);
        if (state !== "loaded" && !fresh) await map.markAll();
        if (fresh) {
          // Writes it took but may have lost with its own caches (not flushed yet).
          await map.markRegions([this.unflushed, ...this.flushing].flatMap((set) => [...set]));
        }
        if (how === "track" && stale) await map.setToken(randomBytes(8).toString("hex"));
        m.map = map;
        this.log?.info({ replica: id, generation, state, dirtyBytes: map.dirtyBytes, full: map.full, token: map.token || undefined }, "dirty map open");
      } catch (err) {
        this.log?.error({ replica: id, err: errorMessage(err) }, "cannot keep a dirty map; the replica will get a full copy");
      } finally {
        m.mapOpening = undefined;
      }
    })();
    return m.mapOpening;
  }

  private async discardMap(m: Member): Promise<void> {
    const map = m.map;
    m.map = undefined;
    if (!map) return;
    await map.close().catch(() => undefined);
    await DirtyMap.remove(map.path);
  }

  /** Reads the recorded state and follows it; then runs waiting requests and reconnects. */
  private refresh(): Promise<void> {
    if (this.refreshing) return this.refreshing;
    const startedAt = performance.now();
    this.refreshing = this.sync!.recorder.syncState()
      .then((state) => this.apply(state))
      .then(
        () => {
          if (this.policy) this.readAt = startedAt;
        },
        (err: unknown) => this.log?.error({ err: errorMessage(err) }, "cannot read the volume's sync state"),
      )
      .finally(() => {
        this.refreshing = undefined;
        for (const run of this.waiting.splice(0)) run();
        if (this.synced && !this.closed) this.reconnect();
      });
    return this.refreshing;
  }

  /**
   * Out-of-sync replicas whose export answers again are reopened and resynced; never
   * while another frontend serves the volume too (a live migration's window): its
   * writes would not reach the copy (the controller refuses MarkInSync then, too).
   */
  private reconnect(): void {
    const policy = this.policy!;
    if (this.sharedWrites) return;
    for (const m of this.members.values()) {
      // A replica its agent is to copy gets no copy from here until that is done.
      if (m.busy || m.agentCopy || !m.address || !policy.has(m.id) || policy.state(m.id) !== "out-of-sync") continue;
      if (m.noSpace && Date.now() < m.noSpace.until) continue;
      if (!policy.readSources().length) return;
      m.busy = true;
      void this.resync(m).finally(() => (m.busy = false));
    }
  }

  private async resync(m: Member): Promise<void> {
    const policy = this.policy!;
    if (!m.replica?.healthy) {
      const r = await openWithin(m.address!, this.sync!.connections ?? 2, 10_000, this.replicaOptions());
      if (!r) return; // still away; tried again on the next refresh
      if (r.info.size !== this.size) {
        this.log?.error({ replica: m.id, size: r.info.size, volumeSize: this.size }, "reconnected replica has another size; not used");
        r.destroy();
        return;
      }
      if (this.closed || this.members.get(m.id) !== m) return r.destroy();
      m.replica?.destroy();
      m.replica = r;
      this.watch(r);
      this.log?.info({ replica: m.id, address: m.address!.spec }, "out-of-sync replica reachable again");
    }
    if (m.mapOpening) await m.mapOpening;
    if (!m.map) {
      // Nothing known about what it misses (its map could not be kept): copy everything.
      await this.ensureMap(m.id, policy.has(m.id) ? policy.generation : 0, "found");
      if (!m.map) return;
    }
    if (policy.state(m.id) !== "out-of-sync") return;
    const map = m.map;
    policy.reconnected(m.id);
    this.locks.activate();
    this.log?.info({ replica: m.id, dirtyBytes: map.dirtyBytes, full: map.full }, "resync started: live writes go to the replica while its dirty regions are copied");
    try {
      await this.locks.drained();
      if (map.full) await this.skipHoles(m, map);
      const rep = m.replica!;
      const result = await copyDirtyRegions({
        map,
        locks: this.locks,
        rateBytes: this.copyRateBytes,
        log: this.log,
        report: (p) => void this.sync!.recorder.reportResync(m.id, p).catch(() => undefined),
        target: {
          sources: () => this.readConnections(),
          replica: () => rep.pick(),
          flush: async () => {
            await Promise.all(rep.usableConnections().map((c) => c.flush()));
          },
          stillResyncing: () => policy.has(m.id) && policy.state(m.id) === "resyncing" && !this.closed && !this.sharedWrites,
        },
      });
      const generation = await this.sync!.recorder.markInSync(m.id, map.options.generation, result);
      if (!policy.has(m.id) || policy.state(m.id) !== "resyncing") return;
      policy.resynced(m.id, generation);
      this.resyncs.push({ replica: m.id, ...result });
      m.noSpace = undefined;
      this.log?.info({ replica: m.id, ...result, generation }, "replica resynced; recorded in-sync");
      await this.discardMap(m);
    } catch (err) {
      if (policy.has(m.id) && policy.state(m.id) === "resyncing") policy.recordedOutOfSync(m.id);
      if (err instanceof NbdError && err.errno === Errno.ENOSPC) this.noteNoSpace(m.id);
      if (m.noSpace) this.log?.warn({ replica: m.id, retryInMs: Math.max(0, m.noSpace.until - Date.now()) }, "the replica is out of space; the resync is tried again later");
      const level = err instanceof ResyncAborted ? "warn" : "error";
      this.log?.[level]({ replica: m.id, err: errorMessage(err) }, "resync stopped; it resumes when the replica answers again");
    } finally {
      this.locks.deactivate();
    }
  }

  /**
   * A full copy moves only allocated regions: those reading as zeroes on both an
   * in-sync replica and the target are dropped from the map. Called once new writes
   * reach both, so a region allocated after the maps were read is written to both.
   */
  private async skipHoles(m: Member, map: DirtyMap): Promise<void> {
    const source = this.policy!.readSources().map((id) => this.members.get(id)?.address).find((a) => a !== undefined);
    if (!source || !m.address) return;
    const data = new Uint8Array(map.regions);
    try {
      const [a, b] = await Promise.all([exportMap(formatNbdUri(source)), exportMap(formatNbdUri(m.address))]);
      markDataRegions(a, REGION_BYTES, data);
      markDataRegions(b, REGION_BYTES, data);
    } catch (err) {
      this.log?.warn({ replica: m.id, err: errorMessage(err) }, "cannot read the allocation maps; copying every region");
      return;
    }
    const before = map.dirtyBytes;
    for (const r of [...map.dirtyRegions()]) if (!data[r]) map.clear(r);
    await map.flush();
    this.log?.info({ replica: m.id, dirtyBytes: before, allocatedBytes: map.dirtyBytes }, "full copy: only allocated regions");
  }

  /** A usable connection to each in-sync replica, in the order reads try them. */
  private readConnections(): NbdClient[] {
    return this.policy!.readSources().flatMap((id) => this.replicaOf(id)?.pick() ?? []);
  }

  /** Reads from the first source with a usable connection; on an error, from the next one. */
  private readFrom(req: NbdRequest, sources: readonly string[], from: number): void {
    for (let i = from; i < sources.length; i++) {
      const c = this.replicaOf(sources[i]!)?.pick();
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

  /**
   * A write, trim, write-zeroes or flush: regions a replica misses are marked in its
   * dirty map first, then the request goes to the policy's targets (under the
   * region locks while a resync runs).
   */
  private toTargets(req: NbdRequest, payload: Buffer[] | undefined): void {
    if (!this.synced) return this.afterSync(req, () => this.toTargets(req, payload));
    if (req.type === Cmd.FLUSH) {
      const flushed = this.unflushed;
      this.unflushed = new Set();
      this.flushing.add(flushed);
      return this.send(req, payload, undefined, flushed);
    }
    const maps = this.mapsOpened;
    const marking = this.markMissing(req.offset, req.length);
    if (marking === undefined) return this.enter(req, payload);
    // A map opened while this write waited (a new replica's tracking map) must have it too.
    marking.then(() => (this.mapsOpened === maps ? this.enter(req, payload) : this.toTargets(req, payload)), (err: unknown) => {
      this.log?.error({ err: errorMessage(err) }, "cannot mark a dirty region; failing the write");
      req.done(Errno.EIO);
    });
  }

  /** Sends a write through the region locks (no closure while no resync runs: the common case). */
  private enter(req: NbdRequest, payload: Buffer[] | undefined): void {
    if (this.held) return void this.held.push(() => this.enter(req, payload));
    if (!this.locks.active) return this.send(req, payload, this.locks.untrackedWrite());
    this.locks.enter(req.offset, req.length, (token) => this.send(req, payload, token));
  }

  /** Marks offset/length dirty for every out-of-sync replica; undefined when nothing needs waiting for. */
  private markMissing(offset: number, length: number): Promise<void> | undefined {
    if (this.members.size > 1) {
      const R = REGION_BYTES;
      for (let r = Math.floor(offset / R), last = Math.floor((offset + Math.max(length, 1) - 1) / R); r <= last; r++) this.unflushed.add(r);
    }
    if (!this.policy!.degraded) return undefined;
    return this.markIn((m) => this.policy!.state(m.id) === "out-of-sync", offset, length);
  }

  /**
   * Marks offset/length dirty in the maps of the members `which` picks (waiting for a
   * map still opening); undefined when nothing needs waiting for.
   */
  private markIn(which: (m: Member) => boolean, offset: number, length: number): Promise<void> | undefined {
    let waits: Promise<void>[] | undefined;
    for (const m of this.members.values()) {
      if (!this.policy!.has(m.id) || !which(m)) continue;
      const p = m.mapOpening ? m.mapOpening.then(() => m.map?.markDirty(offset, length)) : m.map && !m.map.covers(offset, length) ? m.map.markDirty(offset, length) : undefined;
      if (p) (waits ??= []).push(p);
    }
    return waits && Promise.all(waits).then(() => undefined);
  }

  private send(req: NbdRequest, payload: Buffer[] | undefined, token: Token | undefined, flushed?: Set<number>): void {
    const targets = this.policy!.writeTargets();
    if (targets.length === 0) {
      if (token !== undefined) this.locks.leave(token);
      return req.done(Errno.EIO);
    }
    const per = new PerReplica(targets.length, this, req, token, flushed);
    let headerUsed = false;
    for (const id of targets) {
      const r = this.replicaOf(id);
      const done = per.for(id);
      if (r === undefined) {
        done.nbdDone(Errno.EIO, undefined, undefined);
        continue;
      }
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
    if (per.token !== undefined) this.locks.leave(per.token);
    if (per.errors.size > 0) for (const [id, e] of per.errors) if (e === Errno.ENOSPC) this.noteNoSpace(id);
    this.judge(req, per, this.policy!.settle(per.results, per.errors));
  }

  private judge(req: NbdRequest, per: PerReplica, verdict: WriteVerdict): void {
    if (verdict.kind === "ack") return this.ack(req, per);
    if (verdict.kind === "fail") {
      const noSpace = verdict.errno === Errno.ENOSPC;
      this.log?.[noSpace ? "warn" : "error"]({ offset: req.offset, length: req.length, errors: Object.fromEntries(per.errors), reason: verdict.reason }, noSpace ? "write failed: no space left (ENOSPC to the client)" : "write failed");
      if (per.flushed) this.unflush(per.flushed);
      return req.done(noSpace ? Errno.ENOSPC : Errno.EIO);
    }
    // Record every faulted replica out-of-sync first; only then may the write be acknowledged.
    void Promise.all(verdict.replicas.map((id) => this.mark(id, `errno ${per.errors.get(id) ?? "?"} on a ${Object.entries(Cmd).find(([, v]) => v === req.type)?.[0] ?? req.type}`))).then(() =>
      this.judge(req, per, this.policy!.finish(per.results)),
    );
  }

  /**
   * A replica answered ENOSPC: its resync waits (5 s, doubling to 60 s) instead of
   * copying into a full pool every refresh. Many writes failing at once count once.
   */
  private noteNoSpace(id: string): void {
    const m = this.members.get(id);
    if (!m) return;
    const now = Date.now();
    if (m.noSpace && now < m.noSpace.until) return;
    const backoffMs = m.noSpace ? Math.min(NO_SPACE_BACKOFF_MS.max, m.noSpace.backoffMs * 2) : NO_SPACE_BACKOFF_MS.first;
    m.noSpace = { until: now + backoffMs, backoffMs };
  }

  /** A failed flush: the regions it covered are unflushed again. */
  private unflush(flushed: Set<number>): void {
    this.flushing.delete(flushed);
    for (const r of flushed) this.unflushed.add(r);
  }

  /** Acknowledges once every out-of-sync replica that did not take the write has its regions marked. */
  private ack(req: NbdRequest, per: PerReplica): void {
    if (per.flushed) {
      this.flushing.delete(per.flushed);
      return req.done(0);
    }
    const missed = (m: Member) => {
      const s = this.policy!.state(m.id);
      return !per.results.get(m.id) && (s === "out-of-sync" || s === "resyncing");
    };
    const marking = this.policy!.degraded ? this.markIn(missed, req.offset, req.length) : undefined;
    if (!marking) return req.done(0);
    marking.then(
      () => req.done(0),
      (err: unknown) => {
        this.log?.error({ err: errorMessage(err) }, "cannot mark a dirty region; failing the write");
        req.done(Errno.EIO);
      },
    );
  }

  /** Records a faulted replica out-of-sync through the controller (once, however many writes wait for it). */
  private mark(id: string, reason: string): Promise<void> {
    let p = this.marking.get(id);
    if (!p) {
      const policy = this.policy!;
      p = this.sync!.recorder.markOutOfSync(id, reason).then(
        async (generation) => {
          if (!policy.has(id) || policy.state(id) !== "faulted") return;
          policy.markConfirmed(id, generation);
          this.log?.error({ replica: id, generation, reason }, "replica recorded out-of-sync; writing to the others");
          await this.ensureMap(id, generation, "fresh");
        },
        async (err: unknown) => {
          if (!policy.has(id) || policy.state(id) !== "faulted") return;
          if (err instanceof NotFoundError) {
            // It left the volume meanwhile: it needs no more writes.
            await this.drop(id);
            return;
          }
          policy.markRefused(id);
          this.log?.error({ replica: id, err: errorMessage(err) }, "could not record the replica out-of-sync; failing the writes it missed");
        },
      );
      p = p.finally(() => this.marking.delete(id));
      this.marking.set(id, p);
    }
    return p;
  }

  /**
   * Holds every new write, trim and write-zeroes (reads and flushes go on) and
   * resolves once the writes already sent have completed on every target and
   * every out-of-sync mark they caused is recorded: from then until `thaw`, each
   * in-sync replica holds the same writes, so snapshots taken of them meanwhile
   * are at one write boundary. Writes still being marked in dirty maps reach the
   * hold a moment later and wait there too.
   */
  async freeze(): Promise<void> {
    if (!this.sync) throw new Error("freeze needs the sync record (a frontend started with controllers)");
    if (this.held) throw new Error("writes are held already");
    this.held = [];
    await this.locks.idle();
    while (this.marking.size > 0) await Promise.allSettled([...this.marking.values()]);
  }

  /** Lets the held writes go, in the order they arrived. */
  thaw(): void {
    const held = this.held;
    this.held = undefined;
    for (const run of held ?? []) run();
  }

  /** True while writes are held. */
  get frozen(): boolean {
    return this.held !== undefined;
  }

  /** Flushes and disconnects every replica. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.refreshTimer) clearInterval(this.refreshTimer);
    const all = new Set<Replica>(this.replicas);
    for (const m of this.members.values()) if (m.replica) all.add(m.replica);
    await Promise.all([...all].map((r) => r.close()));
    for (const m of this.members.values()) await m.map?.close().catch(() => undefined);
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
