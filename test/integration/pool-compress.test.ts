// Recompression of cold images with the real thing: etcd, controller, agent,
// qemu-storage-daemon, qemu-img/qemu-io. Volume "cz" gets 64 MiB through its
// frontend (16 MiB of log-like text, 8 MiB of random bytes, the rest zeroes) and
// is detached; a manual run rewrites its image with zstd clusters: smaller, still
// equal to what was written, and it attaches and reads back. An attached volume
// and one with a snapshot are skipped with the reason. Bad input changes nothing.
// The schedule runs within the quiet hours and leaves an unchanged image alone.
// An attach that meets a rewrite of its image waits for it (the replica's lock).
import { randomBytes } from "node:crypto";
import { copyFileSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";

const MiB = 2 ** 20;
const SIZE = 64 * MiB;
let c: TestCluster;
let work = "";

async function ok(args: string[]) {
  const r = await c.stowctl(args);
  expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(0);
  return r;
}

async function replicaPath(name: string): Promise<string> {
  return (await (await c.leaderApi()).volumes.getVolume({ name })).volume!.replicas[0]!.path;
}

async function attach(name: string): Promise<string> {
  return JSON.parse((await ok(["volume", "attach", name, "--node", "n1", "-o", "json"])).stdout).nbdUri;
}

function hhmm(d: Date): string {
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

/** 16 MiB of log-like text, 8 MiB of random bytes, zeroes up to 64 MiB. */
function content(seed: number): Buffer {
  const b = Buffer.alloc(SIZE);
  let off = 0;
  for (let i = 0; off < 16 * MiB; i++) off += b.write(`2026-11-27T15:${String(i % 60).padStart(2, "0")}:00Z host${seed} kernel: request ${i} served in ${i % 997} us\n`, off);
  randomBytes(8 * MiB).copy(b, 16 * MiB);
  return b;
}

/** Writes the raw file into a new 1-replica volume through its frontend, then detaches. */
async function volumeWith(name: string, raw: string): Promise<void> {
  await ok(["volume", "create", name, "--size", "64MiB", "--replicas", "1"]);
  const uri = await attach(name);
  await execa("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", raw, uri]);
  await ok(["volume", "detach", name, "--node", "n1"]);
}

const allocated = (p: string) => statSync(p).blocks * 512;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "stowage-compress-"));
  for (const n of [1, 2, 3, 4]) writeFileSync(join(work, `c${n}.raw`), content(n));
  c = await TestCluster.create();
  await c.startController("c1");
  await c.startAgent("n1", "127.0.0.91");
  await c.waitNodesOnline(1);
  await volumeWith("cz", join(work, "c1.raw"));
  await volumeWith("catt", join(work, "c2.raw"));
  await volumeWith("csnap", join(work, "c3.raw"));
  await ok(["snapshot", "create", "csnap@s1"]);
  await attach("catt");
}, 180_000);

