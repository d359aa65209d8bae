// stowctl vm get | attach | detach | migrate | migration: libvirt domains whose disks are Stowage volumes.
import type { Command } from "commander";
import { VmServiceService } from "../../gen/stowage/v1/controller.js";
import { MigrationPhase, type Migration, type Vm } from "../../gen/stowage/v1/types.js";
import { DeadlineError, StowageError } from "../../lib/errors.js";
import { validateDomainName, validateName } from "../../lib/names.js";
import { formatSize } from "../../lib/sizes.js";
import type { CliContext, Session } from "../context.js";
import { enumLabel, MIGRATION_PHASE } from "../convert.js";
import { parseSecondsFlag } from "../flags.js";
import { examples } from "../help.js";
import { formatFields, formatTable } from "../output.js";
import { pollUntil } from "../wait.js";

/** Attach/detach wait for a frontend and a guest's unplug: longer than a plain call. */
const VM_CALL_MS = 120_000;
const DEFAULT_MIGRATE_WAIT_S = 1800;

export function vmDetail(vm: Vm): string {
  const head = formatFields([
    ["Name", vm.name],
    ["Node", vm.node],
    ["State", vm.state],
  ]);
  const table = formatTable(
    ["target", "volume", "source"],
    vm.disks.map((d) => [d.target, d.volume || "(not Stowage)", d.source || "-"]),
  );
  return `${head}\n${table}`;
}

const done = (m: Migration) => m.phase === MigrationPhase.MIGRATION_PHASE_SUCCEEDED || m.phase === MigrationPhase.MIGRATION_PHASE_FAILED;

/** One line: phase, RAM copied and remaining, elapsed. */
export function migrationLine(m: Migration, now: number): string {
  const phase = enumLabel(MIGRATION_PHASE, m.phase);
  const elapsed = ((m.finishedAtMs || now) - m.startedAtMs) / 1000;
  const ram =
    m.memoryTotalBytes > 0 && !done(m)
      ? `, RAM ${formatSize(m.memoryProcessedBytes)} copied, ${formatSize(m.memoryRemainingBytes)} of ${formatSize(m.memoryTotalBytes)} remaining`
      : "";
  return `${m.domain} ${m.fromNode} -> ${m.toNode}: ${phase}${ram} (${elapsed.toFixed(1)} s)${m.message ? ` - ${m.message}` : ""}`;
}

export function migrationDetail(m: Migration, now: number): string {
  return formatFields([
    ["Domain", m.domain],
    ["From", m.fromNode],
    ["To", m.toNode],
    ["Phase", enumLabel(MIGRATION_PHASE, m.phase)],
    ["Volumes", m.volumes.join(", ") || "-"],
    ["Started", new Date(m.startedAtMs).toISOString()],
    ["Duration", `${(((m.finishedAtMs || now) - m.startedAtMs) / 1000).toFixed(1)} s${m.finishedAtMs ? "" : " so far"}`],
    ["RAM", m.memoryTotalBytes ? `${formatSize(m.memoryProcessedBytes)} copied, ${formatSize(m.memoryRemainingBytes)} remaining of ${formatSize(m.memoryTotalBytes)}` : "-"],
    ["Downtime", m.phase === MigrationPhase.MIGRATION_PHASE_SUCCEEDED ? `${m.downtimeMs} ms` : "-"],
    ...(m.message ? ([["Message", m.message]] as Array<[string, string]>) : []),
  ]);
}

/** Polls the migration until it ends, printing progress to stderr when it changes. */
async function waitForMigration(ctx: CliContext, domain: string, waitMs: number): Promise<Migration> {
  const vms = ctx.controllers().service(VmServiceService);
  let lastLine = "";
  let last: Migration | undefined;
  const m = await pollUntil(
    async () => {
      const res = await vms.getMigration({ domain });
      last = res.migration!;
      const shown = migrationLine(last, ctx.deps.now());
      // A new line only when something but the elapsed time changed.
      const line = shown.replace(/ \([\d.]+ s\)/, "");
      if (ctx.output === "table" && line !== lastLine) ctx.deps.io.err(`${shown}\n`);
      lastLine = line;
      return done(last) ? last : undefined;
    },
    {
      timeoutMs: waitMs,
      intervalMs: 100, // a migration ends within a second or two: a coarser poll shows up in its time
      now: ctx.deps.now,
      sleep: ctx.deps.sleep,
      onTimeout: () =>
        new DeadlineError(`migration of ${domain} has not ended after ${waitMs / 1000} s${last ? ` (phase ${enumLabel(MIGRATION_PHASE, last.phase)})` : ""}`, {
          hint: `it goes on in the controller; follow it with 'stowctl vm migration ${domain} --wait'`,
        }),
    },
  );
  return m;
}

function finished(ctx: CliContext, m: Migration): void {
  if (m.phase === MigrationPhase.MIGRATION_PHASE_FAILED) {
    throw new StowageError(`migration of ${m.domain} to ${m.toNode} failed: ${m.message || "no reason given"}; the domain keeps running on ${m.fromNode}`, {
      hint: `'stowctl vm get ${m.domain}' shows where it runs`,
    });
  }
  ctx.print({ migration: m }, () => `migrated ${m.domain} from ${m.fromNode} to ${m.toNode} in ${((m.finishedAtMs - m.startedAtMs) / 1000).toFixed(1)} s (downtime ${m.downtimeMs} ms)\n`);
}

