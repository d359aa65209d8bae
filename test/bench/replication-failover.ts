// Part 3 of the replication benchmark: how long writes stall when a replica's host dies.
// A real small cluster (etcd, one controller, two agents on their own loopback addresses,
// test/harness/cluster.ts); per repetition a fresh 2-replica volume is attached on one
// node, a writer issues 4 KiB writes one at a time (QD1) through the frontend's NBD
// socket and timestamps every acknowledgement, and the other node's qemu-storage-daemon
// is SIGKILLed. The frontend must record that replica out-of-sync at the controller
// before it acknowledges another write (the write policy, frontend/README.md).
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { keys } from "../../controller/keys.js";
import { NbdClient } from "../../lib/nbd/client.js";
import { NbdDisconnectedError } from "../../lib/nbd/errors.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";
import { Qsd } from "../harness/qsd.js";
import { AGENT_FILE_OPTIONS, fioFill, fioWrite, median, progress, type Cleanups } from "./replication-common.js";
import { WRITE_WORKLOADS } from "./replication-write.js";

export interface FailoverOptions {
  /** For the baseline's daemon and image. */
  dir: string;
  reps: number;
  cleanups: Cleanups;
  /** Seconds per fio run of the in-cluster write figures (0: skip them). */
  writeRuntimeSec: number;
}

/**
 * Writes in the same cluster, through frontends that follow the recorded write policy
 * (as every frontend a cluster starts does; the write part drives plain fan-out ones):
 * fio at one replica's export (the agent's daemon, over TCP) against fio through the
 * frontend of a 1-replica and of a 2-replica volume.
 */
export interface ClusterWrites {
  workload: string;
  direct: number;
  replicas1: number;
  replicas2: number;
  unit: "IOPS" | "MB/s";
}

export interface FailoverRun {
  /** Kill → acknowledgement of the first write submitted after the kill: the volume writes again. */
  nextWriteMs: number;
  /** Kill → the first acknowledgement of any write (it may have been in flight before the kill). */
  firstAckMs: number;
  /** The longest time between two acknowledgements from the kill on, as the writer sees it. */
  longestStallMs: number;
  /** Median QD1 write latency before the kill. */
  latencyBeforeMs: number;
  /** Kill → the out-of-sync record in etcd, as a watch from this process sees it (undefined: not seen). */
  recordedMs?: number;
  writesBefore: number;
  writesAfter: number;
  failedWrites: number;
  /** The controller shows the killed host's replica out-of-sync afterwards. */
  recordedOutOfSync: boolean;
}

export interface FailoverResult {
  runs: FailoverRun[];
  nextWriteMs: number;
  firstAckMs: number;
  longestStallMs: number;
  latencyBeforeMs: number;
  /** Median over the runs where the record was seen. */
  recordedMs?: number;
  /** One etcd write (put) from this process, median: a floor for recording anything. */
  etcdPutMs: number;
  /** Baseline, median: kill → a plain NBD client's write fails, straight at a daemon opened as the agent does. */
  plainDeathMs: number;
  plainDeathRuns: number[];
  clusterWrites: ClusterWrites[];
}

const VOLUME_SIZE = 64 * 1024 * 1024;
const BLOCK = 4096;
/** Writes before the kill, and how long the writer goes on after it. */
const BEFORE_MS = 1000;
const AFTER_MS = 1500;
const NODES = [
  { name: "fo1", ip: "127.0.0.161" },
  { name: "fo2", ip: "127.0.0.162" },
];

export async function benchFailover(o: FailoverOptions): Promise<FailoverResult> {
  progress("failover: starting etcd, a controller and 2 agents");
  const c = await TestCluster.create();
  const stop = o.cleanups.add("failover cluster", () => c.stop());
  try {
    await c.startController("c1");
    for (const n of NODES) await c.startAgent(n.name, n.ip);
    await c.waitNodesOnline(NODES.length);
    const puts: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t = performance.now();
      await c.client.put("bench/probe").value(String(i));
      puts.push(performance.now() - t);
    }
    await c.client.delete().key("bench/probe");
    const clusterWrites = o.writeRuntimeSec > 0 ? await writesInCluster(c, o) : [];
    const runs: FailoverRun[] = [];
    const plain: number[] = [];
    for (let rep = 0; rep < o.reps; rep++) {
      progress(`failover: run ${rep + 1}/${o.reps}, a plain daemon killed under a plain client`);
      plain.push(await plainDeath(o));
      progress(`failover: run ${rep + 1}/${o.reps}, the remote replica's daemon killed under the frontend`);
      runs.push(await oneFailover(c, `fo-${rep}`, rep));
    }
    const pick = (f: (r: FailoverRun) => number) => median(runs.map(f));
    return {
      runs,
      nextWriteMs: pick((r) => r.nextWriteMs),
      firstAckMs: pick((r) => r.firstAckMs),
      longestStallMs: pick((r) => r.longestStallMs),
      latencyBeforeMs: pick((r) => r.latencyBeforeMs),
      recordedMs: median(runs.flatMap((r) => (r.recordedMs === undefined ? [] : [r.recordedMs]))),
      etcdPutMs: median(puts),
      plainDeathMs: median(plain),
      plainDeathRuns: plain,
      clusterWrites,
    };
  } catch (err) {
    // What the cluster's processes printed last, unless the run was stopped on purpose.
    if (!o.cleanups.interrupted) {
      for (const p of [...c.controllers.values(), ...c.agents.values()]) {
        process.stderr.write(`--- last output of ${p.name} ---\n${p.output.trimEnd().split("\n").slice(-15).join("\n")}\n`);
      }
    }
    throw err;
  } finally {
    await stop();
  }
}

