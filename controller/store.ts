// The controller's view of cluster state: an in-memory mirror of the etcd
// prefix, kept current by a watch, plus fenced optimistic writes. Only the
// leader writes; every write also checks that the leader's election key still
// exists, so a deposed leader cannot overwrite its successor's decisions.
import { EventEmitter } from "node:events";
import type { Etcd3, IKeyValue, Watcher } from "etcd3";
import { ConflictError } from "../lib/errors.js";
import type { Logger } from "../lib/logger.js";
import { keys, parseKey, PREFIX, type KeyKind, type ParsedKey } from "./keys.js";
import type { EventRecord, FrontendStatus, JobRecord, MigrationRecord, NodeSpec, NodeStatus, OperationRecord, SnapshotRecord, BackupRecord, ReplicationRecord, TemplateRecord, PoolDedupRecord, PoolCompressRecord, RestoreExportRecord, VolumeSpec, VolumeStatus } from "./model.js";

export interface Entry<T> {
  value: T;
  modRevision: number;
}

/** One write: puts and deletes applied together if every condition holds. */
export interface WriteBatch {
  /** Keys that must not exist. */
  absent?: string[];
  /** Keys that must still be at these mod revisions. */
  unchanged?: [key: string, modRevision: number][];
  put?: { key: string; value: unknown; lease?: string }[];
  delete?: string[];
}

/** A key that changed, and whether it appeared, changed in place, or went away. */
export interface Change extends ParsedKey {
  transition: "created" | "updated" | "deleted";
}

export class ClusterStore extends EventEmitter<{ change: [Change] }> {
  private readonly entries = new Map<string, Entry<unknown>>();
  /** The same entries by kind and name, so listing one kind never scans the others. */
  private readonly byKind = new Map<KeyKind, Map<string, Entry<unknown>>>();
  /** Deleted keys and the revision of their delete, to ignore late watch events. */
  private readonly tombstones = new Map<string, number>();
  private watcher?: Watcher;
  /** The leader's election key; writes require it to exist. */
  fenceKey = "";

  constructor(
    private readonly etcd: Etcd3,
    private readonly log: Logger,
  ) {
    super();
    this.setMaxListeners(50);
  }

  /**
   * Loads the whole prefix and starts watching from the revision read. Called
   * again after a watch failure: keys that vanished meanwhile are dropped.
   */
  async start(): Promise<void> {
    const res = await this.etcd.getAll().prefix(PREFIX).exec();
    const present = new Set<string>();
    for (const kv of res.kvs) {
      const key = kv.key.toString();
      present.add(key);
      this.apply(key, kv.value.toString(), Number(kv.mod_revision));
    }
    const revision = Number(res.header.revision);
    for (const key of [...this.entries.keys()]) {
      if (!present.has(key) && this.entries.get(key)!.modRevision <= revision) this.apply(key, undefined, revision);
    }
    const watcher = await this.etcd.watch().prefix(PREFIX).startRevision(String(revision + 1)).create();
    this.watcher = watcher;
    watcher.on("put", (kv: IKeyValue) => this.apply(kv.key.toString(), kv.value.toString(), Number(kv.mod_revision)));
    watcher.on("delete", (kv: IKeyValue) => this.apply(kv.key.toString(), undefined, Number(kv.mod_revision)));
    watcher.on("error", (err) => {
      this.log.error({ err: String(err) }, "etcd watch failed; reloading state");
      void watcher.cancel().catch(() => undefined);
      if (this.watcher === watcher) this.reloadSoon();
    });
  }

  private reloadSoon(): void {
    this.watcher = undefined;
    setTimeout(() => {
      this.start().catch((err) => {
        this.log.error({ err: String(err) }, "state reload failed; retrying");
        this.reloadSoon();
      });
    }, 1_000).unref();
  }

  async stop(): Promise<void> {
    await this.watcher?.cancel().catch(() => undefined);
    this.watcher = undefined;
  }

  private apply(key: string, raw: string | undefined, revision: number): void {
    const parsed = parseKey(key);
    if (!parsed) return;
    const dead = this.tombstones.get(key);
    if (dead !== undefined && dead >= revision) return;
    const cur = this.entries.get(key);
    if (cur && cur.modRevision >= revision) return;
    if (raw === undefined) {
      this.tombstones.set(key, revision);
      if (this.tombstones.size > 10_000) this.pruneTombstones();
      if (!cur) return;
      this.entries.delete(key);
      this.byKind.get(parsed.kind)?.delete(parsed.name);
    } else {
      try {
        const entry = { value: JSON.parse(raw), modRevision: revision };
        this.entries.set(key, entry);
        let kind = this.byKind.get(parsed.kind);
        if (!kind) this.byKind.set(parsed.kind, (kind = new Map()));
        kind.set(parsed.name, entry);
      } catch (err) {
        this.log.error({ key, err }, "ignoring unparsable value in etcd");
        return;
      }
      this.tombstones.delete(key);
    }
    this.emit("change", { ...parsed, transition: raw === undefined ? "deleted" : cur ? "updated" : "created" });
  }

