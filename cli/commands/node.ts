// stowctl node list | get | cordon | uncordon
import type { Command } from "commander";
import { NodeServiceService } from "../../gen/stowage/v1/controller.js";
import type { Session } from "../context.js";
import { examples } from "../help.js";
import { nodeDetail, nodesTable } from "../views.js";

export function registerNodeCommands(program: Command, session: Session): void {
  const node = program
    .command("node")
    .description("list and inspect the storage hosts (nodes), and cordon them")
    .addHelpText("after", examples(["stowctl node list", "stowctl node cordon host2"]));

  node
    .command("list")
    .description("list the nodes with their status, labels and last heartbeat")
    .addHelpText("after", examples(["stowctl node list", "stowctl node list -o json"]))
    .action(async (_opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(NodeServiceService).listNodes({});
      ctx.print(res, () => nodesTable(res.nodes, ctx.deps.now()));
    });

  node
    .command("get")
    .description("show one node and its pools")
    .argument("<name>", "node name")
    .addHelpText("after", examples(["stowctl node get host1"]))
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(NodeServiceService).getNode({ name });
      ctx.print(res, () => (res.node ? nodeDetail(res.node, ctx.deps.now()) : `node ${name}: no data\n`));
    });

  node
    .command("cordon")
    .description("stop placing new replicas on a node (existing replicas stay)")
    .argument("<name>", "node name")
    .addHelpText("after", examples(["stowctl node cordon host2"]))
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(NodeServiceService).cordonNode({ name });
      ctx.print(res, () => `node ${name} cordoned: no new replicas will be placed on it\n`);
    });

  node
    .command("uncordon")
    .description("allow placing new replicas on a node again")
    .argument("<name>", "node name")
    .addHelpText("after", examples(["stowctl node uncordon host2"]))
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(NodeServiceService).uncordonNode({ name });
      ctx.print(res, () => `node ${name} uncordoned: new replicas may be placed on it\n`);
    });
}
