// Reflink dedup of a pool with the real thing: etcd, controller, agents,
// qemu-storage-daemon, qemu-img/qemu-io and duperemove. Node n1's pool sits on a
// loop-mounted XFS made with reflink=1; n2's pool on the temp dir's filesystem
// (ext4 here), which must be refused. Two volumes get the same 48 MiB of random
// data through their frontends; the scheduled run (quiet hours around now) shares
// it and the filesystem's free space grows; both still read as written. Then a
// manual run while a writer keeps writing to one of the images through its
// qemu-storage-daemon: every write lands, the other data is unchanged.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";

const MiB = 2 ** 20;
const DATA = 48 * MiB;
const SIZE = 64 * MiB;
let c: TestCluster;
let fsDir = "";
let mnt = "";
let work = "";
let data: Buffer;

function mountXfs(): void {
  fsDir = mkdtempSync(join(tmpdir(), "stowage-xfs-"));
  mnt = join(fsDir, "mnt");
  mkdirSync(mnt);
  execFileSync("truncate", ["-s", "400M", join(fsDir, "fs.img")]);
  execFileSync("mkfs.xfs", ["-q", "-f", "-m", "reflink=1", join(fsDir, "fs.img")]);
  execFileSync("mount", ["-o", "loop", join(fsDir, "fs.img"), mnt]);
}

function unmountXfs(): void {
  if (!fsDir) return;
  try {
    execFileSync("umount", [mnt]);
  } catch {
    execFileSync("umount", ["-l", mnt]);
  }
  rmSync(fsDir, { recursive: true, force: true });
}

function freeBytes(): number {
  execFileSync("sync", ["-f", mnt]);
  const s = statfsSync(mnt);
  return s.bavail * s.bsize;
}

async function ok(args: string[]) {
  const r = await c.stowctl(args);
  expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(0);
  return r;
}

async function volume(name: string) {
  return (await (await c.leaderApi()).volumes.getVolume({ name })).volume!;
}

/** Attaches on n1 and returns the frontend's NBD URI. */
async function attach(name: string): Promise<string> {
  const r = await ok(["volume", "attach", name, "--node", "n1", "-o", "json"]);
  return JSON.parse(r.stdout).nbdUri;
}

function hhmm(d: Date): string {
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

beforeAll(async () => {
  mountXfs();
  work = mkdtempSync(join(tmpdir(), "stowage-dedup-data-"));
  data = randomBytes(DATA);
  writeFileSync(join(work, "data.raw"), data);
  c = await TestCluster.create();
  await c.startController("c1");
  mkdirSync(join(c.dir, "n1"), { recursive: true });
  await c.startAgent("n1", "127.0.0.81", { poolPath: join(mnt, "pool") });
  await c.startAgent("n2", "127.0.0.82");
  await c.waitNodesOnline(2);
  // Both volumes on n1: n2 takes no new replicas while cordoned.
  await ok(["node", "cordon", "n2"]);
  for (const v of ["da", "db"]) {
    await ok(["volume", "create", v, "--size", "64MiB", "--replicas", "1"]);
    const uri = await attach(v);
    await execa("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", join(work, "data.raw"), uri]);
    await ok(["volume", "detach", v, "--node", "n1"]);
  }
  await ok(["node", "uncordon", "n2"]);
}, 120_000);

