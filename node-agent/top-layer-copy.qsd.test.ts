// The rebuild copy of a linked clone's replica against real parts: a template
// image, a clone of it exported by a real qemu-storage-daemon (as the agent
// exports replicas), and a new clone over another copy of the template filled
// by DirPool.copyFrom through qemu-nbd. The result reads the same as the source
// and holds only the source's own writes.
import { copyFile, chmod, mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Qsd } from "../test/harness/qsd.js";
import { DirPool } from "./dir-pool.js";
import { parseMap } from "./qemu-img.js";
import { QsdSupervisor } from "./qsd/supervisor.js";

const MiB = 2 ** 20;
const SRC = "r-5a0c1e000001";
let root: string;
let pool: DirPool;
let s: QsdSupervisor;
let template: string;
let sourcePath: string;
let sourceUri: string;

const io = async (target: string, args: string[], ...cmds: string[]) => {
  const r = await execa("qemu-io", [...args, ...cmds.flatMap((c) => ["-c", c]), target], { reject: false });
  if (r.exitCode !== 0 || /fail|error/i.test(r.stdout)) throw new Error(`qemu-io ${cmds.join("; ")}: ${r.stdout}${r.stderr}`);
};

/** Bytes of data the image holds in its own layer (qemu-img map depth 0, data). */
async function ownData(path: string): Promise<number> {
  const m = parseMap((await execa("qemu-img", ["map", "-U", "--output=json", "-f", "qcow2", path])).stdout);
  return m.filter((e) => e.depth === 0 && e.present && e.data).reduce((n, e) => n + e.length, 0);
}

const compare = (a: string, b: string) => execa("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "qcow2", a, b], { reject: false });
const backingOf = async (path: string) => JSON.parse((await execa("qemu-img", ["info", "-U", "--output=json", path])).stdout)["backing-filename"] as string | undefined;

/** A new linked clone replica over the second copy of the template (another node's copy, in life). */
async function newClone(id: string): Promise<string> {
  const r = await pool.ensureReplica({ id, volume: "lc", sizeBytes: 64 * MiB, format: "qcow2", preallocation: "off", backing: { path: join(root, "pool", "templates", "copy2.qcow2") } });
  return r.replica.path;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "top-layer-copy-"));
  await mkdir(join(root, "pool", "templates"), { recursive: true });
  pool = new DirPool({ name: "default", type: "dir", path: join(root, "pool"), overcommitRatio: 2 });
  // The template: 16 MiB of data from 0 and 1 MiB at 40 MiB, in a 64 MiB image; two read-only copies.
  template = join(root, "pool", "templates", "copy1.qcow2");
  await execa("qemu-img", ["create", "-q", "-f", "qcow2", template, String(64 * MiB)]);
  await io(template, ["-f", "qcow2"], "write -P 0xaa 0 16M", "write -P 0xab 40M 1M");
  await copyFile(template, join(root, "pool", "templates", "copy2.qcow2"));
  for (const t of ["copy1", "copy2"]) await chmod(join(root, "pool", "templates", `${t}.qcow2`), 0o444);
  // The source replica: a clone with its own data, zeros written over template data (both as
  // write-zeroes and as data of zeros), and data past the template's.
  sourcePath = join(root, "pool", `lc.${SRC}.qcow2`);
  await execa("qemu-img", ["create", "-q", "-f", "qcow2", "-b", template, "-F", "qcow2", sourcePath, String(64 * MiB)]);
  await io(sourcePath, ["-f", "qcow2"], "write -P 0xbb 1M 1M", "write -z 4M 1M", "write -P 0 8M 64k", "write -P 0xcc 50M 512k", "write -P 0xdd 40M 4k");
  s = new QsdSupervisor({ dataDir: join(root, "qsd"), nbd: { type: "unix" } });
  await s.ensureRunning([]);
  sourceUri = (await s.exports.ensureExport({ replicaId: SRC, path: sourcePath, format: "qcow2", writable: true })).nbdUri;
});

afterAll(async () => {
  await s?.stop().catch(() => undefined);
  if (root) await rm(root, { recursive: true, force: true });
});

