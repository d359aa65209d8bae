// Backups: while the volume's frontend holds writes (as for a snapshot), every
// in-sync replica's storage daemon adds a persistent dirty bitmap for this backup
// and freezes the previous one's, and the replica read starts a "fleece" (a
// point-in-time view served read-only over NBD while the VM writes on). The node
// keeping the chunk store (lib/chunks through node-agent/backups.ts) reads it: every
// allocated extent for a first backup, only the previous bitmap's regions after.
// Then the fleece goes and the previous bitmap is dropped; a failed backup folds its
// bitmap back, so no change is forgotten.
//
// The record (backups/VOLUME@ID, state creating) is written before anything is
// done, and names the store node; every step is idempotent and named by the id
// (bitmap stow-bk-ID, fleece and export of the id, manifest VOLUME@ID), so a
// creation whose leader died is undone by the sweep: fleece and export released,
// bitmap folded back, manifest deleted, record removed. Deletion marks the record
// deleting first, removes the manifest (and collects unused chunks), then the record.
//
// A replication's copy (opts.replication) is not read by the store node: the
// reader's node chunks the fleece itself and sends the store node only the chunks
// it lacks (write() below; node-agent/backup-ship.ts). Undoing it is the same.
//
// The store node is the one holding the volume's latest backup when it is online
// (so unchanged data is found there and not stored again), else an online node
// holding no replica of the volume, else any online node.
import { ConflictError, FailedPreconditionError, NotFoundError, UnavailableError, errorMessage } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import type { Logger } from "../lib/logger.js";
import { validateName } from "../lib/names.js";
import type { AgentClients } from "./agents.js";
import { applyRetention, type RetentionPolicy } from "./backup-retention.js";
import { keys } from "./keys.js";
import type { BackupRecord } from "./model.js";
import { withWritesHeld } from "./snapshots.js";
import type { ClusterStore } from "./store.js";

const SWEEP_MS = 5_000;


export interface BackupsDeps {
  store: ClusterStore;
  agents: AgentClients;
  enqueue: (volume: string) => void;
  isOnline: (node: string) => boolean;
  /** Online nodes, by name. */
  onlineNodes: () => string[];
  instance: string;
  log: Logger;
}

export const backupRef = (b: { volume: string; id: string }) => `${b.volume}@${b.id}`;
/** The dirty bitmap of changes since backup `id`. */
const bitmapName = (id: string) => `stow-bk-${id}`;
/** The fleece of a backup in the reader's storage daemon. */
const fleeceOf = (b: { volume: string; id: string }) => `bk-${b.volume}-${b.id}`;
/** A backup's lease on its volume: a safety net, the backup clears it (or the sweep, after a leader died). */
const LEASE_MS = 6 * 3600_000;

/** YYYYMMDD-HHMMSS in UTC: sortable, and a valid name. */
export function backupId(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, "").replace(/[-:]/g, "").replace("T", "-");
}

export class Backups {
  private readonly creating = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private sweeping = false;

  constructor(private readonly d: BackupsDeps) {}

