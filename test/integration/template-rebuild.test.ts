// Rebuilt replicas of linked clones stay linked clones (real cluster: etcd, a
// controller, three agents with their storage daemons): the new replica is
// made over its node's copy of the template (copied there first) and its agent
// copies only what the in-sync replica holds over the template, so it takes
// about the clone's own writes on disk, not the template's data. Detached: a
// host lost past the grace period; attached: one more replica while writes go
// on. Copies are throttled (--copy-rate-mib) so that writes land during them.
import { statSync } from "node:fs";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "../harness/cluster.js";
import { eventually, sleep } from "../harness/processes.js";
import { getVolume, sameContent, startControllerWith, storedSpec, waitSettled } from "../harness/replica-helpers.js";

const RATE_MIB = 2;
const FLAGS = ["--replica-grace", "3s", "--node-ttl", "3", "--copy-rate-mib", String(RATE_MIB)];
const IPS: Record<string, string> = { k1: "127.0.0.171", k2: "127.0.0.172", k3: "127.0.0.173" };
const MiB = 2 ** 20;
/** The template's data: 48 MiB. */
const TEMPLATE_DATA = 48 * MiB;
let c: TestCluster;

const onDisk = (path: string) => statSync(path).blocks * 512;

async function backingOf(path: string): Promise<string | undefined> {
  return JSON.parse((await execa("qemu-img", ["info", "-U", "--output=json", path])).stdout)["backing-filename"];
}

async function stowctlJson<T>(args: string[]): Promise<T> {
  const r = await c.stowctl([...args, "-o", "json"]);
  expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout) as T;
}

