// stowctl pool list | get
import type { Command } from "commander";
import { PoolServiceService } from "../../gen/stowage/v1/controller.js";
import type { Session } from "../context.js";
import { examples } from "../help.js";
import { getPoolRequest, listPoolsRequest } from "../requests.js";
import { poolDetail, poolsTable } from "../views.js";

export function registerPoolCommands(program: Command, session: Session): void {
  const pool = program
    .command("pool")
    .description("list and inspect the storage pools of the nodes")
    .addHelpText("after", examples(["stowctl pool list", "stowctl pool get host1/default"]));

  pool
    .command("list")
    .description("list pools with capacity, free and provisioned space")
    .option("--node <name>", "only the pools of this node")
    .addHelpText("after", examples(["stowctl pool list", "stowctl pool list --node host1 -o json"]))
    .action(async (opts: { node?: string }, cmd: Command) => {
      const ctx = session.context(cmd);
      const request = listPoolsRequest(opts);
      const res = await ctx.controllers().service(PoolServiceService).listPools(request);
      ctx.print(res, () => poolsTable(res.pools));
    });

  pool
    .command("get")
    .description("show one pool: path, capacity, allocation and overcommit limit")
    .argument("<pool>", "NODE/POOL, or NODE followed by POOL")
    .argument("[name]", "pool name when the node is given separately")
    .addHelpText("after", examples(["stowctl pool get host1/default", "stowctl pool get host1 default"]))
    .action(async (first: string, second: string | undefined, _opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const request = getPoolRequest(first, second);
      const res = await ctx.controllers().service(PoolServiceService).getPool(request);
      ctx.print(res, () => (res.pool ? poolDetail(res.pool) : `pool ${request.node}/${request.name}: no data\n`));
    });
}
