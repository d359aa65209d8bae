// stowctl snapshot create|list|get|delete, stowctl volume revert, stowctl volume clone
import type { Command } from "commander";
import { SnapshotServiceService } from "../../gen/stowage/v1/controller.js";
import { SnapshotState, type Snapshot } from "../../gen/stowage/v1/types.js";
import { formatSize } from "../../lib/sizes.js";
import type { Session } from "../context.js";
import { parseCountFlag, UsageError } from "../flags.js";
import { examples } from "../help.js";
import { formatFields, formatTable, plural } from "../output.js";
import { COPY_WAIT_MS } from "../wait.js";
import { COPY_WAIT_HELP, NO_WAIT_HELP, waitInSync, waitMs, type WaitFlags } from "./volume-wait.js";

const STATE: Record<number, string> = {
  [SnapshotState.SNAPSHOT_STATE_CREATING]: "creating",
  [SnapshotState.SNAPSHOT_STATE_READY]: "ready",
  [SnapshotState.SNAPSHOT_STATE_DELETING]: "deleting",
};

const REF_HELP = "VOLUME@SNAPSHOT, for example vm1@before-upgrade";

/** "vol@snap" -> its parts; a usage error names what is wrong. */
export function parseSnapshotRef(text: string): { volume: string; name: string } {
  const at = text.indexOf("@");
  if (at <= 0 || at === text.length - 1 || text.indexOf("@", at + 1) >= 0) {
    throw new UsageError(`"${text}" is not a snapshot reference: expected ${REF_HELP}`);
  }
  return { volume: text.slice(0, at), name: text.slice(at + 1) };
}

const when = (ms: number) => (ms ? new Date(ms).toISOString().replace(/\.\d+Z$/, "Z") : "-");

export function snapshotsTable(snaps: Snapshot[]): string {
  if (snaps.length === 0) return "no snapshots found\n";
  return formatTable(
    ["snapshot", "state", "size", "created", "replicas", "writes held"],
    snaps.map((s) => [`${s.volume}@${s.name}`, STATE[s.state] ?? "?", formatSize(s.sizeBytes), when(s.createdAtMs), s.nodes.join(",") || "-", s.attached ? `${s.heldMs} ms` : "-"]),
  );
}

export function snapshotDetail(s: Snapshot): string {
  return formatFields([
    ["snapshot", `${s.volume}@${s.name}`],
    ["state", STATE[s.state] ?? "?"],
    ["size", formatSize(s.sizeBytes)],
    ["created", when(s.createdAtMs)],
    ["held by", s.replicaIds.map((id, i) => `${id} on ${s.nodes[i]}`).join(", ") || "no replica"],
    ["writes held", s.attached ? `${s.heldMs} ms (taken while attached)` : "no (taken while detached)"],
    ...(s.message ? ([["note", s.message]] as [string, string][]) : []),
  ]);
}

export function registerSnapshotCommands(program: Command, session: Session): void {
  const snapshot = program
    .command("snapshot")
    .description("crash-consistent snapshots of volumes (qcow2), taken in place on every in-sync replica")
    .addHelpText(
      "after",
      examples([
        "stowctl snapshot create vm1@before-upgrade",
        "stowctl snapshot list vm1",
        "stowctl volume revert vm1 --to before-upgrade     # the volume must be detached",
        "stowctl volume clone vm1@before-upgrade vm1-test",
        "stowctl snapshot delete vm1@before-upgrade",
      ]),
    );
  const client = (cmd: Command) => {
    const ctx = session.context(cmd);
    return { ctx, api: ctx.controllers().service(SnapshotServiceService) };
  };

  snapshot
    .command("create")
    .description(
      "snapshot a volume, attached or not: on an attached volume new writes wait (for milliseconds) while every in-sync replica records it, so all hold the same write boundary",
    )
    .argument("<ref>", REF_HELP)
    .addHelpText("after", examples(["stowctl snapshot create vm1@before-upgrade", "stowctl snapshot create vm1@nightly-1 -o json"]))
    .action(async (ref: string, _opts: unknown, cmd: Command) => {
      const { volume, name } = parseSnapshotRef(ref);
      const { ctx, api } = client(cmd);
      const res = await api.createSnapshot({ volume, name });
      const s = res.snapshot!;
      ctx.print(res, () =>
        res.created
          ? `snapshot ${ref} taken on ${plural(s.replicaIds.length, "replica")}${s.attached ? ` (writes held ${s.heldMs} ms)` : ""}${s.message ? `; ${s.message}` : ""}\n`
          : `snapshot ${ref} exists already (taken ${when(s.createdAtMs)})\n`,
      );
    });

  snapshot
    .command("list")
    .description("list snapshots, oldest first per volume")
    .argument("[volume]", "only this volume's snapshots")
    .addHelpText("after", examples(["stowctl snapshot list", "stowctl snapshot list vm1 -o json"]))
    .action(async (volume: string | undefined, _opts: unknown, cmd: Command) => {
      const { ctx, api } = client(cmd);
      const res = await api.listSnapshots({ volume: volume ?? "" });
      ctx.print(res, () => snapshotsTable(res.snapshots));
    });

  snapshot
    .command("get")
    .description("show a snapshot: state, size, the replicas that hold it")
    .argument("<ref>", REF_HELP)
    .addHelpText("after", examples(["stowctl snapshot get vm1@before-upgrade"]))
    .action(async (ref: string, _opts: unknown, cmd: Command) => {
      const { volume, name } = parseSnapshotRef(ref);
      const { ctx, api } = client(cmd);
      const res = await api.getSnapshot({ volume, name });
      ctx.print(res, () => snapshotDetail(res.snapshot!));
    });

  snapshot
    .command("delete")
    .description("delete a snapshot from every replica holding it (the volume itself is not touched)")
    .argument("<ref>", REF_HELP)
    .addHelpText("after", examples(["stowctl snapshot delete vm1@before-upgrade"]))
    .action(async (ref: string, _opts: unknown, cmd: Command) => {
      const { volume, name } = parseSnapshotRef(ref);
      const { ctx, api } = client(cmd);
      const res = await api.deleteSnapshot({ volume, name });
      ctx.print(res, () => (res.deleted ? `snapshot ${ref} deleted\n` : `snapshot ${ref} did not exist\n`));
    });
}

