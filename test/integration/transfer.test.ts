// stowctl volume import / export against a real cluster: a vmdk file served by
// stowctl's qemu-nbd is copied into a 2-replica volume (both replicas end equal
// to the source), exported back as qcow2 and raw, an import interrupted by a
// controller crash is finished by repeating it, and bad requests change nothing.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";
import { getVolume } from "../harness/replica-helpers.js";

const IPS: Record<string, string> = { t1: "127.0.0.141", t2: "127.0.0.142" };
let c: TestCluster;
let dir: string;
let raw: string;

const qemuImg = (args: string[]) => execa("qemu-img", args, { reject: false });

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1", { faults: ["import-volume:copied@imp2"] });
  await c.startController("c2");
  for (const n of Object.keys(IPS)) await c.startAgent(n, IPS[n]!);
  await c.waitNodesOnline(2);
  dir = mkdtempSync(join(tmpdir(), "stowage-transfer-"));
  // A 48 MiB disk with data in three places and holes between.
  raw = join(dir, "src.raw");
  expect((await qemuImg(["create", "-f", "raw", raw, "48M"])).exitCode).toBe(0);
  const io = await execa("qemu-io", ["-f", "raw", "-c", "write -P 0x3c 0 1M", "-c", "write -P 0x7e 20M 3M", "-c", "write -P 0x11 47M 1M", raw], { reject: false });
  expect(io.exitCode, io.stderr).toBe(0);
  expect((await qemuImg(["convert", "-f", "raw", "-O", "vmdk", raw, join(dir, "src.vmdk")])).exitCode).toBe(0);
});

afterAll(async () => {
  await c?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("import and export", () => {
  it("imports a vmdk into every replica and exports it back byte for byte", async () => {
    const imp = await c.stowctl(["volume", "import", join(dir, "src.vmdk"), "imp1", "--replicas", "2", "-o", "json"]);
    expect(imp.code, imp.stderr).toBe(0);
    const v = await getVolume(c, "imp1");
    expect(v.phase).toBe(2);
    expect(v.spec!.sizeBytes).toBe(48 * 1024 * 1024);
    expect(v.replicas).toHaveLength(2);
    for (const r of v.replicas) {
      const cmp = await qemuImg(["compare", "-U", "-f", "qcow2", "-F", "raw", r.path, raw]);
      expect(cmp.exitCode, `${r.node}: ${cmp.stdout}${cmp.stderr}`).toBe(0);
    }
    // Thin: only the written 5 MiB (and metadata) are allocated in the first replica's image.
    expect(v.replicas[0]!.allocatedBytes).toBeLessThan(12 * 1024 * 1024);

    for (const [format, file] of [["qcow2", "out.qcow2"], ["raw", "out.raw"]] as const) {
      const out = join(dir, file);
      const ex = await c.stowctl(["volume", "export", "imp1", out, "--format", format]);
      expect(ex.code, ex.stderr).toBe(0);
      const cmp = await qemuImg(["compare", "-f", format, "-F", "raw", out, raw]);
      expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    }
    expect(existsSync(join(dir, ".out.qcow2.partial"))).toBe(false);
    // The export lease is gone: the volume attaches again.
    const att = await c.stowctl(["volume", "attach", "imp1", "--node", v.replicas[0]!.node]);
    expect(att.code, att.stderr).toBe(0);
    // An attached volume is not exported (its content would change while read).
    const busy = await c.stowctl(["volume", "export", "imp1", join(dir, "busy.qcow2")]);
    expect(busy.code).not.toBe(0);
    expect(busy.stderr).toMatch(/attached.*snapshot and clone/s);
    expect(existsSync(join(dir, "busy.qcow2"))).toBe(false);
    expect((await c.stowctl(["volume", "detach", "imp1", "--node", v.replicas[0]!.node])).code).toBe(0);
  });

  it("finishes an import whose controller died after the copy when the command is repeated", async () => {
    expect((await c.leaderApi()).address).toBe(c.addressOf("c1"));
    const first = await c.stowctl(["volume", "import", join(dir, "src.vmdk"), "imp2"]);
    expect(first.code).not.toBe(0);
    await eventually(async () => !c.controllers.get("c1")!.running, 5_000, "c1 dead at its fault point");
    // Meanwhile the half-imported volume cannot be attached.
    const node = (await getVolume(c, "imp2")).replicas[0]!.node;
    const att = await c.stowctl(["volume", "attach", "imp2", "--node", node]);
    expect(att.stderr).toMatch(/being imported/);
    const again = await c.stowctl(["volume", "import", join(dir, "src.vmdk"), "imp2"]);
    expect(again.code, again.stderr).toBe(0);
    for (const r of (await getVolume(c, "imp2")).replicas) {
      const cmp = await qemuImg(["compare", "-U", "-f", "qcow2", "-F", "raw", r.path, raw]);
      expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    }
  });

  it("refuses bad requests clearly and changes nothing", async () => {
    writeFileSync(join(dir, "notes.txt"), "not a disk\n");
    const before = JSON.stringify((await getVolume(c, "imp1")).replicas.map((r) => [r.id, r.path]));
    const exists = join(dir, "exists.qcow2");
    writeFileSync(exists, "keep me");
    const cases: [string[], RegExp][] = [
      [["volume", "import", join(dir, "nosuch.qcow2"), "x1"], /no such file/],
      [["volume", "import", join(dir, "src.vmdk"), "imp1"], /already exists.*never overwrites/s],
      [["volume", "import", join(dir, "src.vmdk"), "../x"], /invalid volume name/],
      [["volume", "import", join(dir, "src.vmdk"), "x2", "--source-format", "iso"], /not one of/],
      [["volume", "import", join(dir, "src.vmdk"), "x3", "--format", "vmdk"], /expected qcow2 or raw/],
      [["volume", "export", "imp1", exists], /exists: choose another name, or pass --force/],
      [["volume", "export", "nosuch", join(dir, "n.qcow2")], /not found/],
      [["volume", "export", "imp1", join(dir, "o.iso"), "--format", "iso"], /expected one of/],
    ];
    for (const [args, re] of cases) {
      const r = await c.stowctl(args);
      expect(r.code, args.join(" ")).not.toBe(0);
      expect(r.stderr, args.join(" ")).toMatch(re);
      expect(r.stderr, args.join(" ")).not.toMatch(/\n\s+at /);
    }
    expect(JSON.stringify((await getVolume(c, "imp1")).replicas.map((r) => [r.id, r.path]))).toBe(before);
    for (const n of ["x1", "x2", "x3", "nosuch"]) expect((await c.stowctl(["volume", "get", n])).code).not.toBe(0);
    expect((await execa("cat", [exists])).stdout).toBe("keep me");
  });
});
