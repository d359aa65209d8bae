// New replicas of an ATTACHED volume (a replacement for a dead host, or one more
// replica): the frontend tracks every write in an empty dirty map, the replica's
// agent copies the bulk of it from an in-sync replica's export (qemu-img convert),
// then the frontend copies only what was written meanwhile; afterwards every
// replica holds the same bytes. Writes go on throughout, through a frontend killed
// mid-copy (it keeps its map: the copy stands) and a leader killed once its agent's
// copy is done but before it is recorded (the next one copies again). Copies are throttled (--copy-rate-mib) so they can be seen.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "../harness/cluster.js";
import { eventually, sleep } from "../harness/processes.js";
import { getVolume, leaderName, sameContent, startControllerWith, storedSpec, waitSettled } from "../harness/replica-helpers.js";

const RATE_MIB = 24;
const FLAGS = ["--replica-grace", "3s", "--node-ttl", "3", "--copy-rate-mib", String(RATE_MIB)];
const IPS: Record<string, string> = { a1: "127.0.0.121", a2: "127.0.0.122", a3: "127.0.0.123" };
const MiB = 2 ** 20;
let c: TestCluster;

beforeAll(async () => {
  c = await TestCluster.create();
  // c1 leads, and dies when an agent's copy for live3 is done, before it records it.
  await startControllerWith(c, "c1", FLAGS, { faults: ["rebuild:copied@live3"] });
  await c.leaderApi();
  await startControllerWith(c, "c2", FLAGS);
  for (const n of ["a1", "a2", "a3"]) await c.startAgent(n, IPS[n]!);
  await c.waitNodesOnline(3);
});

afterAll(async () => {
  await c?.stop();
});

interface StoredPlacement {
  id: string;
  node: string;
  outOfSync?: { reason: string; agentCopy?: { token: string; node: string; copied?: { bytes: number } } };
  lastResync?: { kind: string; bytes: number; ms: number };
}
const placement = async (volume: string) => (await storedSpec(c, volume)).placement as StoredPlacement[];

/** Attaches `volume` on `node`; returns a qemu-io runner over its frontend's NBD socket. */
async function attach(volume: string, node: string) {
  const att = JSON.parse((await c.stowctl(["volume", "attach", volume, "--node", node, "-o", "json"])).stdout);
  return (cmds: string[]) => execa("qemu-io", ["-f", "raw", ...cmds.flatMap((x) => ["-c", x]), att.nbdUri], { reject: false });
}

/**
 * Writes until stopped: two 4 KiB writes per batch, each batch its own pattern, spread
 * over 16-80 MiB (mostly data the copy reads) and 128-192 MiB (holes it skips); the
 * first 16 MiB keep what the tests wrote there.
 */
function writer(io: (cmds: string[]) => ReturnType<typeof execa>) {
  let stop = false;
  const failures: string[] = [];
  let batches = 0;
  const done = (async () => {
    for (let i = 0; !stop; i++) {
      const pattern = 1 + (i % 250);
      const a = 16 * MiB + ((i * 2_654_435_761) % 8_192) * 8192;
      const b = 128 * MiB + ((i * 40_503) % 8_192) * 8192;
      const r = await io([`write -P ${pattern} ${a} 4k`, `write -P ${pattern} ${b + 4096} 4k`]);
      if (r.exitCode !== 0 || /error|failed/i.test(String(r.stdout))) failures.push(String(r.stderr) + String(r.stdout));
      batches++;
    }
  })();
  return {
    get batches() {
      return batches;
    },
    failures,
    stop: async () => {
      stop = true;
      await done;
    },
  };
}

/** The running job of a volume's new replica, once its agent copies (the frontend tracks meanwhile). */
async function agentCopyJob(volume: string) {
  return eventually(async () => {
    const r = await c.stowctl(["job", "list", "-o", "json"]);
    if (r.code !== 0) return undefined;
    const jobs = r.code === 0 ? (JSON.parse(r.stdout).jobs as { volume: string; replicaId: string; message: string; runner: string; node: string; startedAtMs: number }[]) : [];
    return jobs.find((j) => j.volume === volume && /tracks writes meanwhile/.test(j.message));
  }, 60_000, `the agent's copy of ${volume}'s new replica`);
}

