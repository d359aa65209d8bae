// stowctl job list
import type { Command } from "commander";
import { JobServiceService } from "../../gen/stowage/v1/controller.js";
import type { Session } from "../context.js";
import { examples } from "../help.js";
import { jobsTable } from "../job-views.js";

export function registerJobCommands(program: Command, session: Session): void {
  const job = program
    .command("job")
    .description("follow the copies that bring replicas in sync (repairs, new replicas, replacements, drains)")
    .addHelpText("after", examples(["stowctl job list"]));

  job
    .command("list")
    .description("running copies with progress, rate and ETA, and out-of-sync replicas waiting for one (and why)")
    .option("--volume <name>", "only this volume's jobs")
    .addHelpText("after", examples(["stowctl job list", "stowctl job list --volume vm1 -o json"]))
    .action(async (opts: { volume?: string }, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(JobServiceService).listJobs({ volume: opts.volume ?? "" });
      ctx.print(res, () => jobsTable(res.jobs, res.rebuildsPaused));
    });
}
