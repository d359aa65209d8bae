// Backups: a crash-consistent snapshot of the volume (controller/snapshots.ts),
// read through a read-only NBD export of one replica's snapshot (qemu-nbd on
// that replica's node) into the deduplicating chunk store of another node
// (lib/chunks through node-agent/backups.ts); then the export and the snapshot go.
//
// The record (backups/VOLUME@ID, state creating) is written before anything is
// done, and names the store node; every step is idempotent and named by the id
// (snapshot backup-ID, export bk-ID, manifest VOLUME@ID), so a creation whose
// leader died is undone by the sweep: export stopped, snapshot deleted, manifest
// deleted, record removed. Deletion marks the record deleting first, removes the
// manifest (and collects unused chunks), then the record.
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
import { holders, type Snapshots } from "./snapshots.js";
import type { ClusterStore } from "./store.js";

const SWEEP_MS = 5_000;

export interface BackupsDeps {
  store: ClusterStore;
  agents: AgentClients;
  snapshots: Snapshots;
  isOnline: (node: string) => boolean;
  /** Online nodes, by name. */
  onlineNodes: () => string[];
  instance: string;
  log: Logger;
}

export const backupRef = (b: { volume: string; id: string }) => `${b.volume}@${b.id}`;
const snapshotName = (id: string) => `backup-${id}`;
const exportId = (b: { volume: string; id: string }) => `bk-${b.volume}-${b.id}`;

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

  async create(volume: string): Promise<BackupRecord> {
    validateName("volume", volume);
    const spec = this.d.store.volumeSpec(volume)?.value;
    if (!spec) throw new NotFoundError("volume", volume);
    if (spec.format !== "qcow2") {
      throw new FailedPreconditionError(`volume ${volume} is a raw volume: backups read a snapshot, and snapshots need qcow2 images`, { hint: "back up qcow2 volumes (the default format)" });
    }
    let now = Date.now();
    let id = backupId(now);
    while (this.d.store.backup(volume, id)) id = backupId((now += 1000));
    const record: BackupRecord = {
      volume,
      id,
      state: "creating",
      createdAtMs: now,
      node: this.storeNode(volume),
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

  private async take(record: BackupRecord): Promise<BackupRecord> {
    const t0 = Date.now();
    const { snapshot } = await this.d.snapshots.create(record.volume, snapshotName(record.id));
    faultPoint("create-backup:snapshot", record.volume);
    const spec = this.d.store.volumeSpec(record.volume)!.value;
    const from = holders(snapshot, spec).filter((p) => this.d.isOnline(p.node));
    // Read from the store node's own replica when it has one: no copy over the network.
    const source = from.find((p) => p.node === record.node) ?? from[0];
    if (!source) throw new UnavailableError(`no replica holding the backup's snapshot is online`);
    const exp = await this.d.agents
      .for(source.node)
      .exportReplicaSnapshot({ exportId: exportId(record), replicaId: source.id, pool: source.pool, tag: snapshot.tag }, { timeoutMs: 60_000 });
    const w = await this.d.agents.for(record.node).writeBackup({ name: backupRef(record), sourceNbdUri: exp.nbdUri }, { timeoutMs: 24 * 3600_000 });
    faultPoint("create-backup:written", record.volume);
    await this.d.agents.for(source.node).stopExport({ exportId: exportId(record) }, { timeoutMs: 30_000 });
    await this.d.snapshots.delete(record.volume, snapshotName(record.id));
    const ready: BackupRecord = {
      ...record,
      state: "ready",
      dataBytes: w.dataBytes,
      newBytes: w.newBytes,
      storedBytes: w.storedBytes,
      durationMs: Date.now() - t0,
      message: source.node === record.node ? "" : `read from ${source.node}`,
    };
    await this.d.store.write({ put: [{ key: keys.backup(record.volume, record.id), value: ready }] });
    this.d.log.info({ backup: backupRef(record), node: record.node, dataBytes: w.dataBytes, newBytes: w.newBytes, ms: ready.durationMs }, "backup taken");
    return ready;
  }

  /** Removes whatever a creation left (export, snapshot, manifest), then the record. */
  private async undo(record: BackupRecord): Promise<void> {
    const spec = this.d.store.volumeSpec(record.volume)?.value;
    for (const p of spec?.placement ?? []) {
      if (this.d.isOnline(p.node)) await this.d.agents.for(p.node).stopExport({ exportId: exportId(record) }, { timeoutMs: 30_000 }).catch(() => undefined);
    }
    const snap = this.d.store.snapshot(record.volume, snapshotName(record.id));
    if (snap && snap.value.state !== "creating") await this.d.snapshots.delete(record.volume, snapshotName(record.id));
    else if (snap) throw new UnavailableError("its snapshot is still being taken");
    await this.removeStored(record);
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
