// A replica host of an ATTACHED volume dies for good while the volume is written:
// after the grace period the controller places a replacement on the third host,
// and the volume's frontend copies it (only the allocated regions) while the
// writes go on; afterwards the replicas hold the same bytes.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "../harness/cluster.js";
import { sleep } from "../harness/processes.js";
import { getVolume, sameContent, startControllerWith, storedSpec, waitSettled } from "../harness/replica-helpers.js";

const FLAGS = ["--replica-grace", "3s", "--node-ttl", "3"];
const IPS: Record<string, string> = { a1: "127.0.0.121", a2: "127.0.0.122", a3: "127.0.0.123" };
let c: TestCluster;

beforeAll(async () => {
  c = await TestCluster.create();
  await startControllerWith(c, "c1", FLAGS);
  for (const n of ["a1", "a2", "a3"]) await c.startAgent(n, IPS[n]!);
  await c.waitNodesOnline(3);
});

afterAll(async () => {
  await c?.stop();
});

describe("rebuild of an attached volume", () => {
  it("replaces a dead host's replica past the grace period and copies it through the frontend while writes go on", async () => {
    expect((await c.stowctl(["volume", "create", "live1", "--size", "256MiB", "--replicas", "2"])).code).toBe(0);
    const v0 = await getVolume(c, "live1");
    const [local, lost] = v0.replicas;
    const third = Object.keys(IPS).find((n) => !v0.replicas.some((r) => r.node === n))!;
    const att = JSON.parse((await c.stowctl(["volume", "attach", "live1", "--node", local!.node, "-o", "json"])).stdout);
    const io = (cmds: string[]) => execa("qemu-io", ["-f", "raw", ...cmds.flatMap((x) => ["-c", x]), att.nbdUri], { reject: false });
    const first = await io(["write -P 0x11 0 16M", "flush"]);
    expect(first.exitCode, first.stderr).toBe(0);

    // Writes keep coming (batches of 4 KiB writes over 16 MiB) until the end.
    let stop = false;
    const failures: string[] = [];
    let batches = 0;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const off = (32 + (i % 16)) * 1024 * 1024;
        const r = await io([`write -P 0x22 ${off} 4k`, `write -P 0x22 ${off + 65536} 4k`]);
        if (r.exitCode !== 0 || /error|failed/i.test(r.stdout)) failures.push(r.stderr + r.stdout);
        batches++;
      }
    })();
    await sleep(300);
    const qsdPid = Number(readFileSync(join(c.agentDirs.get(lost!.node)!, "qsd", "qsd.pid"), "utf8").trim());
    await c.agents.get(lost!.node)!.kill("SIGKILL");
    process.kill(qsdPid, "SIGKILL");

    const healed = await waitSettled(c, "live1", 2, 60_000, (v) => v.replicas.some((r) => r.node === third));
    stop = true;
    await writer;
    expect(failures).toEqual([]);
    expect(batches).toBeGreaterThan(5);
    const replacement = healed.replicas.find((r) => r.node === third)!;
    const spec = await storedSpec(c, "live1");
    const last = (spec.placement.find((p) => p.id === replacement.id) as { lastResync?: { kind: string; bytes: number } }).lastResync!;
    // A full copy by the frontend of only the allocated regions: about 17 MiB of 256 MiB.
    expect(last.kind).toBe("full");
    expect(last.bytes).toBeGreaterThanOrEqual(16 * 1024 * 1024);
    expect(last.bytes).toBeLessThan(64 * 1024 * 1024);
    const flushed = await io(["flush", "read -P 0x11 0 16M"]);
    expect(flushed.stdout).not.toMatch(/Pattern verification failed/);
    const cmp = await sameContent(local!.path, replacement.path);
    expect(cmp.same, cmp.output).toBe(true);
    expect((await c.stowctl(["volume", "detach", "live1", "--node", local!.node])).code).toBe(0);
  });
});
