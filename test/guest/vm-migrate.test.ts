// End-to-end through stowctl: a writing guest under libvirt gets its Stowage
// disk with `stowctl vm attach`, is live-migrated node1 -> node2 (with the
// controller killed mid-migration; the standby finishes it) -> node1 with
// `stowctl vm migrate`, and a migration to a node whose libvirtd is down fails
// cleanly; the host of the other replica is killed and comes back (the replica
// is resynced while the guest writes). Afterwards every acknowledged write is on
// both replicas, the guest never rebooted, and no frontend is left behind.
//
// Each test "host" is a libvirtd in its own mount namespace (test/guest/libvirt-hosts.ts);
// the node agent runs in the same namespace, so /run/stowage/volumes/VOL.sock is
// the same path on both hosts, yet two different sockets, as on real machines.
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { buildGuest, countBoots, parseSerial, verifyDisk, type GuestImages } from "./guest.js";
import { HOST_FRONTEND_DIR, hostAgentOptions, startTwoHosts, virsh, type TwoHosts } from "./libvirt-hosts.js";
import { createGuestDomain, runningDomains } from "./libvirt-guest.js";
import { waitForSerial } from "./qemu-guest.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually, sleep } from "../harness/processes.js";
import { MigrationPhase } from "../../gen/stowage/v1/types.js";

const BLOCKS = 256;
const FRONTEND_DIR = HOST_FRONTEND_DIR;
let images: GuestImages;
let dir: string;
let hosts: TwoHosts | undefined;
let cluster: TestCluster | undefined;
let failed = false;

/** An agent in the libvirt host's mount namespace, driving that host's libvirtd. */
const agentOptions = hostAgentOptions;

beforeAll(async () => {
  images = await buildGuest();
  dir = await mkdtemp(join(tmpdir(), "stowage-vm-"));
  await chmod(dir, 0o755); // libvirt-qemu must reach the serial log
  hosts = await startTwoHosts({ baseDir: join(dir, "hosts") });
  cluster = await TestCluster.create();
  await cluster.startController("c1", { faults: ["migrate:prepared"] });
  await cluster.startController("c2");
  const [h1, h2] = hosts.hosts;
  for (const [name, ip, h] of [["node1", "127.0.0.71", h1], ["node2", "127.0.0.72", h2]] as const) {
    await cluster.startAgent(name, ip, agentOptions(h));
  }
  await cluster.waitNodesOnline(2);
}, 180_000);

