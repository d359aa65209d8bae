// `stowctl node drain H`: every replica on H gets a replacement elsewhere, copied
// first, then leaves H; refused when a replica has nowhere to go; the drain is in
// the node's spec, so it survives a leader SIGKILLed mid-copy and an agent restart;
// `node uncordon` ends it. Copies are throttled (--copy-rate-mib) so they can be seen.
// The last case drains the node an attached volume runs on: the replacement's agent
// copies while the frontend tracks writes, then the frontend copies those.
import { existsSync, readFileSync } from "node:fs";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";
import { getVolume, imagesOn, leaderName, sameContent, startControllerWith, storedSpec, waitSettled, writeEverywhere } from "../harness/replica-helpers.js";

const RATE_MIB = 4;
const FLAGS = ["--copy-rate-mib", String(RATE_MIB), "--node-ttl", "3"];
const IPS: Record<string, string> = { n1: "127.0.0.131", n2: "127.0.0.132", n3: "127.0.0.133" };
let c: TestCluster;
/** The node drained in these tests: it holds a replica of d1. */
let host = "";

async function nodeJson(name: string) {
  const r = await c.stowctl(["node", "get", name, "-o", "json"]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout).node;
}

beforeAll(async () => {
  c = await TestCluster.create();
  await startControllerWith(c, "c1", FLAGS);
  await c.leaderApi();
  await startControllerWith(c, "c2", FLAGS);
  for (const n of ["n1", "n2", "n3"]) await c.startAgent(n, IPS[n]!);
  await c.waitNodesOnline(3);
  for (const [name, replicas] of [["d1", 2], ["d2", 2], ["d3", 3]] as const) {
    const r = await c.stowctl(["volume", "create", name, "--size", "64MiB", "--replicas", String(replicas)]);
    expect(r.code, r.stderr).toBe(0);
  }
  const d1 = await getVolume(c, "d1");
  // 32 MiB at 4 MiB/s: a copy of d1 takes about 8 s.
  await writeEverywhere(d1, 0x44, 0, 32);
  host = d1.replicas[0]!.node;
});

afterAll(async () => {
  if (process.env.SHOW_WARN) {
    for (const [n, p] of c.controllers) for (const l of p.output.split("\n")) if (/"level":(40|50)|a1/.test(l)) console.log(n, l.slice(0, 300));
    for (const n of ["n1", "n2", "n3"]) {
      const f = `${c.agentDirs.get(n)}/frontends/a1.log`;
      if (existsSync(f)) console.log(n, "frontend log:\n", readFileSync(f, "utf8").split("\n").filter((l) => !/"level":20/.test(l)).map((l) => l.slice(0, 300)).join("\n"));
    }
  }
  await c?.stop();
});

