// The two-host libvirt fixture cleans up after itself, even when a daemon died
// under a running domain.
import { existsSync, readFileSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { eventually } from "../harness/processes.js";
import { buildGuest } from "./guest.js";
import { startTwoHosts, virsh, type TwoHosts } from "./libvirt-hosts.js";
import { createGuestDomain } from "./libvirt-guest.js";
import { waitForSerial } from "./qemu-guest.js";
import { Qsd } from "../harness/qsd.js";

let dir: string | undefined;
let hosts: TwoHosts | undefined;
let qsd: Qsd | undefined;

afterAll(async () => {
  await hosts?.stop();
  await qsd?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Alive and not a zombie. */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

it("stop() kills the domains, stops the daemons and removes the dirs, even after a daemon crash", async () => {
  const images = await buildGuest();
  dir = await mkdtemp(join(tmpdir(), "stowage-hosts-"));
  await chmod(dir, 0o755);
  hosts = await startTwoHosts();
  expect(hosts.uri1).toMatch(/^qemu\+tcp:\/\/127\.0\.0\.1:\d+\/system$/);
  expect(hosts.uri2).not.toBe(hosts.uri1);
  // Two distinct hosts, as libvirt sees them.
  const uuid = async (uri: string) => (await virsh(uri, ["capabilities"])).match(/<uuid>([^<]+)<\/uuid>/)![1];
  expect(await uuid(hosts.uri1)).toBe(hosts.hosts[0].hostUuid);
  expect(await uuid(hosts.uri2)).toBe(hosts.hosts[1].hostUuid);

  const shared = join(dir, "shared");
  await mkdir(shared, { mode: 0o755 });
  qsd = await Qsd.start({ dir: shared, worldConnectable: true });
  const serialLog = join(shared, "serial.log");
  await createGuestDomain(hosts.uri2, { name: "stowage-cleanup", images, nbd: { socket: qsd.socket, exportName: qsd.exportName }, serialLog });
  await waitForSerial(serialLog, (r) => (r.last?.lastAck ?? 0) > 5, "ACKs", 30_000);
  const [qemu] = await hosts.hosts[1].qemuPids();
  const daemons = hosts.hosts.map((h) => h.proc.child.pid!);
  expect(qemu).toBeGreaterThan(0);
  expect(daemons).not.toContain(qemu);

  await hosts.hosts[1].proc.kill("SIGKILL"); // the daemon dies, its QEMU keeps running
  expect(alive(qemu!)).toBe(true);
  const base = hosts.dir;
  await hosts.stop();
  await eventually(async () => !alive(qemu!) && daemons.every((p) => !alive(p)), 5_000, "QEMU and daemons gone");
  expect(existsSync(base)).toBe(false);
  // The bind mounts lived only in the daemons' namespaces.
  expect(readFileSync("/proc/self/mounts", "utf8")).not.toContain(base);
  hosts = undefined;
});
