// stowctl event list
import type { Command } from "commander";
import { EventServiceService } from "../../gen/stowage/v1/controller.js";
import { eventsTable } from "../capacity-views.js";
import type { Session } from "../context.js";
import { parseCountFlag } from "../flags.js";
import { examples } from "../help.js";

export function registerEventCommands(program: Command, session: Session): void {
  const event = program
    .command("event")
    .description("what the cluster noticed: capacity thresholds crossed (active) and cleared (resolved)")
    .addHelpText("after", examples(["stowctl event list", "stowctl event list --active"]));

  event
    .command("list")
    .description("events, newest first; an active one lasts until its condition clears (the last 1000 are kept)")
    .option("--active", "only events not resolved yet")
    .option("--object <text>", 'only events about this object, or objects starting with it ("pool host1/default", "pool host1/")')
    .option("--limit <n>", "at most this many (default: all kept)")
    .addHelpText(
      "after",
      `
Capacity events: for each pool, "pool-used" (its filesystem's physical use) and
"pool-provisioned" (provisioned vs capacity x overcommit) at or above the pool's
warning or critical threshold (default 80% and 90%; stowctl pool set). An event is
resolved when the figure falls 2 points below the threshold, or escalated (a new
event) when it crosses the next one.
` + examples(["stowctl event list", "stowctl event list --active -o json", "stowctl event list --object 'pool host1/' --limit 20"]),
    )
    .action(async (opts: { active?: boolean; object?: string; limit?: string }, cmd: Command) => {
      const limit = opts.limit === undefined ? 0 : parseCountFlag("--limit", opts.limit);
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(EventServiceService).listEvents({ activeOnly: opts.active ?? false, object: opts.object ?? "", limit });
      ctx.print(res, () => eventsTable(res.events, ctx.deps.now()));
    });
}