afterAll(async () => {
  await c?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("bad input", () => {
  it("refuses unknown pools and nodes and bad policies clearly, changing nothing", async () => {
    const before = await c.dumpState();
    const cases: [string[], RegExp][] = [
      [["pool", "compress", "n1/nope"], /pool "n1\/nope" not found[\s\S]*hint: run 'stowctl pool list --node n1'/],
      [["pool", "compress", "n9/default"], /node "n9" not found/],
      [["pool", "compress", "n1/default", "--cold-after", "soon"], /cold-after must be a whole number of s, m, h or d[\s\S]*nothing was changed/],
      [["pool", "set", "n1/default", "--compress", "weekly"], /compress schedule must be "daily" or "off", got "weekly"/],
      [["pool", "set", "n1/default", "--cold-after", "1.5d"], /cold-after must be a whole number/],
    ];
    for (const [args, err] of cases) {
      const r = await c.stowctl(args);
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(1);
      expect(r.stderr).toMatch(err);
    }
    expect(await c.dumpState()).toEqual(before);
  });
});

describe("manual compression", () => {
  it("leaves every image alone under the default cold-after (7d): they were written minutes ago", async () => {
    const r = JSON.parse((await ok(["pool", "compress", "n1/default", "-o", "json"])).stdout).run;
    expect(r).toMatchObject({ state: "done", trigger: "manual", compressed: 0, coldAfterMs: 7 * 86_400_000 });
    const cz = r.images.find((i: { volume: string }) => i.volume === "cz");
    expect(cz.reason).toMatch(/not cold yet \(cold after 7d\)/);
  });

  it("rewrites the detached image smaller with equal content, skips the attached and the snapshotted one, and the volume reads back", async () => {
    const path = await replicaPath("cz");
    const original = join(work, "cz-before.qcow2");
    copyFileSync(path, original);
    const before = allocated(path);
    const t0 = Date.now();
    const res = JSON.parse((await ok(["pool", "compress", "n1/default", "--cold-after", "0s", "-o", "json"])).stdout);
    const ms = Date.now() - t0;
    const after = allocated(path);
    const byVolume = new Map<string, { action: string; reason: string; bytesBefore: number; bytesAfter: number; durationMs: number }>(
      res.run.images.map((i: { volume: string }) => [i.volume, i]),
    );
    process.stdout.write(
      `pool-compress test: cz ${(before / MiB).toFixed(1)} MiB -> ${(after / MiB).toFixed(1)} MiB in ${byVolume.get("cz")?.durationMs} ms ` +
        `(run ${ms} ms, saved ${(Number(res.run.savedBytes) / MiB).toFixed(1)} MiB); ${JSON.stringify([...byVolume.values()].map((i) => i.reason))}\n`,
    );
    expect(res.run).toMatchObject({ state: "done", compressed: 1, skipped: 2 });
    expect(byVolume.get("cz")).toMatchObject({ action: "compressed", bytesBefore: before, bytesAfter: after });
    expect(byVolume.get("catt")).toMatchObject({ action: "skipped", reason: expect.stringMatching(/in use: exported by the storage daemon/) });
    expect(byVolume.get("csnap")).toMatchObject({ action: "skipped", reason: expect.stringMatching(/has 1 internal snapshot, which a rewrite would lose/) });
    // 16 MiB of text shrinks to a fraction; the 8 MiB of random bytes cannot.
    expect(before - after).toBeGreaterThan(12 * MiB);
    expect(Number(res.run.savedBytes)).toBe(before - after);

    const info = JSON.parse((await execa("qemu-img", ["info", "-U", "--output=json", path])).stdout);
    expect(info["format-specific"].data["compression-type"]).toBe("zstd");
    for (const [a, fa] of [[original, "qcow2"], [join(work, "c1.raw"), "raw"]] as const) {
      const cmp = await execa("qemu-img", ["compare", "-U", "-f", fa, "-F", "qcow2", a, path], { reject: false });
      expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    }
    const check = await execa("qemu-img", ["check", "-U", path], { reject: false });
    expect(check.exitCode, check.stdout + check.stderr).toBe(0);

    const uri = await attach("cz");
    await execa("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri, join(work, "cz-read.raw")]);
    const cmp = await execa("qemu-img", ["compare", "-f", "raw", "-F", "raw", join(work, "c1.raw"), join(work, "cz-read.raw")], { reject: false });
    expect(cmp.exitCode, cmp.stdout).toBe(0);
    await ok(["volume", "detach", "cz", "--node", "n1"]);

    const get = await ok(["pool", "get", "n1/default"]);
    expect(get.stdout).toMatch(/Saved by compression:\s+\d+(\.\d+)?MiB/);
    expect(get.stdout).toMatch(/Last compress:\s+done at .* \(manual, cold after 0s\): 1 of 3 images recompressed/);
  });
});

describe("scheduled compression", () => {
  it("runs within the quiet hours and does not read an image it already rewrote and nobody changed", async () => {
    const now = new Date();
    await ok(["pool", "set", "n1/default", "--compress", "daily", "--cold-after", "0s", "--quiet-hours", `${hhmm(now)}-${hhmm(new Date(now.getTime() + 30 * 60_000))}`]);
    const run = await eventually(async () => {
      const last = JSON.parse((await ok(["pool", "get", "n1/default", "-o", "json"])).stdout).pool.compress?.lastRun;
      return last?.state === "done" && last.trigger === "schedule" ? last : undefined;
    }, 60_000, "a scheduled compression run");
    const cz = run.images.find((i: { volume: string }) => i.volume === "cz");
    expect(cz).toMatchObject({ action: "skipped", reason: "already recompressed, unchanged since" });
    const text = await ok(["pool", "get", "n1/default"]);
    expect(text.stdout).toMatch(/Compress:\s+daily, images unmodified for 0s, quiet hours \d\d:\d\d-\d\d:\d\d \(already ran in this window\)/);
    await ok(["pool", "set", "n1/default", "--compress", "off"]);
  });
});

describe("attach during a rewrite", () => {
  it("waits for the image's rewrite (or makes it give up) and then reads what was written", async () => {
    await volumeWith("cbig", join(work, "c4.raw"));
    const compress = c.stowctl(["pool", "compress", "n1/default", "--cold-after", "0s", "-o", "json"]);
    // Attach as soon as the run shows as a job: it meets the rewrite of cbig or comes just before it.
    let settled = false;
    void compress.then(() => (settled = true));
    // (A run quicker than a look at the job list is over already: the attach then comes after it.)
    await eventually(async () => settled || (await ok(["job", "list", "-o", "json"])).stdout.includes('"compress"'), 30_000, "the compress job");
    const t0 = Date.now();
    const uri = await attach("cbig");
    const attachMs = Date.now() - t0;
    const r = await compress;
    expect(r.code, r.stderr).toBe(0);
    const big = JSON.parse(r.stdout).run.images.find((i: { volume: string }) => i.volume === "cbig");
    process.stdout.write(`pool-compress test: attach during the run took ${attachMs} ms; cbig: ${big.action} ${big.reason}\n`);
    await execa("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri, join(work, "cbig-read.raw")]);
    const cmp = await execa("qemu-img", ["compare", "-f", "raw", "-F", "raw", join(work, "c4.raw"), join(work, "cbig-read.raw")], { reject: false });
    expect(cmp.exitCode, cmp.stdout).toBe(0);
    // Written through the export after the run: lands in the file the daemon has open, the one under the name.
    await execa("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 0 1M", uri]);
    await ok(["volume", "detach", "cbig", "--node", "n1"]);
    const rd = await execa("qemu-io", ["-f", "qcow2", "-r", "-U", "-c", "read -P 0x5a 0 1M", await replicaPath("cbig")]);
    expect(rd.stdout).not.toMatch(/Pattern verification failed/);
  });
});
