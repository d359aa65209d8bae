// stowctl cluster leader
import type { Command } from "commander";
import { ClusterServiceService } from "../../gen/stowage/v1/controller.js";
import type { Session } from "../context.js";
import { examples } from "../help.js";
import { formatFields } from "../output.js";

export function registerClusterCommands(program: Command, session: Session): void {
  const cluster = program
    .command("cluster")
    .description("inspect the controller instances")
    .addHelpText("after", examples(["stowctl cluster leader"]));

  cluster
    .command("leader")
    .description("show which controller instance is the leader")
    .addHelpText("after", examples(["stowctl cluster leader", "stowctl --controller 10.0.0.5:7400 cluster leader -o json"]))
    .action(async (_opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(ClusterServiceService).getLeader({});
      ctx.print(res, () =>
        formatFields([
          ["Leader", res.leader || "(none elected yet)"],
          ["Answered by", `${res.instance || "?"} (${res.isLeader ? "the leader" : "a follower"})`],
        ]),
      );
    });
}
