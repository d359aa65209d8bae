// stowctl volume import FILE NAME, stowctl volume export NAME FILE.
//
// Both run qemu-img (or qemu-nbd) on the machine where stowctl runs, so the file
// is a local file there. Import serves the file read-only over NBD (qemu-nbd, any
// format qemu reads) at an address the volume's nodes reach, and the controller
// has one node copy it in. Export has the controller export one replica of the
// detached volume, and qemu-img converts from it into the file (written under a
// temporary name, renamed when complete: an interrupted export leaves no file
// that looks whole).
import { createSocket } from "node:dgram";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import type { Command } from "commander";
import { TransferServiceService } from "../../gen/stowage/v1/controller.js";
import { ImageFormat, Preallocation } from "../../gen/stowage/v1/types.js";
import { StowageError } from "../../lib/errors.js";
import { formatSize } from "../../lib/sizes.js";
import type { CliContext, Session } from "../context.js";
import { parseCountFlag, UsageError } from "../flags.js";
import { examples } from "../help.js";
import { plural } from "../output.js";
import { COPY_WAIT_MS } from "../wait.js";
import { COPY_WAIT_HELP, NO_WAIT_HELP, waitInSync, waitMs, type WaitFlags } from "./volume-wait.js";
import { freePort } from "../../lib/free-port.js";

/** execa is loaded by the commands that run qemu-img or qemu-nbd only: at start-up it would cost every stowctl command ~90 ms. */
const loadExeca = async () => (await import("execa")).execa;

export const IMPORT_FORMATS = ["qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc"] as const;
export const EXPORT_FORMATS = ["qcow2", "raw", "vmdk", "vdi", "vhdx"] as const;

interface SourceInfo {
  format: string;
  virtualSize: number;
}

/** What qemu-img says about the file (its format probed unless given). */
export async function inspectSource(file: string, format?: string): Promise<SourceInfo> {
  if (!existsSync(file)) throw new UsageError(`${file}: no such file`);
  if (format && !(IMPORT_FORMATS as readonly string[]).includes(format)) {
    throw new UsageError(`option '--source-format': "${format}" is not one of ${IMPORT_FORMATS.join(", ")}`);
  }
  const execa = await loadExeca();
  const r = await execa("qemu-img", ["info", "--output=json", ...(format ? ["-f", format] : []), file], { reject: false });
  if (r.exitCode !== 0) throw new StowageError(`qemu-img cannot read ${file}: ${String(r.stderr).trim()}`, { hint: "is it a disk image? give its format with --source-format" });
  const info = JSON.parse(String(r.stdout)) as { format: string; "virtual-size": number };
  if (!(IMPORT_FORMATS as readonly string[]).includes(info.format)) {
    throw new StowageError(`${file} is a ${info.format} image; import takes ${IMPORT_FORMATS.join(", ")}`, { hint: `convert it first, for example: qemu-img convert -O qcow2 ${file} out.qcow2` });
  }
  return { format: info.format, virtualSize: info["virtual-size"] };
}

/** The local address the cluster reaches this machine at: the one used to reach the controller. */
export async function localAddressFor(controller: string): Promise<string> {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(controller);
  const host = m?.[1] ?? controller;
  const port = Number(m?.[2] ?? 7700);
  if (host === "localhost" || host.startsWith("127.") || host === "::1") return "127.0.0.1";
  const s = createSocket(host.includes(":") ? "udp6" : "udp4");
  try {
    await new Promise<void>((ok, fail) => {
      s.once("error", fail);
      s.connect(port, host, () => ok()); // no packet is sent: this only picks a route
    });
    return s.address().address;
  } finally {
    s.close();
  }
}


