// The read-only exports restores copy from. A restore has the node keeping the backup
// serve it (qemu-nbd over a sparse raw file of the backup's whole size) while the new
// volume's replica copies it. The export is recorded in etcd (restore-exports/ID)
// before the agent is asked for it and the record is removed only once it is stopped,
// so an export left by a restore whose leader died, or whose node was unreachable when
// it ended, is stopped by the leader's sweep instead of serving, and holding its
// file, forever. A restore that runs again (the same target volume) serves it again.
import { errorMessage } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import type { Logger } from "../lib/logger.js";
import type { AgentClients } from "./agents.js";
import { keys } from "./keys.js";
import type { RestoreExportRecord } from "./model.js";
import type { ClusterStore } from "./store.js";

export interface RestoreExportsDeps {
  store: ClusterStore;
  agents: AgentClients;
  isOnline: (node: string) => boolean;
  instance: string;
  log: Logger;
  /** How often leftover exports are looked for (default 60 s; the first look after 5 s). */
  sweepEveryMs?: number;
}

/** The export id of a restore into `volume`: one per target, so two restores of one backup never share (and stop) one export. */
export function restoreExportId(volume: string): string {
  return `rs-${volume}`;
}

export class RestoreExports {
  /** Export ids whose restore runs on this controller. */
  private readonly running = new Set<string>();
  private timer?: NodeJS.Timeout;
  private sweeping?: Promise<void>;

  constructor(private readonly d: RestoreExportsDeps) {}

  start(): void {
    const every = this.d.sweepEveryMs ?? 60_000;
    const tick = () => {
      this.sweeping ??= this.sweep()
        .then(() => undefined)
        .catch((err) => this.d.log.warn({ err: errorMessage(err) }, "restore exports: sweep failed"))
        .finally(() => (this.sweeping = undefined));
      this.timer = setTimeout(tick, every);
    };
    this.timer = setTimeout(tick, Math.min(every, 5_000));
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Serves backup `backup` (VOLUME@ID) from `node` for a restore into `volume`, runs `copy` with its URI, then stops it. */
  async serve<T>(node: string, backup: string, volume: string, copy: (nbdUri: string) => Promise<T>): Promise<T> {
    const exportId = restoreExportId(volume);
    const rec: RestoreExportRecord = { exportId, node, backup, volume, sinceMs: Date.now(), runner: this.d.instance };
    this.running.add(exportId);
    try {
      await this.d.store.write({ put: [{ key: keys.restoreExport(exportId), value: rec }] });
      const agent = this.d.agents.for(node);
      const served = await agent.serveBackup({ exportId, name: backup }, { timeoutMs: 24 * 3600_000 });
      faultPoint("restore:served", volume);
      try {
        return await copy(served.nbdUri);
      } finally {
        await this.release(rec).catch((err) => this.d.log.warn({ export: exportId, node, err: errorMessage(err) }, "restore export not stopped yet; the sweep will"));
      }
    } finally {
      this.running.delete(exportId);
    }
  }

  /** Stops every recorded export whose restore does not run here; returns how many it stopped. */
  async sweep(): Promise<number> {
    let stopped = 0;
    for (const { value: rec } of this.d.store.restoreExports()) {
      if (this.running.has(rec.exportId) || !this.d.isOnline(rec.node)) continue;
      await this.release(rec).then(
        () => {
          stopped++;
          this.d.log.info({ export: rec.exportId, node: rec.node, backup: rec.backup, volume: rec.volume }, "restore export left by an interrupted restore stopped");
        },
        (err) => this.d.log.warn({ export: rec.exportId, node: rec.node, err: errorMessage(err) }, "restore export: cannot stop it yet"),
      );
    }
    return stopped;
  }

  private async release(rec: RestoreExportRecord): Promise<void> {
    await this.d.agents.for(rec.node).stopExport({ exportId: rec.exportId }, { timeoutMs: 30_000 });
    await this.d.store.write({ delete: [keys.restoreExport(rec.exportId)] });
  }
}
