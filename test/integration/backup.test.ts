// Backups into a node's chunk store and restores into new volumes, against a real
// cluster (etcd, controllers, agents, storage daemons, frontends, qemu-nbd,
// qemu-img): a backup of an attached volume under no downtime, a second backup
// that stores only what changed, restores equal byte for byte to what was
// written, retention, a leader killed mid-backup, and bad requests.
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NbdClient } from "../../lib/nbd/client.js";
import { parseNbdUri } from "../../lib/nbd-uri.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";
import { getVolume } from "../harness/replica-helpers.js";

/** The persistent bitmaps in a qcow2 image's file (written when its daemon closes it). */
const bitmapsIn = async (path: string): Promise<string[]> =>
  (JSON.parse((await execa("qemu-img", ["info", "-U", "-f", "qcow2", "--output=json", path])).stdout)["format-specific"].data.bitmaps ?? []).map((b: { name: string }) => b.name);

const IPS: Record<string, string> = { b1: "127.0.0.151", b2: "127.0.0.152", b3: "127.0.0.153" };
const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
let c: TestCluster;
let dir: string;

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1", { faults: ["create-backup:written@crash1"] });
  await c.startController("c2");
  for (const n of Object.keys(IPS)) await c.startAgent(n, IPS[n]!);
  await c.waitNodesOnline(3);
  dir = mkdtempSync(join(tmpdir(), "stowage-backup-"));
});

