// Asynchronous replication: every `everyMs`, a backup of the volume into the
// chunk store of the target node (controller/backups.ts). The node of the replica
// read chunks it locally and sends the target only the chunks the target's store
// lacks (node-agent/backup-ship.ts): after the first copy, only regions changed
// since the last are read, and data the target already holds (another volume
// cloned from the same image, say) is never sent. The recovery point is the
// instant of the last copy shipped. Promote restores that copy into a new live
// volume in the target's pool, from the target alone: it needs nothing of the
// source. The leader runs due replications one at a time; a replication keeps its
// last two copies (the newest is the base of the next).
import type { BackupServiceService, ReplicationServiceService } from "../gen/stowage/v1/controller.js";
import type { Replication } from "../gen/stowage/v1/types.js";
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError, errorMessage } from "../lib/errors.js";
import type { RequestHandlers } from "../lib/grpc.js";
import type { Logger } from "../lib/logger.js";
import { validateName } from "../lib/names.js";
import type { Backups } from "./backups.js";
import { keys } from "./keys.js";
import type { ReplicationRecord } from "./model.js";
import type { ClusterStore } from "./store.js";

const TICK_MS = 1_000;
const KEEP = 2;
export const MIN_EVERY_S = 1;
export const MAX_EVERY_S = 7 * 86_400;

export interface ReplicationsDeps {
  store: ClusterStore;
  backups: Backups;
  isOnline: (node: string) => boolean;
  log: Logger;
}

export class Replications {
  private timer: NodeJS.Timeout | undefined;
  private running = false;

  constructor(private readonly d: ReplicationsDeps) {}

