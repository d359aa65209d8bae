// stowctl node list | get | cordon | uncordon | drain
import type { Command } from "commander";
import { NodeServiceService } from "../../gen/stowage/v1/controller.js";
import { DeadlineError, FailedPreconditionError } from "../../lib/errors.js";
import type { Session } from "../context.js";
import { examples } from "../help.js";
import { drainMovesView, drainProgressLine } from "../job-views.js";
import { COPY_WAIT_MS, pollUntil, progressPrinter } from "../wait.js";
import { nodeDetail, nodesTable } from "../views.js";
import { COPY_WAIT_HELP, NO_WAIT_HELP, waitMs, type WaitFlags } from "./volume-wait.js";

export function registerNodeCommands(program: Command, session: Session): void {
  const node = program
    .command("node")
    .description("list and inspect the storage hosts (nodes); cordon, drain and uncordon them")
    .addHelpText("after", examples(["stowctl node list", "stowctl node cordon host2", "stowctl node drain host2"]));

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
    .description("allow placing new replicas on a node again; ends a drain (replicas not moved yet stay)")
    .argument("<name>", "node name")
    .addHelpText("after", examples(["stowctl node uncordon host2"]))
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(NodeServiceService).uncordonNode({ name });
      ctx.print(res, () => `node ${name} uncordoned: new replicas may be placed on it\n`);
    });

  node
    .command("drain")
    .description(
      "cordon a node and move every replica off it: each gets a replacement on another node, copied first; " +
        "the replica on the node is removed once the replacement is in sync. Refused when a replica has nowhere to go",
    )
    .argument("<name>", "node name")
    .option("--dry-run", "only show where each replica would go")
    .option("--no-wait", NO_WAIT_HELP)
    .option("--wait-timeout <seconds>", COPY_WAIT_HELP)
    .addHelpText("after", examples(["stowctl node drain host2", "stowctl node drain host2 --dry-run", "stowctl node uncordon host2"]))
    .action(async (name: string, opts: { dryRun?: boolean } & WaitFlags, cmd: Command) => {
      const wait = waitMs(opts, COPY_WAIT_MS);
      const ctx = session.context(cmd);
      const nodes = ctx.controllers().service(NodeServiceService);
      const res = await nodes.drainNode({ name, dryRun: opts.dryRun ?? false });
      if (opts.dryRun || !opts.wait) return ctx.print(res, () => drainMovesView(name, res.moves, opts.dryRun ?? false));
      ctx.say(drainMovesView(name, res.moves, false).trimEnd());
      const say = progressPrinter((l) => ctx.say(l), ctx.deps.now);
      let left = -1;
      const done = await pollUntil(
        async () => {
          const got = await nodes.getNode({ name });
          const drain = got.node?.drain;
          if (!drain) {
            throw new FailedPreconditionError(`node ${name} is no longer draining (uncordoned meanwhile)`, {
              hint: `replicas not moved yet stay on it; drain again with 'stowctl node drain ${name}'`,
            });
          }
          left = drain.replicasLeft;
          if (left === 0) return got;
          say(drainProgressLine(name, drain));
          return undefined;
        },
        {
          timeoutMs: wait,
          intervalMs: 500,
          now: ctx.deps.now,
          sleep: ctx.deps.sleep,
          onTimeout: () =>
            new DeadlineError(`node ${name} still holds ${left} replica${left === 1 ? "" : "s"} after ${wait / 1000}s`, {
              hint: `the drain goes on; follow it with 'stowctl node get ${name}' and 'stowctl job list'`,
            }),
        },
      );
      ctx.print(done, () => `node ${name} drained: no replicas left; it stays cordoned until 'stowctl node uncordon ${name}'\n`);
    });
}