  private pruneTombstones(): void {
    const seen = this.watcher?.lastRevision() ?? 0;
    for (const [k, rev] of this.tombstones) if (rev <= seen) this.tombstones.delete(k);
  }

  /** Applies a batch atomically; throws ConflictError when a condition failed. */
  async write(batch: WriteBatch): Promise<number> {
    // Without a fence (tests of the store alone) the first compare always holds.
    let txn = this.fenceKey
      ? this.etcd.if(this.fenceKey, "Create", ">", 0)
      : this.etcd.if(keys.election, "Create", "!=", -1);
    for (const k of batch.absent ?? []) txn = txn.and(k, "Create", "==", 0);
    for (const [k, rev] of batch.unchanged ?? []) txn = txn.and(k, "Mod", "==", rev);
    const puts = (batch.put ?? []).map((p) => ({ ...p, json: JSON.stringify(p.value) }));
    const ops = [
      ...puts.map((p) => {
        const op = this.etcd.put(p.key).value(p.json);
        return p.lease ? op.lease(p.lease) : op;
      }),
      ...(batch.delete ?? []).map((k) => this.etcd.delete().key(k)),
    ];
    const res = await txn.then(...ops).commit();
    if (!res.succeeded) {
      throw new ConflictError("the object changed while it was being updated", { hint: "retry the command" });
    }
    const revision = Number(res.header.revision);
    for (const p of puts) this.apply(p.key, p.json, revision);
    for (const k of batch.delete ?? []) this.apply(k, undefined, revision);
    return revision;
  }

  private get<T>(key: string): Entry<T> | undefined {
    return this.entries.get(key) as Entry<T> | undefined;
  }

  private all<T>(kind: KeyKind): Entry<T>[] {
    return [...(this.byKind.get(kind)?.values() ?? [])] as Entry<T>[];
  }

  count(kind: KeyKind): number {
    return this.byKind.get(kind)?.size ?? 0;
  }

  nodeSpec = (name: string) => this.get<NodeSpec>(keys.nodeSpec(name));
  nodeStatus = (name: string) => this.get<NodeStatus>(keys.nodeStatus(name));
  volumeSpec = (name: string) => this.get<VolumeSpec>(keys.volumeSpec(name));
  volumeStatus = (name: string) => this.get<VolumeStatus>(keys.volumeStatus(name));
  operation = (volume: string) => this.get<OperationRecord>(keys.operation(volume));
  nodeSpecs = () => this.all<NodeSpec>("node-spec");
  volumeSpecs = () => this.all<VolumeSpec>("volume-spec");
  operations = () => this.all<OperationRecord>("operation");
  /** The volume's frontend on a node, as last observed. */
  frontend = (volume: string, node: string): FrontendStatus | undefined => this.volumeStatus(volume)?.value.frontends?.find((f) => f.node === node);
  migration = (domain: string) => this.get<MigrationRecord>(keys.migration(domain));
  migrations = () => this.all<MigrationRecord>("migration");
  job = (replica: string) => this.get<JobRecord>(keys.job(replica));
  jobs = () => this.all<JobRecord>("job");
  snapshot = (volume: string, name: string) => this.get<SnapshotRecord>(keys.snapshot(volume, name));
  snapshots = () => this.all<SnapshotRecord>("snapshot");
  backup = (volume: string, id: string) => this.get<BackupRecord>(keys.backup(volume, id));
  backups = () => this.all<BackupRecord>("backup");
  replication = (volume: string) => this.get<ReplicationRecord>(keys.replication(volume));
  replications = () => this.all<ReplicationRecord>("replication");
  /** The snapshots of one volume. */
  snapshotsOf = (volume: string) => this.snapshots().filter((e) => e.value.volume === volume);
  events = () => this.all<EventRecord>("event");
  template = (name: string) => this.get<TemplateRecord>(keys.template(name));
  templates = () => this.all<TemplateRecord>("template");
  poolDedup = (node: string, pool: string) => this.get<PoolDedupRecord>(keys.poolDedup(node, pool));
  poolDedups = () => this.all<PoolDedupRecord>("pool-dedup");
  poolCompress = (node: string, pool: string) => this.get<PoolCompressRecord>(keys.poolCompress(node, pool));
  poolCompresses = () => this.all<PoolCompressRecord>("pool-compress");
  restoreExports = () => this.all<RestoreExportRecord>("restore-export");
}
