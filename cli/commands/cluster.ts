// stowctl cluster leader | status
import type { Command } from "commander";
import { ClusterServiceService } from "../../gen/stowage/v1/controller.js";
import { clusterStatusView } from "../capacity-views.js";
import type { Session } from "../context.js";
import { examples } from "../help.js";
import { formatFields } from "../output.js";

export function registerClusterCommands(program: Command, session: Session): void {
  const cluster = program
    .command("cluster")
    .description("inspect the cluster: health, capacity totals, active events; the controller instances")
    .addHelpText("after", examples(["stowctl cluster status", "stowctl cluster leader"]));

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

  cluster
    .command("status")
    .description("health, node and volume counts, capacity totals over every pool, and active capacity events")
    .addHelpText(
      "after",
      `
Health is the worst of: active capacity events (warning, critical), offline nodes
(warning), degraded volumes (warning), failed volumes (critical). Capacity:
  used          physical use of the pools' filesystems
  allocated     what replica images take on disk
  provisioned   virtual sizes of all replicas (logical), against the sum of the
                pools' limits (capacity x overcommit)
` + examples(["stowctl cluster status", "stowctl cluster status -o json"]),
    )
    .action(async (_opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(ClusterServiceService).getClusterStatus({});
      ctx.print(res, () => clusterStatusView(res, ctx.deps.now()));
    });
}
