// Thin provisioning and capacity with the real thing: etcd, controller, agents,
// qemu-storage-daemon, qemu-img and qemu-io. Node n1's pool sits on a small ext4
// filesystem (a 64 MiB loop-mounted image, no reserved blocks) that the tests fill
// with a file of their own: the operator's overcommit ratio (recorded in etcd,
// kept across restarts) and placement refusing what would break it; thresholds
// raising and resolving events (etcd, stowctl, metrics); a write through the
// frontend meeting the full pool (ENOSPC to the client, not EIO, nothing lost,
// the same write succeeding once space is freed, qemu-img check clean); and a
// 2-replica volume whose full replica is recorded out-of-sync and resynced once
// space is back.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statfsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VolumePhase } from "../../gen/stowage/v1/types.js";
import { TestCluster } from "../harness/cluster.js";
import { freePort } from "../harness/ports.js";
import { eventually, sleep } from "../harness/processes.js";

const MiB = 2 ** 20;
let c: TestCluster;
let mnt = "";
let fsDir = "";
let metricsPort = 0;
const filler = () => join(mnt, "filler");

/** A 64 MiB ext4 filesystem on a loop device, mounted in a temp dir. */
function mountSmallFs(): void {
  fsDir = mkdtempSync(join(tmpdir(), "stowage-smallfs-"));
  mnt = join(fsDir, "mnt");
  mkdirSync(mnt);
  execFileSync("truncate", ["-s", "64M", join(fsDir, "fs.img")]);
  execFileSync("mkfs.ext4", ["-q", "-F", "-m", "0", join(fsDir, "fs.img")]);
  execFileSync("mount", ["-o", "loop", join(fsDir, "fs.img"), mnt]);
}

function unmountSmallFs(): void {
  if (!fsDir) return;
  try {
    execFileSync("umount", [mnt]);
  } catch {
    execFileSync("umount", ["-l", mnt]);
  }
  rmSync(fsDir, { recursive: true, force: true });
}

function fsFigures(): { capacity: number; available: number } {
  const s = statfsSync(mnt);
  return { capacity: s.blocks * s.bsize, available: s.bavail * s.bsize };
}

/** Grows (or shrinks) the filler file so that `percent` of the filesystem is in use. */
async function fillTo(percent: number): Promise<void> {
  rmSync(filler(), { force: true });
  execFileSync("sync", ["-f", mnt]);
  const { capacity, available } = fsFigures();
  const want = Math.floor((capacity * percent) / 100) - (capacity - available);
  if (want > 0) execFileSync("fallocate", ["-l", String(want), filler()]);
  execFileSync("sync", ["-f", mnt]);
}

/** Leaves about `bytes` free on the filesystem. */
function leaveFree(bytes: number): void {
  rmSync(filler(), { force: true });
  execFileSync("sync", ["-f", mnt]);
  const { available } = fsFigures();
  execFileSync("fallocate", ["-l", String(Math.max(4096, available - bytes)), filler()]);
  execFileSync("sync", ["-f", mnt]);
}

async function qemuIo(target: string, cmds: string[], opts: string[] = ["-f", "raw"]) {
  return execa("qemu-io", [...opts, ...cmds.flatMap((x) => ["-c", x]), target], { reject: false });
}

async function api() {
  return c.leaderApi();
}

async function volume(name: string) {
  return (await (await api()).volumes.getVolume({ name })).volume!;
}

async function events(): Promise<{ severity: string; object: string; reason: string; message: string; resolvedAtMs: number; resolution: string }[]> {
  const r = await c.stowctl(["event", "list", "-o", "json"]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout).events;
}

async function metrics(): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  expect(res.status).toBe(200);
  return res.text();
}

beforeAll(async () => {
  mountSmallFs();
  c = await TestCluster.create();
  metricsPort = await freePort();
  await c.startController("c1", { flags: ["--metrics-port", String(metricsPort)] });
  // The harness makes the data dir only for its default pool path.
  mkdirSync(join(c.dir, "n1"), { recursive: true });
  await c.startAgent("n1", "127.0.0.71", { poolPath: join(mnt, "pool"), overcommitRatio: 4 });
  await c.waitNodesOnline(1);
});

afterAll(async () => {
  await c?.stop();
  unmountSmallFs();
});

