// Snapshots of replicated volumes (real etcd, controllers, agents, storage
// daemons, frontends, qemu-img): taken while a writer keeps writing, every
// replica holds the same write boundary and every write acknowledged before the
// request; revert and clone give exactly that content back; a controller killed
// half-way through leaves nothing behind; bad requests change nothing.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NbdClient } from "../../lib/nbd/client.js";
import { parseNbdUri } from "../../lib/nbd-uri.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually, sleep } from "../harness/processes.js";
import { getVolume } from "../harness/replica-helpers.js";

const IPS: Record<string, string> = { s1: "127.0.0.131", s2: "127.0.0.132", s3: "127.0.0.133" };
const BLOCK = 4096;
const BASE = 4 * 1024 * 1024;
let c: TestCluster;
let scratch: string;

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1", { faults: ["create-snapshot:taken@crash1@s1"] });
  await c.startController("c2");
  for (const n of Object.keys(IPS)) await c.startAgent(n, IPS[n]!);
  await c.waitNodesOnline(3);
  scratch = mkdtempSync(join(tmpdir(), "stowage-snap-"));
});

afterAll(async () => {
  await c?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** Block i of the writer: its number, then a filler byte. */
function block(i: number): Buffer {
  const b = Buffer.alloc(BLOCK, (i % 251) + 1);
  b.writeUInt32LE(i, 0);
  return b;
}

/** Writes blocks 0, 1, 2, ... with up to 4 in flight until stopped; `acked` counts the done prefix. */
function startWriter(client: NbdClient) {
  const done = new Set<number>();
  const state = { stop: false, prefix: 0, failures: [] as string[] };
  let next = 0;
  const lane = async () => {
    while (!state.stop) {
      const i = next++;
      try {
        await client.write(BASE + i * BLOCK, block(i));
        done.add(i);
        while (done.has(state.prefix)) state.prefix++;
      } catch (err) {
        state.failures.push(String(err));
      }
    }
  };
  const lanes = Promise.all([lane(), lane(), lane(), lane()]);
  return { state, finish: async () => ((state.stop = true), await lanes, state) };
}

async function snapshotRecord(volume: string, name: string): Promise<{ tag: string; replicas: { id: string; node: string }[] } | undefined> {
  const raw = (await c.dumpState())[`/stowage/v1/snapshots/${volume}@${name}`];
  return raw === undefined ? undefined : JSON.parse(raw);
}

/** The snapshot's content in one replica image, as a raw file. */
async function extract(path: string, tag: string, out: string): Promise<string> {
  const r = await execa("qemu-img", ["convert", "-U", "-f", "qcow2", "-l", `snapshot.name=${tag}`, "-O", "raw", path, out], { reject: false });
  expect(r.exitCode, r.stderr).toBe(0);
  return out;
}

async function tagsOf(path: string): Promise<string[]> {
  const r = await execa("qemu-img", ["info", "-U", "-f", "qcow2", "--output=json", path]);
  return ((JSON.parse(r.stdout) as { snapshots?: { name: string }[] }).snapshots ?? []).map((s) => s.name);
}

describe("snapshots", () => {
  it("snapshots a volume under writes at one write boundary on every replica; revert and clone return exactly that", async () => {
    expect((await c.stowctl(["volume", "create", "snap1", "--size", "64MiB", "--replicas", "2"])).code).toBe(0);
    const v0 = await getVolume(c, "snap1");
    const node = v0.replicas[0]!.node;
    const att = JSON.parse((await c.stowctl(["volume", "attach", "snap1", "--node", node, "-o", "json"])).stdout);
    const client = await NbdClient.connect({ ...parseNbdUri(att.nbdUri) });
    await client.write(0, Buffer.alloc(1024 * 1024, 0x11));
    await client.flush();

    const writer = startWriter(client);
    await sleep(500);
    const before = writer.state.prefix;
    const taken = await c.stowctl(["snapshot", "create", "snap1@s1", "-o", "json"]);
    expect(taken.code, taken.stderr).toBe(0);
    const snap = JSON.parse(taken.stdout).snapshot;
    expect(snap.replicaIds).toHaveLength(2);
    expect(snap.attached).toBe(true);
    // Held until the replicas recorded it, not until the frontend's 10 s safety release.
    expect(snap.heldMs).toBeLessThan(5_000);
    console.log(`snapshot of an attached volume under writes: writes held ${snap.heldMs} ms`);
    await sleep(300);
    const { failures, prefix: after } = await writer.finish();
    expect(failures).toEqual([]);
    expect(before).toBeGreaterThan(10);
    expect(after).toBeGreaterThan(before);
    await client.flush();

    // Every holder has the same bytes, with every block acknowledged before the request.
    const rec = (await snapshotRecord("snap1", "s1"))!;
    const images = v0.replicas.map((r) => r.path);
    const raws = await Promise.all(images.map((p, i) => extract(p, rec.tag, join(scratch, `s1-${i}.raw`))));
    expect((await execa("cmp", raws, { reject: false })).exitCode).toBe(0);
    const content = readFileSync(raws[0]!);
    let inSnapshot = 0;
    while (content.subarray(BASE + inSnapshot * BLOCK, BASE + (inSnapshot + 1) * BLOCK).equals(block(inSnapshot))) inSnapshot++;
    expect(inSnapshot).toBeGreaterThanOrEqual(before);
    expect(inSnapshot).toBeLessThan(after);
    expect(content.subarray(0, 1024 * 1024).equals(Buffer.alloc(1024 * 1024, 0x11))).toBe(true);

    const listed = await c.stowctl(["snapshot", "list", "snap1"]);
    expect(listed.stdout).toMatch(/snap1@s1\s+ready/);

    // Revert needs the volume detached.
    const busy = await c.stowctl(["volume", "revert", "snap1", "--to", "s1"]);
    expect(busy.code).not.toBe(0);
    expect(busy.stderr).toMatch(/attached.*detach/s);
    client.destroy();
    expect((await c.stowctl(["volume", "detach", "snap1", "--node", node])).code).toBe(0);
    // Grown after the snapshot: the revert keeps the volume's size (the rest reads as zeroes).
    expect((await c.stowctl(["volume", "resize", "snap1", "--size", "96MiB"])).code).toBe(0);
    const reverted = await c.stowctl(["volume", "revert", "snap1", "--to", "s1", "-o", "json"]);
    expect(reverted.code, reverted.stderr).toBe(0);
    expect(JSON.parse(reverted.stdout).revertedReplicaIds).toHaveLength(2);
    for (const p of images) {
      const cmp = await execa("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "raw", p, raws[0]!], { reject: false });
      expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
      const info = JSON.parse((await execa("qemu-img", ["info", "-U", "-f", "qcow2", "--output=json", p])).stdout);
      expect(info["virtual-size"]).toBe(96 * 1024 * 1024);
    }
    // Attached again, the volume reads as the snapshot: the writes after it are gone.
    const again = JSON.parse((await c.stowctl(["volume", "attach", "snap1", "--node", node, "-o", "json"])).stdout);
    const viaFrontend = await execa("qemu-img", ["compare", "-f", "raw", "-F", "raw", again.nbdUri, raws[0]!], { reject: false });
    expect(viaFrontend.exitCode, viaFrontend.stdout + viaFrontend.stderr).toBe(0);
    expect((await c.stowctl(["volume", "detach", "snap1", "--node", node])).code).toBe(0);

    // A clone with more replicas than nodes holding the snapshot: two made from it, one copied.
    const cloned = await c.stowctl(["volume", "clone", "snap1@s1", "snap1-clone", "--replicas", "3", "-o", "json"]);
    expect(cloned.code, cloned.stderr).toBe(0);
    const clone = await getVolume(c, "snap1-clone");
    expect(clone.replicas).toHaveLength(3);
    for (const r of clone.replicas) {
      const cmp = await execa("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "raw", r.path, raws[0]!], { reject: false });
      expect(cmp.exitCode, `${r.node}: ${cmp.stdout}${cmp.stderr}`).toBe(0);
    }
    // The clone is independent: deleting the snapshot leaves it whole, and removes the tag from the images.
    expect((await c.stowctl(["snapshot", "delete", "snap1@s1"])).code).toBe(0);
    expect(await snapshotRecord("snap1", "s1")).toBeUndefined();
    for (const p of images) expect(await tagsOf(p)).toEqual([]);
    expect((await getVolume(c, "snap1-clone")).phase).toBe(2);
  });

  it("a leader killed between the replicas' snapshots and the thaw leaves nothing behind, and writes go on", async () => {
    expect((await c.stowctl(["volume", "create", "crash1", "--size", "16MiB", "--replicas", "2"])).code).toBe(0);
    const v0 = await getVolume(c, "crash1");
    const node = v0.replicas[0]!.node;
    const att = JSON.parse((await c.stowctl(["volume", "attach", "crash1", "--node", node, "-o", "json"])).stdout);
    const client = await NbdClient.connect({ ...parseNbdUri(att.nbdUri) });
    const first = (await c.leaderApi()).address;
    expect(first).toBe(c.addressOf("c1"));
    const err = await c.api(first).snapshots.createSnapshot({ volume: "crash1", name: "s1" }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error); // c1 died at its fault point, writes held on the frontend
    await eventually(async () => !c.controllers.get("c1")!.running, 5_000, "c1 dead");
    // The frontend lets the writes go by itself (10 s at most), the write completes.
    const t0 = Date.now();
    await client.write(0, Buffer.alloc(65536, 0x5e));
    expect(Date.now() - t0).toBeLessThan(12_000);
    // The next leader undoes the half-taken snapshot: no record, no tag in any image.
    await eventually(async () => (await snapshotRecord("crash1", "s1")) === undefined, 30_000, "the stale snapshot undone");
    for (const r of v0.replicas) expect(await tagsOf(r.path)).toEqual([]);
    // And a new one can be taken.
    const ok = await c.stowctl(["snapshot", "create", "crash1@s1", "-o", "json"]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout).snapshot.replicaIds).toHaveLength(2);
    await client.write(65536, Buffer.alloc(65536, 0x5f));
    client.destroy();
    expect((await c.stowctl(["volume", "detach", "crash1", "--node", node])).code).toBe(0);
  });

  it("refuses bad requests clearly and changes nothing", async () => {
    expect((await c.stowctl(["volume", "create", "raw1", "--size", "16MiB", "--replicas", "1", "--format", "raw"])).code).toBe(0);
    const before = Object.keys(await c.dumpState()).filter((k) => k.includes("/snapshots/")).sort();
    const cases: [string[], RegExp][] = [
      [["snapshot", "create", "nosuch@s1"], /volume "?nosuch"? not found|no volume/i],
      [["snapshot", "create", "raw1"], /not a snapshot reference/],
      [["snapshot", "create", "raw1@../x"], /invalid snapshot name/],
      [["snapshot", "create", "raw1@s1"], /raw volume: snapshots need qcow2/],
      [["volume", "revert", "raw1", "--to", "nosuch"], /snapshot "?raw1@nosuch"? not found|not found/i],
      [["volume", "clone", "raw1@nosuch", "x1"], /not found/i],
      [["volume", "clone", "crash1@s1", "raw1"], /already exists/i],
      [["volume", "revert", "raw1", "--to", "crash1@s1"], /not a snapshot of raw1/],
    ];
    for (const [args, re] of cases) {
      const r = await c.stowctl(args);
      expect(r.code, args.join(" ")).not.toBe(0);
      expect(r.stderr, args.join(" ")).toMatch(re);
      expect(r.stderr, args.join(" ")).not.toMatch(/\n\s+at /); // no stack trace
    }
    const after = Object.keys(await c.dumpState()).filter((k) => k.includes("/snapshots/")).sort();
    expect(after).toEqual(before);
    expect((await c.stowctl(["volume", "get", "raw1"])).code).toBe(0);
  });
});