  start(): void {
    this.timer = setInterval(() => void this.sweep(), SWEEP_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  list(volume?: string): BackupRecord[] {
    return this.d.store
      .backups()
      .map((e) => e.value)
      .filter((b) => !volume || b.volume === volume)
      .sort((a, b) => a.volume.localeCompare(b.volume) || a.createdAtMs - b.createdAtMs);
  }

  get(volume: string, id: string): BackupRecord {
    validateName("volume", volume);
    validateName("backup", id);
    const b = this.d.store.backup(volume, id)?.value;
    if (!b) throw new NotFoundError("backup", `${volume}@${id}`, { hint: `stowctl backup list ${volume}` });
    return b;
  }

  private storeNode(volume: string): string {
    const latest = this.list(volume).filter((b) => b.state === "ready").at(-1);
    if (latest && this.d.isOnline(latest.node)) return latest.node;
    const spec = this.d.store.volumeSpec(volume)!.value;
    const online = this.d.onlineNodes().sort();
    const away = online.find((n) => !spec.placement.some((p) => p.node === n));
    const node = away ?? online[0];
    if (!node) throw new UnavailableError("no node is online to keep the backup");
    return node;
  }

  /**
   * `storeNode`: keep it there (asynchronous replication names its target);
   * `replication`: taken by a replication (its own chain of backups).
   */
  async create(volume: string, opts: { storeNode?: string; replication?: boolean } = {}): Promise<BackupRecord> {
    validateName("volume", volume);
    if (opts.storeNode && !this.d.isOnline(opts.storeNode)) throw new UnavailableError(`node ${opts.storeNode} is offline`);
    const spec = this.d.store.volumeSpec(volume)?.value;
    if (!spec) throw new NotFoundError("volume", volume);
    if (spec.format !== "qcow2") {
      throw new FailedPreconditionError(`volume ${volume} is a raw volume: backups read a snapshot, and snapshots need qcow2 images`, { hint: "back up qcow2 volumes (the default format)" });
    }
    const running = this.list(volume).find((b) => b.state === "creating");
    if (running) throw new FailedPreconditionError(`a backup of ${volume} is being taken (${backupRef(running)})`, { hint: "retry once it finished" });
    let now = Date.now();
    let id = backupId(now);
    while (this.d.store.backup(volume, id)) id = backupId((now += 1000));
    const record: BackupRecord = {
      volume,
      id,
      state: "creating",
      createdAtMs: now,
      node: opts.storeNode ?? this.storeNode(volume),
      replication: opts.replication || undefined,
      sizeBytes: spec.sizeBytes,
      dataBytes: 0,
      newBytes: 0,
      storedBytes: 0,
      durationMs: 0,
      startedBy: this.d.instance,
      message: "",
    };
    const key = keys.backup(volume, id);
    this.creating.add(key);
    try {
      try {
        await this.d.store.write({ absent: [key], put: [{ key, value: record }] });
      } catch (err) {
        if (err instanceof ConflictError) throw new ConflictError(`a backup of ${volume} was started at the same second`, { hint: "retry the command" });
        throw err;
      }
      try {
        return await this.take(record);
      } catch (err) {
        await this.undo(record).catch((e) => this.d.log.warn({ backup: backupRef(record), err: errorMessage(e) }, "undoing a failed backup failed; the sweep retries"));
        throw err;
      }
    } finally {
      this.creating.delete(key);
    }
  }

  /** Sets or clears the volume's backup lease (its in-sync replicas stay open meanwhile). */
  private async lease(volume: string, id: string | undefined, marking = false): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const e = this.d.store.volumeSpec(volume);
      if (!e) return;
      if (!id && e.value.backingUp === undefined) return;
      const { backingUp: _, ...rest } = e.value;
      const value = id ? { ...rest, backingUp: { id, untilMs: Date.now() + LEASE_MS, marking } } : rest;
      try {
        await this.d.store.write({ unchanged: [[keys.volumeSpec(volume), e.modRevision]], put: [{ key: keys.volumeSpec(volume), value }] });
        this.d.enqueue(volume);
        return;
      } catch (err) {
        if (!(err instanceof ConflictError) || attempt >= 5) throw err;
      }
    }
  }

  private async put(record: BackupRecord): Promise<void> {
    await this.d.store.write({ put: [{ key: keys.backup(record.volume, record.id), value: record }] });
  }