afterAll(async () => {
  await c?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Random-looking but reproducible bytes (compressible only so far: half repeat). */
function pattern(seed: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  let x = seed * 2654435761;
  for (let i = 0; i < length; i += 4) {
    x = (x * 1103515245 + 12345) >>> 0;
    b.writeUInt32LE(i % 8192 < 4096 ? x : seed, i);
  }
  return b;
}

async function backup(volume: string) {
  const r = await c.stowctl(["backup", "create", volume, "-o", "json"]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout).backup as { id: string; node: string; dataBytes: number; newBytes: number; storedBytes: number; state: string; kind: string; readBytes: number; message: string };
}

/**
 * Every replica of `volume` equals the raw file, but for [skipFrom, skipTo) when given
 * (writes racing the backup: before or after its instant, either is right).
 */
async function expectContent(volume: string, raw: string, skipFrom?: number, skipTo?: number): Promise<void> {
  const want = readFileSync(raw);
  for (const r of (await getVolume(c, volume)).replicas) {
    const out = join(dir, `${volume}-${r.node}.raw`);
    expect((await execa("qemu-img", ["convert", "-U", "-f", "qcow2", "-O", "raw", r.path, out], { reject: false })).exitCode).toBe(0);
    const got = readFileSync(out);
    if (skipFrom !== undefined) {
      want.fill(0, skipFrom, skipTo);
      got.fill(0, skipFrom, skipTo);
    }
    expect(got.equals(want), `${volume} on ${r.node} differs from ${raw}`).toBe(true);
    rmSync(out);
  }
}

describe("backups", () => {
  it("backs up an attached volume, stores only what changed the second time, and restores each exactly", async () => {
    expect((await c.stowctl(["volume", "create", "bk1", "--size", "64MiB", "--replicas", "2"])).code).toBe(0);
    const v = await getVolume(c, "bk1");
    const att = JSON.parse((await c.stowctl(["volume", "attach", "bk1", "--node", v.replicas[0]!.node, "-o", "json"])).stdout);
    const client = await NbdClient.connect({ ...parseNbdUri(att.nbdUri) });
    const image = Buffer.alloc(SIZE);
    const put = async (off: number, data: Buffer) => {
      await client.write(off, data);
      data.copy(image, off);
    };
    await put(0, pattern(1, 8 * MiB));
    await put(40 * MiB, pattern(2, 4 * MiB));
    await client.flush();
    writeFileSync(join(dir, "one.raw"), image);

    const one = await backup("bk1");
    expect(one.kind).toBe("full");
    // Kept on the node with no replica of the volume.
    expect(v.replicas.map((r) => r.node)).not.toContain(one.node);
    expect(one.dataBytes).toBeGreaterThanOrEqual(12 * MiB);
    expect(one.dataBytes).toBeLessThan(20 * MiB);
    expect(one.storedBytes).toBeLessThan(one.dataBytes);

    // 1 MiB changes: the second backup adds little to the store.
    await put(2 * MiB, pattern(3, MiB));
    await client.flush();
    writeFileSync(join(dir, "two.raw"), image);
    // Written while the backup is taken: not in it (the fleece keeps the instant), in the next one.
    let late = 0;
    const writer = (async () => {
      for (; late < 200; late++) await put(48 * MiB + (late % 16) * 65536, Buffer.alloc(65536, 0x70 + (late % 16)));
    })();
    const two = await backup("bk1");
    expect(two.node).toBe(one.node);
    // Incremental: only the changed regions (the 1 MiB, plus writes racing the instant) were read.
    expect(two.kind).toBe("incremental");
    expect(two.readBytes).toBeLessThan(3 * MiB);
    expect(two.newBytes).toBeLessThan(3 * MiB);
    await writer;
    await client.flush();
    writeFileSync(join(dir, "three.raw"), image);
    client.destroy();

    // Detached now: the next backup reads the writes made during the last one, and only those.
    expect((await c.stowctl(["volume", "detach", "bk1", "--node", v.replicas[0]!.node])).code).toBe(0);
    const three = await backup("bk1");
    expect(three.kind).toBe("incremental");
    expect(three.readBytes).toBeLessThan(3 * MiB);
    // No fleece is left behind, and only the last backup's bitmap.
    for (const r of v.replicas) {
      expect(readdirSync(c.poolDir(r.node)).filter((f) => f.startsWith("fleece-"))).toEqual([]);
      // In the file once the daemon closed the image (the volume is detached: soon after the backup).
      await eventually(async () => JSON.stringify(await bitmapsIn(r.path)) === JSON.stringify([`stow-bk-${three.id}`]), 15_000, `${r.node}: only the last backup's bitmap`);
    }

    const listed = await c.stowctl(["backup", "list", "bk1"]);
    expect(listed.stdout).toMatch(new RegExp(`bk1@${one.id}\\s+ready`));
    const r1 = await c.stowctl(["backup", "restore", `bk1@${one.id}`, "--to", "bk1-one"]);
    expect(r1.code, r1.stderr).toBe(0);
    await expectContent("bk1-one", join(dir, "one.raw"));
    const r2 = await c.stowctl(["backup", "restore", `bk1@${two.id}`, "--to", "bk1-two", "--replicas", "3"]);
    expect(r2.code, r2.stderr).toBe(0);
    await expectContent("bk1-two", join(dir, "two.raw"), 48 * MiB, 49 * MiB);
    const r3 = await c.stowctl(["backup", "restore", `bk1@${three.id}`, "--to", "bk1-three"]);
    expect(r3.code, r3.stderr).toBe(0);
    await expectContent("bk1-three", join(dir, "three.raw"));

    // Retention: keep the newest; the other goes, the kept one still restores.
    const pruned = await c.stowctl(["backup", "prune", "bk1", "--keep-last", "1", "-o", "json"]);
    expect(pruned.code, pruned.stderr).toBe(0);
    expect(JSON.parse(pruned.stdout).deleted.map((b: { id: string }) => b.id).sort()).toEqual([one.id, two.id]);
    const again = await c.stowctl(["backup", "restore", `bk1@${three.id}`, "--to", "bk1-again", "--replicas", "1"]);
    expect(again.code, again.stderr).toBe(0);
    await expectContent("bk1-again", join(dir, "three.raw"));
    // The newest backup deleted: its bitmap on the replicas ends no chain any more. The
    // next backup (full: nothing left to build on) drops it with its own.
    expect((await c.stowctl(["backup", "delete", `bk1@${three.id}`])).code).toBe(0);
    const four = await backup("bk1");
    expect(four.kind).toBe("full");
    for (const r of v.replicas) {
      await eventually(async () => JSON.stringify(await bitmapsIn(r.path)) === JSON.stringify([`stow-bk-${four.id}`]), 15_000, `${r.node}: only the newest backup's bitmap`);
    }
    // The volume's backups outlive it.
    expect((await c.stowctl(["volume", "delete", "bk1"])).code).toBe(0);
    expect((await c.stowctl(["backup", "list", "bk1"])).stdout).toMatch(new RegExp(`bk1@${four.id}\\s+ready\\s+full`));
  });

  it("a leader killed after the copy leaves no backup, snapshot or export behind; the next backup works", async () => {
    expect((await c.stowctl(["volume", "create", "crash1", "--size", "16MiB", "--replicas", "2"])).code).toBe(0);
    const node0 = (await getVolume(c, "crash1")).replicas[0]!.node;
    const att = JSON.parse((await c.stowctl(["volume", "attach", "crash1", "--node", node0, "-o", "json"])).stdout);
    const client = await NbdClient.connect({ ...parseNbdUri(att.nbdUri) });
    await client.write(MiB, pattern(7, 2 * MiB));
    await client.flush();
    client.destroy();
    expect((await c.stowctl(["volume", "detach", "crash1", "--node", node0])).code).toBe(0);
    expect((await c.leaderApi()).address).toBe(c.addressOf("c1"));
    const first = await c.stowctl(["backup", "create", "crash1"]);
    expect(first.code).not.toBe(0);
    await eventually(async () => !c.controllers.get("c1")!.running, 5_000, "c1 dead at its fault point");
    await eventually(async () => !Object.keys(await c.dumpState()).some((k) => k.includes("/backups/crash1@")), 30_000, "the half-made backup undone");
    // No fleece, no bitmap, no lease left.
    const v = await getVolume(c, "crash1");
    await eventually(async () => v.replicas.every((r) => !readdirSync(c.poolDir(r.node)).some((f) => f.startsWith("fleece-"))), 15_000, "fleece files removed");
    const b = await backup("crash1");
    expect(b.state).toBe("ready");
    expect(b.kind).toBe("full");
    // A revert removes the replicas' bitmaps (qemu-img refuses to revert over them, and they
    // would not describe the rolled-back content): the next backup is full again, and says why.
    expect((await c.stowctl(["snapshot", "create", "crash1@s1"])).code).toBe(0);
    expect((await backup("crash1")).kind).toBe("incremental");
    const reverted = await c.stowctl(["volume", "revert", "crash1", "--to", "s1"]);
    expect(reverted.code, reverted.stderr).toBe(0);
    const after = await backup("crash1");
    expect(after.kind).toBe("full");
    expect(after.message).toMatch(/no replica tracks the changes/);

    // A chunk damaged on disk: store verify finds it, names the backups it belongs to
    // (their records say so too) and exits 1.
    expect((await c.stowctl(["store", "verify"])).code).toBe(0);
    const files = (d: string): string[] => readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(d, e.name)) : [join(d, e.name)]));
    // Every chunk file (some may belong to no backup any more, waiting for the GC), each
    // once: a pack has one name per chunk, and flipping a byte twice would undo it.
    const seen = new Set<number>();
    for (const chunk of files(join(c.agentDirs.get(after.node)!, "backups", "store", "chunks")).filter((f) => statSync(f).size > 100)) {
      const { ino } = statSync(chunk);
      if (seen.has(ino)) continue;
      seen.add(ino);
      const bytes = readFileSync(chunk);
      bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
      writeFileSync(chunk, bytes);
    }
    const verify = await c.stowctl(["store", "verify"]);
    expect(verify.code, verify.stdout).toBe(1);
    expect(verify.stdout).toMatch(new RegExp(`${after.node}\\s+DAMAGED`));
    expect(verify.stdout).toMatch(/corrupt/);
    expect(verify.stderr).toMatch(/--quarantine/);
    const listed = JSON.parse((await c.stowctl(["backup", "list", "crash1", "-o", "json"])).stdout).backups as { id: string; message: string }[];
    expect(listed.find((b) => b.id === after.id)!.message).toMatch(/damaged/);
  });

  it("refuses bad requests clearly and changes nothing", async () => {
    expect((await c.stowctl(["volume", "create", "raw2", "--size", "16MiB", "--replicas", "1", "--format", "raw"])).code).toBe(0);
    const before = Object.keys(await c.dumpState()).sort();
    const cases: [string[], RegExp][] = [
      [["backup", "create", "nosuch"], /not found/],
      [["backup", "create", "raw2"], /raw volume/],
      [["backup", "restore", "crash1", "--to", "x0"], /not a backup reference/],
      [["backup", "restore", "crash1@nosuch", "--to", "x1"], /not found/],
      [["backup", "prune", "crash1"], /at least one of --keep-last/],
      [["backup", "prune", "crash1", "--keep-last", "-1"], /whole number/],
    ];
    const ready = JSON.parse((await c.stowctl(["backup", "list", "crash1", "-o", "json"])).stdout).backups[0];
    cases.push([["backup", "restore", `crash1@${ready.id}`, "--to", "raw2"], /exists: a restore makes a new volume/]);
    for (const [args, re] of cases) {
      const r = await c.stowctl(args);
      expect(r.code, args.join(" ")).not.toBe(0);
      expect(r.stderr, args.join(" ")).toMatch(re);
      expect(r.stderr, args.join(" ")).not.toMatch(/\n\s+at /);
    }
    expect(Object.keys(await c.dumpState()).sort()).toEqual(before);
  });
});
