// stowctl backup create|list|delete|restore|prune
import type { Command } from "commander";
import { BackupServiceService } from "../../gen/stowage/v1/controller.js";
import { BackupState, type Backup } from "../../gen/stowage/v1/types.js";
import { formatSize } from "../../lib/sizes.js";
import type { Session } from "../context.js";
import { parseCountFlag, UsageError } from "../flags.js";
import { examples } from "../help.js";
import { formatTable, plural } from "../output.js";
import { COPY_WAIT_MS } from "../wait.js";
import { COPY_WAIT_HELP, waitInSync, waitMs, type WaitFlags } from "./volume-wait.js";

const STATE: Record<number, string> = {
  [BackupState.BACKUP_STATE_CREATING]: "creating",
  [BackupState.BACKUP_STATE_READY]: "ready",
  [BackupState.BACKUP_STATE_DELETING]: "deleting",
};
const REF_HELP = "VOLUME@ID as backup list shows it, for example vm1@20261127-031500";

export function parseBackupRef(text: string): { volume: string; id: string } {
  const m = /^([^@]+)@([^@]+)$/.exec(text);
  if (!m) throw new UsageError(`"${text}" is not a backup reference: expected ${REF_HELP}`);
  return { volume: m[1]!, id: m[2]! };
}

const when = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, "Z");

export function backupsTable(backups: Backup[]): string {
  if (backups.length === 0) return "no backups found\n";
  return formatTable(
    ["backup", "state", "kind", "created", "node", "size", "data", "read", "new", "stored", "took", "note"],
    backups.map((b) => [
      `${b.volume}@${b.id}`,
      STATE[b.state] ?? "?",
      b.kind || "-",
      when(b.createdAtMs),
      b.node,
      formatSize(b.sizeBytes),
      formatSize(b.dataBytes),
      formatSize(b.readBytes),
      formatSize(b.newBytes),
      formatSize(b.storedBytes),
      b.durationMs ? `${(b.durationMs / 1000).toFixed(1)} s` : "-",
      b.message || "-",
    ]),
  );
}

