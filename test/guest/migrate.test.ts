// End-to-end: the test guest runs under libvirt on host 1 with its disk on a
// qemu-storage-daemon NBD export, is live-migrated to host 2 and back while it
// writes, and afterwards every acknowledged write is on disk and it never rebooted.
import { chmod, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildGuest, countBoots, parseSerial, verifyDisk, type GuestImages } from "./guest.js";
import { startTwoHosts, virsh, type TwoHosts } from "./libvirt-hosts.js";
import { createGuestDomain, migrate, parseDomJobInfo, runningDomains } from "./libvirt-guest.js";
import { waitForSerial } from "./qemu-guest.js";
import { Qsd } from "../harness/qsd.js";

const BLOCKS = 256;
let images: GuestImages;
let dir: string;
let hosts: TwoHosts | undefined;
let qsd: Qsd | undefined;
let hostsStartMs = 0;

beforeAll(async () => {
  images = await buildGuest();
  dir = await mkdtemp(join(tmpdir(), "stowage-migrate-"));
  await chmod(dir, 0o755); // libvirt-qemu must reach the NBD socket and the serial log
  const t0 = Date.now();
  hosts = await startTwoHosts({ baseDir: join(dir, "hosts") });
  hostsStartMs = Date.now() - t0;
});

afterAll(async () => {
  await hosts?.stop();
  await qsd?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("live migration between two libvirt hosts", () => {
  it("migrates a writing guest there and back without losing an acknowledged write", async () => {
    const h = hosts!;
    const shared = join(dir, "shared"); // outside every bind-mounted libvirt dir: same path on both hosts
    await mkdir(shared, { mode: 0o755 });
    qsd = await Qsd.start({ dir: shared, format: "qcow2", sizeMiB: 64, worldConnectable: true });
    const serialLog = join(shared, "serial.log");
    const name = `stowage-guest-${randomBytes(3).toString("hex")}`;
    const serial = (pred: Parameters<typeof waitForSerial>[1], what: string, ms = 60_000) => waitForSerial(serialLog, pred, what, ms);
    const acked = async () => (await serial(() => true, "log")).last?.lastAck ?? 0;

    const t0 = Date.now();
    await createGuestDomain(h.uri1, { name, images, nbd: { socket: qsd.socket, exportName: qsd.exportName }, serialLog, blocks: BLOCKS });
    const booted = await serial((r) => !!r.last, "BOOT", 30_000);
    const bootMs = Date.now() - t0;
    await serial((r) => (r.last?.lastAck ?? 0) >= 50, "ACK 50", 30_000);

    const there = await migrate(h.uri1, name, h.uri2);
    expect(await runningDomains(h.uri2)).toContain(name);
    expect(await runningDomains(h.uri1)).not.toContain(name);
    const atThere = await acked();
    await serial((r) => (r.last?.lastAck ?? 0) >= atThere + 50, `50 ACKs on host 2 (after ${atThere})`, 30_000);

    const back = await migrate(h.uri2, name, h.uri1);
    expect(await runningDomains(h.uri1)).toContain(name);
    expect(await runningDomains(h.uri2)).not.toContain(name);
    const atBack = await acked();
    await serial((r) => (r.last?.lastAck ?? 0) >= atBack + 50, `50 ACKs back on host 1 (after ${atBack})`, 30_000);

    // Pull the plug (virsh destroy kills QEMU), then check the disk.
    await virsh(h.uri1, ["destroy", name]);
    const wallMs = Date.now() - t0;
    const log = await readFile(serialLog, "utf8");
    const report = parseSerial(log);
    expect(countBoots(log)).toBe(1);
    expect(report.last!.id).toBe(booted.last!.id);
    expect(report.failures).toEqual([]);
    expect(report.last!.writeErrors).toEqual([]);
    expect(report.last!.ackGaps).toEqual([]);
    expect(report.last!.ackRegressions).toBe(0);
    const v = await verifyDisk(qsd.uri, report.last!);
    expect(v.errors).toEqual([]);
    expect(v.ok).toBe(true);
    expect(v.lastAck).toBeGreaterThanOrEqual(atBack + 50);

    console.log(
      `[migrate] libvirt hosts up in ${hostsStartMs} ms; guest boot ${bootMs} ms (virsh create -> BOOT); ` +
        `1->2: ${there.wallMs} ms wall, ${there.job.downtimeMs} ms downtime, ${there.job.elapsedMs} ms job; ` +
        `2->1: ${back.wallMs} ms wall, ${back.job.downtimeMs} ms downtime, ${back.job.elapsedMs} ms job; ` +
        `${v.lastAck} acked writes verified (${v.unacked} unacked on disk); whole run ${wallMs} ms`,
    );
    expect(there.job.downtimeMs).toBeGreaterThanOrEqual(0);
    expect(back.job.downtimeMs).toBeGreaterThanOrEqual(0);
  });
});

describe("parseDomJobInfo", () => {
  it("reads the timing fields of a completed migration", () => {
    const j = parseDomJobInfo(
      [
        "Job type:         Completed   ",
        "Operation:        Incoming migration",
        "Time elapsed:     608          ms",
        "Data processed:   63.953 MiB",
        "Total downtime:   33           ms",
        "Downtime w/o network: 31           ms",
      ].join("\n"),
    );
    expect(j).toMatchObject({ elapsedMs: 608, downtimeMs: 33, dataProcessedMiB: 63.953 });
    expect(j.fields["Operation"]).toBe("Incoming migration");
    expect(j.fields["Downtime w/o network"]).toBe("31           ms");
  });
});