export function registerVmCommands(program: Command, session: Session): void {
  const vm = program
    .command("vm")
    .description("libvirt domains whose disks are Stowage volumes: attach, detach, live-migrate")
    .addHelpText(
      "after",
      examples(["stowctl vm get web1", "stowctl vm attach web1 data1 --node node1", "stowctl vm migrate web1 --to node2", "stowctl vm detach web1 data1"]),
    );

  vm.command("get")
    .description("show where a domain runs and which of its disks are Stowage volumes")
    .argument("<domain>", "libvirt domain name")
    .addHelpText("after", examples(["stowctl vm get web1", "stowctl vm get web1 -o json"]))
    .action(async (domain: string, _opts: unknown, cmd: Command) => {
      validateDomainName(domain);
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(VmServiceService).getVm({ name: domain });
      ctx.print(res, () => vmDetail(res.vm!));
    });

  vm.command("attach")
    .description("attach a volume on the domain's node and hot-plug it into the running domain as a virtio disk")
    .argument("<domain>", "libvirt domain name")
    .argument("<volume>", "volume name")
    .option("--node <node>", "node the domain runs on (default: found by asking every node)")
    .option("--target <dev>", "guest device name, for example vdb (default: the first free vdX)")
    .addHelpText("after", examples(["stowctl vm attach web1 data1", "stowctl vm attach web1 data1 --node node1 --target vdc"]))
    .action(async (domain: string, volume: string, opts: { node?: string; target?: string }, cmd: Command) => {
      validateDomainName(domain);
      validateName("volume", volume);
      if (opts.node) validateName("node", opts.node);
      const ctx = session.context(cmd);
      const res = await ctx
        .controllers()
        .service(VmServiceService)
        .attachVmDisk({ domain, volume, node: opts.node ?? "", target: opts.target ?? "" }, { timeoutMs: VM_CALL_MS });
      ctx.print(res, () => `volume ${volume} attached to ${domain} on ${res.vm!.node} as ${res.target}\n`);
    });

  vm.command("detach")
    .description("hot-unplug a volume's disk from the domain and detach the volume from the domain's node")
    .argument("<domain>", "libvirt domain name")
    .argument("<volume>", "volume name")
    .option("--node <node>", "node the domain runs on (default: found by asking every node)")
    .addHelpText("after", examples(["stowctl vm detach web1 data1"]))
    .action(async (domain: string, volume: string, opts: { node?: string }, cmd: Command) => {
      validateDomainName(domain);
      validateName("volume", volume);
      if (opts.node) validateName("node", opts.node);
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(VmServiceService).detachVmDisk({ domain, volume, node: opts.node ?? "" }, { timeoutMs: VM_CALL_MS });
      ctx.print(res, () => `volume ${volume} detached from ${domain} on ${res.vm!.node}\n`);
    });

  vm.command("migrate")
    .description(
      "live-migrate a running domain to another node without copying disks: the volumes get frontends there too, " +
        "libvirt moves the domain, then the source frontends stop. On failure the domain keeps running where it was.",
    )
    .argument("<domain>", "libvirt domain name")
    .requiredOption("--to <node>", "required: destination node")
    .option("--no-wait", "return once the controller recorded the migration; follow it with 'stowctl vm migration DOMAIN --wait'")
    .option("--wait-timeout <seconds>", `wait at most this long (default: ${DEFAULT_MIGRATE_WAIT_S})`)
    .addHelpText("after", examples(["stowctl vm migrate web1 --to node2", "stowctl vm migrate web1 --to node2 --no-wait && stowctl vm migration web1 --wait"]))
    .action(async (domain: string, opts: { to: string; wait: boolean; waitTimeout?: string }, cmd: Command) => {
      validateDomainName(domain);
      validateName("node", opts.to);
      const waitMs = parseSecondsFlag("--wait-timeout", opts.waitTimeout ?? String(DEFAULT_MIGRATE_WAIT_S));
      const ctx = session.context(cmd);
      // Finding the domain asks every node: allow more than a plain call.
      const res = await ctx.controllers().service(VmServiceService).migrateVm({ domain, toNode: opts.to }, { timeoutMs: VM_CALL_MS });
      if (!opts.wait) return ctx.print(res, () => `migration of ${domain} from ${res.migration!.fromNode} to ${opts.to} started\n`);
      finished(ctx, await waitForMigration(ctx, domain, waitMs));
    });

  vm.command("migration")
    .description("show the running or last live migration of a domain")
    .argument("<domain>", "libvirt domain name")
    .option("--wait", "follow a running migration until it ends (exit 1 if it failed)")
    .option("--wait-timeout <seconds>", `with --wait: at most this long (default: ${DEFAULT_MIGRATE_WAIT_S})`)
    .addHelpText("after", examples(["stowctl vm migration web1", "stowctl vm migration web1 --wait -o json"]))
    .action(async (domain: string, opts: { wait?: boolean; waitTimeout?: string }, cmd: Command) => {
      validateDomainName(domain);
      const ctx = session.context(cmd);
      if (opts.wait) {
        const waitMs = parseSecondsFlag("--wait-timeout", opts.waitTimeout ?? String(DEFAULT_MIGRATE_WAIT_S));
        return finished(ctx, await waitForMigration(ctx, domain, waitMs));
      }
      const res = await ctx.controllers().service(VmServiceService).getMigration({ domain });
      ctx.print(res, () => migrationDetail(res.migration!, ctx.deps.now()));
    });
}
