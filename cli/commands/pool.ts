// stowctl pool list | get | set
import type { Command } from "commander";
import { PoolServiceService } from "../../gen/stowage/v1/controller.js";
import type { Session } from "../context.js";
import { examples } from "../help.js";
import { getPoolRequest, listPoolsRequest, setPoolRequest, type SetPoolFlags } from "../requests.js";
import { poolDetail, poolsTable } from "../views.js";
import { registerPoolDedupCommand } from "./pool-dedup.js";
import { registerPoolCompressCommand } from "./pool-compress.js";

const FIGURES = `
Figures:
  capacity      size of the pool's filesystem
  used          in use on that filesystem (physical), and its share of capacity
  available     free for new data there
  allocated     what the pool's replica images take on disk
  templates     what template copies (the base images of linked clones) take there
                besides; 'pool get' shows it when there are any
  provisioned   virtual sizes of the replicas placed there (logical), and their share
                of the limit capacity x overcommit; placement refuses what would pass it
  level         ok, warning or critical: used or provisioned at or above the pool's
                thresholds (default 80% and 90%); see 'stowctl event list'
`;

export function registerPoolCommands(program: Command, session: Session): void {
  const pool = program
    .command("pool")
    .description("list and inspect the storage pools of the nodes; set their overcommit ratio and thresholds")
    .addHelpText("after", FIGURES + examples(["stowctl pool list", "stowctl pool get host1/default", "stowctl pool set host1/default --overcommit 3"]));

  pool
    .command("list")
    .description("list pools with capacity, physical use, allocated and provisioned space, and threshold level")
    .option("--node <name>", "only the pools of this node")
    .addHelpText("after", FIGURES + examples(["stowctl pool list", "stowctl pool list --node host1 -o json"]))
    .action(async (opts: { node?: string }, cmd: Command) => {
      const ctx = session.context(cmd);
      const request = listPoolsRequest(opts);
      const res = await ctx.controllers().service(PoolServiceService).listPools(request);
      ctx.print(res, () => poolsTable(res.pools));
    });

  pool
    .command("get")
    .description("show one pool: path, capacity, use, allocation, provisioning limit, overcommit and thresholds")
    .argument("<pool>", "NODE/POOL, or NODE followed by POOL")
    .argument("[name]", "pool name when the node is given separately")
    .addHelpText("after", FIGURES + examples(["stowctl pool get host1/default", "stowctl pool get host1 default"]))
    .action(async (first: string, second: string | undefined, _opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const request = getPoolRequest(first, second);
      const res = await ctx.controllers().service(PoolServiceService).getPool(request);
      ctx.print(res, () => (res.pool ? poolDetail(res.pool) : `pool ${request.node}/${request.name}: no data\n`));
    });

  pool
    .command("set")
    .description(
      "set a pool's overcommit ratio or thresholds; recorded in etcd (kept across agent and controller restarts) " +
        "and used at once by placement and by the capacity events",
    )
    .argument("<pool>", "NODE/POOL, or NODE followed by POOL")
    .argument("[name]", "pool name when the node is given separately")
    .option(
      "--overcommit <ratio>",
      "provisioned bytes may reach capacity x RATIO (1: no overcommit; 3: promise up to 3x the disk); 'default': the agent's configured ratio",
    )
    .option("--warning <percent>", "warning threshold, percent of capacity used or of the provisioning limit (default 80)")
    .option("--critical <percent>", "critical threshold, percent (default 90); must be above --warning")
    .option("--thresholds <default>", "'default': forget the pool's thresholds (80% and 90% apply again)")
    .option("--force", "set a ratio even if the volumes already in the pool exceed the new limit")
    .option("--dedup <schedule>", "scheduled reflink dedup of the pool's images: daily or off (XFS with reflink or btrfs pools)")
    .option("--compress <schedule>", "scheduled recompression of the pool's cold qcow2 images (zstd clusters): daily or off")
    .option("--cold-after <age>", "how long an image must be unmodified to be recompressed: 7d (default), 12h, 30m")
    .option("--quiet-hours <range>", "when scheduled jobs may run, controller local time: HH:MM-HH:MM (may wrap midnight), or 'any'")
    .addHelpText(
      "after",
      `
Lowering the ratio below what is already provisioned in the pool is refused unless
--force: new replicas would then be refused there until enough space is freed.
Raising it lets more thin volumes in, but writes still fail with ENOSPC once the
filesystem is really full: watch 'used' and the events.
` +
        examples([
          "stowctl pool set host1/default --overcommit 3",
          "stowctl pool set host1 default --warning 70 --critical 85",
          "stowctl pool set host1/default --overcommit default --thresholds default",
        ]),
    )
    .action(async (first: string, second: string | undefined, opts: SetPoolFlags, cmd: Command) => {
      const request = setPoolRequest(first, second, opts);
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(PoolServiceService).setPool(request);
      const ref = `${request.node}/${request.name}`;
      ctx.print(res, () => `${res.changed ? `pool ${ref} updated` : `pool ${ref} unchanged (already so)`}\n${res.pool ? poolDetail(res.pool) : ""}`);
    });

  registerPoolDedupCommand(pool, session);
  registerPoolCompressCommand(pool, session);
}
