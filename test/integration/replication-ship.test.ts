// Asynchronous replication ships only the chunks the target lacks: the replica's
// node chunks the volume itself (node-agent/backup-ship.ts) and sends the target's
// agent the manifest and the missing chunks (node-agent/backup-receive.ts).
//   - A volume with the same data as one already replicated to the target (plus a
//     small difference) ships a small fraction of its data, and its promoted copy
//     equals it byte for byte.
//   - A copy after a 1% change ships about the changed chunks.
//   - A source agent killed mid-stream leaves nothing committed on the target, and
//     the next copy works.
import { readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NbdClient } from "../../lib/nbd/client.js";
import { parseNbdUri } from "../../lib/nbd-uri.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";
import { getVolume } from "../harness/replica-helpers.js";
import { randomBytesSeeded } from "../unit/chunk-fixtures.js";

const IPS: Record<string, string> = { s1: "127.0.0.191", s2: "127.0.0.192", s3: "127.0.0.193" };
const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const DATA = 24 * MiB;
/** Armed in every agent: kills the sending agent after two packs of this volume's copy. */
const CRASH_VOLUME = "rs-crash";
const FAULTS = [`ship-backup:sent-packs@${CRASH_VOLUME}`];
let c: TestCluster;

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1", { flags: ["--node-ttl", "3"] });
  for (const n of Object.keys(IPS)) await c.startAgent(n, IPS[n]!, { faults: FAULTS });
  await c.waitNodesOnline(3);
});

afterAll(async () => {
  await c?.stop();
});

type Rep = { volume: string; lastBackupId: string; lastSyncAtMs: number; lastReadBytes: number; lastShippedBytes: number; lastDurationMs: number; message: string };
const reps = async (): Promise<Rep[]> => JSON.parse((await c.stowctl(["replication", "list", "-o", "json"])).stdout).replications;
const rep = async (volume: string) => (await reps()).find((r) => r.volume === volume);

/** A volume of one replica, attached, with `img` written from offset 0; returns its node and the NBD client. */
async function volumeWith(name: string, img: Buffer): Promise<{ node: string; client: NbdClient }> {
  const made = await c.stowctl(["volume", "create", name, "--size", "64MiB", "--replicas", "1"]);
  expect(made.code, made.stderr).toBe(0);
  const node = (await getVolume(c, name)).replicas[0]!.node;
  const att = JSON.parse((await c.stowctl(["volume", "attach", name, "--node", node, "-o", "json"])).stdout);
  const client = await NbdClient.connect({ ...parseNbdUri(att.nbdUri) });
  await client.write(0, img);
  await client.flush();
  return { node, client };
}

/** Starts replicating `volume` to `target` and waits for a copy that started after now. */
async function replicate(volume: string, target: string): Promise<Rep> {
  const made = await c.stowctl(["replication", "create", volume, "--to-pool", `${target}/default`, "--every", "2s"]);
  expect(made.code, made.stderr).toBe(0);
  return nextCopy(volume, Date.now() - 1000);
}

async function nextCopy(volume: string, after: number, timeoutMs = 60_000): Promise<Rep> {
  return eventually(async () => {
    const r = await rep(volume);
    return r && r.lastSyncAtMs > after ? r : undefined;
  }, timeoutMs, `a copy of ${volume}`);
}

