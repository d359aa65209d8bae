// Templates and linked clones against a real cluster (etcd, two controllers,
// three agents with their storage daemons, qemu-img): a template made from a
// detached volume, two linked clones with 2 replicas on 3 nodes (so the
// template is copied to a node that lacked it), every replica a qcow2 image over
// the template copy on its node, the template's data read and new data written
// through a frontend, snapshots, full clones, export and a rebuilt replica of a
// linked clone; deletion refused while clones exist; unused copies swept; a
// leader killed mid-creation leaves nothing; bad requests change nothing.
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";
import { getVolume, waitSettled } from "../harness/replica-helpers.js";

const IPS: Record<string, string> = { l1: "127.0.0.151", l2: "127.0.0.152", l3: "127.0.0.153" };
const MiB = 1024 * 1024;
let c: TestCluster;
let dir: string;

const qemuImg = (args: string[]) => execa("qemu-img", args, { reject: false });
const qemuIo = (uri: string, cmds: string[]) => execa("qemu-io", ["-f", "raw", ...cmds.flatMap((x) => ["-c", x]), uri], { reject: false });

interface ApiTemplate {
  name: string;
  sizeBytes: number;
  state: string;
  copies: { node: string; path: string; state: string; allocatedBytes: number; home: boolean }[];
  clones: string[];
}

async function stowctlJson<T>(args: string[]): Promise<T> {
  const r = await c.stowctl([...args, "-o", "json"]);
  expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout) as T;
}

const getTemplate = async (name: string) => (await stowctlJson<{ template: ApiTemplate }>(["template", "get", name])).template;

/** Template image files (any template) in each node's pool. */
function templateFiles(): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const n of Object.keys(IPS)) {
    const d = join(c.poolDir(n), "templates");
    out[n] = existsSync(d) ? readdirSync(d).sort() : [];
  }
  return out;
}

/** Bytes the image occupies on disk now (st_blocks; the volume's status is only refreshed when re-applied). */
const onDisk = (path: string) => statSync(path).blocks * 512;

async function backingOf(path: string): Promise<string | undefined> {
  const info = JSON.parse((await execa("qemu-img", ["info", "-U", "--output=json", path])).stdout) as { "backing-filename"?: string };
  return info["backing-filename"];
}

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1", { faults: ["create-template:copied@crash1"] });
  await c.startController("c2");
  for (const n of Object.keys(IPS)) await c.startAgent(n, IPS[n]!);
  await c.waitNodesOnline(3);
  dir = mkdtempSync(join(tmpdir(), "stowage-template-"));
  // The base volume: data at 0 (4 MiB) and 32 MiB (1 MiB), holes elsewhere.
  expect((await c.stowctl(["volume", "create", "base", "--size", "64MiB", "--replicas", "1"])).code).toBe(0);
  const node = (await getVolume(c, "base")).replicas[0]!.node;
  const att = await stowctlJson<{ attachment: { nbdUri: string } }>(["volume", "attach", "base", "--node", node]);
  const io = await qemuIo(att.attachment.nbdUri, ["write -P 0x5a 0 4M", "write -P 0x3c 32M 1M", "flush"]);
  expect(io.exitCode, io.stderr).toBe(0);
  expect((await c.stowctl(["volume", "detach", "base", "--node", node])).code).toBe(0);
});