  start(): void {
    this.timer = setInterval(() => void this.tick(), TICK_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Runs the most overdue replication, if any is due. */
  async tick(now = Date.now()): Promise<void> {
    if (this.running) return;
    const due = this.d.store
      .replications()
      .map((e) => e.value)
      .filter((r) => now >= r.lastAttemptAtMs + r.everyMs)
      .sort((a, b) => a.lastAttemptAtMs + a.everyMs - (b.lastAttemptAtMs + b.everyMs))[0];
    if (!due) return;
    this.running = true;
    try {
      await this.run(due);
    } finally {
      this.running = false;
    }
  }

  private async update(volume: string, change: (r: ReplicationRecord) => ReplicationRecord): Promise<void> {
    const e = this.d.store.replication(volume);
    if (!e) return;
    await this.d.store.write({ unchanged: [[keys.replication(volume), e.modRevision]], put: [{ key: keys.replication(volume), value: change(e.value) }] }).catch(() => undefined);
  }

  private async run(r: ReplicationRecord): Promise<void> {
    const started = Date.now();
    if (!this.d.store.volumeSpec(r.volume)) {
      return this.update(r.volume, (x) => ({ ...x, lastAttemptAtMs: started, message: `volume ${r.volume} is gone: promote the last copy (stowctl replication promote ${r.volume} --as NAME)` }));
    }
    if (!this.d.isOnline(r.node)) {
      return this.update(r.volume, (x) => ({ ...x, lastAttemptAtMs: started, message: `target node ${r.node} is offline` }));
    }
    try {
      const b = await this.d.backups.create(r.volume, { storeNode: r.node, replication: true });
      await this.update(r.volume, (x) => ({
        ...x,
        lastAttemptAtMs: started,
        lastSync: { id: b.id, atMs: b.createdAtMs, readBytes: b.readBytes ?? 0, durationMs: b.durationMs, shippedBytes: b.shippedBytes ?? 0 },
        message: "",
      }));
      // Older copies go; the newest stays as the next one's base.
      const chain = this.d.backups.list(r.volume).filter((x) => x.replication && x.state === "ready" && x.node === r.node);
      for (const old of chain.slice(0, Math.max(chain.length - KEEP, 0))) await this.d.backups.delete(old.volume, old.id).catch(() => undefined);
    } catch (err) {
      this.d.log.warn({ volume: r.volume, err: errorMessage(err) }, "replication copy failed; retrying at the next interval");
      await this.update(r.volume, (x) => ({ ...x, lastAttemptAtMs: started, message: `last copy failed: ${errorMessage(err)}` }));
    }
  }
}

export function replicationToApi(r: ReplicationRecord, now = Date.now()): Replication {
  return {
    volume: r.volume,
    node: r.node,
    pool: r.pool,
    everySeconds: Math.round(r.everyMs / 1000),
    lastBackupId: r.lastSync?.id ?? "",
    lastSyncAtMs: r.lastSync?.atMs ?? 0,
    rpoSeconds: r.lastSync ? Math.max(0, Math.round((now - r.lastSync.atMs) / 1000)) : 0,
    lastReadBytes: r.lastSync?.readBytes ?? 0,
    lastDurationMs: r.lastSync?.durationMs ?? 0,
    lastShippedBytes: r.lastSync?.shippedBytes ?? 0,
    message: r.message,
  };
}

export interface ReplicationApiDeps {
  store: ClusterStore;
  ensureLeader: () => Promise<void>;
  backups: () => Backups;
  /** Restores a backup into a new volume (BackupService.RestoreBackup). */
  restore: RequestHandlers<typeof BackupServiceService>["restoreBackup"];
}

export function replicationApi(d: ReplicationApiDeps): RequestHandlers<typeof ReplicationServiceService> {
  return {
    async createReplication(req) {
      await d.ensureLeader();
      validateName("volume", req.volume);
      validateName("node", req.node);
      validateName("pool", req.pool);
      const spec = d.store.volumeSpec(req.volume)?.value;
      if (!spec) throw new NotFoundError("volume", req.volume);
      if (spec.format !== "qcow2") throw new FailedPreconditionError(`volume ${req.volume} is a raw volume: replication copies it through backups, which need qcow2`);
      const node = d.store.nodeSpec(req.node)?.value;
      if (!node) throw new NotFoundError("node", req.node);
      if (!node.pools.some((p) => p.name === req.pool)) throw new NotFoundError("pool", `${req.node}/${req.pool}`, { hint: `stowctl pool list --node ${req.node}` });
      if (spec.placement.some((p) => p.node === req.node)) {
        throw new FailedPreconditionError(`node ${req.node} holds a replica of ${req.volume}: a copy there would be lost with it`, { hint: "replicate to a node (or site) that holds none" });
      }
      if (!(req.everySeconds >= MIN_EVERY_S && req.everySeconds <= MAX_EVERY_S)) {
        throw new InvalidArgumentError(`interval of ${req.everySeconds} s is out of range`, { hint: `use 1s to 7d, for example --every 5m` });
      }
      const prev = d.store.replication(req.volume)?.value;
      if (prev) {
        if (prev.node === req.node && prev.pool === req.pool && prev.everyMs === req.everySeconds * 1000) return { replication: replicationToApi(prev) };
        throw new AlreadyExistsError("replication", req.volume, { hint: `stowctl replication delete ${req.volume} first` });
      }
      const record: ReplicationRecord = { volume: req.volume, node: req.node, pool: req.pool, everyMs: req.everySeconds * 1000, createdAtMs: Date.now(), lastAttemptAtMs: 0, message: "" };
      await d.store.write({ absent: [keys.replication(req.volume)], put: [{ key: keys.replication(req.volume), value: record }] });
      return { replication: replicationToApi(record) };
    },

    async listReplications() {
      await d.ensureLeader();
      const now = Date.now();
      return { replications: d.store.replications().map((e) => replicationToApi(e.value, now)).sort((a, b) => a.volume.localeCompare(b.volume)) };
    },

    async deleteReplication(req) {
      await d.ensureLeader();
      validateName("volume", req.volume);
      if (!d.store.replication(req.volume)) return { deleted: false };
      await d.store.write({ delete: [keys.replication(req.volume)] });
      return { deleted: true };
    },

    async promoteReplication(req) {
      await d.ensureLeader();
      validateName("volume", req.volume);
      const r = d.store.replication(req.volume)?.value;
      if (!r) throw new NotFoundError("replication", req.volume, { hint: "stowctl replication list" });
      if (!r.lastSync) throw new UnavailableError(`no copy of ${req.volume} has been shipped to ${r.node} yet`, { hint: "wait for the first one (stowctl replication list)" });
      const b = d.store.backup(req.volume, r.lastSync.id)?.value;
      if (!b) throw new UnavailableError(`the last copy ${req.volume}@${r.lastSync.id} is gone from the records`);
      const res = await d.restore({ volume: req.volume, id: b.id, name: req.name, replicas: req.replicas, pool: r.pool });
      return { volume: res.volume, syncAtMs: b.createdAtMs };
    },
  };
}