/** `volume revert` and `volume clone`, registered under `stowctl volume`. */
export function registerSnapshotVolumeCommands(volume: Command, session: Session): void {
  volume
    .command("revert")
    .description(
      "roll a detached volume back to one of its snapshots (what was written after it is lost); replicas that do not hold the snapshot are copied from those that do",
    )
    .argument("<volume>", "volume name")
    .requiredOption("--to <snapshot>", "required: the snapshot's name (or VOLUME@SNAPSHOT)")
    .addHelpText("after", examples(["stowctl volume revert vm1 --to before-upgrade"]))
    .action(async (name: string, opts: { to: string }, cmd: Command) => {
      const snap = opts.to.includes("@") ? parseSnapshotRef(opts.to) : { volume: name, name: opts.to };
      if (snap.volume !== name) throw new UsageError(`snapshot ${opts.to} is not a snapshot of ${name}: to make a new volume from it, use stowctl volume clone`);
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(SnapshotServiceService).revertVolume({ volume: name, snapshot: snap.name });
      const copying = (res.volume?.spec?.replicas ?? 0) - res.revertedReplicaIds.length;
      ctx.print(res, () =>
        `volume ${name} reverted to ${name}@${snap.name} (${plural(res.revertedReplicaIds.length, "replica")} rolled back)` +
        (copying > 0 ? `; ${plural(copying, "replica")} being copied from them: stowctl job list --volume ${name}\n` : "\n"),
      );
    });

  volume
    .command("clone")
    .description(
      "create a new, independent volume with the content of a snapshot; its replicas are made on the nodes holding the snapshot, extra ones copied from them; waits until healthy",
    )
    .argument("<snapshot>", REF_HELP)
    .argument("<name>", "the new volume's name")
    .option("--replicas <count>", "copies of the new volume (default: as many as the source volume)")
    .option("--no-wait", NO_WAIT_HELP)
    .option("--wait-timeout <seconds>", COPY_WAIT_HELP)
    .addHelpText("after", examples(["stowctl volume clone vm1@before-upgrade vm1-test", "stowctl volume clone gold@v3 web7 --replicas 3"]))
    .action(async (ref: string, newName: string, opts: { replicas?: string } & WaitFlags, cmd: Command) => {
      const src = parseSnapshotRef(ref);
      const replicas = opts.replicas === undefined ? 0 : parseCountFlag("--replicas", opts.replicas);
      const wait = waitMs(opts, COPY_WAIT_MS);
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(SnapshotServiceService).cloneVolume({ volume: src.volume, snapshot: src.name, name: newName, replicas });
      if (!opts.wait) return ctx.print(res, () => `volume ${newName} accepted as a clone of ${ref}; check it with 'stowctl volume get ${newName}'\n`);
      const done = await waitInSync(ctx, newName, "cloning", wait);
      ctx.print(done, () => `volume ${newName} is healthy: a clone of ${ref} (${plural(done.volume?.spec?.replicas ?? 0, "replica")})\n`);
    });
}
