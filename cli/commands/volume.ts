// stowctl volume create | list | get | delete | resize (set: volume-set.ts; attach, detach, disk-xml: volume-attach.ts)
import type { Command } from "commander";
import { VolumeServiceService } from "../../gen/stowage/v1/controller.js";
import { InvalidArgumentError } from "../../lib/errors.js";
import { formatSize } from "../../lib/sizes.js";
import type { Session } from "../context.js";
import { enumChoices, enumLabel, IMAGE_FORMAT, PREALLOCATION, VOLUME_PHASE } from "../convert.js";
import { examples } from "../help.js";
import { plural } from "../output.js";
import { createVolumeRequest, DEFAULT_FORMAT, DEFAULT_PREALLOCATION, DEFAULT_REPLICAS, resizeVolumeRequest, type CreateVolumeFlags } from "../requests.js";
import { placementView, volumeDetail, volumesTable } from "../views.js";
import { registerAttachCommands } from "./volume-attach.js";
import { registerSetCommand } from "./volume-set.js";
import { registerSnapshotVolumeCommands } from "./snapshot.js";
import { registerTransferCommands } from "./transfer.js";
import { templateSize } from "./template.js";
import { NO_WAIT_HELP, WAIT_HELP, waitCreated, waitDeleted, waitMs, waitResized, type WaitFlags } from "./volume-wait.js";

export function registerVolumeCommands(program: Command, session: Session): void {
  const volume = program
    .command("volume")
    .description("create, inspect, resize, scale and delete replicated volumes")
    .addHelpText("after", examples(["stowctl volume create vm1 --size 10GiB", "stowctl volume list"]));

  volume
    .command("create")
    .description("create a volume and wait until all its replicas are healthy")
    .argument("<name>", "volume name: lowercase letters, digits, '-', '_', '.'")
    .option("--size <size>", "required (unless --template): virtual size, bytes or a number with KiB, MiB, GiB or TiB (10GiB, 512M)")
    .option("--replicas <count>", `copies, each on a different node (default: ${DEFAULT_REPLICAS})`)
    .option("--format <format>", `image format: ${enumChoices(IMAGE_FORMAT).join(" or ")} (default: ${DEFAULT_FORMAT})`)
    .option(
      "--preallocation <mode>",
      `space allocated up front: ${enumChoices(PREALLOCATION).join(", ")} (default: ${DEFAULT_PREALLOCATION})`,
    )
    .option("--pool <name>", "place replicas only in pools of this name (default: any pool)")
    .option("--dry-run", "only show where the replicas would go and why other nodes were not chosen")
    .option(
      "--template <name>",
      "a linked clone of this template: each replica is a thin qcow2 image over the template's copy on its node (copied there first); --size defaults to the template's",
    )
    .option("--no-wait", NO_WAIT_HELP)
    .option("--wait-timeout <seconds>", WAIT_HELP)
    .addHelpText(
      "after",
      examples([
        "stowctl volume create vm1 --size 10GiB",
        "stowctl volume create web1 --template debian12 --replicas 2",
        "stowctl volume create db1 --size 100GiB --replicas 3 --format raw --preallocation falloc",
        "stowctl volume create vm2 --size 20GiB --dry-run",
      ]),
    )
    .action(async (name: string, opts: CreateVolumeFlags & WaitFlags, cmd: Command) => {
      const ctx = session.context(cmd);
      if (opts.template !== undefined && opts.size === undefined) opts = { ...opts, size: String(await templateSize(ctx, opts.template)) };
      const request = createVolumeRequest(name, opts);
      const wait = waitMs(opts);
      const res = await ctx.controllers().service(VolumeServiceService).createVolume(request);
      if (request.dryRun) return ctx.print(res, () => placementView(name, res));
      if (!opts.wait) {
        const phase = enumLabel(VOLUME_PHASE, res.volume?.phase ?? 0);
        return ctx.print(res, () => `volume ${name} accepted (phase ${phase}); check it with 'stowctl volume get ${name}'\n`);
      }
      const done = await waitCreated(ctx, name, wait);
      const replicas = done.volume?.spec?.replicas ?? request.spec!.replicas;
      ctx.print(done, () => `volume ${name} is healthy (${plural(replicas, "replica")})\n`);
    });

  volume
    .command("list")
    .description("list volumes with size, healthy/desired replicas and phase")
    .addHelpText("after", examples(["stowctl volume list", "stowctl volume list -o json"]))
    .action(async (_opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(VolumeServiceService).listVolumes({});
      ctx.print(res, () => volumesTable(res.volumes));
    });

  volume
    .command("get")
    .description("show a volume and, per replica, its node, pool, path, state and sizes")
    .argument("<name>", "volume name")
    .addHelpText("after", examples(["stowctl volume get vm1", "stowctl volume get vm1 -o json"]))
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(VolumeServiceService).getVolume({ name });
      ctx.print(res, () => (res.volume ? volumeDetail(res.volume) : `volume ${name}: no data\n`));
    });

  volume
    .command("delete")
    .description("delete a volume, all its replicas and its snapshots (clones made from them stay), and wait until it is gone")
    .argument("<name>", "volume name")
    .option("--no-wait", NO_WAIT_HELP)
    .option("--wait-timeout <seconds>", WAIT_HELP)
    .addHelpText("after", examples(["stowctl volume delete vm1", "stowctl volume delete vm1 --no-wait"]))
    .action(async (name: string, opts: WaitFlags, cmd: Command) => {
      const wait = waitMs(opts);
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(VolumeServiceService).deleteVolume({ name });
      if (!opts.wait) {
        return ctx.print(res, () => `volume ${name} is being deleted; check it with 'stowctl volume get ${name}'\n`);
      }
      await waitDeleted(ctx, name, wait);
      ctx.print(res, () => `volume ${name} deleted\n`);
    });

  volume
    .command("resize")
    .description("grow a volume (never shrinks) and wait until every replica has the new size")
    .argument("<name>", "volume name")
    .requiredOption("--size <size>", "required: new virtual size, at least the current one (20GiB, 1TiB)")
    .option("--no-wait", NO_WAIT_HELP)
    .option("--wait-timeout <seconds>", WAIT_HELP)
    .addHelpText("after", examples(["stowctl volume resize vm1 --size 20GiB"]))
    .action(async (name: string, opts: { size?: string } & WaitFlags, cmd: Command) => {
      const request = resizeVolumeRequest(name, opts);
      const wait = waitMs(opts);
      const ctx = session.context(cmd);
      const volumes = ctx.controllers().service(VolumeServiceService);
      const current = (await volumes.getVolume({ name })).volume?.spec?.sizeBytes ?? 0;
      if (request.sizeBytes < current) {
        throw new InvalidArgumentError(
          `volume ${name} is ${formatSize(current)}; it cannot shrink to ${formatSize(request.sizeBytes)}`,
          { hint: `volumes only grow: give --size ${formatSize(current)} or more` },
        );
      }
      const res = await volumes.resizeVolume(request);
      const size = formatSize(request.sizeBytes);
      if (!opts.wait) {
        return ctx.print(res, () => `volume ${name} is resizing to ${size}; check it with 'stowctl volume get ${name}'\n`);
      }
      const done = await waitResized(ctx, name, request.sizeBytes, wait);
      const replicas = done.volume?.replicas.length ?? 0;
      ctx.print(done, () => `volume ${name} resized to ${size} (${plural(replicas, "replica")})\n`);
    });

  registerSetCommand(volume, session);
  registerAttachCommands(volume, session);
  registerSnapshotVolumeCommands(volume, session);
  registerTransferCommands(volume, session);
}
