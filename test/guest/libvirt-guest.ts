// The test guest as a transient libvirt domain on an NBD disk, and live migration with virsh.
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { guestCmdline, type GuestImages, type GuestOptions } from "./guest.js";
import { diskXml, escapeXml } from "../../lib/libvirt-xml.js";
import { virshBytes, virshFields, virshMs } from "../../node-agent/libvirt/virsh.js";
import { virsh } from "./libvirt-hosts.js";

export interface LibvirtGuestSpec extends GuestOptions {
  name: string;
  images: GuestImages;
  /** The NBD export the disk connects to (a unix socket libvirt-qemu can open); none: boot without a disk (hot-plug one later). */
  nbd?: { socket: string; exportName: string };
  /** Serial console file (appended to, so the log survives migrations); must be writable by libvirt-qemu. */
  serialLog: string;
  memMiB?: number;
}

const esc = escapeXml;

/** The same <disk> element Stowage plugs in (stowctl volume disk-xml), as vda. */
const nbdDisk = (nbd: { socket: string; exportName: string }) => diskXml({ volume: nbd.exportName, socketPath: nbd.socket, target: "vda" });

/** Domain XML: TCG, kernel + initrd boot, raw NBD disk with cache=none, serial console to a file. */
export function guestDomainXml(s: LibvirtGuestSpec): string {
  return `<domain type='qemu'>
  <name>${esc(s.name)}</name>
  <memory unit='MiB'>${s.memMiB ?? 256}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${esc(s.images.kernel)}</kernel>
    <initrd>${esc(s.images.initrd)}</initrd>
    <cmdline>${esc(guestCmdline(s))}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
${s.nbd ? nbdDisk(s.nbd) : ""}    <serial type='file'>
      <source path='${esc(s.serialLog)}' append='on'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

/** Creates (and starts) the guest as a transient domain on `uri`. */
export async function createGuestDomain(uri: string, spec: LibvirtGuestSpec): Promise<void> {
  if (!existsSync(spec.serialLog)) await writeFile(spec.serialLog, "");
  await chmod(spec.serialLog, 0o666);
  const dir = await mkdtemp(join(tmpdir(), "stowage-domxml-"));
  try {
    const file = join(dir, `${spec.name}.xml`);
    await writeFile(file, guestDomainXml(spec));
    await virsh(uri, ["create", file]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Domain names running on `uri`. */
export async function runningDomains(uri: string): Promise<string[]> {
  return (await virsh(uri, ["list", "--name"])).split("\n").map((s) => s.trim()).filter(Boolean);
}

export interface JobInfo {
  /** All fields, e.g. "Total downtime" -> "33 ms". */
  fields: Record<string, string>;
  elapsedMs?: number;
  downtimeMs?: number;
  dataProcessedMiB?: number;
}

/** Parses `virsh domjobinfo` output (with the agent's virsh field and unit parsers). */
export function parseDomJobInfo(text: string): JobInfo {
  const fields = Object.fromEntries(virshFields(text));
  const mib = virshBytes(fields["Data processed"]);
  return {
    fields,
    elapsedMs: virshMs(fields["Time elapsed"]),
    downtimeMs: virshMs(fields["Total downtime"]),
    dataProcessedMiB: mib === undefined ? undefined : mib / 2 ** 20,
  };
}

export interface MigrationResult {
  /** Wall time of the virsh migrate command. */
  wallMs: number;
  /** From `virsh domjobinfo --completed` on the destination. */
  job: JobInfo;
}

/**
 * Live-migrates `domain` from `fromUri` to `toUri` (`virsh migrate --live ...
 * --migrateuri tcp://127.0.0.1 --listen-address 127.0.0.1`: the destination
 * listens for the migration stream on loopback only) and returns the wall time and the completed
 * job's statistics (downtime) from the destination.
 */
export async function migrate(fromUri: string, domain: string, toUri: string, opts: { migrateUri?: string; listenAddress?: string; timeoutMs?: number; extraArgs?: string[] } = {}): Promise<MigrationResult> {
  const t0 = Date.now();
  await virsh(fromUri, ["migrate", "--live", domain, toUri, "--migrateuri", opts.migrateUri ?? "tcp://127.0.0.1", "--listen-address", opts.listenAddress ?? "127.0.0.1", ...(opts.extraArgs ?? [])], opts.timeoutMs ?? 60_000);
  const wallMs = Date.now() - t0;
  const job = parseDomJobInfo(await virsh(toUri, ["domjobinfo", domain, "--completed"]));
  return { wallMs, job };
}