async function allSame(paths: string[]): Promise<void> {
  for (const p of paths.slice(1)) {
    const cmp = await sameContent(paths[0]!, p);
    expect(cmp.same, cmp.output).toBe(true);
  }
}

describe("rebuild of an attached volume", () => {
  it("replaces a dead host's replica past the grace period: its agent copies, the frontend catches up, while writes go on", async () => {
    expect((await c.stowctl(["volume", "create", "live1", "--size", "256MiB", "--replicas", "2"])).code).toBe(0);
    const v0 = await getVolume(c, "live1");
    const [local, lost] = v0.replicas;
    const third = Object.keys(IPS).find((n) => !v0.replicas.some((r) => r.node === n))!;
    const io = await attach("live1", local!.node);
    const first = await io(["write -P 0x11 0 16M", "flush"]);
    expect(first.exitCode, first.stderr).toBe(0);

    const w = writer(io);
    await sleep(300);
    const qsdPid = Number(readFileSync(join(c.agentDirs.get(lost!.node)!, "qsd", "qsd.pid"), "utf8").trim());
    await c.agents.get(lost!.node)!.kill("SIGKILL");
    process.kill(qsdPid, "SIGKILL");

    let healed;
    try {
      healed = await waitSettled(c, "live1", 2, 90_000, (v) => v.replicas.some((r) => r.node === third));
    } finally {
      await w.stop();
      await c.startAgent(lost!.node, IPS[lost!.node]!);
    }
    expect(w.failures).toEqual([]);
    expect(w.batches).toBeGreaterThan(5);
    const replacement = healed.replicas.find((r) => r.node === third)!;
    const last = (await placement("live1")).find((p) => p.id === replacement.id)!.lastResync!;
    // The agent's copy (the image's 256 MiB) and the frontend's catch-up, recorded as one full rebuild.
    expect(last.kind).toBe("full");
    expect(last.bytes).toBeGreaterThanOrEqual(256 * MiB);
    const flushed = await io(["flush", "read -P 0x11 0 16M"]);
    expect(flushed.stdout).not.toMatch(/Pattern verification failed/);
    await allSame([local!.path, replacement.path]);
    expect((await c.stowctl(["volume", "detach", "live1", "--node", local!.node])).code).toBe(0);
  });

  it("writes land while the agent copies a new replica; afterwards every replica holds the same bytes", async () => {
    expect((await c.stowctl(["volume", "create", "live2", "--size", "256MiB", "--replicas", "2"])).code).toBe(0);
    const v0 = await getVolume(c, "live2");
    const io = await attach("live2", v0.replicas[0]!.node);
    const fill = await io(["write -P 0x5a 0 64M", "flush"]);
    expect(fill.exitCode, fill.stderr).toBe(0);
    await c.waitNodesOnline(3);

    const w = writer(io);
    const set = await c.stowctl(["volume", "set", "live2", "--replicas", "3", "--no-wait"]);
    expect(set.code, set.stderr).toBe(0);
    const job = await agentCopyJob("live2");
    expect(job.runner).toBe(job.node);
    // Not exported while its agent copies; the frontend's map is recorded before the copy starts.
    const during = (await placement("live2")).find((p) => p.id === job.replicaId)!;
    expect(during.outOfSync!.agentCopy).toMatchObject({ node: v0.replicas[0]!.node, token: expect.stringMatching(/^[0-9a-f]{16}$/) });
    const status = JSON.parse((await c.client.get("/stowage/v1/volumes/status/live2").string())!);
    expect(status.replicas.find((r: { id: string }) => r.id === job.replicaId)).toMatchObject({ state: "healthy" });
    expect(status.replicas.find((r: { id: string }) => r.id === job.replicaId).exportUri).toBeUndefined();
    const atStart = w.batches;
    await eventually(async () => (await placement("live2")).find((p) => p.id === job.replicaId)?.outOfSync?.agentCopy?.copied, 60_000, "the agent's copy recorded");
    const duringCopy = w.batches - atStart;
    const healed = await waitSettled(c, "live2", 3, 60_000);
    await w.stop();
    expect(w.failures).toEqual([]);
    expect(duringCopy).toBeGreaterThan(2);
    await allSame(healed.replicas.map((r) => r.path));
    const last = (await placement("live2")).find((p) => p.id === job.replicaId)!.lastResync!;
    expect(last).toMatchObject({ kind: "full" });
    expect(last.bytes).toBeGreaterThan(256 * MiB); // the image, plus regions the frontend copied after it
    console.log(`[figures] live2: ${duringCopy} write batches during the agent's copy; rebuild ${last.ms} ms (copies throttled to ${RATE_MIB} MiB/s)`);
    expect((await c.stowctl(["volume", "detach", "live2", "--node", v0.replicas[0]!.node])).code).toBe(0);
  });

  it("a frontend SIGKILLed mid-copy keeps its map (the copy stands); a leader SIGKILLed before recording a copy: the next one copies again", async () => {
    expect((await c.stowctl(["volume", "create", "live3", "--size", "256MiB", "--replicas", "2"])).code).toBe(0);
    const v0 = await getVolume(c, "live3");
    const node = v0.replicas[0]!.node;
    const io = await attach("live3", node);
    const fill = await io(["write -P 0x77 0 64M", "flush"]);
    expect(fill.exitCode, fill.stderr).toBe(0);
    await c.waitNodesOnline(3);
    const w = writer(io);
    const set = await c.stowctl(["volume", "set", "live3", "--replicas", "3", "--no-wait"]);
    expect(set.code, set.stderr).toBe(0);
    const job = await agentCopyJob("live3");
    const token = (await placement("live3")).find((p) => p.id === job.replicaId)!.outOfSync!.agentCopy!.token;

    // The frontend dies; the agent starts another, which finds the map (and its token) in its state directory.
    const stateFile = join(c.agentDirs.get(node)!, "frontends", "live3.json");
    const old = JSON.parse(readFileSync(stateFile, "utf8"));
    process.kill(old.pid, "SIGKILL");
    await eventually(async () => JSON.parse(readFileSync(stateFile, "utf8")).pid !== old.pid, 30_000, "a new frontend");
    await sleep(1_000);
    expect((await placement("live3")).find((p) => p.id === job.replicaId)!.outOfSync!.agentCopy!.token).toBe(token);

    // The leader dies once the agent's copy is done, before it records it; the next leader copies again.
    expect(await leaderName(c)).toBe("c1");
    await eventually(async () => !c.controllers.get("c1")!.running, 60_000, "c1 killed at rebuild:copied");
    const again = await eventually(async () => {
      const j = await agentCopyJob("live3");
      return j.startedAtMs > job.startedAtMs ? j : undefined;
    }, 60_000, "a copy started by the next leader");
    expect(await leaderName(c)).toBe("c2");
    expect(again.replicaId).toBe(job.replicaId);

    const healed = await waitSettled(c, "live3", 3, 90_000);
    await w.stop();
    // Writes that failed only while no frontend served (the SIGKILLed one) are the guest's to retry.
    expect(w.batches).toBeGreaterThan(5);
    const last = (await placement("live3")).find((p) => p.id === job.replicaId)!.lastResync!;
    expect(last.kind).toBe("full");
    expect(last.bytes).toBeGreaterThanOrEqual(256 * MiB);
    const flushed = await io(["flush"]);
    expect(flushed.exitCode, flushed.stderr).toBe(0);
    await allSame(healed.replicas.map((r) => r.path));
    expect((await c.stowctl(["volume", "detach", "live3", "--node", node])).code).toBe(0);
  });
});
