// Asynchronous replication against a real cluster: a volume copied to a third
// node every 2 s (the first copy full, the next ones only what changed), the
// recovery point shown, then both source hosts killed and the last copy promoted
// into a live volume equal to what was written before that copy.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NbdClient } from "../../lib/nbd/client.js";
import { parseNbdUri } from "../../lib/nbd-uri.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";
import { getVolume } from "../harness/replica-helpers.js";

const IPS: Record<string, string> = { y1: "127.0.0.171", y2: "127.0.0.172", y3: "127.0.0.173" };
const MiB = 1024 * 1024;
let c: TestCluster;

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1", { flags: ["--node-ttl", "3"] });
  for (const n of Object.keys(IPS)) await c.startAgent(n, IPS[n]!);
  await c.waitNodesOnline(3);
});

afterAll(async () => {
  await c?.stop();
});

type Rep = { volume: string; lastSyncAtMs: number; rpoSeconds: number; lastReadBytes: number; message: string };
const reps = async (): Promise<Rep[]> => JSON.parse((await c.stowctl(["replication", "list", "-o", "json"])).stdout).replications;

describe("asynchronous replication", () => {
  it("ships a copy every interval, only what changed, and promotes the last one after the source is lost", async () => {
    expect((await c.stowctl(["volume", "create", "ar1", "--size", "64MiB", "--replicas", "2"])).code).toBe(0);
    const v = await getVolume(c, "ar1");
    const sources = v.replicas.map((r) => r.node);
    const target = Object.keys(IPS).find((n) => !sources.includes(n))!;
    const att = JSON.parse((await c.stowctl(["volume", "attach", "ar1", "--node", sources[0]!, "-o", "json"])).stdout);
    const client = await NbdClient.connect({ ...parseNbdUri(att.nbdUri) });
    const expected = Buffer.alloc(64 * MiB);
    const put = async (off: number, data: Buffer) => {
      await client.write(off, data);
      data.copy(expected, off);
    };
    await put(0, Buffer.alloc(MiB, 0x31));
    await put(10 * MiB, Buffer.alloc(2 * MiB, 0x32));
    await client.flush();
    const afterFirst = Date.now();

    const bad: [string[], RegExp][] = [
      [["replication", "create", "ar1", "--to-pool", `${sources[0]}/default`], /holds a replica/],
      [["replication", "create", "ar1", "--to-pool", `${target}/nosuch`], /not found/],
      [["replication", "create", "ar1", "--to-pool", target!], /expected NODE\/POOL/],
      [["replication", "create", "ar1", "--to-pool", `${target}/default`, "--every", "0s"], /longer than zero/],
      [["replication", "promote", "nosuch", "--as", "x"], /not found/],
    ];
    for (const [args, re] of bad) {
      const r = await c.stowctl(args);
      expect(r.code, args.join(" ")).not.toBe(0);
      expect(r.stderr, args.join(" ")).toMatch(re);
    }
    expect(await reps()).toEqual([]);

    const made = await c.stowctl(["replication", "create", "ar1", "--to-pool", `${target}/default`, "--every", "2s"]);
    expect(made.code, made.stderr).toBe(0);
    await eventually(async () => (await reps())[0]!.lastSyncAtMs > afterFirst, 30_000, "the first copy shipped");

    await put(20 * MiB, Buffer.alloc(MiB, 0x33));
    await client.flush();
    const afterSecond = Date.now();
    const synced = await eventually(async () => {
      const r = (await reps())[0]!;
      return r.lastSyncAtMs > afterSecond ? r : undefined;
    }, 30_000, "a copy after the second write");
    // Incremental: the changed MiB (and the content-defined chunks around it), not the volume.
    expect(synced.lastReadBytes).toBeLessThan(4 * MiB);
    expect(synced.rpoSeconds).toBeLessThan(30);
    expect((await c.stowctl(["replication", "list"])).stdout).toMatch(new RegExp(`ar1\\s+${target}/default\\s+2s`));
    // A replication keeps its last two copies.
    await eventually(async () => {
      const b = JSON.parse((await c.stowctl(["backup", "list", "ar1", "-o", "json"])).stdout).backups as unknown[];
      return b.length <= 3;
    }, 15_000, "old copies pruned");
    client.destroy();
    // What the last copy holds: everything written before it (the second write included).
    const raw = join(c.dir, "ar1-expected.raw");
    writeFileSync(raw, expected);

    // Lose the source: both replica hosts (agents and storage daemons) die.
    for (const n of sources) {
      const qsd = Number(readFileSync(join(c.agentDirs.get(n!)!, "qsd", "qsd.pid"), "utf8").trim());
      await c.agents.get(n!)!.kill("SIGKILL");
      process.kill(qsd, "SIGKILL");
    }
    await eventually(async () => {
      const nodes = JSON.parse((await c.stowctl(["node", "list", "-o", "json"])).stdout).nodes as { name: string; online: boolean }[];
      return sources.every((s) => nodes.find((n) => n.name === s)?.online === false);
    }, 20_000, "source hosts offline");

    // The last copy becomes a live volume on the target, from the target alone.
    const promoted = await c.stowctl(["replication", "promote", "ar1", "--as", "ar1-dr", "--replicas", "1", "-o", "json"]);
    expect(promoted.code, promoted.stderr).toBe(0);
    expect(JSON.parse(promoted.stdout).syncAtMs).toBeGreaterThan(afterSecond);
    const dr = await getVolume(c, "ar1-dr");
    expect(dr.replicas.map((r) => r.node)).toEqual([target]);
    const cmp = await execa("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "raw", dr.replicas[0]!.path, raw], { reject: false });
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    // The replication says why it cannot copy any more.
    await eventually(async () => /offline|no in-sync replica|not taken|failed/.test((await reps())[0]!.message), 20_000, "the replication's message");
    expect((await c.stowctl(["replication", "delete", "ar1"])).code).toBe(0);
    expect(await reps()).toEqual([]);
  });
});
