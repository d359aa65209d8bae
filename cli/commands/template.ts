// stowctl template create|list|get|delete: templates for linked clones
// (stowctl volume create NAME --template T).
import { resolve } from "node:path";
import type { Command } from "commander";
import { TemplateServiceService } from "../../gen/stowage/v1/controller.js";
import { TemplateState, type Template } from "../../gen/stowage/v1/types.js";
import { validateName } from "../../lib/names.js";
import { formatSize } from "../../lib/sizes.js";
import type { CliContext, Session } from "../context.js";
import { UsageError } from "../flags.js";
import { examples } from "../help.js";
import { formatFields, formatTable } from "../output.js";
import { inspectSource, IMPORT_FORMATS, localAddressFor, serveFile } from "./transfer.js";

const STATE: Record<number, string> = {
  [TemplateState.TEMPLATE_STATE_CREATING]: "creating",
  [TemplateState.TEMPLATE_STATE_READY]: "ready",
  [TemplateState.TEMPLATE_STATE_DELETING]: "deleting",
};

const when = (ms: number) => (ms ? new Date(ms).toISOString().replace(/\.\d+Z$/, "Z") : "-");

/** A name the controller would take, or a usage error (nothing is sent). */
function checkName(kind: string, name: string): void {
  try {
    validateName(kind, name);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** --from VOLUME or --from VOLUME@SNAPSHOT -> its parts. */
export function parseTemplateSource(text: string): { volume: string; snapshot: string } {
  const parts = text.split("@");
  if (parts.length > 2 || parts.some((p) => p === "")) throw new UsageError(`"${text}" is not a source: expected VOLUME or VOLUME@SNAPSHOT`);
  checkName("volume", parts[0]!);
  if (parts[1] !== undefined) checkName("snapshot", parts[1]);
  return { volume: parts[0]!, snapshot: parts[1] ?? "" };
}

export function templatesTable(ts: Template[]): string {
  if (ts.length === 0) return "no templates found\n";
  return formatTable(
    ["template", "state", "size", "source", "copies", "allocated", "clones"],
    ts.map((t) => [
      t.name,
      STATE[t.state] ?? "?",
      formatSize(t.sizeBytes),
      t.source,
      t.copies.map((c) => c.node).join(",") || "-",
      formatSize(t.copies.reduce((n, c) => n + c.allocatedBytes, 0)),
      String(t.clones.length),
    ]),
  );
}

export function templateDetail(t: Template): string {
  const head = formatFields([
    ["template", t.name],
    ["uid", t.uid],
    ["state", STATE[t.state] ?? "?"],
    ["size", `${formatSize(t.sizeBytes)} (${t.sizeBytes} bytes)`],
    ["source", t.source],
    ["created", when(t.createdAtMs)],
    ["clones", t.clones.join(", ") || "none"],
    ...(t.message ? ([["note", t.message]] as [string, string][]) : []),
  ]);
  if (t.copies.length === 0) return `${head}\nno copies\n`;
  const table = formatTable(
    ["node", "pool", "state", "allocated", "path", "note"],
    t.copies.map((c) => [c.node, c.pool, c.state, formatSize(c.allocatedBytes), c.path || "-", [c.home ? "home copy" : "", c.message].filter(Boolean).join("; ")]),
  );
  return `${head}\n${table}`;
}

/** The template's size, for `volume create --template T` without --size. */
export async function templateSize(ctx: CliContext, name: string): Promise<number> {
  checkName("template", name);
  return (await ctx.controllers().service(TemplateServiceService).getTemplate({ name })).template!.sizeBytes;
}

interface CreateFlags {
  from?: string;
  fromFile?: string;
  sourceFormat?: string;
  address?: string;
  pool?: string;
}

async function createFromFile(ctx: CliContext, name: string, file: string, opts: CreateFlags) {
  const src = await inspectSource(resolve(file), opts.sourceFormat);
  const host = opts.address ?? (await localAddressFor(ctx.controllerAddresses()[0]!));
  const served = await serveFile(resolve(file), src.format, host);
  const stop = () => served.stop();
  process.once("SIGINT", stop);
  try {
    ctx.say(`making template ${name} from ${file} (${src.format}, ${formatSize(src.virtualSize)}): one node copies it from ${served.uri}`);
    return await ctx
      .controllers()
      .service(TemplateServiceService)
      .createTemplate(
        { name, volume: "", snapshot: "", sourceNbdUri: served.uri, sourceSizeBytes: Math.ceil(src.virtualSize / 512) * 512, sourceFile: file, pool: opts.pool ?? "" },
        { timeoutMs: 24 * 3600_000 },
      );
  } finally {
    process.off("SIGINT", stop);
    stop();
  }
}

export function registerTemplateCommands(program: Command, session: Session): void {
  const template = program
    .command("template")
    .description("templates: named, read-only images that linked clones (volume create --template) share as backing file")
    .addHelpText(
      "after",
      examples([
        "stowctl template create debian12 --from gold-vm            # a detached volume",
        "stowctl template create debian12 --from gold-vm@v1         # a snapshot (the volume may be in use)",
        "stowctl template create debian12 --from-file debian-12.qcow2",
        "stowctl volume create web1 --template debian12 --replicas 2",
        "stowctl template get debian12                              # size, copies per node, clones",
        "stowctl template delete debian12                           # refused while clones exist",
      ]),
    );
  const api = (ctx: CliContext) => ctx.controllers().service(TemplateServiceService);

  template
    .command("create")
    .description(
      "make a template from a detached volume, a snapshot, or a local image file; its image is made on one node and copied to other nodes when a linked clone needs it there",
    )
    .argument("<name>", "the template's name: lowercase letters, digits, '-', '_', '.'")
    .option("--from <source>", "VOLUME (detached; it cannot be attached meanwhile) or VOLUME@SNAPSHOT")
    .option("--from-file <file>", `a local image file (${IMPORT_FORMATS.join(", ")}), served to the cluster over NBD while it is copied`)
    .option("--source-format <format>", "with --from-file: the file's format (default: detected by qemu-img)")
    .option("--address <host>", "with --from-file: this machine's address as the nodes reach it (default: the one that routes to the controller)")
    .option("--pool <name>", "with --from-file: make the image in a pool of this name")
    .addHelpText(
      "after",
      examples([
        "stowctl template create debian12 --from gold-vm",
        "stowctl template create debian12 --from gold-vm@v1 -o json",
        "stowctl template create alpine --from-file alpine.vmdk",
      ]),
    )
    .action(async (name: string, opts: CreateFlags, cmd: Command) => {
      checkName("template", name);
      if (Boolean(opts.from) === Boolean(opts.fromFile)) throw new UsageError("give exactly one of --from VOLUME[@SNAPSHOT] and --from-file FILE");
      if (!opts.fromFile && (opts.sourceFormat || opts.address || opts.pool)) throw new UsageError("--source-format, --address and --pool go with --from-file");
      const src = opts.from ? parseTemplateSource(opts.from) : undefined;
      const ctx = session.context(cmd);
      const res = src
        ? await api(ctx).createTemplate({ name, volume: src.volume, snapshot: src.snapshot, sourceNbdUri: "", sourceSizeBytes: 0, sourceFile: "", pool: "" }, { timeoutMs: 24 * 3600_000 })
        : await createFromFile(ctx, name, opts.fromFile!, opts);
      const t = res.template!;
      ctx.print(res, () =>
        res.created
          ? `template ${name} created from ${t.source}: ${formatSize(t.sizeBytes)}, ${formatSize(t.copies[0]?.allocatedBytes ?? 0)} on ${t.copies[0]?.node ?? "?"}\n`
          : `template ${name} exists already (from ${t.source})\n`,
      );
    });

  template
    .command("list")
    .description("list templates with size, source, the nodes holding a copy and the number of linked clones")
    .addHelpText("after", examples(["stowctl template list", "stowctl template list -o json"]))
    .action(async (_opts: unknown, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await api(ctx).listTemplates({});
      ctx.print(res, () => templatesTable(res.templates));
    });

  template
    .command("get")
    .description("show a template: size, source, linked clones, and each node's copy (path, space taken)")
    .argument("<name>", "template name")
    .addHelpText("after", examples(["stowctl template get debian12", "stowctl template get debian12 -o json"]))
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      checkName("template", name);
      const ctx = session.context(cmd);
      const res = await api(ctx).getTemplate({ name });
      ctx.print(res, () => templateDetail(res.template!));
    });

  template
    .command("delete")
    .description("delete a template and every node's copy of it; refused while any volume is a linked clone of it")
    .argument("<name>", "template name")
    .addHelpText("after", examples(["stowctl template delete debian12"]))
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      checkName("template", name);
      const ctx = session.context(cmd);
      const res = await api(ctx).deleteTemplate({ name });
      let note = "";
      if (res.deleted) {
        const left = await api(ctx).getTemplate({ name }).then((r) => r.template, () => undefined);
        if (left) note = `; ${left.copies.length} ${left.copies.length === 1 ? "copy" : "copies"} still to remove (${left.message || "nodes offline"})`;
      }
      ctx.print(res, () => (res.deleted ? `template ${name} deleted${note}\n` : `template ${name} did not exist\n`));
    });
}
