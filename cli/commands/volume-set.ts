// stowctl volume set: change a volume's replica count and wait until the new
// replicas are copied (or the removed ones are gone), with progress.
import type { Command } from "commander";
import { VolumeServiceService } from "../../gen/stowage/v1/controller.js";
import type { Session } from "../context.js";
import { examples } from "../help.js";
import { setReplicasView, volumeProgressLine } from "../job-views.js";
import { plural } from "../output.js";
import { setReplicasRequest } from "../requests.js";
import { COPY_WAIT_MS, progressPrinter, replicasProgress } from "../wait.js";
import { COPY_WAIT_HELP, NO_WAIT_HELP, waitForVolume, waitMs, type WaitFlags } from "./volume-wait.js";

export function registerSetCommand(volume: Command, session: Session): void {
  volume
    .command("set")
    .description(
      "change how many replicas a volume has: new ones are placed by the scheduler and copied from an in-sync replica; " +
        "removed ones are picked out-of-sync first, then those not on the node the volume is attached to",
    )
    .argument("<name>", "volume name")
    .requiredOption("--replicas <count>", "required: the number of replicas, each on a different node")
    .option("--dry-run", "only show which replicas would be added and removed")
    .option("--no-wait", NO_WAIT_HELP)
    .option("--wait-timeout <seconds>", COPY_WAIT_HELP)
    .addHelpText("after", examples(["stowctl volume set vm1 --replicas 3", "stowctl volume set vm1 --replicas 2 --dry-run"]))
    .action(async (name: string, opts: { replicas?: string; dryRun?: boolean } & WaitFlags, cmd: Command) => {
      const request = setReplicasRequest(name, opts);
      const wait = waitMs(opts, COPY_WAIT_MS);
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(VolumeServiceService).setVolumeReplicas(request);
      const unchanged = res.added.length === 0 && res.removed.length === 0 && res.volume !== undefined && replicasProgress(res.volume, request.replicas) === "done";
      if (request.dryRun || !opts.wait || unchanged) return ctx.print(res, () => setReplicasView(name, res, request.dryRun));
      ctx.say(setReplicasView(name, res, false).trimEnd());
      const say = progressPrinter((l) => ctx.say(l), ctx.deps.now);
      const done = await waitForVolume(ctx, name, "changing its replicas", wait, (v) => replicasProgress(v, request.replicas), (v) => say(volumeProgressLine(v)), 500);
      ctx.print(done, () => `volume ${name} is healthy with ${plural(request.replicas, "replica")}, all in sync\n`);
    });
}
