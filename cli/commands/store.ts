// stowctl store verify
import type { Command } from "commander";
import { BackupServiceService } from "../../gen/stowage/v1/controller.js";
import type { StoreReport } from "../../gen/stowage/v1/types.js";
import { StowageError } from "../../lib/errors.js";
import { formatSize } from "../../lib/sizes.js";
import type { Session } from "../context.js";
import { examples } from "../help.js";
import { formatTable } from "../output.js";
import { COPY_WAIT_MS } from "../wait.js";

export function storeReportView(reports: StoreReport[]): string {
  if (reports.length === 0) return "no node keeps backups\n";
  const table = formatTable(
    ["node", "result", "backups", "chunks", "checked", "problems", "damaged backups"],
    reports.map((r) => [
      r.node,
      r.error ? `not checked: ${r.error}` : r.ok ? "ok" : "DAMAGED",
      String(r.manifests),
      String(r.chunksChecked),
      formatSize(r.bytesChecked),
      String(r.problems.length),
      r.damagedBackups.join(", ") || "-",
    ]),
  );
  const problems = reports.flatMap((r) => r.problems.map((p) => `  ${r.node}: chunk ${p.chunkId.slice(0, 16)}… ${p.reason} (in ${p.backups.join(", ") || "no backup"})`));
  return table + (problems.length ? `\n${problems.join("\n")}\n` : "");
}

export function registerStoreCommands(program: Command, session: Session): void {
  const store = program
    .command("store")
    .description("the chunk stores that keep backups and replicated copies, one per node that keeps any")
    .addHelpText("after", examples(["stowctl store verify"]));
  store
    .command("verify")
    .description("read back and hash every chunk of every store (or one node's); names the backups a damaged or missing chunk belongs to; exit code 1 when any is damaged")
    .option("--node <name>", "only this node's store")
    .option("--quarantine", "move damaged chunks aside: the next backup of the same data stores them again")
    .addHelpText("after", examples(["stowctl store verify", "stowctl store verify --node node3 --quarantine"]))
    .action(async (opts: { node?: string; quarantine?: boolean }, cmd: Command) => {
      const ctx = session.context(cmd);
      const res = await ctx.controllers().service(BackupServiceService).verifyStores({ node: opts.node ?? "", quarantine: Boolean(opts.quarantine) }, { timeoutMs: COPY_WAIT_MS });
      ctx.print(res, () => storeReportView(res.reports));
      const bad = res.reports.filter((r) => !r.ok);
      if (bad.length > 0) {
        throw new StowageError(`${bad.map((r) => r.node).join(", ")}: ${bad.some((r) => r.error) ? "not verified or " : ""}damaged`, {
          hint: opts.quarantine
            ? "the damaged chunks were moved aside: take a new backup of the volumes named above (their unchanged data is stored again)"
            : "run again with --quarantine, then take a new backup of the volumes named above",
        });
      }
    });
}