describe("DirPool.copyFrom of a linked clone", () => {
  it("copies only the source's own layer: same content, the template's data not duplicated", async () => {
    const target = await newClone("r-5a0c1e000002");
    const r = await pool.copyFrom("r-5a0c1e000002", sourceUri, 0);
    // What was copied: the clone's own data, not its 64 MiB.
    expect(r.bytes).toBeGreaterThanOrEqual(MiB + 512 * 1024);
    expect(r.bytes).toBeLessThan(4 * MiB);
    const cmp = await compare(sourcePath, target);
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    expect(await backingOf(target)).toBe(join(root, "pool", "templates", "copy2.qcow2"));
    // The zeros stay zeros over the template's 0xaa, not holes it shows through.
    await io(target, ["-f", "qcow2", "-r"], "read -P 0 4M 1M", "read -P 0 8M 64k", "read -P 0xaa 9M 1M", "read -P 0xdd 40M 4k", `read -P 0xab ${41 * MiB - 4096} 4k`);
    // Own data: 1 MiB + 512 KiB + the 64 KiB cluster at 40M; the template holds 17 MiB.
    const own = await ownData(target);
    expect(own).toBeGreaterThanOrEqual(MiB + 512 * 1024);
    expect(own).toBeLessThanOrEqual(2 * MiB);
    expect(own).toBeLessThanOrEqual(await ownData(sourcePath));
    const onDisk = (await stat(target)).blocks * 512;
    console.log(`top-layer copy: ${own} B of own data, ${onDisk} B on disk; source ${await ownData(sourcePath)} B own data`);
    expect(onDisk).toBeLessThan(4 * MiB);
  });

  it("a returning replica: what it holds where the source reads the template or nothing is overwritten", async () => {
    const target = await newClone("r-5a0c1e000003");
    // Writes only this replica got (a torn write, or one a revert undid on the others).
    await io(target, ["-f", "qcow2"], "write -P 0xee 2M 64k", "write -P 0xef 60M 64k", "write -P 0xbe 1M 4k");
    const r = await pool.copyFrom("r-5a0c1e000003", sourceUri, 0);
    expect(r.bytes).toBeLessThan(4 * MiB);
    const cmp = await compare(sourcePath, target);
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    expect(await ownData(target)).toBeLessThanOrEqual(2 * MiB + 128 * 1024);
  });

  it("keeps to the rate limit", async () => {
    await newClone("r-5a0c1e000004");
    const t0 = Date.now();
    // About 1.6 MiB of data in 2 MiB requests at 1 MiB/s: the last read waits at least a second.
    await pool.copyFrom("r-5a0c1e000004", sourceUri, MiB);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1_000);
    const cmp = await compare(sourcePath, join(root, "pool", "lc.r-5a0c1e000004.qcow2"));
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
  });

  it("a source lost mid-copy fails the copy and leaves no qemu-nbd holding the image; the next copy completes it", async () => {
    const target = await newClone("r-5a0c1e000006");
    // At 512 KiB/s the second request waits a few seconds: the export goes meanwhile.
    const copying = pool.copyFrom("r-5a0c1e000006", sourceUri, 512 * 1024);
    await new Promise((r) => setTimeout(r, 500));
    await s.exports.removeExport(SRC, { force: true });
    await expect(copying).rejects.toThrow();
    const left = await execa("pgrep", ["-f", `qemu-nbd.*${target}`], { reject: false });
    expect(left.stdout.trim()).toBe("");
    // Unlocked: qemu-img opens it for writing.
    await execa("qemu-img", ["check", "-r", "leaks", "-f", "qcow2", target]);
    sourceUri = (await s.exports.ensureExport({ replicaId: SRC, path: sourcePath, format: "qcow2", writable: true })).nbdUri;
    await pool.copyFrom("r-5a0c1e000006", sourceUri, 0);
    const cmp = await compare(sourcePath, target);
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
  });

  it("falls back to the whole content when the source's export offers no allocation depth", async () => {
    // Another daemon exporting a copy of the source without allocation depth (as exports made before it were).
    const copy = join(root, "old-export.qcow2");
    await execa("qemu-img", ["convert", "-U", "-f", "qcow2", "-O", "qcow2", "-B", template, "-F", "qcow2", sourcePath, copy]);
    const old = await Qsd.start({ dir: join(root, "old"), image: copy, exportName: "old" });
    try {
      const target = await newClone("r-5a0c1e000005");
      await pool.copyFrom("r-5a0c1e000005", old.uri, 0);
      const cmp = await compare(sourcePath, target);
      expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
      expect(await ownData(target)).toBeGreaterThan(16 * MiB); // flattened
    } finally {
      await old.stop();
    }
  });
});
