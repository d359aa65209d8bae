// Live-migration benchmark (a script, not a test):
//
//   npm run build && node dist/test/bench/migration.js [--quick] [--rounds N] [--json]
//
// The same test guest (TCG, 256 MiB RAM, writing a record every 5 ms with O_DIRECT) is
// live-migrated back and forth four ways in the same run, alternating so load
// drift hits all of them:
//   stowage      `VmService.MigrateVm` between two libvirt hosts of a Stowage cluster
//                (disk: a 2-replica volume through the frontends); total = from the call
//                until GetMigration says succeeded (what `stowctl vm migrate` waits for)
//   virsh        plain `virsh migrate --live` of a domain on a shared NBD export (a
//                qemu-storage-daemon) between the same two libvirt hosts: libvirt's own
//                cost; total = until virsh returns (after libvirt stopped the source QEMU)
//   qmp          plain QMP: spawn the destination QEMU with -incoming, `migrate`, until
//                the source reports completed; disk on a shared qemu-storage-daemon
//                export. Bandwidth as libvirt sets it (max-bandwidth effectively
//                unlimited), so that only the control path differs: the target's baseline
//   qmp-default  the same with QEMU's default max-bandwidth (128 MiB/s), for reference
// Prints the median total time and downtime of each and the ratios stowage/qmp
// (target <= 1.2), stowage/virsh and virsh/qmp. Every process and file it creates is
// removed at the end, on error and on SIGINT/SIGTERM.
import { chmod, mkdir, mkdtemp, rm } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { MigrationPhase } from "../../gen/stowage/v1/types.js";
import { TestCluster } from "../harness/cluster.js";
import { freePort } from "../harness/ports.js";
import { Qsd } from "../harness/qsd.js";
import { sleep } from "../harness/processes.js";
import { buildGuest, type GuestImages } from "../guest/guest.js";
import { hostAgentOptions, startTwoHosts, type TwoHosts } from "../guest/libvirt-hosts.js";
import { createGuestDomain, migrate } from "../guest/libvirt-guest.js";
import { migrateQmp, QemuGuest, waitForSerial } from "../guest/qemu-guest.js";

const USAGE = `usage: node dist/test/bench/migration.js [--quick] [--rounds N] [--json]

  --quick     2 migrations of each kind (default 6)
  --rounds N  migrations of each kind
  --json      print one JSON object with every figure as the last line
`;

