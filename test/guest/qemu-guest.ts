// The test guest under plain QEMU (TCG): kernel + initramfs boot, serial
// console to a file, one virtio disk from an image file or an NBD export, QMP.
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { QmpClient } from "../../node-agent/qsd/qmp-client.js";
import { Proc, sleep } from "../harness/processes.js";
import { guestCmdline, parseSerial, type Boot, type GuestImages, type GuestOptions, type SerialReport } from "./guest.js";
import { killOnExit } from "../harness/reaper.js";

export type GuestDisk =
  | { file: string; format?: "qcow2" | "raw" }
  | { nbdSocket: string; exportName: string };

export interface QemuGuestOptions extends GuestOptions {
  images: GuestImages;
  disk: GuestDisk;
  /** Directory for the serial log and QMP socket. */
  dir: string;
  name?: string;
  memMiB?: number;
  /** Start paused waiting for an incoming migration on this URI (e.g. tcp:127.0.0.1:PORT). */
  incoming?: string;
  /** Serial log path; default DIR/NAME.serial.log. Appended to, so a migration target can share it. */
  serialLog?: string;
  extraArgs?: string[];
}

/** QEMU -blockdev arguments for a disk, node name disk0. */
export function diskArgs(disk: GuestDisk): string[] {
  if ("nbdSocket" in disk) {
    // cache.direct=on as libvirt passes it for cache='none'
    return ["-blockdev", `driver=nbd,node-name=disk0,server.type=unix,server.path=${disk.nbdSocket},export=${disk.exportName},cache.direct=on`];
  }
  const fmt = disk.format ?? (disk.file.endsWith(".qcow2") ? "qcow2" : "raw");
  return [
    "-blockdev", `driver=file,node-name=file0,filename=${disk.file},cache.direct=on`,
    "-blockdev", `driver=${fmt},node-name=disk0,file=file0`,
  ];
}

export class QemuGuest {
  /** Date.now() when QEMU was spawned. */
  readonly startedAt = Date.now();

  private constructor(
    readonly name: string,
    readonly proc: Proc,
    readonly serialLog: string,
    readonly qmpSocket: string,
  ) {}

  static async start(o: QemuGuestOptions): Promise<QemuGuest> {
    const name = o.name ?? "guest";
    await mkdir(o.dir, { recursive: true });
    const serialLog = o.serialLog ?? join(o.dir, `${name}.serial.log`);
    const qmpSocket = join(o.dir, `${name}.qmp.sock`);
    if (!existsSync(serialLog)) await writeFile(serialLog, "");
    const args = [
      "-name", name,
      "-nodefaults", "-no-user-config",
      "-machine", "pc", "-accel", "tcg",
      "-m", String(o.memMiB ?? 256), "-smp", "1",
      "-display", "none", "-vga", "none",
      "-chardev", `file,id=ser0,path=${serialLog},append=on`,
      "-serial", "chardev:ser0",
      "-qmp", `unix:${qmpSocket},server=on,wait=off`,
      "-kernel", o.images.kernel, "-initrd", o.images.initrd,
      "-append", guestCmdline(o),
      ...diskArgs(o.disk),
      "-device", "virtio-blk-pci,drive=disk0,id=vda",
      ...(o.incoming ? ["-incoming", o.incoming] : []),
      ...(o.extraArgs ?? []),
    ];
    const proc = Proc.start(`qemu ${name}`, "qemu-system-x86_64", args);
    killOnExit(proc.child);
    return new QemuGuest(name, proc, serialLog, qmpSocket);
  }

  get running(): boolean {
    return this.proc.running;
  }

  serial(): Promise<string> {
    return readFile(this.serialLog, "utf8");
  }

  async report(): Promise<SerialReport> {
    return parseSerial(await this.serial());
  }

