// A restore whose controller dies while the backup is served: the backup's export (a
// qemu-nbd over a raw file of the backup's size on the store node) is recorded in etcd
// before it is started, so the next leader's sweep stops it and removes its file; the
// restore repeated afterwards makes the volume, equal to what was backed up.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";
import { getVolume } from "../harness/replica-helpers.js";

const IPS: Record<string, string> = { r1: "127.0.0.151", r2: "127.0.0.152" };
let c: TestCluster;
let dir: string;

async function ok(args: string[]): Promise<string> {
  const r = await c.stowctl(args);
  expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(0);
  return r.stdout;
}

/** The store node's restore exports: files and whether their qemu-nbd still runs. */
function exportsOn(node: string): { files: string[]; alive: boolean } {
  const d = join(c.agentDirs.get(node)!, "backups", "exports");
  const files = existsSync(d) ? readdirSync(d).filter((f) => f.startsWith("rs-")) : [];
  let alive = false;
  for (const f of files.filter((n) => n.endsWith(".pid"))) {
    try {
      process.kill(Number(readFileSync(join(d, f), "utf8").trim()), 0);
      alive = true;
    } catch {
      // gone
    }
  }
  return { files, alive };
}

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1", { faults: ["restore:served@back1"] });
  await c.startController("c2");
  for (const n of Object.keys(IPS)) await c.startAgent(n, IPS[n]!);
  await c.waitNodesOnline(2);
  dir = mkdtempSync(join(tmpdir(), "stowage-restore-crash-"));
});

afterAll(async () => {
  // Should the test fail half-way, no export outlives it.
  for (const node of Object.keys(IPS)) {
    const d = c && join(c.agentDirs.get(node) ?? "", "backups", "exports");
    for (const f of d && existsSync(d) ? readdirSync(d).filter((n) => n.endsWith(".pid")) : []) {
      try {
        process.kill(Number(readFileSync(join(d!, f), "utf8").trim()), "SIGTERM");
      } catch {
        // gone
      }
    }
  }
  await c?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("restore interrupted by a controller crash", () => {
  it("leaves no export running once a leader is back, and finishes when repeated", async () => {
    await ok(["volume", "create", "orig", "--size", "32MiB", "--replicas", "1"]);
    const node = (await getVolume(c, "orig")).replicas[0]!.node;
    const att = JSON.parse(await ok(["volume", "attach", "orig", "--node", node, "-o", "json"]));
    const io = await execa("qemu-io", ["-f", "raw", "-c", "write -P 0x5c 0 3M", "-c", "write -P 0x2d 17M 2M", att.nbdUri], { reject: false });
    expect(io.exitCode, io.stderr).toBe(0);
    await ok(["volume", "detach", "orig", "--node", node]);
    const b = JSON.parse(await ok(["backup", "create", "orig", "-o", "json"])).backup;
    const ref = `${b.volume}@${b.id}`;

    expect((await c.leaderApi()).address).toBe(c.addressOf("c1"));
    const first = await c.stowctl(["backup", "restore", ref, "--to", "back1"]);
    expect(first.code).not.toBe(0);
    await eventually(async () => !c.controllers.get("c1")!.running, 5_000, "c1 dead at its fault point");
    // The export the dead leader started is still up, and recorded.
    expect(exportsOn(b.node), first.stderr).toMatchObject({ alive: true });
    expect(Object.keys(await c.dumpState()).some((k) => k.includes("/restore-exports/rs-back1"))).toBe(true);

    // c2 leads now; its sweep stops the export and drops the record.
    await eventually(async () => !exportsOn(b.node).alive && exportsOn(b.node).files.length === 0, 30_000, "the leftover export stopped by the new leader");
    await eventually(async () => !Object.keys(await c.dumpState()).some((k) => k.includes("/restore-exports/")), 10_000, "the record removed");

    // Repeating the restore finishes it: the volume holds what was backed up.
    await ok(["backup", "restore", ref, "--to", "back1"]);
    const v = await getVolume(c, "back1");
    const orig = await getVolume(c, "orig");
    const cmp = await execa("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "qcow2", v.replicas[0]!.path, orig.replicas[0]!.path], { reject: false });
    expect(cmp.exitCode, cmp.stdout + cmp.stderr).toBe(0);
    expect(exportsOn(b.node).files).toEqual([]);
    expect(Object.keys(await c.dumpState()).some((k) => k.includes("/restore-exports/"))).toBe(false);
  });
});