function parseOptions(argv: string[]) {
  const o = { rounds: 6, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--quick") o.rounds = 2;
    else if (a === "--json") o.json = true;
    else if (a === "--rounds") o.rounds = Number(argv[++i]);
    else if (a === "-h" || a === "--help") {
      process.stdout.write(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument "${a}"\n${USAGE}`);
  }
  if (!Number.isInteger(o.rounds) || o.rounds < 1) throw new Error("--rounds must be a positive integer");
  return o;
}

const opts = parseOptions(process.argv.slice(2));
const MEM_MIB = 256;
/** The guests write one 4 KiB record every 5 ms: steady I/O without saturating 2 cores. */
const WRITE_DELAY_US = 5_000;
/** libvirt sets max-bandwidth to (almost) INT64_MAX bytes/s; this is as unlimited and exact in JSON. */
const LIBVIRT_BANDWIDTH = Number.MAX_SAFE_INTEGER;
/** QEMU's own default max-bandwidth (bytes/s). */
const QEMU_DEFAULT_BANDWIDTH = 128 * 2 ** 20;
const median = (v: number[]) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const progress = (msg: string) => process.stderr.write(`[migration] ${msg}\n`);

interface Sample {
  totalMs: number;
  downtimeMs: number;
  /** Stowage only: when the controller's driver finished each phase (from its log). */
  phases?: { preparedMs: number; migratedMs: number; settledMs: number };
}

const cleanups: (() => Promise<void>)[] = [];
async function cleanup(): Promise<void> {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
}
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    void cleanup().finally(() => process.exit(130));
  });
}

/** The Stowage path: a cluster with two libvirt hosts and a volume-backed guest. */
async function stowageSetup(images: GuestImages, hosts: TwoHosts, dir: string) {
  const cluster = await TestCluster.create();
  cleanups.push(() => cluster.stop());
  await cluster.startController("c1");
  const [h1, h2] = hosts.hosts;
  await cluster.startAgent("node1", "127.0.0.81", hostAgentOptions(h1));
  await cluster.startAgent("node2", "127.0.0.82", hostAgentOptions(h2));
  await cluster.waitNodesOnline(2);
  const api = await cluster.leaderApi();
  await api.volumes.createVolume({ spec: { name: "bench", sizeBytes: 64 << 20, replicas: 2, format: 0, preallocation: 0, pool: "" }, dryRun: false });
  const serialLog = join(dir, "stowage.serial.log");
  await createGuestDomain(h1.uri, { name: "bench-stowage", images, serialLog, blocks: 1024, memMiB: MEM_MIB, diskWaitSec: 0, delayUs: WRITE_DELAY_US });
  await api.vms.attachVmDisk({ domain: "bench-stowage", volume: "bench", node: "node1", target: "" }, { timeoutMs: 120_000 });
  await waitForSerial(serialLog, (r) => (r.last?.lastAck ?? 0) >= 20, "ACK 20 (stowage guest)", 120_000);
  let at = "node1";
  return async (): Promise<Sample> => {
    const to = at === "node1" ? "node2" : "node1";
    const t0 = Date.now();
    await api.vms.migrateVm({ domain: "bench-stowage", toNode: to }, { timeoutMs: 60_000 });
    for (;;) {
      const m = (await api.vms.getMigration({ domain: "bench-stowage" })).migration!;
      if (m.phase === MigrationPhase.MIGRATION_PHASE_SUCCEEDED) {
        const totalMs = Date.now() - t0;
        at = to;
        const line = cluster.controllers
          .get("c1")!
          .output.split("\n")
          .filter((l) => l.includes('"migration succeeded"'))
          .pop();
        const phases = line ? (JSON.parse(line) as Sample["phases"]) : undefined;
        return { totalMs, downtimeMs: m.downtimeMs, phases };
      }
      if (m.phase === MigrationPhase.MIGRATION_PHASE_FAILED) throw new Error(`stowage migration failed: ${m.message}`);
      await sleep(20);
    }
  };
}

/** Plain libvirt: a domain on a shared QSD export between the same two hosts. */
async function virshSetup(images: GuestImages, hosts: TwoHosts, dir: string) {
  const shared = join(dir, "virsh");
  await mkdir(shared, { mode: 0o755 });
  const qsd = await Qsd.start({ dir: shared, format: "raw", sizeMiB: 64, worldConnectable: true });
  cleanups.push(() => qsd.stop());
  const serialLog = join(shared, "serial.log");
  await createGuestDomain(hosts.uri1, { name: "bench-virsh", images, nbd: { socket: qsd.socket, exportName: qsd.exportName }, serialLog, blocks: 1024, memMiB: MEM_MIB, delayUs: WRITE_DELAY_US });
  await waitForSerial(serialLog, (r) => (r.last?.lastAck ?? 0) >= 20, "ACK 20 (virsh guest)", 120_000);
  let from = hosts.uri1;
  let to = hosts.uri2;
  return async (): Promise<Sample> => {
    const r = await migrate(from, "bench-virsh", to);
    [from, to] = [to, from];
    return { totalMs: r.wallMs, downtimeMs: r.job.downtimeMs ?? NaN };
  };
}

/** Plain QMP between two QEMU processes sharing a QSD export; each call migrates once with that max-bandwidth. */
async function qmpSetup(images: GuestImages, dir: string) {
  const shared = join(dir, "qmp");
  const qsd = await Qsd.start({ dir: shared, format: "raw", sizeMiB: 64 });
  cleanups.push(() => qsd.stop());
  const disk = { nbdSocket: qsd.socket, exportName: qsd.exportName };
  const serialLog = join(shared, "serial.log");
  let src = await QemuGuest.start({ images, dir: shared, name: "q0", disk, serialLog, blocks: 1024, memMiB: MEM_MIB, delayUs: WRITE_DELAY_US });
  cleanups.push(() => src.stop());
  await src.waitForAck(20, 120_000);
  let n = 1;
  return async (maxBandwidth: number): Promise<Sample> => {
    const port = await freePort();
    const t0 = Date.now();
    const dst = await QemuGuest.start({ images, dir: shared, name: `q${n++}`, disk, serialLog, blocks: 1024, memMiB: MEM_MIB, delayUs: WRITE_DELAY_US, incoming: `tcp:127.0.0.1:${port}` });
    cleanups.push(() => dst.stop());
    const r = await migrateQmp(src, dst, `tcp:127.0.0.1:${port}`, 60_000, { "max-bandwidth": maxBandwidth });
    const totalMs = Date.now() - t0;
    await src.stop();
    src = dst;
    return { totalMs, downtimeMs: r.downtimeMs ?? NaN };
  };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "stowage-bench-mig-"));
  await chmod(dir, 0o755);
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const images = await buildGuest();
  progress("starting two libvirt hosts");
  const hosts = await startTwoHosts({ baseDir: join(dir, "hosts") });
  cleanups.push(() => hosts.stop());
  progress("booting three guests");
  const qmp = await qmpSetup(images, dir);
  const kinds = {
    stowage: await stowageSetup(images, hosts, dir),
    virsh: await virshSetup(images, hosts, dir),
    qmp: () => qmp(LIBVIRT_BANDWIDTH),
    qmpDefault: () => qmp(QEMU_DEFAULT_BANDWIDTH),
  };
  const samples: Record<keyof typeof kinds, Sample[]> = { stowage: [], virsh: [], qmp: [], qmpDefault: [] };
  const load0 = loadavg()[0]!;
  for (let i = 0; i < opts.rounds; i++) {
    for (const k of Object.keys(kinds) as (keyof typeof kinds)[]) {
      const s = await kinds[k]();
      samples[k].push(s);
      progress(`round ${i + 1}/${opts.rounds} ${k}: total ${s.totalMs} ms, downtime ${s.downtimeMs} ms`);
      await sleep(500);
    }
  }
  const load1 = loadavg()[0]!;
  const fig = (k: keyof typeof kinds) => ({ totalMs: median(samples[k].map((s) => s.totalMs)), downtimeMs: median(samples[k].map((s) => s.downtimeMs)) });
  const phase = (k: "preparedMs" | "migratedMs" | "settledMs") => median(samples.stowage.map((s) => s.phases?.[k] ?? NaN));
  const phases = { preparedMs: phase("preparedMs"), migratedMs: phase("migratedMs"), settledMs: phase("settledMs") };
  const result = {
    rounds: opts.rounds,
    stowagePhases: phases,
    memMiB: MEM_MIB,
    stowage: fig("stowage"),
    virsh: fig("virsh"),
    qmp: fig("qmp"),
    qmpDefault: fig("qmpDefault"),
    ratioStowageQmp: fig("stowage").totalMs / fig("qmp").totalMs,
    ratioStowageQmpDefault: fig("stowage").totalMs / fig("qmpDefault").totalMs,
    ratioStowageVirsh: fig("stowage").totalMs / fig("virsh").totalMs,
    ratioVirshQmp: fig("virsh").totalMs / fig("qmp").totalMs,
    load: [load0, load1],
  };
  const row = (name: string, f: { totalMs: number; downtimeMs: number }) => `  ${name.padEnd(44)} ${String(Math.round(f.totalMs)).padStart(6)} ms   ${String(Math.round(f.downtimeMs)).padStart(4)} ms`;
  process.stdout.write(
    [
      `Live migration, TCG guest with ${MEM_MIB} MiB RAM writing a 4 KiB record every ${WRITE_DELAY_US / 1000} ms (median of ${opts.rounds} per kind, alternating)`,
      `  ${"".padEnd(44)} ${"total".padStart(9)}   downtime`,
      row("stowctl vm migrate (Stowage API)", result.stowage),
      row("virsh migrate --live (same hosts)", result.virsh),
      row("plain QMP migrate (+ dest spawn)", result.qmp),
      row("plain QMP, QEMU's default 128 MiB/s limit", result.qmpDefault),
      `  Stowage phases (controller clock, from the call): destination frontends up ${phases.preparedMs} ms, ` +
        `libvirt done ${phases.migratedMs} ms, recorded ${phases.settledMs} ms`,
      `  stowage / qmp   = ${result.ratioStowageQmp.toFixed(2)} (target <= 1.2; same bandwidth as libvirt)`,
      `  stowage / qmp with QEMU's default bandwidth = ${result.ratioStowageQmpDefault.toFixed(2)}`,
      `  stowage / virsh = ${result.ratioStowageVirsh.toFixed(2)}`,
      `  virsh / qmp     = ${result.ratioVirshQmp.toFixed(2)}`,
      `  load average ${load0.toFixed(2)} -> ${load1.toFixed(2)}`,
      "",
    ].join("\n"),
  );
  if (opts.json) process.stdout.write(JSON.stringify(result) + "\n");
}

main()
  .catch((err) => {
    process.stderr.write(`migration benchmark failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
