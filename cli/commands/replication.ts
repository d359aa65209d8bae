// stowctl replication create|list|delete|promote
import type { Command } from "commander";
import { ReplicationServiceService } from "../../gen/stowage/v1/controller.js";
import type { Replication } from "../../gen/stowage/v1/types.js";
import { formatDuration, parseDuration } from "../../controller/durations.js";
import { formatSize } from "../../lib/sizes.js";
import type { Session } from "../context.js";
import { parseCountFlag, parsePoolRef, UsageError } from "../flags.js";
import { examples } from "../help.js";
import { formatTable, plural } from "../output.js";
import { COPY_WAIT_MS } from "../wait.js";
import { COPY_WAIT_HELP, waitInSync, waitMs } from "./volume-wait.js";

const when = (ms: number) => (ms ? new Date(ms).toISOString().replace(/\.\d+Z$/, "Z") : "-");

export function replicationsTable(rs: Replication[]): string {
  if (rs.length === 0) return "no replications\n";
  return formatTable(
    ["volume", "target", "every", "last copy", "rpo", "read", "shipped", "took", "message"],
    rs.map((r) => [
      r.volume,
      `${r.node}/${r.pool}`,
      formatDuration(r.everySeconds * 1000),
      when(r.lastSyncAtMs),
      r.lastSyncAtMs ? `${r.rpoSeconds}s` : "-",
      r.lastSyncAtMs ? formatSize(r.lastReadBytes) : "-",
      r.lastSyncAtMs ? formatSize(r.lastShippedBytes) : "-",
      r.lastSyncAtMs ? `${(r.lastDurationMs / 1000).toFixed(1)} s` : "-",
      r.message || "-",
    ]),
  );
}

export function registerReplicationCommands(program: Command, session: Session): void {
  const replication = program
    .command("replication")
    .description("asynchronous replication of volumes to another node's pool: a copy every interval, each shipping only what changed since the last")
    .addHelpText(
      "after",
      examples([
        "stowctl replication create vm1 --to-pool node3/default --every 5m",
        "stowctl replication list                        # the recovery point (RPO) reached",
        "stowctl replication promote vm1 --as vm1        # after losing the source: the last copy becomes a live volume",
      ]),
    );
  const api = (cmd: Command) => {
    const ctx = session.context(cmd);
    return { ctx, reps: ctx.controllers().service(ReplicationServiceService) };
  };

  replication
    .command("create")
    .description("replicate a volume to a pool of another node (one holding no replica of it); the first copy reads the whole volume, the next ones only what changed; only chunks the target lacks are sent")
    .argument("<volume>", "volume name")
    .requiredOption("--to-pool <node/pool>", "required: the target, as NODE/POOL")
    .option("--every <duration>", "how often a copy is shipped: 30s, 5m, 1h (default 5m)")
    .addHelpText("after", examples(["stowctl replication create vm1 --to-pool node3/default --every 5m"]))
    .action(async (volume: string, opts: { toPool: string; every?: string }, cmd: Command) => {
      if (!opts.toPool.includes("/")) throw new UsageError(`option '--to-pool': expected NODE/POOL, got "${opts.toPool}"`);
      const target = parsePoolRef(opts.toPool);
      let everyMs: number;
      try {
        everyMs = parseDuration("--every", opts.every ?? "5m");
      } catch (err) {
        throw new UsageError(`option ${(err as Error).message}`);
      }
      if (everyMs % 1000 !== 0) throw new UsageError("option '--every': use whole seconds");
      const { ctx, reps } = api(cmd);
      const res = await reps.createReplication({ volume, node: target.node, pool: target.name, everySeconds: everyMs / 1000 });
      ctx.print(res, () => `replicating ${volume} to ${target.node}/${target.name} every ${formatDuration(everyMs)}; stowctl replication list shows the recovery point\n`);
    });

  replication
    .command("list")
    .description("replications with the last copy shipped, the recovery point reached (RPO: how old that copy is), what it read of the volume, what it sent to the target (only chunks the target lacked) and took")
    .addHelpText("after", examples(["stowctl replication list", "stowctl replication list -o json"]))
    .action(async (_opts: unknown, cmd: Command) => {
      const { ctx, reps } = api(cmd);
      const res = await reps.listReplications({});
      ctx.print(res, () => replicationsTable(res.replications));
    });

  replication
    .command("delete")
    .description("stop replicating a volume (the copies shipped stay, as backups)")
    .argument("<volume>", "volume name")
    .addHelpText("after", examples(["stowctl replication delete vm1"]))
    .action(async (volume: string, _opts: unknown, cmd: Command) => {
      const { ctx, reps } = api(cmd);
      const res = await reps.deleteReplication({ volume });
      ctx.print(res, () => (res.deleted ? `replication of ${volume} stopped\n` : `${volume} was not replicated\n`));
    });

  replication
    .command("promote")
    .description("make a new live volume from the last copy shipped, placed in the target's pool (needs nothing of the source); waits until in sync")
    .argument("<volume>", "the replicated volume")
    .requiredOption("--as <name>", "required: the new volume's name (the source's own once it is gone)")
    .option("--replicas <count>", "copies of the new volume (default: 2)")
    .option("--wait-timeout <seconds>", COPY_WAIT_HELP)
    .addHelpText("after", examples(["stowctl replication promote vm1 --as vm1", "stowctl replication promote vm1 --as vm1-dr --replicas 1"]))
    .action(async (volume: string, opts: { as: string; replicas?: string; waitTimeout?: string }, cmd: Command) => {
      const replicas = opts.replicas === undefined ? 0 : parseCountFlag("--replicas", opts.replicas);
      const wait = waitMs({ wait: true, waitTimeout: opts.waitTimeout }, COPY_WAIT_MS);
      const { ctx, reps } = api(cmd);
      const res = await reps.promoteReplication({ volume, name: opts.as, replicas }, { timeoutMs: wait });
      const done = await waitInSync(ctx, opts.as, "copying the promoted volume to its other replicas", wait);
      ctx.print({ ...res, volume: done.volume }, () => `volume ${opts.as} is live with ${volume} as it was at ${when(res.syncAtMs)} (${plural(done.volume?.spec?.replicas ?? 0, "replica")})\n`);
    });
}