  /** Connects to the monitor (one client at a time), retrying until QEMU listens on it; close it when done. */
  async qmp(timeoutMs = 10_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await QmpClient.connect({ path: this.qmpSocket, connectTimeoutMs: Math.max(1, deadline - Date.now()) });
      } catch (err) {
        if (Date.now() > deadline || !this.running) throw err;
        await sleep(10);
      }
    }
  }

  /** Polls the serial log until `pred` holds; fails early on FATAL lines or when QEMU exits. */
  async waitSerial(pred: (r: SerialReport) => boolean, what: string, timeoutMs = 60_000): Promise<SerialReport> {
    return waitForSerial(this.serialLog, pred, what, timeoutMs, () => (this.running ? undefined : `QEMU exited:\n${this.proc.output.slice(-2000)}`));
  }

  /** Waits for the BOOT line; bootMs is the time from spawning QEMU. */
  async waitForBoot(timeoutMs = 60_000): Promise<Boot & { bootMs: number }> {
    const r = await this.waitSerial((s) => !!s.last, "BOOT", timeoutMs);
    return { ...r.last!, bootMs: Date.now() - this.startedAt };
  }

  /** Waits until the current boot acknowledged write `n` (absolute number). */
  async waitForAck(n: number, timeoutMs = 60_000): Promise<Boot> {
    return (await this.waitSerial((s) => (s.last?.lastAck ?? 0) >= n, `ACK ${n}`, timeoutMs)).last!;
  }

  /** Waits for `k` more ACKs than have been printed so far. */
  async waitForMoreAcks(k: number, timeoutMs = 60_000): Promise<Boot> {
    const now = (await this.report()).last?.lastAck ?? 0;
    return this.waitForAck(now + k, timeoutMs);
  }

  /** SIGKILL (a crash) by default. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    await this.proc.kill(signal, 5_000);
  }

  /** Quits through QMP, killing QEMU when that does not work. */
  async stop(): Promise<void> {
    if (!this.running) return;
    try {
      const q = await this.qmp(2_000);
      await q.execute("quit").catch(() => undefined);
      await q.close();
      const deadline = Date.now() + 5_000;
      while (this.running && Date.now() < deadline) await sleep(20);
    } catch {
      // fall through to the kill
    }
    await this.kill("SIGKILL");
  }
}

/** Polls a serial log file (of any guest: plain QEMU or libvirt) until `pred` holds. */
export async function waitForSerial(
  serialLog: string,
  pred: (r: SerialReport) => boolean,
  what: string,
  timeoutMs = 60_000,
  abort?: () => string | undefined,
): Promise<SerialReport> {
  const deadline = Date.now() + timeoutMs;
  let r: SerialReport = parseSerial("");
  for (;;) {
    const text = existsSync(serialLog) ? await readFile(serialLog, "utf8") : "";
    r = parseSerial(text);
    if (pred(r)) return r;
    if (r.failures.length) throw new Error(`guest failed before ${what}: ${r.failures.join("; ")}\n${text.slice(-2000)}`);
    const why = abort?.();
    if (why) {
      // it may have printed what we wait for just before it went away
      r = parseSerial(existsSync(serialLog) ? await readFile(serialLog, "utf8") : "");
      if (pred(r)) return r;
      throw new Error(`guest gone before ${what}: ${why}\n${text.slice(-2000)}`);
    }
    if (Date.now() > deadline) throw new Error(`guest did not reach ${what} within ${timeoutMs} ms; serial log ends:\n${text.slice(-2000)}`);
    await sleep(50);
  }
}

export interface QmpMigrationResult {
  /** Wall time from the `migrate` command until the source reported completion. */
  wallMs: number;
  /** QEMU's own figures from query-migrate. */
  totalTimeMs?: number;
  downtimeMs?: number;
}

/**
 * Live-migrates `src` into `dst` (started with `incoming: "tcp:127.0.0.1:PORT"`
 * and the same disk) with QMP `migrate`, and waits for completion. Both share
 * the NBD export; the source QEMU stays paused (postmigrate) until stopped.
 * `parameters` go to migrate-set-parameters on the source first (e.g. max-bandwidth).
 */
export async function migrateQmp(src: QemuGuest, dst: QemuGuest, uri: string, timeoutMs = 60_000, parameters?: Record<string, unknown>): Promise<QmpMigrationResult> {
  // The target listens once its monitor answers.
  const qd = await dst.qmp();
  const st = (await qd.execute("query-status")) as { status: string };
  await qd.close();
  if (st.status !== "inmigrate") throw new Error(`migration target is ${st.status}, not inmigrate (start it with incoming)`);
  const q = await src.qmp();
  try {
    if (parameters) await q.execute("migrate-set-parameters", parameters);
    const t0 = Date.now();
    await q.execute("migrate", { uri });
    const deadline = t0 + timeoutMs;
    for (;;) {
      const info = (await q.execute("query-migrate")) as { status?: string; "total-time"?: number; downtime?: number; "error-desc"?: string };
      if (info.status === "completed") return { wallMs: Date.now() - t0, totalTimeMs: info["total-time"], downtimeMs: info.downtime };
      if (info.status === "failed" || info.status === "cancelled") throw new Error(`migration ${info.status}: ${info["error-desc"] ?? ""}`);
      if (Date.now() > deadline) throw new Error(`migration not completed within ${timeoutMs} ms (status ${info.status})`);
      if (!dst.running) throw new Error(`migration target exited:\n${dst.proc.output.slice(-2000)}`);
      await sleep(5);
    }
  } finally {
    await q.close();
  }
}