describe("overcommit ratio", () => {
  it("refuses bad settings clearly, changing nothing", async () => {
    const before = await c.dumpState();
    const cases: [string[], number, RegExp][] = [
      [["n1/default", "--overcommit", "-1"], 2, /option '--overcommit': expected a number greater than 0, got "-1"/],
      [["n1/default", "--overcommit", "lots"], 2, /expected a number greater than 0/],
      [["n1/default", "--warning", "95", "--critical", "90"], 2, /must be below --critical/],
      [["n1/default", "--critical", "70"], 1, /warning threshold \(80%\) must be below the critical one \(70%\)[\s\S]*hint: .*nothing was changed/],
      [["n1/nope", "--overcommit", "2"], 1, /pool "n1\/nope" not found[\s\S]*hint: run 'stowctl pool list --node n1'/],
      [["n9/default", "--overcommit", "2"], 1, /node "n9" not found/],
    ];
    for (const [args, code, err] of cases) {
      const r = await c.stowctl(["pool", "set", ...args]);
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(code);
      expect(r.stderr).toMatch(err);
    }
    // Through the API too: a ratio of -1 is refused by the controller itself.
    await expect((await api()).pools.setPool({ node: "n1", name: "default", overcommitRatio: -1, resetOvercommit: false, resetThresholds: false, force: false })).rejects.toThrow(
      /overcommit ratio must be a number greater than 0, got -1/,
    );
    expect(await c.dumpState()).toEqual(before);
  });

  it("is recorded in etcd; placement refuses a volume that would break it, naming the pool, the figures and what to do", async () => {
    const set = await c.stowctl(["pool", "set", "n1/default", "--overcommit", "2"]);
    expect(set.code, set.stderr).toBe(0);
    expect(set.stdout).toMatch(/Overcommit:\s+2x \(set by the operator; the agent's config says 4x\)/);
    const spec = JSON.parse((await c.client.get("/stowage/v1/nodes/spec/n1").string())!);
    expect(spec.poolSettings).toEqual({ default: { overcommitRatio: 2 } });

    const { capacity } = fsFigures();
    const before = await c.dumpState();
    // 2 x ~55 MiB = ~109 MiB may be provisioned: 200 MiB does not fit.
    const r = await c.stowctl(["volume", "create", "big", "--size", "200MiB", "--replicas", "1"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("error: cannot place volume big: need 1 host for 1 replica but only 0 are eligible");
    expect(r.stderr).toMatch(/n1: pool default: not enough space: needs 200MiB, \S+ free of \S+ x overcommit 2 \(provisioned 0B\)/);
    expect(r.stderr).toContain("stowctl pool set NODE/POOL --overcommit N");
    expect(r.stderr).toContain("nothing was created");
    expect(await c.dumpState()).toEqual(before);
    expect(capacity).toBeLessThan(64 * MiB);

    const ok = await c.stowctl(["volume", "create", "cap1", "--size", "80MiB", "--replicas", "1"]);
    expect(ok.code, ok.stderr).toBe(0);
  });

  it("refuses a ratio below what is provisioned already, unless forced", async () => {
    const before = await c.dumpState();
    const r = await c.stowctl(["pool", "set", "n1/default", "--overcommit", "1"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/pool n1\/default has 80MiB provisioned; overcommit 1 would allow only \S+ \(\S+ x 1\)/);
    expect(r.stderr).toMatch(/hint: give a ratio of at least 1\.\d+.*--force/);
    expect(await c.dumpState()).toEqual(before);
    // Forced, it is set; placement then refuses even a small volume there.
    const forced = await c.stowctl(["pool", "set", "n1/default", "--overcommit", "1", "--force", "-o", "json"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(JSON.parse(forced.stdout)).toMatchObject({ changed: true, pool: { overcommitRatio: 1 } });
    const small = await c.stowctl(["volume", "create", "small", "--size", "1MiB", "--replicas", "1"]);
    expect(small.stderr).toMatch(/pool default: not enough space: needs 1MiB, 0B free of \S+ x overcommit 1 \(provisioned 80MiB\)/);
    expect((await c.stowctl(["pool", "set", "n1/default", "--overcommit", "2"])).code).toBe(0);
  });

  it("survives a controller restart and an agent re-registration", async () => {
    await c.controllers.get("c1")!.kill();
    await c.startController("c1b", { flags: ["--metrics-port", String(metricsPort)] });
    const ip = "127.0.0.71";
    await c.agents.get("n1")!.kill();
    await c.startAgent("n1", ip, { poolPath: join(mnt, "pool"), overcommitRatio: 4 });
    await c.waitNodesOnline(1);
    const r = await c.stowctl(["pool", "get", "n1/default", "-o", "json"]);
    expect(r.code, r.stderr).toBe(0);
    const pool = JSON.parse(r.stdout).pool;
    expect(pool).toMatchObject({ overcommitRatio: 2, capacity: { overcommitSource: "operator", configuredOvercommitRatio: 4 } });
    expect(pool.provisionedBytes).toBe(80 * MiB);
    expect(pool.capacity.provisionedLimitBytes).toBe(Math.floor(pool.capacityBytes * 2));
  });
});

describe("thresholds", () => {
  it("raise a warning, escalate to critical and resolve, in etcd, stowctl and metrics", async () => {
    await fillTo(85);
    const t85 = Date.now();
    const warned = await eventually(async () => {
      const e = (await events()).filter((x) => x.reason === "pool-used" && !x.resolvedAtMs);
      return e.length === 1 && e[0]!.severity === "warning" ? e : undefined;
    }, 20_000, "a warning event");
    process.stdout.write(`capacity test: warning event listed ${Date.now() - t85} ms after the pool reached 85%\n`);
    expect(warned[0]).toMatchObject({ object: "pool n1/default", message: expect.stringMatching(/pool n1\/default: 8\d(\.\d+)?% of its filesystem in use .* above the warning threshold of 80%/) });
    const keys = Object.keys(await c.client.getAll().prefix("/stowage/v1/events/").strings());
    expect(keys.length).toBeGreaterThanOrEqual(1);

    const status = await c.stowctl(["cluster", "status"]);
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toMatch(/Health:\s+warning/);
    expect(status.stdout).toContain("warning: pool n1/default: filesystem use above threshold");
    expect(status.stdout).toMatch(/Active events:\n.*WARNING|Active events:\nAGE/);
    expect(await metrics()).toMatch(/stowage_pool_capacity_level\{node="n1",pool="default",figure="used"\} 1\n/);

    await fillTo(95);
    await eventually(async () => {
      const e = await events();
      const active = e.filter((x) => x.reason === "pool-used" && !x.resolvedAtMs);
      return active.length === 1 && active[0]!.severity === "critical" && e.some((x) => x.severity === "warning" && x.resolution.startsWith("escalated to critical")) ? true : undefined;
    }, 20_000, "the warning escalated to critical");
    const json = JSON.parse((await c.stowctl(["cluster", "status", "-o", "json"])).stdout);
    expect(json).toMatchObject({ health: "critical", nodeCount: 1, nodesOnline: 1, volumeCount: 1 });
    expect(json.activeEvents).toEqual([expect.objectContaining({ severity: "critical", object: "pool n1/default", reason: "pool-used" })]);
    expect(json.capacity.usedBytes).toBeGreaterThan(json.capacity.capacityBytes * 0.9);
    expect(await metrics()).toMatch(/stowage_capacity_events_active\{severity="critical"\} 1\n/);

    rmSync(filler(), { force: true });
    await eventually(async () => ((await events()).every((x) => x.resolvedAtMs > 0) ? true : undefined), 20_000, "every event resolved");
    const resolved = (await events()).find((x) => x.severity === "critical")!;
    expect(resolved.resolution).toMatch(/^back below 90% \(\d/);
    const active = await c.stowctl(["event", "list", "--active"]);
    expect(active.stdout).toBe("no events");
    expect((await c.stowctl(["cluster", "status"])).stdout).toMatch(/Health:\s+ok[\s\S]*No active events\./);
  });
});

describe("a full pool under a writing client", () => {
  let uri = "";
  const written: number[] = [];

  it("returns ENOSPC (not EIO) through NBD, and keeps every acknowledged write", async () => {
    const r = await c.stowctl(["volume", "attach", "cap1", "--node", "n1", "-o", "json"]);
    expect(r.code, r.stderr).toBe(0);
    uri = JSON.parse(r.stdout).nbdUri;
    leaveFree(6 * MiB);
    let failure = "";
    for (let i = 0; i < 64; i++) {
      const w = await qemuIo(uri, [`write -P ${0x10 + i} ${i}M 1M`]);
      const out = w.stdout + w.stderr;
      if (/fail|error/i.test(out)) {
        failure = out;
        break;
      }
      written.push(i);
    }
    process.stdout.write(`capacity test: ${written.length} writes of 1 MiB acknowledged with 6 MiB free, then: ${failure.trim()}\n`);
    expect(failure).toMatch(/write failed: No space left on device/);
    expect(failure).not.toMatch(/Input\/output error/);
    expect(written.length).toBeGreaterThan(0);
    expect(written.length).toBeLessThan(64);
    // Every write acknowledged before reads back intact.
    for (const i of written) {
      const back = await qemuIo(uri, [`read -P ${0x10 + i} ${i}M 1M`]);
      expect(back.stdout, `chunk ${i}`).not.toMatch(/Pattern verification failed|fail|error/i);
    }
    const v = await volume("cap1");
    expect(v.replicas.map((x) => x.outOfSync)).toEqual([false]);
    expect(v.phase).toBe(VolumePhase.VOLUME_PHASE_HEALTHY);
  });

  it("takes the same write once space is freed, and the image checks clean", async () => {
    rmSync(filler(), { force: true });
    execFileSync("sync", ["-f", mnt]);
    const next = written.length;
    const w = await qemuIo(uri, [`write -P ${0x10 + next} ${next}M 1M`, "flush", `read -P ${0x10 + next} ${next}M 1M`, `read -P ${0x10} 0 1M`]);
    expect(w.stdout + w.stderr).not.toMatch(/fail|error/i);
    const volumeGet = await c.stowctl(["volume", "get", "cap1"]);
    expect(volumeGet.stdout).toMatch(/Space:\s+\S+ allocated of 80MiB provisioned over all replicas/);
    const d = await c.stowctl(["volume", "detach", "cap1", "--node", "n1"]);
    expect(d.code, d.stderr).toBe(0);
    const path = (await volume("cap1")).replicas[0]!.path;
    const check = await execa("qemu-img", ["check", "-U", path], { reject: false });
    expect(check.exitCode, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).toContain("No errors were found on the image.");
  });
});

describe("a full replica among others", () => {
  it("is recorded out-of-sync while the other takes the writes, and resynced once space is back", async () => {
    // cap1 filled the small filesystem: it goes, so that the full replica can be copied once the filler goes.
    const del = await c.stowctl(["volume", "delete", "cap1"]);
    expect(del.code, del.stderr).toBe(0);
    await c.startAgent("n2", "127.0.0.72", { overcommitRatio: 4 });
    await c.waitNodesOnline(2);
    const raise = await c.stowctl(["pool", "set", "n1/default", "--overcommit", "4"]);
    expect(raise.code, raise.stderr).toBe(0);
    const cr = await c.stowctl(["volume", "create", "cap2", "--size", "48MiB", "--replicas", "2"]);
    expect(cr.code, cr.stderr).toBe(0);
    const at = await c.stowctl(["volume", "attach", "cap2", "--node", "n2", "-o", "json"]);
    expect(at.code, at.stderr).toBe(0);
    const uri = JSON.parse(at.stdout).nbdUri;
    leaveFree(3 * MiB);
    const w = await qemuIo(uri, Array.from({ length: 24 }, (_, i) => `write -P ${0x40 + i} ${i * 2}M 2M`));
    expect(w.stdout + w.stderr).not.toMatch(/fail|error/i);
    const degraded = await eventually(async () => {
      const v = await volume("cap2");
      return v.replicas.find((r) => r.node === "n1")?.outOfSync ? v : undefined;
    }, 20_000, "n1's replica out-of-sync");
    expect(degraded.phase).toBe(VolumePhase.VOLUME_PHASE_DEGRADED);
    // While the pool stays full, the frontend does not copy into it at every refresh (2 s):
    // the first try waits 5 s after the ENOSPC, fails with ENOSPC, and the next waits 10 s.
    await sleep(8_000);
    expect((await volume("cap2")).replicas.find((r) => r.node === "n1")?.outOfSync).toBe(true);

    const log = () => readFileSync(join(c.agentDirs.get("n2")!, "frontends", "cap2.log"), "utf8");
    const attempts = (log().match(/resync started/g) ?? []).length;
    process.stdout.write(`capacity test: ${attempts} resync attempt(s) while n1's pool was full\n`);
    expect(attempts).toBeGreaterThanOrEqual(1);
    expect(attempts).toBeLessThanOrEqual(2);
    expect(log()).toContain("the replica is out of space; the resync is tried again later");
    rmSync(filler(), { force: true });
    execFileSync("sync", ["-f", mnt]);
    const t0 = Date.now();
    await eventually(async () => {
      const v = await volume("cap2");
      return v.replicas.every((r) => !r.outOfSync) && v.phase === VolumePhase.VOLUME_PHASE_HEALTHY ? true : undefined;
    }, 90_000, "cap2 resynced and healthy").catch((err: unknown) => {
      process.stdout.write(readFileSync(join(c.agentDirs.get("n2")!, "frontends", "cap2.log"), "utf8").split("\n").slice(-40).join("\n"));
      throw err;
    });
    process.stdout.write(`capacity test: full replica resynced ${Date.now() - t0} ms after space was freed\n`);
    const d = await c.stowctl(["volume", "detach", "cap2", "--node", "n2"]);
    expect(d.code, d.stderr).toBe(0);
    const [a, b] = (await volume("cap2")).replicas.map((r) => r.path);
    const cmp = await execa("qemu-img", ["compare", "-U", a!, b!], { reject: false });
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    for (const r of (await volume("cap2")).replicas) {
      const check = await execa("qemu-img", ["check", "-U", r.path], { reject: false });
      expect(check.exitCode, `${r.node}: ${check.stdout}${check.stderr}`).toBe(0);
    }
  });
});