afterAll(async () => {
  await c?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("templates and linked clones", () => {
  it("makes linked clones over per-node template copies, serves them through frontends, and cleans up", async () => {
    const made = await stowctlJson<{ template: ApiTemplate; created: boolean }>(["template", "create", "gold", "--from", "base"]);
    expect(made.created).toBe(true);
    const home = made.template.copies[0]!;
    expect(made.template.sizeBytes).toBe(64 * MiB);
    expect(home.path).toMatch(/\/templates\/gold\.[0-9a-f-]{36}\.qcow2$/);
    expect(statSync(home.path).mode & 0o777).toBe(0o444);
    // The template image is no replica: the base volume still has its one replica, nothing else is listed.
    expect((await getVolume(c, "base")).replicas).toHaveLength(1);
    const baseRaw = join(dir, "base.raw");
    expect((await qemuImg(["convert", "-U", "-f", "qcow2", "-O", "raw", (await getVolume(c, "base")).replicas[0]!.path, baseRaw])).exitCode).toBe(0);
    expect((await qemuImg(["compare", "-U", "-f", "qcow2", "-F", "raw", home.path, baseRaw])).exitCode).toBe(0);
    // The export lease is gone: the base volume attaches again.
    await eventually(async () => !JSON.stringify((await c.dumpState())["/stowage/v1/volumes/spec/base"]).includes("exporting"), 10_000, "lease cleared");

    // Two linked clones with 2 replicas on 3 nodes: the home node first, so another node needs a copy.
    expect((await c.stowctl(["volume", "create", "lc1", "--template", "gold", "--replicas", "2"])).code).toBe(0);
    const lc2Res = await c.stowctl(["volume", "create", "lc2", "--template", "gold", "--replicas", "2", "--size", "96MiB"]);
    expect(lc2Res.code, lc2Res.stderr).toBe(0);
    const t = await getTemplate("gold");
    expect(t.clones).toEqual(["lc1", "lc2"]);
    expect(t.copies.length).toBeGreaterThanOrEqual(2);
    const copyOn = new Map(t.copies.map((x) => [x.node, x.path]));
    const lc1 = await getVolume(c, "lc1");
    const lc2 = await getVolume(c, "lc2");
    expect(lc1.spec!.template).toBe("gold");
    expect(lc1.spec!.sizeBytes).toBe(64 * MiB);
    for (const v of [lc1, lc2]) {
      expect(v.replicas.map((r) => r.node)).toContain(home.node);
      for (const r of v.replicas) expect(await backingOf(r.path), `${v.spec!.name} on ${r.node}`).toBe(copyOn.get(r.node));
    }
    expect((await c.stowctl(["volume", "get", "lc1"])).stdout).toMatch(/Template:\s+gold/);
    const linkedBytes = Math.max(...lc1.replicas.map((r) => onDisk(r.path)));

    // Through a frontend: the template's data is there, new writes land in the clone only.
    const node = lc1.replicas[0]!.node;
    const att = await stowctlJson<{ attachment: { nbdUri: string } }>(["volume", "attach", "lc1", "--node", node]);
    const io = await qemuIo(att.attachment.nbdUri, ["read -P 0x5a 0 4M", "read -P 0x3c 32M 1M", "read -P 0 8M 1M", "write -P 0x77 8M 1M", "write -P 0x11 1M 64k", "flush"]);
    expect(io.exitCode, io.stdout + io.stderr).toBe(0);
    expect(io.stdout).not.toMatch(/Pattern verification failed/);
    expect((await c.stowctl(["volume", "detach", "lc1", "--node", node])).code).toBe(0);
    const [a, b] = (await getVolume(c, "lc1")).replicas;
    const cmp = await qemuImg(["compare", "-U", "-f", "qcow2", "-F", "qcow2", a!.path, b!.path]);
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    // The template is untouched, and so is the other clone.
    expect((await qemuImg(["compare", "-U", "-f", "qcow2", "-F", "raw", home.path, baseRaw])).exitCode).toBe(0);
    const lc1Raw = join(dir, "lc1.raw");
    expect((await qemuImg(["convert", "-U", "-f", "qcow2", "-O", "raw", a!.path, lc1Raw])).exitCode).toBe(0);

    // Snapshot of a linked clone, a full clone of it, and an export: all read through the template.
    expect((await c.stowctl(["snapshot", "create", "lc1@s1"])).code).toBe(0);
    const full = await c.stowctl(["volume", "clone", "lc1@s1", "full1", "--replicas", "1"]);
    expect(full.code, full.stderr).toBe(0);
    const full1 = await getVolume(c, "full1");
    expect(await backingOf(full1.replicas[0]!.path)).toBeUndefined();
    expect((await qemuImg(["compare", "-U", "-f", "qcow2", "-F", "raw", full1.replicas[0]!.path, lc1Raw])).exitCode).toBe(0);
    const exported = join(dir, "lc1.qcow2");
    expect((await c.stowctl(["volume", "export", "lc1", exported])).code).toBe(0);
    expect((await qemuImg(["compare", "-f", "qcow2", "-F", "raw", exported, lc1Raw])).exitCode).toBe(0);
    const fullBytes = onDisk(full1.replicas[0]!.path);
    console.log(`space right after creation: linked clone replica ${linkedBytes} B, full clone replica ${fullBytes} B, template copy ${home.allocatedBytes} B`);
    expect(linkedBytes).toBeLessThan(fullBytes / 4);
    // The template copy counts in its pool's figures apart from the replicas (agents report every heartbeat).
    const templateBytes = async () => {
      const r = await c.stowctl(["pool", "get", `${home.node}/default`, "-o", "json"]);
      return Number(JSON.parse(r.stdout).pool.templateBytes ?? 0);
    };
    await eventually(async () => (await templateBytes()) >= home.allocatedBytes, 20_000, "the template copy in its pool's figures");
    expect(await templateBytes()).toBeLessThan(home.allocatedBytes * 2);

    // A third replica of lc2 while it is attached, on the node that may lack a copy: the template is
    // copied there first, the replica made over it, then its agent copies only what an in-sync
    // replica holds over the template (the frontend tracking writes meanwhile): it stays thin.
    const lc2Node = lc2.replicas[0]!.node;
    const att2 = await stowctlJson<{ attachment: { nbdUri: string } }>(["volume", "attach", "lc2", "--node", lc2Node]);
    expect((await qemuIo(att2.attachment.nbdUri, ["write -P 0x42 70M 1M", "flush"])).exitCode).toBe(0);
    expect((await c.stowctl(["volume", "set", "lc2", "--replicas", "3"])).code).toBe(0);
    const lc2b = await waitSettled(c, "lc2", 3, 60_000);
    const io2 = await qemuIo(att2.attachment.nbdUri, ["read -P 0x5a 0 4M", "read -P 0x42 70M 1M"]);
    expect(io2.stdout, io2.stderr).not.toMatch(/Pattern verification failed/);
    expect((await c.stowctl(["volume", "detach", "lc2", "--node", lc2Node])).code).toBe(0);
    const copies3 = new Map((await getTemplate("gold")).copies.map((x) => [x.node, x.path]));
    expect(copies3.size).toBe(3);
    for (const r of lc2b.replicas) expect(await backingOf(r.path)).toBe(copies3.get(r.node));
    const rebuilt = lc2b.replicas.find((r) => !lc2.replicas.some((x) => x.id === r.id))!;
    console.log(`rebuilt linked-clone replica: ${onDisk(rebuilt.path)} B allocated (the first replicas: ${lc2.replicas.map((r) => onDisk(r.path)).join(", ")} B)`);
    expect(onDisk(rebuilt.path)).toBeLessThan(home.allocatedBytes);
    const cmp3 = await qemuImg(["compare", "-U", "-f", "qcow2", "-F", "qcow2", rebuilt.path, lc2b.replicas.find((r) => r.id !== rebuilt.id)!.path]);
    expect(cmp3.exitCode, cmp3.stdout + cmp3.stderr).toBe(0);

    // Refused while clones exist, naming them; nothing changes.
    const refused = await c.stowctl(["template", "delete", "gold"]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/template gold has 2 linked clones: lc1, lc2/);
    expect((await getTemplate("gold")).state).toBe("ready");

    // Clones gone: the copies nothing uses go (the home copy stays), then the template with it.
    for (const v of ["lc1", "lc2", "full1"]) expect((await c.stowctl(["volume", "delete", v])).code).toBe(0);
    await eventually(async () => (await getTemplate("gold")).copies.length === 1, 30_000, "unused copies swept");
    expect((await getTemplate("gold")).copies[0]!.node).toBe(home.node);
    const left = templateFiles();
    for (const n of Object.keys(IPS)) expect(left[n]!.filter((f) => f.startsWith("gold.")), n).toEqual(n === home.node ? [home.path.split("/").pop()] : []);
    const del = await c.stowctl(["template", "delete", "gold"]);
    expect(del.code, del.stderr).toBe(0);
    expect((await c.dumpState())["/stowage/v1/templates/gold"]).toBeUndefined();
    for (const files of Object.values(templateFiles())) expect(files.filter((f) => f.startsWith("gold."))).toEqual([]);
  }, 300_000);

  it("a template made from a snapshot; a leader killed after making the image leaves nothing behind", async () => {
    expect((await c.stowctl(["snapshot", "create", "base@v1"])).code).toBe(0);
    const fromSnap = await stowctlJson<{ template: ApiTemplate }>(["template", "create", "snapgold", "--from", "base@v1"]);
    expect((await qemuImg(["compare", "-U", "-f", "qcow2", "-F", "raw", fromSnap.template.copies[0]!.path, join(dir, "base.raw")])).exitCode).toBe(0);

    expect((await c.leaderApi()).address).toBe(c.addressOf("c1"));
    const first = await c.stowctl(["template", "create", "crash1", "--from", "base"]);
    expect(first.code).not.toBe(0);
    await eventually(async () => !c.controllers.get("c1")!.running, 5_000, "c1 dead at its fault point");
    // The next leader undoes it: no record, no image on any node.
    await eventually(async () => (await c.dumpState())["/stowage/v1/templates/crash1"] === undefined, 30_000, "the half-made template undone");
    for (const files of Object.values(templateFiles())) expect(files.filter((f) => f.includes("crash1"))).toEqual([]);
    // And the same name can be made again.
    const again = await stowctlJson<{ template: ApiTemplate; created: boolean }>(["template", "create", "crash1", "--from", "base"]);
    expect(again.created).toBe(true);
    expect(existsSync(again.template.copies[0]!.path)).toBe(true);
  }, 180_000);

  it("refuses bad requests clearly and changes nothing", async () => {
    expect((await c.stowctl(["volume", "create", "busy", "--size", "16MiB", "--replicas", "1"])).code).toBe(0);
    const busyNode = (await getVolume(c, "busy")).replicas[0]!.node;
    expect((await c.stowctl(["volume", "attach", "busy", "--node", busyNode])).code).toBe(0);
    const state = async () => Object.entries(await c.dumpState()).filter(([k]) => /\/(templates|volumes\/spec)\//.test(k)).map(([k, v]) => k + v.replace(/"(updatedAtMs|sinceMs|lastHeartbeatMs)":\d+/g, ""));
    const before = await state();
    const files = templateFiles();
    const cases: [string[], RegExp][] = [
      [["template", "create", "../x", "--from", "base"], /invalid template name/],
      [["template", "create", "t1"], /exactly one of --from/],
      [["template", "create", "t1", "--from", "base", "--from-file", "x.qcow2"], /exactly one of --from/],
      [["template", "create", "t1", "--from", "nosuch"], /volume "?nosuch"? not found/],
      [["template", "create", "t1", "--from", "base@nosuch"], /snapshot "?base@nosuch"? not found/],
      [["template", "create", "t1", "--from", "busy"], /attached.*snapshot it/s],
      [["template", "create", "t1", "--from-file", join(dir, "nosuch.qcow2")], /no such file/],
      [["volume", "create", "v1", "--template", "nosuch"], /template "?nosuch"? not found/],
      [["volume", "create", "v1", "--template", "../x"], /invalid template name/],
      [["volume", "create", "v1", "--template", "crash1", "--size", "16MiB"], /smaller than template crash1/],
      [["volume", "create", "v1", "--template", "crash1", "--format", "raw"], /linked clone is a qcow2 volume/],
      [["volume", "create", "v1", "--template", "crash1", "--preallocation", "falloc"], /cannot be preallocated/],
      [["template", "get", "nosuch"], /not found/],
    ];
    for (const [args, re] of cases) {
      const r = await c.stowctl(args);
      expect(r.code, args.join(" ")).not.toBe(0);
      expect(r.stderr, args.join(" ")).toMatch(re);
      expect(r.stderr, args.join(" ")).not.toMatch(/\n\s+at /);
    }
    expect(await state()).toEqual(before);
    expect(templateFiles()).toEqual(files);
    expect((await c.stowctl(["template", "delete", "nosuch"])).stdout).toMatch(/did not exist/);
    expect((await c.stowctl(["volume", "detach", "busy", "--node", busyNode])).code).toBe(0);
  }, 120_000);
});
