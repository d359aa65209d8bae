// End-to-end: the test guest writes its numbered sequence to a qcow2 image
// exported by a real qemu-storage-daemon over NBD, QEMU is killed with
// SIGKILL, and every acknowledged write must be on the image.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BLOCK_SIZE, buildGuest, countBoots, parseSerial, verifyDisk, type GuestImages } from "./guest.js";
import { freePort } from "../harness/ports.js";
import { migrateQmp, QemuGuest } from "./qemu-guest.js";
import { Qsd } from "../harness/qsd.js";

const BLOCKS = 128; // small, so 200+ writes wrap around the slots

let images: GuestImages;
let dir: string;
let qsd: Qsd | undefined;
let guest: QemuGuest | undefined;
let target: QemuGuest | undefined;

beforeAll(async () => {
  images = await buildGuest();
  dir = await mkdtemp(join(tmpdir(), "stowage-guest-"));
});

afterAll(async () => {
  await guest?.kill();
  await target?.kill();
  await qsd?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("test guest on a qemu-storage-daemon NBD export", () => {
  it("keeps every acknowledged write across a SIGKILL of QEMU", async () => {
    qsd = await Qsd.start({ dir, format: "qcow2", sizeMiB: 64 });
    guest = await QemuGuest.start({ images, dir, name: "g1", disk: { nbdSocket: qsd.socket, exportName: qsd.exportName }, blocks: BLOCKS });
    const boot = await guest.waitForBoot(30_000);
    const t0 = Date.now();
    await guest.waitForAck(200, 30_000);
    const writeMs = Date.now() - t0;
    await guest.kill("SIGKILL");

    const log = await guest.serial();
    const report = parseSerial(log);
    expect(countBoots(log)).toBe(1);
    expect(report.failures).toEqual([]);
    expect(report.last!.ackGaps).toEqual([]);
    expect(report.last!.ackRegressions).toBe(0);
    expect(report.last!.writeErrors).toEqual([]);
    const lastAck = report.last!.lastAck;
    expect(lastAck).toBeGreaterThanOrEqual(200);

    // Read back through the export, then from the image file itself.
    const viaNbd = await verifyDisk(qsd.uri, report.last!);
    expect(viaNbd.errors).toEqual([]);
    expect(viaNbd).toMatchObject({ ok: true, lastAck, bootId: boot.id, blocks: BLOCKS });
    expect(viaNbd.unacked).toBeLessThanOrEqual(1);
    await qsd.stop();
    const viaFile = await verifyDisk(qsd.image, report.last!);
    expect(viaFile).toMatchObject({ ok: true, lastAck, lastOnDisk: viaNbd.lastOnDisk });

    console.log(
      `[guest] boot ${boot.bootMs} ms (QEMU spawn -> BOOT line), ${lastAck} acked writes in ${writeMs} ms ` +
        `(${Math.round((lastAck * 1000) / writeMs)}/s), ${viaNbd.unacked} unacked write(s) on disk, kernel ${images.kernelVersion}`,
    );

    // The check has teeth: lose one acknowledged write and it must fail.
    const victim = lastAck - 3;
    await execa("qemu-io", ["-f", "qcow2", "-c", `write -z ${(victim % BLOCKS) * BLOCK_SIZE} ${BLOCK_SIZE}`, qsd.image]);
    const broken = await verifyDisk(qsd.image, report.last!);
    expect(broken.ok).toBe(false);
    expect(broken.errors).toEqual([expect.stringContaining(`acknowledged write ${victim} is missing: slot ${victim % BLOCKS} is empty`)]);
  });

  it("live-migrates between two plain QEMU processes over QMP without losing an acknowledged write", async () => {
    await qsd?.stop();
    qsd = await Qsd.start({ dir: join(dir, "qmp"), format: "raw", sizeMiB: 16 });
    const disk = { nbdSocket: qsd.socket, exportName: qsd.exportName };
    const serialLog = join(dir, "qmp", "serial.log");
    guest = await QemuGuest.start({ images, dir: join(dir, "qmp"), name: "src", disk, blocks: BLOCKS, serialLog });
    const boot = await guest.waitForBoot(30_000);
    await guest.waitForAck(50, 30_000);
    const port = await freePort();
    target = await QemuGuest.start({ images, dir: join(dir, "qmp"), name: "dst", disk, blocks: BLOCKS, serialLog, incoming: `tcp:127.0.0.1:${port}` });
    const m = await migrateQmp(guest, target, `tcp:127.0.0.1:${port}`);
    await guest.stop(); // the paused source
    const after = (await target.report()).last!.lastAck;
    await target.waitForAck(after + 50, 30_000);
    await target.kill("SIGKILL");

    const report = parseSerial(await target.serial());
    expect(countBoots(await target.serial())).toBe(1);
    expect(report.last!.id).toBe(boot.id);
    expect(report.last!.ackGaps).toEqual([]);
    const v = await verifyDisk(qsd.uri, report.last!);
    expect(v.errors).toEqual([]);
    console.log(`[guest] QMP migration: ${m.wallMs} ms wall, ${m.totalTimeMs} ms total, ${m.downtimeMs} ms downtime; ${v.lastAck} acked writes verified`);
  });
});