/** Attaches `volume` on `node`; returns a qemu-io runner over its frontend. */
async function attach(volume: string, node: string) {
  const att = await stowctlJson<{ nbdUri: string }>(["volume", "attach", volume, "--node", node]);
  return async (cmds: string[]) => {
    const r = await execa("qemu-io", ["-f", "raw", ...cmds.flatMap((x) => ["-c", x]), att.nbdUri], { reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/Pattern verification failed|error/i);
    return r;
  };
}

/** The template's copy on each node. */
async function templateCopies(): Promise<Map<string, string>> {
  const t = (await stowctlJson<{ template: { copies: { node: string; path: string; state: string }[] } }>(["template", "get", "gold"])).template;
  return new Map(t.copies.filter((x) => x.state === "ready").map((x) => [x.node, x.path]));
}

/** The clone's own writes: data over the template's, zeros over it (as write-zeroes and as data), data past it. */
const OWN_WRITES = ["write -P 0x77 2M 1M", "write -z 8M 1M", "write -P 0 12M 64k", "write -P 0x66 100M 1M", "flush"];
const OWN_READS = ["read -P 0x77 2M 1M", "read -P 0 8M 1M", "read -P 0 12M 64k", "read -P 0x5a 9M 1M", "read -P 0x3c 40M 1M", "read -P 0x66 100M 1M"];

beforeAll(async () => {
  c = await TestCluster.create();
  await startControllerWith(c, "c1", FLAGS);
  for (const n of Object.keys(IPS)) await c.startAgent(n, IPS[n]!);
  await c.waitNodesOnline(3);
  // The template: 40 MiB at 0 and 8 MiB at 40 MiB in a 128 MiB volume.
  expect((await c.stowctl(["volume", "create", "base", "--size", "128MiB", "--replicas", "1"])).code).toBe(0);
  const node = (await getVolume(c, "base")).replicas[0]!.node;
  const io = await attach("base", node);
  await io(["write -P 0x5a 0 40M", "write -P 0x3c 40M 8M", "flush"]);
  expect((await c.stowctl(["volume", "detach", "base", "--node", node])).code).toBe(0);
  const made = await c.stowctl(["template", "create", "gold", "--from", "base"]);
  expect(made.code, made.stderr).toBe(0);
});

afterAll(async () => {
  await c?.stop();
});

describe("rebuilt replicas of a linked clone", () => {
  it("a detached clone's replica on a lost host is rebuilt on the third node as a thin linked clone", async () => {
    expect((await c.stowctl(["volume", "create", "lc1", "--template", "gold", "--replicas", "2"])).code).toBe(0);
    const v0 = await getVolume(c, "lc1");
    const home = [...(await templateCopies()).keys()][0]!;
    const io = await attach("lc1", v0.replicas[0]!.node);
    await io(OWN_WRITES);
    expect((await c.stowctl(["volume", "detach", "lc1", "--node", v0.replicas[0]!.node])).code).toBe(0);
    // Lose a replica's host (not the template's home): agent and storage daemon SIGKILLed.
    const lost = v0.replicas.find((r) => r.node !== home) ?? v0.replicas[1]!;
    const keep = v0.replicas.find((r) => r.id !== lost.id)!;
    const third = Object.keys(IPS).find((n) => !v0.replicas.some((r) => r.node === n))!;
    const t0 = Date.now();
    await c.agents.get(lost.node)!.kill("SIGKILL");
    const qsdPid = Number((await execa("cat", [`${c.agentDirs.get(lost.node)}/qsd/qsd.pid`])).stdout.trim());
    process.kill(qsdPid, "SIGKILL");

    let v;
    try {
      v = await waitSettled(c, "lc1", 2, 90_000, (x) => x.replicas.some((r) => r.node === third));
    } finally {
      console.log(`[figures] lc1: host SIGKILLed -> rebuilt and in sync ${Date.now() - t0} ms`);
      await c.startAgent(lost.node, IPS[lost.node]!);
    }
    const fresh = v.replicas.find((r) => r.node === third)!;
    const last = ((await storedSpec(c, "lc1")).placement as { id: string; lastResync?: { kind: string; ms: number } }[]).find((p) => p.id === fresh.id)!.lastResync!;
    console.log(
      `[figures] lc1 rebuilt detached on ${third}: ${onDisk(fresh.path)} B on disk (the kept replica ${onDisk(keep.path)} B, ` +
        `template data ${TEMPLATE_DATA} B); copy ${last.ms} ms at ${RATE_MIB} MiB/s`,
    );
    expect(last.kind).toBe("full");
    // A linked clone of the template's copy on its node (copied there before the image was made).
    expect(await backingOf(fresh.path)).toBe((await templateCopies()).get(third));
    const cmp = await sameContent(keep.path, fresh.path);
    expect(cmp.same, cmp.output).toBe(true);
    // About the clone's own writes (2 MiB and a bit of metadata), nowhere near the template's data.
    expect(onDisk(fresh.path)).toBeLessThan(onDisk(keep.path) + 2 * MiB);
    expect(onDisk(fresh.path)).toBeLessThan(TEMPLATE_DATA / 8);
    // And it reads as the clone: its zeros hide the template's data.
    const io2 = await attach("lc1", third);
    await io2(OWN_READS);
    expect((await c.stowctl(["volume", "detach", "lc1", "--node", third])).code).toBe(0);
  });

  it("an attached clone's new replica: its agent copies the clone's own layer while writes go on; all replicas end the same", async () => {
    await c.waitNodesOnline(3);
    expect((await c.stowctl(["volume", "create", "lc2", "--template", "gold", "--replicas", "2"])).code).toBe(0);
    const v0 = await getVolume(c, "lc2");
    const node = v0.replicas[0]!.node;
    const io = await attach("lc2", node);
    await io([...OWN_WRITES, "write -P 0x55 20M 2M", "flush"]);

    // Writes over the template's data (16-20 MiB) and past it, until stopped.
    let stop = false;
    let batches = 0;
    const writing = (async () => {
      for (let i = 0; !stop; i++) {
        const a = 16 * MiB + ((i * 2_654_435_761) % 512) * 8192;
        const b = 104 * MiB + ((i * 40_503) % 128) * 8192;
        await io([`write -P ${1 + (i % 250)} ${a} 4k`, `write -P ${1 + (i % 250)} ${b} 4k`]);
        batches++;
      }
    })();
    let v;
    let copied = 0;
    try {
      await sleep(300);
      const set = await c.stowctl(["volume", "set", "lc2", "--replicas", "3", "--no-wait"]);
      expect(set.code, set.stderr).toBe(0);
      // The agent copies while the frontend tracks; count the write batches meanwhile.
      const job = await eventually(async () => {
        const r = await stowctlJson<{ jobs: { volume: string; replicaId: string; message: string }[] }>(["job", "list"]);
        return r.jobs.find((j) => j.volume === "lc2" && /tracks writes meanwhile/.test(j.message));
      }, 60_000, "the agent's copy of lc2's new replica");
      const atStart = batches;
      await eventually(
        async () => ((await storedSpec(c, "lc2")).placement as { id: string; outOfSync?: { agentCopy?: { copied?: unknown } } }[]).find((p) => p.id === job.replicaId)?.outOfSync?.agentCopy?.copied,
        60_000,
        "the agent's copy recorded",
      );
      copied = batches - atStart;
      v = await waitSettled(c, "lc2", 3, 60_000);
    } finally {
      stop = true;
      await writing;
    }
    expect(copied).toBeGreaterThan(1);
    const fresh = v.replicas.find((r) => !v0.replicas.some((x) => x.id === r.id))!;
    await io(["flush"]);
    // volume get shows each replica's allocation now, asked of its agent: the status
    // records have it as of each replica's last change (made, exported), before these writes.
    const shown = JSON.parse((await c.stowctl(["volume", "get", "lc2", "-o", "json"])).stdout).volume.replicas as { path: string; allocatedBytes: string }[];
    expect(shown.map((r) => Number(r.allocatedBytes))).toEqual(shown.map((r) => onDisk(r.path)));
    expect((await c.stowctl(["volume", "detach", "lc2", "--node", node])).code).toBe(0);
    for (const r of v.replicas.slice(1)) {
      const cmp = await sameContent(v.replicas[0]!.path, r.path);
      expect(cmp.same, cmp.output).toBe(true);
    }
    console.log(
      `[figures] lc2 rebuilt attached on ${fresh.node}: ${onDisk(fresh.path)} B on disk (the others ${v0.replicas.map((r) => onDisk(r.path)).join(", ")} B); ` +
        `${copied} write batches during the agent's copy`,
    );
    expect(await backingOf(fresh.path)).toBe((await templateCopies()).get(fresh.node));
    expect(onDisk(fresh.path)).toBeLessThan(Math.max(...v0.replicas.map((r) => onDisk(r.path))) + 2 * MiB);
    expect(onDisk(fresh.path)).toBeLessThan(TEMPLATE_DATA / 4);
  });
});