/** The promoted copy of `volume` equals `expected` (qemu-img compare). */
async function promoteEquals(volume: string, expected: Buffer): Promise<void> {
  const raw = join(c.dir, `${volume}-expected.raw`);
  writeFileSync(raw, expected);
  const promoted = await c.stowctl(["replication", "promote", volume, "--as", `${volume}-dr`, "--replicas", "1", "-o", "json"]);
  expect(promoted.code, promoted.stderr).toBe(0);
  const dr = await getVolume(c, `${volume}-dr`);
  const cmp = await execa("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "raw", dr.replicas[0]!.path, raw], { reject: false });
  expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
}

const storeDir = (node: string, sub: string) => readdirSync(join(c.agentDirs.get(node)!, "backups", "store", sub));

describe("replication ships only the chunks the target lacks", () => {
  it("a volume with data the target holds ships a small part of it; an incremental about its changes", async () => {
    const data = randomBytesSeeded(DATA, 77);
    const a = await volumeWith("rs-a", data);
    const bImage = Buffer.alloc(SIZE);
    data.copy(bImage);
    randomBytesSeeded(64 * 1024, 78).copy(bImage, 5 * MiB + 12_345); // the small difference
    const b = await volumeWith("rs-b", bImage.subarray(0, DATA));
    const target = Object.keys(IPS).find((n) => n !== a.node && n !== b.node)!;

    const first = await replicate("rs-a", target);
    // Nothing on the target yet: all of A's (incompressible) data is shipped.
    expect(first.lastShippedBytes).toBeGreaterThan(DATA * 0.95);
    expect(first.lastReadBytes).toBeGreaterThanOrEqual(DATA);

    const copyB = await replicate("rs-b", target);
    console.log(`rs-b first copy: read ${copyB.lastReadBytes} B, shipped ${copyB.lastShippedBytes} B, took ${copyB.lastDurationMs} ms`);
    expect(copyB.lastReadBytes).toBeGreaterThanOrEqual(DATA); // chunked whole, locally
    expect(copyB.lastShippedBytes).toBeLessThan(DATA * 0.1);
    expect(copyB.lastShippedBytes).toBeGreaterThan(64 * 1024); // the difference did go
    const table = (await c.stowctl(["replication", "list"])).stdout;
    expect(table).toMatch(/\bSHIPPED\b/);
    expect(table).toMatch(new RegExp(`rs-b\\s+${target}/default\\s+2s`));

    // 1% of the volume changed, in 8 places: an incremental copy ships about those chunks.
    const change = randomBytesSeeded(80 * 1024, 79);
    for (let i = 0; i < 8; i++) {
      const off = (i * 3 + 1) * MiB + i * 4096;
      await b.client.write(off, change);
      change.copy(bImage, off);
    }
    await b.client.flush();
    const incr = await nextCopy("rs-b", Date.now());
    console.log(`rs-b incremental copy after 640 KiB changed: read ${incr.lastReadBytes} B, shipped ${incr.lastShippedBytes} B, took ${incr.lastDurationMs} ms`);
    expect(incr.lastShippedBytes).toBeGreaterThan(640 * 1024);
    expect(incr.lastShippedBytes).toBeLessThan(4 * MiB);
    expect(incr.lastReadBytes).toBeLessThan(8 * MiB); // from the dirty bitmap, not the whole volume

    await promoteEquals("rs-b", bImage);
    for (const v of ["rs-a", "rs-b"]) expect((await c.stowctl(["replication", "delete", v])).code).toBe(0);
    a.client.destroy();
    b.client.destroy();
  });

  it("a source agent killed mid-stream commits nothing on the target, and the next copy works", async () => {
    const img = randomBytesSeeded(16 * MiB, 91);
    const src = await volumeWith(CRASH_VOLUME, img);
    const target = Object.keys(IPS).find((n) => n !== src.node)!;
    const made = await c.stowctl(["replication", "create", CRASH_VOLUME, "--to-pool", `${target}/default`, "--every", "2s"]);
    expect(made.code, made.stderr).toBe(0);
    // The fault point kills the sending agent after its second pack.
    await eventually(async () => !c.agents.get(src.node)!.running, 60_000, "the source agent killed mid-stream");
    // The target noticed the broken stream: nothing committed, no write left pending, no tmp file.
    await eventually(async () => storeDir(target, "pending").length === 0, 10_000, "the target's session closed");
    expect(storeDir(target, "manifests").filter((m) => m.startsWith(`${CRASH_VOLUME}@`))).toEqual([]);
    expect(storeDir(target, "tmp")).toEqual([]);
    expect(c.agents.get(src.node)!.output).toMatch(/fault point ship-backup:sent-packs/);
    expect(c.agents.get(target)!.output).toMatch(/receiving a backup failed; nothing committed/);

    // The agent comes back (its storage daemon never went): the next copy ships, and is whole.
    const before = Date.now();
    await c.startAgent(src.node, IPS[src.node]!);
    const copy = await nextCopy(CRASH_VOLUME, before, 90_000);
    expect(copy.lastShippedBytes).toBeGreaterThan(12 * MiB);
    expect(storeDir(target, "manifests").filter((m) => m.startsWith(`${CRASH_VOLUME}@`))).toEqual([`${CRASH_VOLUME}@${copy.lastBackupId}`]);
    const expected = Buffer.alloc(SIZE);
    img.copy(expected);
    await promoteEquals(CRASH_VOLUME, expected);
    expect((await c.stowctl(["replication", "delete", CRASH_VOLUME])).code).toBe(0);
    src.client.destroy();
  });
});