  /**
   * The backup's instant is one QMP transaction per in-sync replica, while the
   * frontend holds writes: a new dirty bitmap (changes since this backup) is added,
   * the previous backup's is frozen, and on the replica read the storage daemon
   * starts a fleece (node-agent/qsd/fleece.ts). The fleece, exported with the
   * previous bitmap, is read by the store node: only the changed regions when that
   * replica still has a good bitmap of the previous backup kept in the same store,
   * everything allocated otherwise. Then the fleece goes and the previous bitmap
   * is dropped; after a failure the new bitmap is folded back into the previous one.
   */
  private async take(created: BackupRecord): Promise<BackupRecord> {
    const t0 = Date.now();
    // Milliseconds of each step, logged with the result (the benchmark reports them).
    const steps: Record<string, number> = {};
    let last = t0;
    const step = (name: string) => {
      const now = Date.now();
      steps[name] = now - last;
      last = now;
    };
    const volume = created.volume;
    let spec = this.d.store.volumeSpec(volume)!.value;
    const attachments = spec.attachments ?? [];
    if (attachments.length > 1) throw new FailedPreconditionError(`volume ${volume} is attached to ${attachments.map((a) => a.node).join(" and ")} (a live migration)`, { hint: "back it up once the migration finished" });
    const attachedTo = attachments[0]?.node;
    if (attachedTo && this.d.store.frontend(volume, attachedTo)?.state !== "attached") {
      throw new FailedPreconditionError(`volume ${volume} is being attached to ${attachedTo}`, { hint: "retry once stowctl volume get shows it attached" });
    }
    await this.lease(volume, created.id, true);
    step("lease");
    spec = this.d.store.volumeSpec(volume)!.value;
    if ((spec.attachments ?? []).length !== attachments.length) throw new ConflictError(`volume ${volume} was attached or detached meanwhile`, { hint: "retry the command" });
    const inSync = spec.placement.filter((p) => !p.outOfSync && this.d.isOnline(p.node));
    if (inSync.length === 0) throw new UnavailableError(`no in-sync replica of ${volume} is online`);
    await this.untilState(`opening the replicas of ${volume}`, 30_000, () => {
      const st = this.d.store.volumeStatus(volume)?.value;
      return inSync.every((p) => st?.replicas.some((r) => r.id === p.id && r.exportUri)) ? true : undefined;
    });
    step("open");
    // Incremental from the volume's last backup in the same store, if a replica still tracks changes since it.
    const base = this.list(volume).filter((b) => b.state === "ready" && b.node === created.node && b.bitmap && Boolean(b.replication) === Boolean(created.replication)).at(-1);
    const bitmaps = await Promise.all(inSync.map((p) => this.d.agents.for(p.node).listBackupBitmaps({ replicaId: p.id }, { timeoutMs: 30_000 })));
    const tracking = base ? inSync.findIndex((_, i) => bitmaps[i]!.bitmaps.some((b) => b.name === base.bitmap && b.recording)) : -1;
    const reader = inSync[Math.max(tracking, 0)]!;
    const record: BackupRecord = {
      ...created,
      kind: tracking >= 0 ? "incremental" : "full",
      base: tracking >= 0 ? base!.id : undefined,
      reader: { id: reader.id, node: reader.node, pool: reader.pool },
      message: base && tracking < 0 ? `full: no replica tracks the changes since ${backupRef(base)} (a storage daemon restarted, or the replicas changed)` : "",
    };
    await this.put(record);
    step("bitmaps");
    const next = bitmapName(record.id);
    const baseBitmap = record.kind === "incremental" ? base!.bitmap! : "";
    const fleeceId = fleeceOf(record);
    await this.d.agents.for(reader.node).prepareFleece({ replicaId: reader.id, pool: reader.pool, fleeceId }, { timeoutMs: 60_000 });
    step("prepare");
    const held = await withWritesHeld(this.d.agents, volume, attachedTo, async () => {
      await Promise.all(
        inSync.map((p) =>
          this.d.agents.for(p.node).markBackupPoint({ replicaId: p.id, next, base: baseBitmap, fleeceId: p.id === reader.id ? fleeceId : "" }, { timeoutMs: 30_000 }),
        ),
      );
    });
    if (held.failure) throw new UnavailableError(`backup of ${volume} not taken: ${held.failure}`, { hint: "nothing was kept; retry the command" });
    if (this.d.store.volumeSpec(volume)?.value.placement.find((p) => p.id === reader.id)?.outOfSync) {
      throw new UnavailableError(`backup of ${volume} not taken: replica ${reader.id} was marked out-of-sync while it was marked`, { hint: "retry the command" });
    }
    step("mark");
    // Marked: the volume may be attached again (while the fleece is exported).
    const [, { nbdUri }] = await Promise.all([
      this.lease(volume, created.id, false),
      this.d.agents.for(reader.node).exportFleece({ fleeceId, bitmap: baseBitmap }, { timeoutMs: 30_000 }),
    ]);
    step("export");
    faultPoint("create-backup:exported", volume);
    const w = await this.write(record, nbdUri, base && record.kind === "incremental" ? backupRef(base) : "", baseBitmap);
    step("write");
    faultPoint("create-backup:written", volume);
    // The fleece goes (the base's bitmap is exported with it: busy until then), and
    // the base's bitmap with it; the other replicas drop theirs meanwhile.
    const settle = (p: { id: string; node: string }) =>
      this.d.agents.for(p.node).settleBackupBitmaps({ replicaId: p.id, next, base: baseBitmap, succeeded: true }, { timeoutMs: 30_000 });
    const online = this.onlineReplicas(volume);
    const [released] = await Promise.allSettled([
      (async () => {
        await this.d.agents.for(reader.node).releaseFleece({ fleeceId, pool: reader.pool }, { timeoutMs: 60_000 });
        if (online.some((p) => p.id === reader.id)) await settle(reader).catch(() => undefined);
      })(),
      ...online.filter((p) => p.id !== reader.id).map(settle),
    ]);
    if (released!.status === "rejected") throw released.reason;
    step("release");
    const ready: BackupRecord = {
      ...record,
      state: "ready",
      dataBytes: w.dataBytes,
      newBytes: w.newBytes,
      storedBytes: w.storedBytes,
      readBytes: w.readBytes,
      shippedBytes: w.shippedBytes,
      durationMs: Date.now() - t0,
      bitmap: next,
    };
    await Promise.all([this.lease(volume, undefined), this.put(ready)]);
    step("finish");
    // Bitmaps no chain of backups ends with any more go too (after the newest backup of a
    // chain was deleted, say): nothing would read them, and writes would go on marking them.
    await Promise.all(
      inSync.flatMap((p, i) =>
        this.orphanBitmaps(volume, ready, bitmaps[i]!.bitmaps.map((b) => b.name))
          .filter((name) => name !== baseBitmap)
          .map((name) =>
            this.d.agents
              .for(p.node)
              .settleBackupBitmaps({ replicaId: p.id, next: "", base: name, succeeded: true }, { timeoutMs: 30_000 })
              .then(() => this.d.log.info({ volume, replica: p.id, bitmap: name }, "dropped a backup bitmap no backup chain ends with"))
              .catch((err) => this.d.log.warn({ volume, replica: p.id, bitmap: name, err: errorMessage(err) }, "could not drop an unused backup bitmap; the next backup tries again")),
          ),
      ),
    );
    this.d.log.info({ backup: backupRef(ready), kind: ready.kind, node: ready.node, readBytes: w.readBytes, shippedBytes: w.shippedBytes, dataBytes: w.dataBytes, newBytes: w.newBytes, ms: ready.durationMs, steps }, "backup taken");
    return ready;
  }