afterAll(async () => {
  // On a failure, the guest's console and the controllers' last words say why.
  const log = dir ? await readFile(join(dir, "serial.log"), "utf8").catch(() => "") : "";
  if (failed) {
    console.log(`[vm-migrate] guest console (tail):\n${log.slice(-3000)}`);
    for (const [name, p] of cluster?.controllers ?? []) console.log(`[vm-migrate] ${name} (tail):\n${p.output.slice(-3000)}`);
  }
  await hosts?.stop();
  await cluster?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

afterEach((ctx) => {
  if (ctx.task.result?.state === "fail") failed = true;
});

describe("stowctl vm attach / migrate with a writing guest", () => {
  it("keeps every acknowledged write across node1 -> node2 -> node1 and a failed migration", async () => {
    const c = cluster!;
    const [h1, h2] = hosts!.hosts;
    const ok = async (args: string[]) => {
      const r = await c.stowctl(args);
      if (r.code !== 0) throw new Error(`stowctl ${args.join(" ")} exited ${r.code}:\n${r.stderr}${r.stdout}`);
      return r;
    };
    const json = async (args: string[]) => JSON.parse((await ok([...args, "-o", "json"])).stdout);
    const vol = "g1";
    const name = `stowage-vm-${randomBytes(3).toString("hex")}`;
    const serialLog = join(dir, "serial.log");
    const serial = (pred: Parameters<typeof waitForSerial>[1], what: string, ms = 60_000) => waitForSerial(serialLog, pred, what, ms);
    const acked = async () => (await serial(() => true, "log")).last?.lastAck ?? 0;
    const moreAcks = async (n: number, where: string) => {
      const from = await acked();
      await serial((r) => (r.last?.lastAck ?? 0) >= from + n, `${n} ACKs ${where} (after ${from})`, 60_000);
    };
    const frontendsOn = async (node: string) => {
      const v = await json(["volume", "get", vol]);
      return (v.volume.attachments as { node: string }[]).filter((a) => a.node === node).length;
    };

    await ok(["volume", "create", vol, "--size", "64MiB", "--replicas", "2"]);
    // The guest boots without a disk; its writer waits for /dev/vda, which `vm attach` hot-plugs.
    await createGuestDomain(h1.uri, { name, images, serialLog, blocks: BLOCKS });
    const attached = await json(["vm", "attach", name, vol]);
    expect(attached.target).toBe("vda");
    expect(attached.vm.node).toBe("node1");
    expect(attached.vm.disks).toEqual([{ target: "vda", volume: vol, source: `${FRONTEND_DIR}/${vol}.sock (${vol})` }]);
    const booted = await serial((r) => !!r.last, "BOOT", 60_000);
    await moreAcks(30, "on node1");

    // A domain whose disk is a plain file is refused, and nothing is recorded.
    const other = `stowage-file-${randomBytes(3).toString("hex")}`;
    const img = join(dir, "plain.raw");
    await writeFile(img, Buffer.alloc(1 << 20));
    await chmod(img, 0o666);
    const xml = join(dir, "plain.xml");
    await writeFile(
      xml,
      `<domain type='qemu'><name>${other}</name><memory unit='MiB'>64</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>` +
        `<devices><disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${img}'/><target dev='vda' bus='virtio'/></disk>` +
        `<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>`,
    );
    await virsh(h1.uri, ["create", xml, "--paused"]);
    const refused = await c.stowctl(["vm", "migrate", other, "--to", "node2"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(new RegExp(`disk vda of domain ${other} is not a Stowage volume \\(file/? ?${img.replace(/[.]/g, "\\.")}`));
    expect(await c.stowctl(["vm", "migration", other])).toMatchObject({ code: 1 });
    await virsh(h1.uri, ["destroy", other]);

    // node1 -> node2; the leader (c1) dies right after the destination frontends start; c2 finishes.
    const there = await c.stowctl(["vm", "migrate", name, "--to", "node2", "--wait-timeout", "120"]);
    expect(there.code, there.stderr).toBe(0);
    expect(c.controllers.get("c1")!.running).toBe(false);
    expect(there.stderr).toMatch(/preparing/); // progress lines
    expect(await runningDomains(h2.uri)).toContain(name);
    // The migration counts as done once the guest runs on node2; libvirt stops node1's paused copy right after.
    await eventually(async () => !(await runningDomains(h1.uri)).includes(name), 10_000, "the source copy gone from node1");
    await eventually(async () => (await frontendsOn("node1")) === 0, 30_000, "node1 frontend stopped");
    await moreAcks(30, "on node2");

    // node2 -> node1, with progress and the result as JSON.
    const back = await json(["vm", "migrate", name, "--to", "node1"]);
    expect(back.migration).toMatchObject({ domain: name, fromNode: "node2", toNode: "node1", phase: "succeeded", volumes: [vol] });
    expect(back.migration.downtimeMs).toBeGreaterThan(0);
    expect(await runningDomains(h1.uri)).toContain(name);
    await eventually(async () => (await frontendsOn("node2")) === 0, 30_000, "node2 frontend stopped");
    await moreAcks(30, "back on node1");

    // node1 -> node2 with node1's agent SIGKILLed while libvirt migrates and started again:
    // libvirt's job carries on, the controller waits for it to end and finishes the migration.
    const api = await c.leaderApi();
    const killed = c.stowctl(["vm", "migrate", name, "--to", "node2", "--wait-timeout", "120"]);
    await eventually(
      async () => (await api.vms.getMigration({ domain: name }).catch(() => undefined))?.migration?.toNode === "node2" &&
        (await api.vms.getMigration({ domain: name })).migration!.phase === MigrationPhase.MIGRATION_PHASE_MIGRATING,
      30_000,
      "phase migrating",
    );
    await sleep(400);
    await c.agents.get("node1")!.kill("SIGKILL");
    await c.startAgent("node1", "127.0.0.71", agentOptions(h1));
    const afterKill = await killed;
    expect(afterKill.code, afterKill.stderr).toBe(0);
    expect(await runningDomains(h2.uri)).toContain(name);
    await moreAcks(30, "on node2 after the agent restart");
    await ok(["vm", "migrate", name, "--to", "node1"]);
    await moreAcks(30, "on node1 again");

    // A second volume hot-plugged and unplugged while the guest writes to the first.
    await ok(["volume", "create", "g2", "--size", "16MiB", "--replicas", "1"]);
    // A taken device name is refused, and the volume is not left attached.
    const taken = await c.stowctl(["vm", "attach", name, "g2", "--target", "vda"]);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/already has a disk vda/);
    await eventually(async () => (await json(["volume", "get", "g2"])).volume.attachments.length === 0, 30_000, "g2 detached again");
    const plug = await json(["vm", "attach", name, "g2", "--node", "node1"]);
    expect(plug.target).toBe("vdb");
    expect((await json(["vm", "get", name])).vm.disks.map((d: { volume: string }) => d.volume)).toEqual([vol, "g2"]);
    await ok(["vm", "detach", name, "g2"]);
    expect((await json(["vm", "get", name])).vm.disks.map((d: { volume: string }) => d.volume)).toEqual([vol]);
    expect((await json(["volume", "get", "g2"])).volume.attachments).toEqual([]);
    await ok(["volume", "delete", "g2"]);
    // node2 (holding the volume's other replica) dies while the guest writes on node1: its storage
    // daemon and agent are SIGKILLed. Writes go on (the replica is recorded out of sync first);
    // node2 comes back and only what it missed is copied to it, with the guest still writing.
    const node2Dir = c.agentDirs.get("node2")!;
    const qsdPid = Number((await readFile(join(node2Dir, "qsd", "qsd.pid"), "utf8")).trim());
    await c.agents.get("node2")!.kill("SIGKILL");
    process.kill(qsdPid, "SIGKILL");
    await moreAcks(30, "on node1 with node2 dead");
    const degraded = await json(["volume", "get", vol]);
    expect(degraded.volume.phase).toBe("degraded");
    await c.startAgent("node2", "127.0.0.72", agentOptions(h2));
    const healed = await eventually(async () => {
      const v = (await json(["volume", "get", vol])).volume;
      return v.phase === "healthy" && v.replicas.every((r: { outOfSync: boolean }) => !r.outOfSync) ? v : undefined;
    }, 60_000, "resynced after node2 came back");
    const resynced = JSON.parse((await c.client.get(`/stowage/v1/volumes/spec/${vol}`).string())!).placement.find((p: { node: string }) => p.node === "node2").lastResync;
    expect(resynced.kind).toBe("incremental");
    expect(resynced.bytes).toBeLessThan(16 * 1024 * 1024);
    expect(healed.generation).toBeGreaterThan(degraded.volume.generation);
    await moreAcks(30, "on node1 after the resync");

    // Bad input changes nothing.
    const bad = async (args: string[], code: number, message: RegExp) => {
      const r = await c.stowctl(args);
      expect(r.code, args.join(" ")).toBe(code);
      expect(r.stderr, args.join(" ")).toMatch(message);
      expect(r.stderr).not.toMatch(/\bat .*\.js:\d+/); // no stack trace
    };
    const before = await c.dumpState();
    await bad(["vm", "migrate", "no-such-vm", "--to", "node2"], 1, /domain "no-such-vm" not found/);
    await bad(["vm", "migrate", name, "--to", "node9"], 1, /node "node9" not found/);
    await bad(["vm", "migrate", name, "--to", "node1"], 1, /already runs on node1/);
    await bad(["vm", "migrate", "../etc", "--to", "node2"], 1, /invalid domain name/);
    await bad(["vm", "attach", name, "nope"], 1, /volume "nope" not found/);
    await bad(["vm", "migrate", name], 2, /--to/);
    expect(await c.dumpState()).toEqual(before);

    // node2's libvirtd is down: the migration fails, the guest keeps writing on node1, node2's frontend goes away.
    await h2.proc.kill("SIGKILL");
    const failed = await c.stowctl(["vm", "migrate", name, "--to", "node2", "--wait-timeout", "120"]);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/migration of .* to node2 failed: .*the domain keeps running on node1/);
    const m = await json(["vm", "migration", name]);
    expect(m.migration.phase).toBe("failed");
    expect(await runningDomains(h1.uri)).toContain(name);
    await eventually(async () => (await frontendsOn("node2")) === 0, 30_000, "node2 frontend stopped after the failure");
    const inv = await eventually(async () => {
      const r = await c.stowctl(["volume", "get", vol, "-o", "json"]);
      const v = JSON.parse(r.stdout).volume;
      return v.attachments.length === 1 ? v : undefined;
    }, 30_000, "one attachment");
    expect(inv.attachments[0].node).toBe("node1");
    await moreAcks(30, "on node1 after the failed migration");

    // Pull the plug, then check the disk: every replica holds every acknowledged write.
    await virsh(h1.uri, ["destroy", name]);
    const log = await readFile(serialLog, "utf8");
    const report = parseSerial(log);
    expect(countBoots(log), `the guest rebooted; console:\n${log.slice(-4000)}`).toBe(1);
    expect(report.last!.id).toBe(booted.last!.id);
    expect(report.failures).toEqual([]);
    expect(report.last!.writeErrors).toEqual([]);
    expect(report.last!.ackGaps).toEqual([]);
    const v = await json(["volume", "get", vol]);
    expect(v.volume.replicas).toHaveLength(2);
    for (const r of v.volume.replicas as { path: string; node: string }[]) {
      const check = await verifyDisk(r.path, report.last!);
      expect(check.errors, `replica on ${r.node}`).toEqual([]);
      expect(check.ok).toBe(true);
    }
    console.log(
      `[vm-migrate] ${report.last!.lastAck} acked writes verified on 2 replicas; node2 died and was resynced ` +
        `(${resynced.bytes} bytes in ${resynced.ms} ms); ` +
        `node1->node2 (controller killed mid-way) and node2->node1 (downtime ${back.migration.downtimeMs} ms, ` +
        `${back.migration.finishedAtMs - back.migration.startedAtMs} ms total)`,
    );
  });
});