/** Serves `file` read-only over NBD with qemu-nbd until the returned stop() is called. */
export async function serveFile(file: string, format: string, host: string): Promise<{ uri: string; stop: () => void }> {
  const dir = mkdtempSync(join(tmpdir(), "stowctl-import-"));
  const pidFile = join(dir, "qemu-nbd.pid");
  const port = await freePort(host);
  const execa = await loadExeca();
  // --fork: returns once it serves; --persistent and --shared: several copies may connect.
  const r = await execa(
    "qemu-nbd",
    ["--read-only", "--persistent", "--shared=8", "--fork", `--pid-file=${pidFile}`, "-f", format, "-x", "import", "-b", host, "-p", String(port), file],
    { reject: false },
  );
  if (r.exitCode !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new StowageError(`qemu-nbd could not serve ${file} on ${host}:${port}: ${String(r.stderr).trim()}`, { hint: "give another local address with --address" });
  }
  const pid = Number(readFileSync(pidFile, "utf8").trim());
  const hostPart = host.includes(":") ? `[${host}]` : host;
  return {
    uri: `nbd://${hostPart}:${port}/import`,
    stop: () => {
      try {
        process.kill(pid, "SIGTERM");
      } catch {
        // gone already
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const roundUp512 = (n: number) => Math.ceil(n / 512) * 512;

interface ImportFlags extends WaitFlags {
  replicas?: string;
  pool?: string;
  format?: string;
  sourceFormat?: string;
  address?: string;
}

export function registerTransferCommands(volume: Command, session: Session): void {
  volume
    .command("import")
    .description(
      "create a volume from a local disk image (qcow2, raw, vmdk, vdi, vhdx, vpc): stowctl serves the file read-only over NBD, one node copies it in, the other replicas are copied from that one",
    )
    .argument("<file>", "the image file on this machine")
    .argument("<name>", "the new volume's name")
    .option("--replicas <count>", "copies of the new volume (default: 2)")
    .option("--format <format>", "the volume's image format: qcow2 or raw (default: qcow2)")
    .option("--pool <name>", "place replicas only in pools of this name")
    .option("--source-format <format>", `the file's format (default: detected by qemu-img); one of ${IMPORT_FORMATS.join(", ")}`)
    .option("--address <host>", "this machine's address as the nodes reach it (default: the one that routes to the controller)")
    .option("--no-wait", NO_WAIT_HELP + " (for the copies to the other replicas; the first copy is always waited for)")
    .option("--wait-timeout <seconds>", COPY_WAIT_HELP)
    .addHelpText(
      "after",
      examples([
        "stowctl volume import debian-12.qcow2 web1",
        "stowctl volume import appliance.vmdk app1 --replicas 3",
        "stowctl volume import disk.img db1 --source-format raw --format raw",
      ]),
    )
    .action(async (file: string, name: string, opts: ImportFlags, cmd: Command) => {
      const replicas = opts.replicas === undefined ? 0 : parseCountFlag("--replicas", opts.replicas);
      const format = opts.format ?? "qcow2";
      if (format !== "qcow2" && format !== "raw") throw new UsageError(`option '--format': expected qcow2 or raw, got "${format}"`);
      const wait = waitMs(opts, COPY_WAIT_MS);
      const ctx = session.context(cmd);
      const src = await inspectSource(resolve(file), opts.sourceFormat);
      const host = opts.address ?? (await localAddressFor(ctx.controllerAddresses()[0]!));
      const served = await serveFile(resolve(file), src.format, host);
      const stopServing = () => served.stop();
      process.once("SIGINT", stopServing);
      let res;
      try {
        ctx.say(`importing ${file} (${src.format}, ${formatSize(src.virtualSize)}) into ${name}: one node copies it from ${served.uri}`);
        res = await ctx
          .controllers()
          .service(TransferServiceService)
          .importVolume(
            {
              spec: {
                name,
                sizeBytes: roundUp512(src.virtualSize),
                replicas,
                format: format === "raw" ? ImageFormat.IMAGE_FORMAT_RAW : ImageFormat.IMAGE_FORMAT_QCOW2,
                preallocation: Preallocation.PREALLOCATION_OFF,
                pool: opts.pool ?? "",
              },
              sourceNbdUri: served.uri,
            },
            { timeoutMs: wait },
          );
      } finally {
        process.off("SIGINT", stopServing);
        served.stop();
      }
      const rate = res.durationMs > 0 ? ` (${formatSize(Math.round((res.bytes / res.durationMs) * 1000))}/s)` : "";
      ctx.say(`copied into replica ${res.replicaId} in ${(res.durationMs / 1000).toFixed(1)} s${rate}`);
      const others = (res.volume?.spec?.replicas ?? 1) - 1;
      if (!opts.wait || others === 0) return ctx.print(res, () => `volume ${name} imported${others ? `; ${plural(others, "replica")} being copied: stowctl job list --volume ${name}` : ""}\n`);
      ctx.say(`copying to ${plural(others, "other replica")} (stowctl job list --volume ${name} shows progress)`);
      const done = await waitInSync(ctx, name, "copying the import to its other replicas", wait);
      ctx.print({ ...res, volume: done.volume }, () => `volume ${name} imported and healthy (${plural(others + 1, "replica")})\n`);
    });

  volume
    .command("export")
    .description("copy a detached volume into a local image file; the volume cannot be attached until it finished")
    .argument("<name>", "volume name (to export a volume in use, snapshot and clone it, and export the clone)")
    .argument("<file>", "the file to write on this machine (must not exist, unless --force)")
    .option("--format <format>", `file format: ${EXPORT_FORMATS.join(", ")} (default: qcow2)`)
    .option("--compress", "compressed qcow2 clusters (smaller, slower)")
    .option("--force", "overwrite the file if it exists")
    .addHelpText("after", examples(["stowctl volume export web1 web1.qcow2", "stowctl volume export web1 web1.vmdk --format vmdk", "stowctl volume export gold gold.qcow2 --compress"]))
    .action(async (name: string, file: string, opts: { format?: string; compress?: boolean; force?: boolean }, cmd: Command) => {
      const format = opts.format ?? "qcow2";
      if (!(EXPORT_FORMATS as readonly string[]).includes(format)) throw new UsageError(`option '--format': expected one of ${EXPORT_FORMATS.join(", ")}, got "${format}"`);
      if (opts.compress && format !== "qcow2") throw new UsageError("option '--compress' needs --format qcow2");
      const target = resolve(file);
      if (existsSync(target) && !opts.force) throw new UsageError(`${file} exists: choose another name, or pass --force to overwrite it`);
      if (!existsSync(dirname(target))) throw new UsageError(`${dirname(target)}: no such directory`);
      const ctx = session.context(cmd);
      await exportVolume(ctx, name, target, format, Boolean(opts.compress));
    });
}

async function exportVolume(ctx: CliContext, name: string, target: string, format: string, compress: boolean): Promise<void> {
  const api = ctx.controllers().service(TransferServiceService);
  const open = await api.openVolumeExport({ volume: name, leaseSeconds: 60 });
  const partial = join(dirname(target), `.${basename(target)}.partial`);
  // The export lasts as long as the copy: the lease is renewed while it runs.
  const renew = setInterval(() => void api.openVolumeExport({ volume: name, leaseSeconds: 60 }).catch(() => undefined), 20_000);
  const t0 = Date.now();
  try {
    ctx.say(`exporting ${name} (${formatSize(open.sizeBytes)}) from replica ${open.replicaId} on ${open.node}`);
    const execa = await loadExeca();
    const child = execa("qemu-img", ["convert", "-p", "-f", "raw", "-O", format, ...(compress ? ["-c"] : []), open.nbdUri, partial], { reject: false });
    if (ctx.output === "table" && process.stderr.isTTY) child.stdout?.pipe(process.stderr);
    const r = await child;
    if (r.exitCode !== 0) throw new StowageError(`copying ${name} failed: ${String(r.stderr).trim()}`, { hint: "retry the export" });
    await rename(partial, target);
  } catch (err) {
    await rm(partial, { force: true });
    throw err;
  } finally {
    clearInterval(renew);
    await api.closeVolumeExport({ volume: name }).catch(() => undefined);
  }
  const ms = Date.now() - t0;
  ctx.print({ volume: name, file: target, format, bytes: open.sizeBytes, durationMs: ms }, () => `exported ${name} to ${target} (${format}) in ${(ms / 1000).toFixed(1)} s\n`);
}