export function registerBackupCommands(program: Command, session: Session): void {
  const backup = program
    .command("backup")
    .description("backups of volumes into a node's deduplicated, compressed chunk store, and restores into new volumes")
    .addHelpText(
      "after",
      examples([
        "stowctl backup create vm1",
        "stowctl backup list vm1",
        "stowctl backup restore vm1@20261127-031500 --to vm1-restored",
        "stowctl backup prune vm1 --keep-last 3 --keep-daily 7 --keep-weekly 4 --dry-run",
      ]),
    );
  const api = (cmd: Command) => {
    const ctx = session.context(cmd);
    return { ctx, backups: ctx.controllers().service(BackupServiceService) };
  };

  backup
    .command("create")
    .description(
      "back up a volume, attached or not: a crash-consistent snapshot (writes held for milliseconds) is read into the chunk store of a node holding no replica (the same node as the volume's last backup when it can: only new data is stored), then dropped; waits until done",
    )
    .argument("<volume>", "volume name")
    .option("--wait-timeout <seconds>", COPY_WAIT_HELP)
    .addHelpText("after", examples(["stowctl backup create vm1", "stowctl backup create vm1 -o json"]))
    .action(async (volume: string, opts: { waitTimeout?: string }, cmd: Command) => {
      const wait = waitMs({ wait: true, waitTimeout: opts.waitTimeout }, COPY_WAIT_MS);
      const { ctx, backups } = api(cmd);
      ctx.say(`backing up ${volume}...`);
      const res = await backups.createBackup({ volume }, { timeoutMs: wait });
      const b = res.backup!;
      ctx.print(res, () =>
        `${b.kind} backup ${b.volume}@${b.id} on ${b.node}: ${formatSize(b.readBytes)} read (${formatSize(b.dataBytes)} of data in the volume) in ${(b.durationMs / 1000).toFixed(1)} s; ` +
        `${formatSize(b.newBytes)} new (${formatSize(b.storedBytes)} stored after compression)\n`,
      );
    });

  backup
    .command("list")
    .description("backups, oldest first per volume: node, data, what each added to the store (new, and stored compressed), time taken")
    .argument("[volume]", "only this volume's backups (also of a deleted volume)")
    .addHelpText("after", examples(["stowctl backup list", "stowctl backup list vm1 -o json"]))
    .action(async (volume: string | undefined, _opts: unknown, cmd: Command) => {
      const { ctx, backups } = api(cmd);
      const res = await backups.listBackups({ volume: volume ?? "" });
      ctx.print(res, () => backupsTable(res.backups));
    });

  backup
    .command("delete")
    .description("delete a backup; chunks no other backup uses are removed from the store")
    .argument("<backup>", REF_HELP)
    .addHelpText("after", examples(["stowctl backup delete vm1@20261127-031500"]))
    .action(async (ref: string, _opts: unknown, cmd: Command) => {
      const { volume, id } = parseBackupRef(ref);
      const { ctx, backups } = api(cmd);
      const res = await backups.deleteBackup({ volume, id }, { timeoutMs: COPY_WAIT_MS });
      ctx.print(res, () => (res.deleted ? `backup ${ref} deleted\n` : `backup ${ref} did not exist\n`));
    });

  backup
    .command("restore")
    .description("make a new volume with the content of a backup (never overwrites a volume); waits until every replica is in sync")
    .argument("<backup>", REF_HELP)
    .requiredOption("--to <volume>", "required: the new volume's name")
    .option("--replicas <count>", "copies of the new volume (default: 2)")
    .option("--wait-timeout <seconds>", COPY_WAIT_HELP)
    .addHelpText("after", examples(["stowctl backup restore vm1@20261127-031500 --to vm1-restored"]))
    .action(async (ref: string, opts: { to: string; replicas?: string } & Omit<WaitFlags, "wait">, cmd: Command) => {
      const { volume, id } = parseBackupRef(ref);
      const replicas = opts.replicas === undefined ? 0 : parseCountFlag("--replicas", opts.replicas);
      const wait = waitMs({ wait: true, waitTimeout: opts.waitTimeout }, COPY_WAIT_MS);
      const { ctx, backups } = api(cmd);
      ctx.say(`restoring ${ref} into a new volume ${opts.to}...`);
      await backups.restoreBackup({ volume, id, name: opts.to, replicas, pool: "" }, { timeoutMs: wait });
      const done = await waitInSync(ctx, opts.to, "copying the restore to its other replicas", wait);
      ctx.print(done, () => `volume ${opts.to} restored from ${ref} (${plural(done.volume?.spec?.replicas ?? 0, "replica")}, all in sync)\n`);
    });

  backup
    .command("prune")
    .description("delete the volume's backups that a retention policy does not keep (a backup is kept if any rule keeps it)")
    .argument("<volume>", "volume name")
    .option("--keep-last <n>", "keep the newest N")
    .option("--keep-daily <n>", "keep the newest backup of each of the last N days that have one (UTC)")
    .option("--keep-weekly <n>", "keep the newest backup of each of the last N weeks that have one")
    .option("--dry-run", "only show what would be deleted")
    .addHelpText("after", examples(["stowctl backup prune vm1 --keep-last 3", "stowctl backup prune vm1 --keep-daily 7 --keep-weekly 4 --dry-run"]))
    .action(async (volume: string, opts: { keepLast?: string; keepDaily?: string; keepWeekly?: string; dryRun?: boolean }, cmd: Command) => {
      const n = (flag: string, v?: string) => (v === undefined ? 0 : parseCountFlag(flag, v));
      const policy = { keepLast: n("--keep-last", opts.keepLast), keepDaily: n("--keep-daily", opts.keepDaily), keepWeekly: n("--keep-weekly", opts.keepWeekly) };
      if (!policy.keepLast && !policy.keepDaily && !policy.keepWeekly) throw new UsageError("give at least one of --keep-last, --keep-daily, --keep-weekly");
      const { ctx, backups } = api(cmd);
      const res = await backups.pruneBackups({ volume, ...policy, dryRun: Boolean(opts.dryRun) }, { timeoutMs: COPY_WAIT_MS });
      ctx.print(res, () => {
        const lines = res.deleted.map((b) => `${opts.dryRun ? "would delete" : "deleted"} ${b.volume}@${b.id}`);
        return [...lines, `kept ${plural(res.kept.length, "backup")}`].join("\n") + "\n";
      });
    });
}