async function writesInCluster(c: TestCluster, o: FailoverOptions): Promise<ClusterWrites[]> {
  const size = 1024 * 1024 * 1024;
  const uris: Record<"direct" | "replicas1" | "replicas2", string> = { direct: "", replicas1: "", replicas2: "" };
  for (const [name, replicas] of [["wr1", 1], ["wr2", 2]] as const) {
    await stowctl(c, ["volume", "create", name, "--size", "1GiB", "--replicas", String(replicas)]);
    const att = JSON.parse(await stowctl(c, ["volume", "attach", name, "--node", NODES[0]!.name, "-o", "json"]));
    uris[replicas === 1 ? "replicas1" : "replicas2"] = att.attachment.nbdUri;
  }
  // The baseline: the 2-replica volume's replica on the frontend's node, at its agent's export.
  const v = JSON.parse(await stowctl(c, ["volume", "get", "wr2", "-o", "json"])).volume;
  const local = v.replicas.find((r: { node: string }) => r.node === NODES[0]!.name);
  const exportUri = JSON.parse((await c.client.get(keys.volumeStatus("wr2")).string())!).replicas.find((r: { id: string }) => r.id === local.id).exportUri as string;
  uris.direct = exportUri;
  progress("cluster writes: filling the images");
  for (const u of [uris.replicas1, uris.replicas2]) await fioFill([u], size, join(o.dir, "cluster-fill.json"));
  const out: ClusterWrites[] = [];
  for (const w of WRITE_WORKLOADS) {
    const fig: Record<string, number[]> = { direct: [], replicas1: [], replicas2: [] };
    for (let rep = 0; rep < o.reps; rep++) {
      for (const setup of ["direct", "replicas1", "replicas2"] as const) {
        progress(`cluster writes: ${w.rw} ${w.bs}, ${setup}, run ${rep + 1}/${o.reps}`);
        const [s] = await fioWrite([uris[setup]], w, { sizeBytes: size, runtimeSec: o.writeRuntimeSec, out: join(o.dir, "cluster-fio.json") });
        fig[setup]!.push(w.unit === "IOPS" ? s!.iops : s!.mbps);
      }
    }
    out.push({ workload: `${w.rw} ${w.bs} QD${w.iodepth}`, unit: w.unit, direct: median(fig.direct!), replicas1: median(fig.replicas1!), replicas2: median(fig.replicas2!) });
  }
  for (const name of ["wr1", "wr2"]) {
    await stowctl(c, ["volume", "detach", name, "--node", NODES[0]!.name]);
    await stowctl(c, ["volume", "delete", name]);
  }
  return out;
}

