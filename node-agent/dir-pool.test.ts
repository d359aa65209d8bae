// Runs the real qemu-img in a temp directory.
import { mkdir, mkdtemp, open, readdir, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FailedPreconditionError, InvalidArgumentError } from "../lib/errors.js";
import { run } from "../lib/exec.js";
import { DirPool, type ReplicaSpec } from "./dir-pool.js";

const MiB = 2 ** 20;
let root: string;
let pool: DirPool;

async function qemuInfo(path: string): Promise<{ format: string; "virtual-size": number }> {
  return JSON.parse((await run("qemu-img", ["info", "--output=json", "-U", path])).stdout);
}

function spec(patch: Partial<ReplicaSpec> = {}): ReplicaSpec {
  return { id: "r-0000aaaa", volume: "vol1", sizeBytes: MiB, format: "qcow2", preallocation: "off", ...patch };
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "agent-dir-pool-"));
  await mkdir(join(root, "pool"));
  pool = new DirPool({ name: "default", type: "dir", path: join(root, "pool"), overcommitRatio: 2 });
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("DirPool with real qemu-img", () => {
  it("creates a qcow2 replica and reports it", async () => {
    const r = await pool.ensureReplica(spec());
    expect(r.created).toBe(true);
    expect(r.resized).toBe(false);
    expect(r.replica).toMatchObject({ id: "r-0000aaaa", volume: "vol1", pool: "default", format: "qcow2", virtualSizeBytes: MiB });
    expect(r.replica.path).toBe(join(root, "pool", "vol1.r-0000aaaa.qcow2"));
    const info = await qemuInfo(r.replica.path);
    expect(info.format).toBe("qcow2");
    expect(info["virtual-size"]).toBe(MiB);
  });

  it("creates a preallocated raw replica", async () => {
    const r = await pool.ensureReplica(spec({ id: "r-0000bbbb", volume: "vol.2", sizeBytes: 2 * MiB, format: "raw", preallocation: "falloc" }));
    expect(r.created).toBe(true);
    expect(r.replica.path).toBe(join(root, "pool", "vol.2.r-0000bbbb.raw"));
    const info = await qemuInfo(r.replica.path);
    expect(info.format).toBe("raw");
    expect(info["virtual-size"]).toBe(2 * MiB);
    expect(r.replica.allocatedBytes).toBeGreaterThanOrEqual(2 * MiB);
  });

  it("is idempotent: a second ensure changes nothing", async () => {
    const r = await pool.ensureReplica(spec());
    expect(r).toMatchObject({ created: false, resized: false });
    expect(r.replica.virtualSizeBytes).toBe(MiB);
  });

  it("grows a smaller image and never shrinks", async () => {
    const grown = await pool.ensureReplica(spec({ sizeBytes: 4 * MiB }));
    expect(grown).toMatchObject({ created: false, resized: true });
    expect(grown.replica.virtualSizeBytes).toBe(4 * MiB);
    expect((await qemuInfo(grown.replica.path))["virtual-size"]).toBe(4 * MiB);

    const smaller = await pool.ensureReplica(spec({ sizeBytes: MiB }));
    expect(smaller).toMatchObject({ created: false, resized: false });
    expect((await qemuInfo(smaller.replica.path))["virtual-size"]).toBe(4 * MiB);

    const raw = await pool.ensureReplica(spec({ id: "r-0000bbbb", volume: "vol.2", sizeBytes: 3 * MiB, format: "raw", preallocation: "full" }));
    expect(raw).toMatchObject({ created: false, resized: true });
    expect(raw.replica.allocatedBytes).toBeGreaterThanOrEqual(3 * MiB);
  });

  it("refuses the same id in another format or for another volume", async () => {
    await expect(pool.ensureReplica(spec({ format: "raw" }))).rejects.toThrow(FailedPreconditionError);
    await expect(pool.ensureReplica(spec({ volume: "other" }))).rejects.toThrow(/already exists in pool default as qcow2 image of volume vol1/);
  });

  it("rejects bad arguments before touching the disk", async () => {
    await expect(pool.ensureReplica(spec({ id: "r-0000cccc", format: "raw", preallocation: "metadata" }))).rejects.toThrow(InvalidArgumentError);
    await expect(pool.ensureReplica(spec({ id: "r-0000cccc", sizeBytes: 0 }))).rejects.toThrow(InvalidArgumentError);
    expect((await readdir(pool.path)).filter((n) => n.includes("r-0000cccc"))).toEqual([]);
  });

  it("rejects path traversal in ids and volume names", async () => {
    for (const id of ["../../etc/passwd", "r-0000aaaa/../../x", "r-../../../x", "r-0000AAAA", "r-0000aaa", "", "r-0000aaaa\0"]) {
      await expect(pool.ensureReplica(spec({ id }))).rejects.toThrow(InvalidArgumentError);
      await expect(pool.deleteReplica(id)).rejects.toThrow(InvalidArgumentError);
    }
    for (const volume of ["../x", "a/b", "..", "/abs", ".hidden", "", "UPPER"]) {
      await expect(pool.ensureReplica(spec({ id: "r-0000dddd", volume }))).rejects.toThrow(InvalidArgumentError);
    }
    expect((await readdir(root)).sort()).toEqual(["pool"]);
  });

  it("serializes concurrent ensures of one replica", async () => {
    const results = await Promise.all(Array.from({ length: 5 }, () => pool.ensureReplica(spec({ id: "r-0000eeee", volume: "vol3" }))));
    expect(results.filter((r) => r.created)).toHaveLength(1);
  });

  it("removes a temp file left by an interrupted create", async () => {
    const temp = join(pool.path, ".vol4.r-0000ffff.qcow2.tmp-abc123");
    await writeFile(temp, "half-made");
    const r = await pool.ensureReplica(spec({ id: "r-0000ffff", volume: "vol4" }));
    expect(r.created).toBe(true);
    await expect(stat(temp)).rejects.toThrow(/ENOENT/);
  });

  it("lists replicas and ignores foreign files, temp files, links and directories", async () => {
    await writeFile(join(pool.path, "notes.txt"), "not an image");
    await writeFile(join(pool.path, "vm.r-zzzzzzzz.qcow2"), "bad id");
    await writeFile(join(pool.path, "BAD.r-0000aaaa.qcow2"), "bad volume");
    await writeFile(join(pool.path, ".vol9.r-00009999.raw.tmp-01"), "temp");
    await symlink("/etc/hostname", join(pool.path, "link.r-00001111.raw"));
    await mkdir(join(pool.path, "dir.r-00002222.raw"));
    const list = await pool.list();
    expect(list.map((r) => [r.volume, r.id, r.format, r.virtualSizeBytes])).toEqual([
      ["vol.2", "r-0000bbbb", "raw", 3 * MiB],
      ["vol1", "r-0000aaaa", "qcow2", 4 * MiB],
      ["vol3", "r-0000eeee", "qcow2", MiB],
      ["vol4", "r-0000ffff", "qcow2", MiB],
    ]);
  });

  it("caches qemu-img info by mtime and size, and leaves out unreadable images", async () => {
    const path = join(pool.path, "vol4.r-0000ffff.qcow2");
    const t = 1_700_000_000; // whole seconds, so that restoring the mtime is exact
    await utimes(path, t, t);
    await pool.list();
    // Break the qcow2 header without changing size or mtime: the cached info is still used.
    const fh = await open(path, "r+");
    await fh.write(Buffer.alloc(512), 0, 512, 0);
    await fh.close();
    await utimes(path, t, t);
    expect((await pool.list()).map((r) => r.id)).toContain("r-0000ffff");
    // A new mtime invalidates the entry; qemu-img (told the format, never probing) now refuses it.
    await utimes(path, t, t + 5);
    expect((await pool.list()).map((r) => r.id)).not.toContain("r-0000ffff");
  });

  it("reports plausible stats", async () => {
    const s = await pool.stats();
    const list = await pool.list();
    expect(s.capacityBytes).toBeGreaterThan(0);
    expect(s.availableBytes).toBeGreaterThan(0);
    expect(s.availableBytes).toBeLessThanOrEqual(s.capacityBytes);
    expect(s.replicaCount).toBe(4); // includes the unreadable image: it still uses space
    expect(s.allocatedBytes).toBeGreaterThanOrEqual(list.reduce((sum, r) => sum + r.allocatedBytes, 0));
    expect(s.allocatedBytes).toBeGreaterThanOrEqual(3 * MiB);
    expect(s.templateBytes).toBe(0);
  });

  it("counts template copies apart from the replicas", async () => {
    const before = await pool.stats();
    await mkdir(join(root, "pool", "templates", "t1"), { recursive: true });
    await writeFile(join(root, "pool", "templates", "t1", "base.qcow2"), Buffer.alloc(2 * MiB, 1));
    const s = await pool.stats();
    expect(s.templateBytes).toBeGreaterThanOrEqual(2 * MiB);
    expect(s.templateBytes).toBeLessThan(3 * MiB);
    expect(s.allocatedBytes).toBe(before.allocatedBytes);
    expect(s.replicaCount).toBe(before.replicaCount);
    await rm(join(root, "pool", "templates"), { recursive: true });
  });

  it("deletes idempotently", async () => {
    const path = join(pool.path, "vol1.r-0000aaaa.qcow2");
    expect(await pool.deleteReplica("r-0000aaaa")).toEqual({ deleted: true });
    await expect(stat(path)).rejects.toThrow(/ENOENT/);
    expect(await pool.deleteReplica("r-0000aaaa")).toEqual({ deleted: false });
    expect(await pool.deleteReplica("r-12345678")).toEqual({ deleted: false });
    expect((await pool.list()).map((r) => r.id)).not.toContain("r-0000aaaa");
    // Foreign files are untouched.
    expect((await readdir(pool.path))).toContain("notes.txt");
  });
});