afterAll(async () => {
  await c?.stop();
  unmountXfs();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("bad input", () => {
  it("refuses an ext4 pool, an unknown pool and a bad policy clearly, changing nothing", async () => {
    const before = await c.dumpState();
    const cases: [string[], number, RegExp][] = [
      [["pool", "dedup", "n2/default"], 1, /pool n2\/default is on ext4, which cannot share extents; put it on XFS \(mkfs\.xfs -m reflink=1\) or btrfs[\s\S]*hint: nothing was changed/],
      [["pool", "dedup", "n1/nope"], 1, /pool "n1\/nope" not found[\s\S]*hint: run 'stowctl pool list --node n1'/],
      [["pool", "dedup", "n9/default"], 1, /node "n9" not found/],
      [["pool", "set", "n1/default", "--dedup", "weekly"], 1, /dedup schedule must be "daily" or "off", got "weekly"/],
      [["pool", "set", "n1/default", "--quiet-hours", "1-5"], 1, /quiet hours must be HH:MM-HH:MM/],
    ];
    for (const [args, code, err] of cases) {
      const r = await c.stowctl(args);
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(code);
      expect(r.stderr).toMatch(err);
    }
    expect(await c.dumpState()).toEqual(before);
  });
});

describe("scheduled dedup", () => {
  it("runs within the quiet hours, shares the identical data, frees space, and both volumes still read as written", async () => {
    const freeBefore = freeBytes();
    const now = new Date();
    const end = new Date(now.getTime() + 30 * 60_000);
    // The window starts at the current minute: the first check of the schedule (within 3 s) finds it due.
    await ok(["pool", "set", "n1/default", "--dedup", "daily", "--quiet-hours", `${hhmm(now)}-${hhmm(end)}`]);
    const run = await eventually(async () => {
      const r = await ok(["pool", "get", "n1/default", "-o", "json"]);
      const last = JSON.parse(r.stdout).pool.dedup?.lastRun;
      return last?.state === "done" ? last : undefined;
    }, 60_000, "a scheduled dedup run");
    const freed = freeBytes() - freeBefore;
    process.stdout.write(
      `pool-dedup test: scheduled run deduplicated ${(run.deduplicatedBytes / MiB).toFixed(1)} MiB, saved ${(run.savedBytes / MiB).toFixed(1)} MiB, ` +
        `agent saw ${(run.freedBytes / MiB).toFixed(1)} MiB freed, test saw ${(freed / MiB).toFixed(1)} MiB freed (of ${DATA / MiB} MiB duplicated)\n`,
    );
    expect(run).toMatchObject({ trigger: "schedule", filesystem: "xfs" });
    expect(run.deduplicatedBytes).toBeGreaterThan(0.8 * DATA);
    expect(freed).toBeGreaterThan(0.8 * DATA);
    const text = await ok(["pool", "get", "n1/default"]);
    expect(text.stdout).toMatch(/Dedup:\s+daily, quiet hours \d\d:\d\d-\d\d:\d\d \(already ran in this window\)/);
    expect(text.stdout).toMatch(/Last dedup:\s+done at .* \(schedule, xfs\): \d+(\.\d+)?MiB deduplicated/);

    const [a, b] = [(await volume("da")).replicas[0]!.path, (await volume("db")).replicas[0]!.path];
    const cmp = await execa("qemu-img", ["compare", "-U", a, b], { reject: false });
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    const src = await execa("qemu-img", ["compare", "-U", "-f", "raw", join(work, "data.raw"), a], { reject: false });
    expect(src.exitCode, src.stdout + src.stderr).toBe(0);
  });
});

describe("manual dedup beside a live writer", () => {
  it("keeps every write of a qemu-storage-daemon writing during the run, and the shared data intact", async () => {
    const uri = await attach("da");
    // Rewrites 8-16 MiB of da (inside the deduplicated range) again and again, through its frontend and daemon.
    const writes = Array.from({ length: 400 }, (_, i) => `write -P 0x${(0x30 + (i % 16)).toString(16)} ${8 * MiB + (i % 8) * MiB} 1M`);
    let writerDone = 0;
    const writer = execa("qemu-io", ["-f", "raw", ...writes.flatMap((w) => ["-c", w]), uri], { reject: false }).then((r) => {
      writerDone = Date.now();
      return r;
    });
    const t0 = Date.now();
    const r = await ok(["pool", "dedup", "n1/default", "-o", "json"]);
    const t1 = Date.now();
    const w = await writer;
    expect(w.exitCode, w.stderr).toBe(0);
    expect(w.stdout).not.toMatch(/failed|error/i);
    const res = JSON.parse(r.stdout);
    process.stdout.write(`pool-dedup test: manual run ${t1 - t0} ms, writer finished ${writerDone - t0} ms after the run began; ${JSON.stringify(res.run)}\n`);
    expect(res.run).toMatchObject({ state: "done", trigger: "manual" });
    expect(writerDone).toBeGreaterThan(t0);

    // The last write of each 1 MiB step is what the region must hold; the rest of da is the original data.
    const last = new Map<number, number>();
    writes.forEach((_, i) => last.set(i % 8, 0x30 + (i % 16)));
    for (const [step, pattern] of last) {
      const rd = await execa("qemu-io", ["-f", "raw", "-c", `read -P 0x${pattern.toString(16)} ${8 * MiB + step * MiB} 1M`, uri], { reject: false });
      expect(rd.stdout, `step ${step}`).not.toMatch(/Pattern verification failed/);
    }
    await ok(["volume", "detach", "da", "--node", "n1"]);
    const expected = Buffer.alloc(SIZE);
    data.copy(expected);
    for (const [step, pattern] of last) expected.fill(pattern, 8 * MiB + step * MiB, 9 * MiB + step * MiB);
    writeFileSync(join(work, "expected-da.raw"), expected);
    const [a, b] = [(await volume("da")).replicas[0]!.path, (await volume("db")).replicas[0]!.path];
    const cmpA = await execa("qemu-img", ["compare", "-U", "-f", "raw", join(work, "expected-da.raw"), a], { reject: false });
    expect(cmpA.exitCode, cmpA.stdout + cmpA.stderr).toBe(0);
    const expectedB = Buffer.alloc(SIZE);
    data.copy(expectedB);
    writeFileSync(join(work, "expected-db.raw"), expectedB);
    const cmpB = await execa("qemu-img", ["compare", "-U", "-f", "raw", join(work, "expected-db.raw"), b], { reject: false });
    expect(cmpB.exitCode, cmpB.stdout + cmpB.stderr).toBe(0);
    for (const p of [a, b]) {
      const check = await execa("qemu-img", ["check", "-U", p], { reject: false });
      expect(check.exitCode, check.stdout + check.stderr).toBe(0);
    }
  });
});