async function stowctl(c: TestCluster, args: string[]): Promise<string> {
  const r = await c.stowctl(args);
  if (r.code !== 0) throw new Error(`stowctl ${args.join(" ")} failed (exit ${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/**
 * The baseline: the same kill with nothing of Stowage in between. A plain NBD client
 * writes 4 KiB at QD1 straight at a daemon that opens its qcow2 image as the agent does;
 * returns the time from the SIGKILL until a write fails (the daemon's own death).
 */
async function plainDeath(o: FailoverOptions): Promise<number> {
  const qsd = await Qsd.start({ dir: join(o.dir, "plain-death"), format: "qcow2", sizeMiB: VOLUME_SIZE / 2 ** 20, exportName: "plain", fileOptions: AGENT_FILE_OPTIONS });
  const stop = o.cleanups.add("baseline qemu-storage-daemon", () => qsd.stop());
  const client = await NbdClient.connect({ socketPath: qsd.socket, exportName: "plain" });
  try {
    const data = randomBytes(BLOCK);
    let killedAt = Infinity;
    const killer = setTimeout(() => {
      process.kill(qsd.pid!, "SIGKILL");
      killedAt = performance.now();
    }, BEFORE_MS);
    try {
      for (let offset = 0; ; offset = (offset + BLOCK) % VOLUME_SIZE) await client.write(offset, data);
    } catch (err) {
      if (killedAt === Infinity) throw err;
      return performance.now() - killedAt;
    } finally {
      clearTimeout(killer);
    }
  } finally {
    client.destroy();
    await stop();
  }
}

interface Ack {
  submitted: number;
  acked: number;
  ok: boolean;
}

async function oneFailover(c: TestCluster, volume: string, rep: number): Promise<FailoverRun> {
  await stowctl(c, ["volume", "create", volume, "--size", `${VOLUME_SIZE / 2 ** 20}MiB`, "--replicas", "2"]);
  const api = await c.leaderApi();
  const v = (await api.volumes.getVolume({ name: volume })).volume!;
  // Alternate the local node, so each host's daemon dies in turn and has time to come back.
  const local = v.replicas[rep % 2]!;
  const remote = v.replicas.find((r) => r.node !== local.node)!;
  const att = JSON.parse(await stowctl(c, ["volume", "attach", volume, "--node", local.node, "-o", "json"])) as { socketPath: string; nbdUri: string };
  const exportName = decodeURIComponent(/^nbd\+unix:\/\/\/([^?]*)/.exec(att.nbdUri)?.[1] ?? volume);
  const client = await NbdClient.connect({ socketPath: att.socketPath, exportName });
  const acks: Ack[] = [];
  let killedAt = Infinity;
  // When the volume's spec first shows the remote replica out-of-sync: the frontend's record.
  let recordedAt: number | undefined;
  const watcher = await c.client.watch().key(keys.volumeSpec(volume)).create();
  watcher.on("put", (kv) => {
    if (recordedAt !== undefined) return;
    const now = performance.now();
    try {
      const placement = (JSON.parse(kv.value.toString()) as { placement?: { id: string; outOfSync?: unknown }[] }).placement;
      if (placement?.find((p) => p.id === remote.id)?.outOfSync) recordedAt = now;
    } catch {
      // not the shape expected: no figure
    }
  });
  try {
    const data = randomBytes(BLOCK);
    const started = performance.now();
    const killer = setTimeout(() => {
      const pid = Number(readFileSync(join(c.agentDirs.get(remote.node)!, "qsd", "qsd.pid"), "utf8").trim());
      process.kill(pid, "SIGKILL");
      killedAt = performance.now();
    }, BEFORE_MS);
    try {
      let offset = 0;
      while (performance.now() < Math.min(killedAt + AFTER_MS, started + BEFORE_MS + 60_000)) {
        const submitted = performance.now();
        try {
          await client.write(offset, data);
          acks.push({ submitted, acked: performance.now(), ok: true });
        } catch (err) {
          acks.push({ submitted, acked: performance.now(), ok: false });
          if (err instanceof NbdDisconnectedError) throw err;
        }
        offset = (offset + BLOCK) % VOLUME_SIZE;
      }
    } finally {
      clearTimeout(killer);
    }
    await client.flush();
  } finally {
    await client.close().catch(() => client.destroy());
  }
  if (killedAt === Infinity) throw new Error("the replica host's daemon was never killed");

  const before = acks.filter((a) => a.acked < killedAt && a.ok);
  const after = acks.filter((a) => a.acked >= killedAt);
  const firstAck = after.find((a) => a.ok);
  const nextWrite = after.find((a) => a.ok && a.submitted >= killedAt);
  if (!firstAck || !nextWrite) throw new Error(`no write was acknowledged after the kill (${after.filter((a) => !a.ok).length} failed)`);
  let longestStall = 0;
  let last = before.at(-1)?.acked ?? killedAt;
  for (const a of after.filter((x) => x.ok)) {
    longestStall = Math.max(longestStall, a.acked - last);
    last = a.acked;
  }
  const recordedOutOfSync = await eventually(
    async () => (await api.volumes.getVolume({ name: volume })).volume!.replicas.find((r) => r.id === remote.id)?.outOfSync,
    10_000,
    "the replica recorded out-of-sync",
  ).then(
    () => true,
    () => false,
  );
  await watcher.cancel();

  // The controller may be busy with the volume (its stale replica): a conflict asks for a retry.
  // A volume left behind only costs a small background copy, so that is not fatal.
  for (const args of [["volume", "detach", volume, "--node", local.node], ["volume", "delete", volume]]) {
    await eventually(async () => (await c.stowctl(args)).code === 0, 30_000, `stowctl ${args.join(" ")}`).catch((err) => progress(String(err)));
  }
  return {
    nextWriteMs: nextWrite.acked - killedAt,
    firstAckMs: firstAck.acked - killedAt,
    longestStallMs: longestStall,
    latencyBeforeMs: median(before.map((a) => a.acked - a.submitted)),
    ...(recordedAt === undefined ? {} : { recordedMs: recordedAt - killedAt }),
    writesBefore: before.length,
    writesAfter: after.filter((a) => a.ok).length,
    failedWrites: acks.filter((a) => !a.ok).length,
    recordedOutOfSync,
  };
}