  /**
   * Of the backup bitmaps `listed` on a replica, those no chain of the volume's backups
   * (one per store node, backups and replication copies apart) ends with, now that
   * `taken` ends its chain.
   */
  private orphanBitmaps(volume: string, taken: BackupRecord, listed: string[]): string[] {
    const chainEnd = new Map<string, string>();
    for (const b of [...this.list(volume), taken]) if (b.state === "ready" && b.bitmap) chainEnd.set(`${b.node}/${Boolean(b.replication)}`, b.bitmap);
    const live = new Set(chainEnd.values());
    return listed.filter((name) => name.startsWith(bitmapName("")) && !live.has(name));
  }

  /**
   * Stores the fleece exported at `nbdUri` as the backup. A backup is read by its
   * store node (WriteBackup: its throughput is the store's). A replication's copy is
   * chunked by the reader's node, which sends the store node only the chunks it
   * lacks (ShipBackup, node-agent/backup-ship.ts): what crosses the network is
   * what the target has never seen.
   */
  private async write(record: BackupRecord, nbdUri: string, base: string, bitmap: string): Promise<{ dataBytes: number; newBytes: number; storedBytes: number; readBytes: number; shippedBytes?: number }> {
    const name = backupRef(record);
    const timeoutMs = 24 * 3600_000;
    if (!record.replication) return this.d.agents.for(record.node).writeBackup({ name, sourceNbdUri: nbdUri, base, bitmap }, { timeoutMs });
    const target = this.d.store.nodeSpec(record.node)?.value;
    if (!target) throw new UnavailableError(`node ${record.node} is not registered`);
    return this.d.agents.for(record.reader!.node).shipBackup({ name, sourceNbdUri: nbdUri, base, bitmap, targetAddress: target.address }, { timeoutMs });
  }