describe("node drain", () => {
  it("is refused, changing nothing, when a replica has nowhere to go", async () => {
    const before = await c.dumpState();
    const r = await c.stowctl(["node", "drain", host]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      new RegExp(`^error: cannot drain node ${host}: nowhere to move the replica of volume d3 \\(need 1 host for 1 replica but only 0 are eligible\\)\\nrejected nodes:\\n`),
    );
    expect(r.stderr).toMatch(/hint: .*stowctl volume set VOL --replicas N/);
    expect(await c.dumpState()).toEqual(before);
    const missing = await c.stowctl(["node", "drain", "nope"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^error: node "nope" not found/);
    // Make room: d3 keeps 2 replicas.
    expect((await c.stowctl(["volume", "set", "d3", "--replicas", "2"])).code).toBe(0);
  });

  it("moves every replica off the node, copy first, through a leader SIGKILLed mid-copy and an agent restart", async () => {
    const dry = await c.stowctl(["node", "drain", host, "--dry-run"]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(new RegExp(`^dry run: draining node ${host} would move:\\nVOLUME\\s+REPLICA\\s+TO NODE\\s+TO POOL\\nd1\\s+r-`));
    expect((await nodeJson(host)).drain).toBeUndefined();

    const d1 = await getVolume(c, "d1");
    const before = { d1: d1.replicas.find((r) => r.node === host)!, keep: d1.replicas.find((r) => r.node !== host)! };
    const start = await c.stowctl(["node", "drain", host, "--no-wait"]);
    expect(start.code, start.stderr).toBe(0);
    expect(start.stdout).toMatch(new RegExp(`^draining node ${host}:\\n`));
    const t0 = Date.now();

    // The copy to d1's replacement runs: job list, volume get and node get show it, with progress.
    const seen = await eventually(async () => {
      const [json, table, shown, node] = await Promise.all([
        c.stowctl(["job", "list", "-o", "json"]),
        c.stowctl(["job", "list"]),
        c.stowctl(["volume", "get", "d1"]),
        nodeJson(host),
      ]);
      const job = JSON.parse(json.stdout).jobs.find((j: { volume: string; state: string; copiedBytes: number }) => j.volume === "d1" && j.state === "running" && j.copiedBytes > 0);
      const line = job && new RegExp(`\\nd1\\s+${job.replicaId}\\s+full\\s+${job.node}\\s+running\\s+\\d+% of \\d+(\\.\\d+)?MiB\\s+[\\d.]+MiB/s\\s+\\d+s\\s+copying from `);
      const copying = job && new RegExp(`copies:\\n {2}${job.replicaId} on ${job.node}: copying \\(full\\) \\d+% of`);
      return job && line.test(table.stdout) && copying.test(shown.stdout) ? { job, node } : undefined;
    }, 30_000, "a running copy of d1 with progress, in job list, volume get and node get");
    expect(seen.job).toMatchObject({ kind: "full", runner: seen.job.node });
    expect(seen.job.node).not.toBe(host);
    const drain = seen.node.drain;
    expect(drain.replicasLeft).toBeGreaterThan(0);
    expect(drain.replicas.find((x: { volume: string }) => x.volume === "d1").message).toMatch(/^replacement r-[0-9a-f]+ on n\d is being brought in sync$/);
    // While the copy runs, the replica on the draining node is still in the volume.
    expect((await storedSpec(c, "d1")).placement.map((p) => p.id)).toContain(before.d1.id);

    // The leader dies in the middle of the copy; the drain is in etcd, the next leader goes on.
    await c.controllers.get(await leaderName(c))!.kill("SIGKILL");
    // And the drained node's agent restarts: the drain outlives its re-registration.
    await c.agents.get(host)!.kill("SIGTERM");
    await c.startAgent(host, IPS[host]!);
    await c.leaderApi();

    // Asking again is harmless: it waits for the drain under way, with progress.
    const r = await c.stowctl(["node", "drain", host]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`node ${host} drained: no replicas left; it stays cordoned until 'stowctl node uncordon ${host}'$`));
    const took = Date.now() - t0;
    const node = await nodeJson(host);
    expect(node).toMatchObject({ cordoned: true, replicaCount: 0, drain: { replicasLeft: 0, replicas: [] } });
    for (const name of ["d1", "d2", "d3"]) {
      const v = await waitSettled(c, name, 2);
      expect(v.replicas.some((x) => x.node === host)).toBe(false);
      await eventually(async () => imagesOn(c, host, name).length === 0, 20_000, `${name} images gone from ${host}`);
    }
    expect(existsSync(before.d1.path)).toBe(false);
    const after = await getVolume(c, "d1");
    const moved = after.replicas.find((x) => x.id !== before.keep.id)!;
    expect(after.replicas[0]!.id).toBe(before.keep.id);
    const cmp = await sameContent(before.keep.path, moved.path);
    expect(cmp.same, cmp.output).toBe(true);
    expect((await c.stowctl(["job", "list"])).stdout).toBe("no jobs: every replica is in sync");
    console.log(
      `[figures] drain of ${host} (3 volumes, 32 MiB of data in d1, copies throttled to ${RATE_MIB} MiB/s, leader SIGKILLed mid-copy): ${took} ms; ` +
        `d1's last copy ${moved.lastResync!.durationMs} ms`,
    );
  });

  it("uncordon ends the drain: the node takes replicas again", async () => {
    const r = await c.stowctl(["node", "uncordon", host]);
    expect(r.code, r.stderr).toBe(0);
    const node = await nodeJson(host);
    expect(node.cordoned).toBe(false);
    expect(node.drain).toBeUndefined();
    const up = await c.stowctl(["volume", "set", "d2", "--replicas", "3"]);
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toContain(`add a replica on ${host} (pool default)`);
    expect((await getVolume(c, "d2")).replicas.some((x) => x.node === host)).toBe(true);
    // And back to 2: the newest replica (not on an attached node) goes.
    const down = await c.stowctl(["volume", "set", "d2", "--replicas", "2"]);
    expect(down.code, down.stderr).toBe(0);
    expect((await getVolume(c, "d2")).replicas.some((x) => x.node === host)).toBe(false);
  });

  it("drains the node an attached volume runs on while it is written: the replacement is copied (agent, then frontend), no write fails", async () => {
    // On the node drained before (now empty): the other two are cordoned while a1 is placed.
    const others = ["n1", "n2", "n3"].filter((n) => n !== host);
    for (const n of others) expect((await c.stowctl(["node", "cordon", n])).code).toBe(0);
    const created = await c.stowctl(["volume", "create", "a1", "--size", "32MiB", "--replicas", "1"]);
    expect(created.code, created.stderr).toBe(0);
    for (const n of others) expect((await c.stowctl(["node", "uncordon", n])).code).toBe(0);
    const node = (await getVolume(c, "a1")).replicas[0]!.node;
    expect(node).toBe(host);
    const att = await c.stowctl(["volume", "attach", "a1", "--node", node, "-o", "json"]);
    expect(att.code, att.stderr).toBe(0);
    const uri = JSON.parse(att.stdout).nbdUri as string;
    const io = (cmds: string[]) => execa("qemu-io", ["-f", "raw", ...cmds.flatMap((x) => ["-c", x]), uri], { reject: false });
    const first = await io(["write -P 0x51 0 4M", "flush"]);
    expect(first.exitCode, first.stderr).toBe(0);

    // Writes keep coming while the replica moves off the node.
    const writing = io([...Array.from({ length: 150 }, (_, i) => `write -P 0x52 ${8 + (i % 20)}M 64k`), "flush"]);
    const t0 = Date.now();
    const r = await c.stowctl(["node", "drain", node]);
    expect(r.code, r.stderr).toBe(0);
    const took = Date.now() - t0;
    const w = await writing;
    expect(w.exitCode, w.stderr).toBe(0);
    expect(w.stdout).not.toMatch(/failed|error/i);

    const v = await waitSettled(c, "a1", 1);
    expect(v.replicas[0]!.node).not.toBe(node);
    expect(v.replicas[0]!.lastResync).toMatchObject({ kind: "full" });
    console.log(`[figures] drain of ${node} under an attached, written 32 MiB volume: ${took} ms; the rebuild ${v.replicas[0]!.lastResync!.durationMs} ms (throttled to ${RATE_MIB} MiB/s)`);
    const check = await io(["read -P 0x51 0 4M", "read -P 0x52 8M 64k", "read -P 0x52 27M 64k"]);
    expect(check.exitCode, check.stderr).toBe(0);
    expect(check.stdout).not.toMatch(/Pattern verification failed/);
    expect((await c.stowctl(["volume", "detach", "a1", "--node", node])).code).toBe(0);
    const onDisk = await execa("qemu-io", ["-f", "qcow2", "-U", "-r", "-c", "read -P 0x51 0 4M", "-c", "read -P 0x52 20M 64k", v.replicas[0]!.path], { reject: false });
    expect(onDisk.exitCode, onDisk.stderr).toBe(0);
    expect(onDisk.stdout).not.toMatch(/Pattern verification failed/);
  });
});
