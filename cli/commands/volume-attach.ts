// stowctl volume attach | detach | disk-xml: a volume's frontend on a node.
import type { Command } from "commander";
import { VolumeServiceService } from "../../gen/stowage/v1/controller.js";
import { AttachmentState, type Attachment, type Volume } from "../../gen/stowage/v1/types.js";
import { FailedPreconditionError, StowageError } from "../../lib/errors.js";
import { diskXml } from "../../lib/libvirt-xml.js";
import { validateName } from "../../lib/names.js";
import type { Session } from "../context.js";
import { examples } from "../help.js";
import type { Progress } from "../wait.js";
import { NO_WAIT_HELP, WAIT_HELP, waitForVolume, waitMs, type WaitFlags } from "./volume-wait.js";

interface AttachFlags extends WaitFlags {
  node: string;
}

function attachmentOn(v: Volume | undefined, node: string): Attachment | undefined {
  return v?.attachments.find((a) => a.node === node);
}

/** Attached: done; failed: stop with the frontend's reason; else keep waiting. */
function attachProgress(name: string, node: string) {
  return (v: Volume): Progress => {
    const a = attachmentOn(v, node);
    if (a?.state === AttachmentState.ATTACHMENT_STATE_ATTACHED) return "done";
    if (a?.state === AttachmentState.ATTACHMENT_STATE_FAILED) {
      throw new StowageError(`attaching volume ${name} on ${node} failed: ${a.message || "no reason given"}`, {
        hint: `see 'stowctl volume get ${name}'; detach with 'stowctl volume detach ${name} --node ${node}'`,
      });
    }
    return "pending";
  };
}

export function registerAttachCommands(volume: Command, session: Session): void {
  volume
    .command("attach")
    .description("start the volume's frontend on a node and print its NBD address (nbdUri) for QEMU, qemu-img or fio there")
    .argument("<name>", "volume name")
    .requiredOption("--node <node>", "required: the node where the volume is used")
    .option("--no-wait", NO_WAIT_HELP)
    .option("--wait-timeout <seconds>", WAIT_HELP)
    .addHelpText("after", examples(["stowctl volume attach vm1 --node node1", "stowctl volume attach vm1 --node node1 -o json"]))
    .action(async (name: string, opts: AttachFlags, cmd: Command) => {
      validateName("node", opts.node);
      const wait = waitMs(opts);
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(VolumeServiceService).attachVolume({ name, node: opts.node });
      if (!opts.wait) return ctx.print(res, () => `volume ${name} is attaching on ${opts.node}\n`);
      const v = (await waitForVolume(ctx, name, `attaching on ${opts.node}`, wait, attachProgress(name, opts.node))).volume;
      const a = attachmentOn(v, opts.node)!;
      ctx.print({ volume: v, attachment: a, nbdUri: a.nbdUri, socketPath: a.socketPath }, () => `volume ${name} attached on ${opts.node}: ${a.nbdUri}\n`);
    });

  volume
    .command("detach")
    .description("stop the volume's frontend on a node")
    .argument("<name>", "volume name")
    .requiredOption("--node <node>", "required: the node to detach from")
    .option("--no-wait", NO_WAIT_HELP)
    .option("--wait-timeout <seconds>", WAIT_HELP)
    .addHelpText("after", examples(["stowctl volume detach vm1 --node node1"]))
    .action(async (name: string, opts: AttachFlags, cmd: Command) => {
      validateName("node", opts.node);
      const wait = waitMs(opts);
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(VolumeServiceService).detachVolume({ name, node: opts.node });
      if (!opts.wait) return ctx.print(res, () => `volume ${name} is detaching from ${opts.node}\n`);
      // Done once the frontend stopped, or once it is fenced: its node is offline and it
      // stops serving by itself when its lease runs out.
      const detached = (v: Volume): Progress => {
        const a = attachmentOn(v, opts.node);
        return !a || a.unconfirmedSinceMs > 0 ? "done" : "pending";
      };
      const v = (await waitForVolume(ctx, name, `detaching from ${opts.node}`, wait, detached)).volume;
      const left = attachmentOn(v, opts.node);
      ctx.print({ volume: v }, () =>
        left
          ? `volume ${name} detached from ${opts.node}, but its frontend there is not confirmed stopped (${left.message || "node offline"}).\n` +
            `It stops serving by itself within its 6 s lease; another node can attach the volume from ${new Date(left.unconfirmedSinceMs + 10_000).toISOString()} on.\n`
          : `volume ${name} detached from ${opts.node}\n`,
      );
    });

  volume
    .command("disk-xml")
    .description("print the libvirt <disk> element that connects a domain to the volume's frontend")
    .argument("<name>", "volume name")
    .option("--target <dev>", "guest device name", "vdb")
    .addHelpText("after", examples(["stowctl volume disk-xml vm1 --target vdb > disk.xml && virsh attach-device DOMAIN disk.xml --live"]))
    .action(async (name: string, opts: { target: string }, cmd: Command) => {
      const ctx = session.context(cmd);
      const v = (await ctx.controllers().service(VolumeServiceService).getVolume({ name })).volume;
      const a = v?.attachments.find((x) => x.socketPath);
      if (!a) {
        throw new FailedPreconditionError(`volume ${name} is not attached anywhere yet`, { hint: `attach it first: stowctl volume attach ${name} --node NODE` });
      }
      const xml = diskXml({ volume: name, socketPath: a.socketPath, target: opts.target });
      ctx.print({ xml, socketPath: a.socketPath }, () => xml);
    });
}