  /**
   * Waits until `fn` answers, checking again at every change of the cluster's state
   * (and every 50 ms besides): the replicas of a detached volume open a few ms after
   * the lease is written, and a fixed 50 ms poll made every backup wait that long.
   */
  private async untilState<T>(what: string, ms: number, fn: () => T | undefined): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = fn();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new UnavailableError(`${what} did not happen within ${ms / 1000} s`, { hint: "see stowctl volume get; retry the command" });
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.d.store.off("change", done);
          resolve();
        };
        const timer = setTimeout(done, 50);
        this.d.store.on("change", done);
      });
    }
  }

  private onlineReplicas(volume: string) {
    return (this.d.store.volumeSpec(volume)?.value.placement ?? []).filter((p) => this.d.isOnline(p.node));
  }

  /** Removes whatever a creation left (fleece, the new bitmap folded back, manifest, lease), then the record. */
  private async undo(record: BackupRecord): Promise<void> {
    const fresh = this.d.store.backup(record.volume, record.id)?.value ?? record;
    const base = fresh.base ? this.d.store.backup(fresh.volume, fresh.base)?.value?.bitmap : undefined;
    if (fresh.reader && this.d.isOnline(fresh.reader.node)) {
      await this.d.agents.for(fresh.reader.node).releaseFleece({ fleeceId: fleeceOf(fresh), pool: fresh.reader.pool }, { timeoutMs: 60_000 });
    }
    await Promise.allSettled(
      this.onlineReplicas(fresh.volume).map((p) =>
        this.d.agents.for(p.node).settleBackupBitmaps({ replicaId: p.id, next: bitmapName(fresh.id), base: base ?? "", succeeded: false }, { timeoutMs: 30_000 }),
      ),
    );
    if (this.d.store.volumeSpec(fresh.volume)?.value.backingUp?.id === fresh.id) await this.lease(fresh.volume, undefined);
    await this.removeStored(fresh);
  }

  /** Deletes the manifest on the store node, then the record; throws while that node is offline. */
  private async removeStored(record: BackupRecord): Promise<void> {
    if (!this.d.isOnline(record.node)) throw new UnavailableError(`node ${record.node}, which keeps the backup, is offline`);
    await this.d.agents.for(record.node).deleteStoredBackup({ name: backupRef(record) }, { timeoutMs: 600_000 });
    await this.d.store.write({ delete: [keys.backup(record.volume, record.id)] });
  }

  async delete(volume: string, id: string): Promise<boolean> {
    validateName("volume", volume);
    validateName("backup", id);
    const e = this.d.store.backup(volume, id);
    if (!e) return false;
    if (e.value.state === "creating") throw new FailedPreconditionError(`backup ${volume}@${id} is being taken`, { hint: "retry once it finished" });
    const deleting: BackupRecord = { ...e.value, state: "deleting" };
    await this.d.store.write({ unchanged: [[keys.backup(volume, id), e.modRevision]], put: [{ key: keys.backup(volume, id), value: deleting }] });
    try {
      await this.removeStored(deleting);
    } catch (err) {
      if (err instanceof UnavailableError) return true; // the sweep finishes it once the node is back
      throw err;
    }
    return true;
  }

  /** A verify found backup `ref` (VOLUME@ID) damaged on `node`: its record says so. */
  async markDamaged(ref: string, node: string): Promise<void> {
    const at = ref.lastIndexOf("@");
    const e = at > 0 ? this.d.store.backup(ref.slice(0, at), ref.slice(at + 1)) : undefined;
    if (!e || e.value.node !== node) return;
    const message = `damaged: stowctl store verify found chunks of it corrupt or missing on ${node}`;
    if (e.value.message === message) return;
    await this.d.store.write({ unchanged: [[keys.backup(e.value.volume, e.value.id), e.modRevision]], put: [{ key: keys.backup(e.value.volume, e.value.id), value: { ...e.value, message } }] }).catch(() => undefined);
  }

  /** Deletes the volume's ready backups the policy does not keep; returns both lists. */
  async prune(volume: string, policy: RetentionPolicy, dryRun: boolean): Promise<{ keep: BackupRecord[]; drop: BackupRecord[] }> {
    validateName("volume", volume);
    const r = applyRetention(this.list(volume).filter((b) => b.state === "ready"), policy);
    if (!dryRun) for (const b of r.drop) await this.delete(b.volume, b.id);
    return r;
  }

  /** Finishes what a dead leader left: stale creations are undone, deletions run again. */
  async sweep(): Promise<void> {
    if (this.sweeping) return;
    this.sweeping = true;
    try {
      for (const { value: b } of this.d.store.backups()) {
        const key = keys.backup(b.volume, b.id);
        try {
          if (b.state === "creating" && !this.creating.has(key)) await this.undo(b);
          else if (b.state === "deleting") await this.removeStored(b);
        } catch (err) {
          this.d.log.warn({ backup: backupRef(b), err: errorMessage(err) }, "backup sweep failed; will retry");
        }
      }
    } finally {
      this.sweeping = false;
    }
  }
}
