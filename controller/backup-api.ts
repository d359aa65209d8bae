// BackupService: backups (controller/backups.ts does the work) and restores,
// which are imports from a backup served by the node that keeps it.
import type { BackupServiceService } from "../gen/stowage/v1/controller.js";
import { BackupState, ImageFormat, Preallocation, type Backup } from "../gen/stowage/v1/types.js";
import { errorMessage, FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError } from "../lib/errors.js";
import type { RequestHandlers } from "../lib/grpc.js";
import { validateName } from "../lib/names.js";
import { backupRef, type Backups } from "./backups.js";
import type { BackupRecord } from "./model.js";
import type { RestoreExports } from "./restore-exports.js";
import { importFromNbd, type TransferApiDeps } from "./transfer-api.js";
import { MAX_REPLICAS } from "./volume-api.js";

export interface BackupApiDeps extends Omit<TransferApiDeps, "ensureLeader"> {
  ensureLeader: () => Promise<void>;
  backups: () => Backups;
  restores: () => RestoreExports;
}

const STATES: Record<BackupRecord["state"], BackupState> = {
  creating: BackupState.BACKUP_STATE_CREATING,
  ready: BackupState.BACKUP_STATE_READY,
  deleting: BackupState.BACKUP_STATE_DELETING,
};

export function backupToApi(b: BackupRecord): Backup {
  return {
    volume: b.volume,
    id: b.id,
    state: STATES[b.state],
    createdAtMs: b.createdAtMs,
    node: b.node,
    sizeBytes: b.sizeBytes,
    dataBytes: b.dataBytes,
    newBytes: b.newBytes,
    storedBytes: b.storedBytes,
    durationMs: b.durationMs,
    message: b.message,
    kind: b.kind ?? "full",
    base: b.base ?? "",
    readBytes: b.readBytes ?? 0,
    shippedBytes: b.shippedBytes ?? 0,
  };
}

const MAX_KEEP = 10_000;

export function backupApi(d: BackupApiDeps): RequestHandlers<typeof BackupServiceService> {
  return {
    async createBackup(req) {
      await d.ensureLeader();
      return { backup: backupToApi(await d.backups().create(req.volume)) };
    },

    async listBackups(req) {
      await d.ensureLeader();
      if (req.volume) validateName("volume", req.volume);
      return { backups: d.backups().list(req.volume || undefined).map(backupToApi) };
    },

    async deleteBackup(req) {
      await d.ensureLeader();
      return { deleted: await d.backups().delete(req.volume, req.id) };
    },

    async restoreBackup(req) {
      await d.ensureLeader();
      const b = d.backups().get(req.volume, req.id);
      validateName("volume", req.name);
      if (b.state !== "ready") throw new FailedPreconditionError(`backup ${backupRef(b)} is ${b.state === "creating" ? "being taken" : "being deleted"}`);
      if (req.replicas > MAX_REPLICAS) throw new InvalidArgumentError(`invalid replica count ${req.replicas}`, { hint: `use 1 to ${MAX_REPLICAS}` });
      const existing = d.store.volumeSpec(req.name)?.value;
      if (existing && !existing.importing) {
        throw new FailedPreconditionError(`volume ${req.name} exists: a restore makes a new volume and never overwrites one`, {
          hint: `choose another name; to roll ${req.name} back, restore into a new volume and switch to it`,
        });
      }
      if (!d.isOnline(b.node)) throw new UnavailableError(`node ${b.node}, which keeps backup ${backupRef(b)}, is offline`, { hint: "bring it back, then retry" });
      const spec = { name: req.name, sizeBytes: b.sizeBytes, replicas: req.replicas, format: ImageFormat.IMAGE_FORMAT_QCOW2, preallocation: Preallocation.PREALLOCATION_OFF, pool: req.pool };
      const res = await d.restores().serve(b.node, backupRef(b), req.name, (nbdUri) => importFromNbd(d, spec, nbdUri));
      return { volume: res.volume };
    },

    async verifyStores(req) {
      await d.ensureLeader();
      if (req.node) validateName("node", req.node);
      const nodes = req.node ? [req.node] : [...new Set(d.backups().list().map((b) => b.node))].sort();
      if (req.node && !d.store.nodeSpec(req.node)) throw new NotFoundError("node", req.node);
      const reports = await Promise.all(
        nodes.map(async (node) => {
          const empty = { node, ok: false, manifests: 0, chunksChecked: 0, bytesChecked: 0, problems: [], damagedBackups: [], seconds: 0 };
          if (!d.isOnline(node)) return { ...empty, error: `node ${node} is offline` };
          try {
            return (await d.agents.for(node).verifyStore({ quarantine: req.quarantine }, { timeoutMs: 24 * 3600_000 })).report!;
          } catch (err) {
            return { ...empty, error: errorMessage(err) };
          }
        }),
      );
      for (const r of reports) for (const name of r.damagedBackups) await d.backups().markDamaged(name, r.node);
      return { reports };
    },

    async pruneBackups(req) {
      await d.ensureLeader();
      for (const [flag, n] of [["keep_last", req.keepLast], ["keep_daily", req.keepDaily], ["keep_weekly", req.keepWeekly]] as const) {
        if (n > MAX_KEEP) throw new InvalidArgumentError(`${flag} ${n} is too large`, { hint: `at most ${MAX_KEEP}` });
      }
      if (!req.keepLast && !req.keepDaily && !req.keepWeekly) {
        throw new InvalidArgumentError("a retention policy needs at least one rule", { hint: "for example --keep-last 7 --keep-daily 7 --keep-weekly 4" });
      }
      const r = await d.backups().prune(req.volume, { keepLast: req.keepLast, keepDaily: req.keepDaily, keepWeekly: req.keepWeekly }, req.dryRun);
      return { kept: r.keep.map(backupToApi), deleted: r.drop.map(backupToApi) };
    },
  };
}
