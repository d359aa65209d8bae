// stowctl against fake controllers served over real gRPC on 127.0.0.1:0.
import type { Server } from "@grpc/grpc-js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  JobServiceService,
  type SetPoolRequest,
  NodeServiceService,
  PoolServiceService,
  VolumeServiceService,
} from "../gen/stowage/v1/controller.js";
import { JobState, PoolCompressRun, ReplicaState, VolumePhase, type Job, type Node, type Pool, type Volume, type VolumeSpec } from "../gen/stowage/v1/types.js";
import { InsufficientCapacityError, NotFoundError, NotLeaderError } from "../lib/errors.js";
import { addService, createServer, INSECURE, listen, shutdown, type AsyncService } from "../lib/grpc.js";
import { runCli } from "./testing.js";

type Def = Parameters<typeof addService>[1];
const GiB = 2 ** 30;

/** Every method of a service answers the same way. */
function everyMethod<D extends Def>(def: D, fn: () => Promise<never>): AsyncService<D> {
  return Object.fromEntries(Object.keys(def).map((k) => [k, fn])) as unknown as AsyncService<D>;
}

async function serve(register: (s: Server) => void): Promise<{ address: string; server: Server }> {
  const server = createServer();
  register(server);
  const port = await listen(server, "127.0.0.1:0", INSECURE);
  return { address: `127.0.0.1:${port}`, server };
}

const pool: Pool = {
  node: "host1", name: "default", type: "dir", path: "/srv/stowage/default",
  capacityBytes: 100 * GiB, availableBytes: 80 * GiB, allocatedBytes: GiB, provisionedBytes: 20 * GiB,
  overcommitRatio: 2, replicaCount: 2, templateBytes: 0,
};
const copying: Job = {
  volume: "vm5", replicaId: "r2", kind: "full", node: "host3", runner: "host3", state: JobState.JOB_STATE_RUNNING,
  message: "copying from r0 on host1", totalBytes: 64 * 2 ** 20, copiedBytes: 16 * 2 ** 20, bytesPerSec: 8 * 2 ** 20,
  startedAtMs: 1, updatedAtMs: 2, etaSeconds: 6,
};
const host1: Node = {
  name: "host1", address: "127.0.0.2:7500", labels: { zone: "a", rack: "r1" }, cordoned: false, online: true,
  lastHeartbeatMs: Date.now(), pools: [pool], agentVersion: "0.1.0", libvirtUri: "", replicaCount: 2,
};

/** A controller that makes volumes healthy a few polls after each change. */
class FakeCluster {
  volumes = new Map<string, { volume: Volume; polls: number }>();
  nodes = new Map([[host1.name, structuredClone(host1)]]);
  poolSets: SetPoolRequest[] = [];
  /** Pool jobs listed besides the copies while a pool compression runs. */
  poolJobs: Job[] = [];

  private replicas(spec: VolumeSpec, state: ReplicaState, size: number) {
    return Array.from({ length: spec.replicas }, (_, i) => ({
      id: `r${i}`, node: `host${i + 1}`, pool: "default", path: `/srv/stowage/default/${spec.name}.r${i}.qcow2`,
      state, virtualSizeBytes: size, allocatedBytes: 196608, message: "", outOfSync: false, outOfSyncSinceMs: 0, unreachableSinceMs: 0,
    }));
  }

  /** One GetVolume poll moves a busy volume one step. */
  private advance(name: string): Volume {
    const entry = this.volumes.get(name);
    if (!entry) throw new NotFoundError("volume", name);
    const v = entry.volume;
    if (++entry.polls < 3 || name.startsWith("slow")) return v;
    if (v.phase === VolumePhase.VOLUME_PHASE_DELETING) {
      this.volumes.delete(name);
      throw new NotFoundError("volume", name);
    }
    if (name.startsWith("doomed")) {
      v.phase = VolumePhase.VOLUME_PHASE_FAILED;
      v.message = "qemu-img create failed on host2: No space left on device";
    } else if (v.phase !== VolumePhase.VOLUME_PHASE_FAILED) {
      v.phase = VolumePhase.VOLUME_PHASE_HEALTHY;
      v.replicas = this.replicas(v.spec!, ReplicaState.REPLICA_STATE_HEALTHY, v.spec!.sizeBytes);
    }
    return v;
  }

  private change(name: string, phase: VolumePhase): Volume {
    const entry = this.volumes.get(name);
    if (!entry) throw new NotFoundError("volume", name);
    entry.volume.phase = phase;
    entry.polls = 0;
    return entry.volume;
  }

  volumeService(): AsyncService<typeof VolumeServiceService> {
    const notHere = async (): Promise<never> => {
      throw new Error("attach is tested against the real controller (test/integration/attach.test.ts)");
    };
    return {
      attachVolume: notHere,
      detachVolume: notHere,
      createVolume: async ({ spec, dryRun }) => {
        const rejections = [{ node: "host3", reasons: ["cordoned"] }];
        if (spec!.sizeBytes > 100 * GiB) {
          throw new InsufficientCapacityError(`no room for ${spec!.replicas} replicas of ${spec!.sizeBytes} bytes`, {
            rejections: [...rejections, { node: "host1", reasons: ["insufficient storage: 80GiB free"] }],
            hint: "add a node or a pool, or ask for fewer replicas",
          });
        }
        const placement = [{ node: "host1", pool: "default", score: 0.9 }, { node: "host2", pool: "default", score: 0.7 }];
        if (dryRun) return { placement, rejections };
        const volume: Volume = {
          spec: spec!, phase: VolumePhase.VOLUME_PHASE_CREATING, message: "", createdAtMs: 1, uid: `uid-${spec!.name}`, attachments: [], generation: 1,
          replicas: this.replicas(spec!, ReplicaState.REPLICA_STATE_CREATING, 0),
        };
        this.volumes.set(spec!.name, { volume, polls: 0 });
        return { volume, placement, rejections: [] };
      },
      getVolume: async ({ name }) => ({ volume: this.advance(name) }),
      listVolumes: async () => ({ volumes: [...this.volumes.values()].map((e) => e.volume) }),
      deleteVolume: async ({ name }) => ({ volume: this.change(name, VolumePhase.VOLUME_PHASE_DELETING) }),
      resizeVolume: async ({ name, sizeBytes }) => {
        const v = this.change(name, VolumePhase.VOLUME_PHASE_RESIZING);
        v.spec!.sizeBytes = sizeBytes;
        return { volume: v };
      },
      setVolumeReplicas: async ({ name, replicas, dryRun }) => {
        const entry = this.volumes.get(name);
        if (!entry) throw new NotFoundError("volume", name);
        const v = entry.volume;
        const from = v.spec!.replicas;
        const added = Array.from({ length: Math.max(0, replicas - from) }, (_, i) => ({ node: `host${from + i + 1}`, pool: "default", score: 0.5 }));
        const removed = Array.from({ length: Math.max(0, from - replicas) }, (_, i) => ({ id: `r${from - 1 - i}`, node: `host${from - i}`, reason: "in sync; not on a node the volume is attached to" }));
        if (dryRun) return { volume: v, added, removed, rejections: [] };
        const all = this.replicas({ ...v.spec!, replicas: Math.max(from, replicas) }, ReplicaState.REPLICA_STATE_HEALTHY, v.spec!.sizeBytes);
        v.replicas = all.map((r, i) => (i >= from ? { ...r, outOfSync: true, job: { ...copying, volume: name, replicaId: r.id, node: r.node } } : r));
        v.spec!.replicas = replicas;
        this.change(name, VolumePhase.VOLUME_PHASE_DEGRADED);
        return { volume: v, added, removed, rejections: [] };
      },
    };
  }

  jobService(): AsyncService<typeof JobServiceService> {
    return {
      listJobs: async () => ({
        jobs: [copying, { ...copying, replicaId: "r9", node: "host2", state: JobState.JOB_STATE_WAITING, message: "node host2 offline", runner: "", totalBytes: 0, copiedBytes: 0, bytesPerSec: 0, etaSeconds: 0 }, ...this.poolJobs],
        rebuildsPaused: "2 of 3 nodes offline: automatic rebuilds paused",
      }),
    };
  }

  nodeService(): AsyncService<typeof NodeServiceService> {
    const get = (name: string) => {
      const n = this.nodes.get(name);
      if (!n) throw new NotFoundError("node", name);
      return n;
    };
    return {
      listNodes: async () => ({ nodes: [...this.nodes.values()] }),
      getNode: async ({ name }) => {
        const n = get(name);
        // Each poll of a draining node moves one replica away.
        if (n.drain && n.drain.replicasLeft > 0) {
          n.drain.replicasLeft--;
          n.drain.replicas = n.drain.replicas.slice(1);
        }
        return { node: n };
      },
      cordonNode: async ({ name }) => ({ node: Object.assign(get(name), { cordoned: true }) }),
      uncordonNode: async ({ name }) => ({ node: Object.assign(get(name), { cordoned: false, drain: undefined }) }),
      drainNode: async ({ name, dryRun }) => {
        const moves = [
          { volume: "vm7", replicaId: "r0", fromNode: name, toNode: "host3", toPool: "default" },
          { volume: "vm8", replicaId: "r1", fromNode: name, toNode: "", toPool: "" },
        ];
        if (dryRun) return { node: get(name), moves };
        const replicas = [
          { volume: "vm7", replicaId: "r0", message: "replacement r5 on host3 is being brought in sync", job: { ...copying, volume: "vm7", replicaId: "r5" } },
          { volume: "vm8", replicaId: "r1", message: "removing: enough in-sync replicas elsewhere" },
        ];
        return { node: Object.assign(get(name), { cordoned: true, drain: { sinceMs: 1, replicasLeft: 2, replicas } }), moves };
      },
    };
  }

  poolService(): AsyncService<typeof PoolServiceService> {
    return {
      listPools: async ({ node }) => ({ pools: [pool].filter((p) => !node || p.node === node) }),
      getPool: async ({ node, name }) => {
        if (node !== pool.node || name !== pool.name) throw new NotFoundError("pool", `${node}/${name}`);
        return { pool };
      },
      setPool: async (req) => {
        if (req.node !== pool.node || req.name !== pool.name) throw new NotFoundError("pool", `${req.node}/${req.name}`);
        this.poolSets.push(req);
        return { pool: { ...pool, overcommitRatio: req.overcommitRatio ?? pool.overcommitRatio }, changed: true };
      },
      dedupPool: async (req) => {
        throw new NotFoundError("pool", `${req.node}/${req.name}`);
      },
      compressPool: async (req) => {
        if (req.node !== pool.node || req.name !== pool.name) throw new NotFoundError("pool", `${req.node}/${req.name}`);
        // A run of about 4 s whose progress job list shows meanwhile (stowctl looks every second).
        const job = { ...copying, volume: "", replicaId: "", kind: "compress", node: "host1", totalBytes: 100 * 2 ** 20, bytesPerSec: 40 * 2 ** 20, etaSeconds: 2 };
        this.poolJobs = [{ ...job, copiedBytes: 30 * 2 ** 20, message: "pool host1/default: image 1 of 2 (vm1 r1)" }];
        await new Promise((r) => setTimeout(r, 2_000));
        this.poolJobs = [{ ...job, copiedBytes: 80 * 2 ** 20, etaSeconds: 1, message: "pool host1/default: image 2 of 2 (vm2 r2): comparing the copy with the image" }];
        await new Promise((r) => setTimeout(r, 2_000));
        this.poolJobs = [];
        const run = PoolCompressRun.fromPartial({ state: "done", trigger: "manual", startedAtMs: 1, finishedAtMs: 2, bytesBefore: 100 * 2 ** 20, bytesAfter: 40 * 2 ** 20, savedBytes: 60 * 2 ** 20, compressed: 2, message: "2 of 2 images recompressed in 2.5s" });
        return { run };
      },
    };
  }
}

let cluster: FakeCluster;
let leader: Awaited<ReturnType<typeof serve>>;
let follower: Awaited<ReturnType<typeof serve>>;
let electing: Awaited<ReturnType<typeof serve>>;
let dead: string;
let followerCalls = 0;

beforeAll(async () => {
  cluster = new FakeCluster();
  leader = await serve((s) => {
    addService(s, NodeServiceService, cluster.nodeService());
    addService(s, PoolServiceService, cluster.poolService());
    addService(s, VolumeServiceService, cluster.volumeService());
    addService(s, JobServiceService, cluster.jobService());
  });
  const notLeader = (to: string) => async (): Promise<never> => {
    if (to) followerCalls++;
    throw new NotLeaderError(to);
  };
  follower = await serve((s) => {
    for (const def of [NodeServiceService, PoolServiceService, VolumeServiceService, JobServiceService] as Def[]) {
      addService(s, def, everyMethod(def, notLeader(leader.address)));
    }
  });
  electing = await serve((s) => addService(s, NodeServiceService, everyMethod(NodeServiceService, notLeader(""))));
  const gone = await serve(() => undefined);
  dead = gone.address;
  await shutdown(gone.server);
});

afterAll(async () => {
  await Promise.all([leader, follower, electing].map((x) => shutdown(x.server)));
});

beforeEach(() => {
  cluster.volumes.clear();
});

const at = (...addresses: string[]) => ["--controller", addresses.join(",")];

describe("finding the leader", () => {
  it("follows a follower's NotLeaderError to the leader", async () => {
    const r = await runCli([...at(follower.address), "node", "list"]);
    expect(r).toMatchObject({ code: 0, err: "" });
    expect(r.out).toMatch(/^NAME\s+STATUS\s+ADDRESS/);
    expect(r.out).toMatch(/\nhost1\s+online\s+127\.0\.0\.2:7500\s+a\s+r1\s+1\s/);
  });

  it("asks the follower once, then polls the leader directly", async () => {
    const before = followerCalls;
    const r = await runCli([...at(follower.address), "volume", "create", "vm1", "--size", "1GiB"]);
    expect(r).toMatchObject({ code: 0, out: "volume vm1 is healthy (2 replicas)\n", err: "" });
    expect(followerCalls - before).toBe(1);
  });

  it("passes over an unreachable address and one without a leader", async () => {
    const r = await runCli([...at(dead, electing.address, leader.address), "node", "get", "host1"]);
    expect(r.code).toBe(0);
    expect(r.out).toContain("Name:            host1\n");
    expect(r.out).toMatch(/NODE\s+NAME\s+CAPACITY\s+USED/);
  });

  it("reports the last error when no address answers", async () => {
    const r = await runCli([...at(dead, electing.address), "node", "list"]);
    expect(r.code).toBe(1);
    expect(r.err).toBe("error: no controller is leader yet\nhint: retry in a few seconds\n");
  });

  it("reads the addresses from STOWAGE_CONTROLLER and from the cluster file", async () => {
    const env = await runCli(["volume", "list"], { env: { STOWAGE_CONTROLLER: `${dead},${follower.address}` } });
    expect(env).toMatchObject({ code: 0, out: "no volumes found\n" });
    const file = await runCli(["node", "list", "-o", "json"], {
      env: { STOWAGE_CONFIG: "/c.json" },
      files: { "/c.json": JSON.stringify({ controllers: [follower.address] }) },
    });
    expect(file.code).toBe(0);
    expect(JSON.parse(file.out).nodes[0].name).toBe("host1");
  });
});

describe("errors from the controller", () => {
  it("prints error and hint for NotFound and exits 1", async () => {
    const r = await runCli([...at(follower.address), "volume", "get", "missing"]);
    expect(r).toEqual({
      code: 1,
      out: "",
      err: `error: volume "missing" not found\nhint: run 'stowctl volume list' to see what exists\n`,
    });
  });

  it("prints every rejection of an InsufficientCapacityError", async () => {
    const r = await runCli([...at(leader.address), "volume", "create", "big", "--size", "1TiB"]);
    expect(r.code).toBe(1);
    expect(r.err).toBe(
      `error: no room for 2 replicas of ${2 ** 40} bytes\n` +
        "rejected nodes:\n  host3: cordoned\n  host1: insufficient storage: 80GiB free\n" +
        "hint: add a node or a pool, or ask for fewer replicas\n",
    );
  });
});

describe("volume lifecycle", () => {
  it("dry run shows placement and rejections and creates nothing", async () => {
    const r = await runCli([...at(leader.address), "volume", "create", "vm1", "--size", "10GiB", "--dry-run"]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/NODE\s+POOL\s+SCORE\nhost1\s+default\s+0\.900\nhost2\s+default\s+0\.700\n/);
    expect(r.out).toContain("  host3: cordoned\n");
    expect(cluster.volumes.size).toBe(0);
  });

  it("create -o json prints the healthy volume; get -o json has phase, spec and replicas", async () => {
    const args = ["volume", "create", "vm2", "--size", "2GiB", "--replicas", "3", "--format", "raw", "-o", "json"];
    const created = await runCli([...at(leader.address), ...args]);
    expect(created.code).toBe(0);
    expect(JSON.parse(created.out).volume.phase).toBe("healthy");
    const got = JSON.parse((await runCli([...at(leader.address), "-o", "json", "volume", "get", "vm2"])).out);
    expect(got.volume.phase).toBe("healthy");
    expect(got.volume.spec).toEqual({ name: "vm2", sizeBytes: 2 * GiB, replicas: 3, format: "raw", preallocation: "off", pool: "" });
    expect(got.volume.replicas).toHaveLength(3);
    expect(got.volume.replicas[0]).toMatchObject({ node: "host1", pool: "default", path: "/srv/stowage/default/vm2.r0.qcow2", state: "healthy" });
  });

  it("--no-wait returns while the volume is still creating", async () => {
    const r = await runCli([...at(leader.address), "volume", "create", "vm3", "--size", "1GiB", "--no-wait"]);
    expect(r.out).toBe("volume vm3 accepted (phase creating); check it with 'stowctl volume get vm3'\n");
  });

  it("a failed volume exits 1 with the controller's reason", async () => {
    const r = await runCli([...at(leader.address), "volume", "create", "doomed", "--size", "1GiB"]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^error: volume doomed failed: qemu-img create failed on host2: No space left on device\nhint: /);
  });

  it("gives up after --wait-timeout, saying how to check", async () => {
    const r = await runCli([...at(leader.address), "volume", "create", "slow1", "--size", "1GiB", "--wait-timeout", "0.3"]);
    expect(r.code).toBe(1);
    expect(r.err).toBe(
      "error: volume slow1 is still creating after 0.3s (phase creating)\n" +
        "hint: check it with 'stowctl volume get slow1', or wait longer with --wait-timeout SECONDS\n",
    );
  });

  it("list, resize, then delete", async () => {
    await runCli([...at(leader.address), "volume", "create", "vm4", "--size", "10GiB"]);
    const list = await runCli([...at(leader.address), "volume", "list"]);
    expect(list.out).toBe("NAME   SIZE    REPLICAS   PHASE     FORMAT   ATTACHED\nvm4    10GiB   2/2        healthy   qcow2    -\n");

    const shrink = await runCli([...at(leader.address), "volume", "resize", "vm4", "--size", "5GiB"]);
    expect(shrink.code).toBe(1);
    expect(shrink.err).toContain("cannot shrink to 5GiB");

    const grow = await runCli([...at(leader.address), "volume", "resize", "vm4", "--size", "20GiB"]);
    expect(grow).toMatchObject({ code: 0, out: "volume vm4 resized to 20GiB (2 replicas)\n" });
    expect(cluster.volumes.get("vm4")!.volume.replicas.every((r) => r.virtualSizeBytes === 20 * GiB)).toBe(true);

    const del = await runCli([...at(follower.address), "volume", "delete", "vm4"]);
    expect(del).toMatchObject({ code: 0, out: "volume vm4 deleted\n" });
    expect(cluster.volumes.has("vm4")).toBe(false);
  });
});

describe("nodes and pools", () => {
  it("cordon and uncordon", async () => {
    const r = await runCli([...at(follower.address), "node", "cordon", "host1"]);
    expect(r.out).toBe("node host1 cordoned: no new replicas will be placed on it\n");
    expect(cluster.nodes.get("host1")!.cordoned).toBe(true);
    const json = await runCli([...at(leader.address), "node", "uncordon", "host1", "-o", "json"]);
    expect(JSON.parse(json.out).node.cordoned).toBe(false);
  });

  it("pool list and get", async () => {
    const list = await runCli([...at(leader.address), "pool", "list", "--node", "host1"]);
    expect(list.out).toMatch(/\nhost1\s+default\s+100GiB\s+20GiB 20%\s+80GiB\s+1GiB\s+20GiB 10%\s+2x\s+2\s+-\n$/);
    const get = await runCli([...at(leader.address), "pool", "get", "host1", "default"]);
    expect(get.out).toContain("Path:         /srv/stowage/default\n");
    const missing = await runCli([...at(leader.address), "pool", "get", "host9/default"]);
    expect(missing.code).toBe(1);
    expect(missing.err).toContain('error: pool "host9/default" not found\n');
  });

  it("pool set sends the ratio, and refuses bad values before any call", async () => {
    const ok = await runCli([...at(follower.address), "pool", "set", "host1/default", "--overcommit", "3"]);
    expect(ok.code, ok.err).toBe(0);
    expect(ok.out).toContain("pool host1/default updated\n");
    expect(ok.out).toContain("Overcommit:   3x");
    expect(cluster.poolSets.at(-1)).toMatchObject({ node: "host1", name: "default", overcommitRatio: 3, resetOvercommit: false, force: false });
    const sets = cluster.poolSets.length;
    for (const [args, err] of [
      [["--overcommit", "-1"], "option '--overcommit': expected a number greater than 0, got \"-1\""],
      [["--overcommit", "0"], "expected a number greater than 0"],
      [["--warning", "120"], "option '--warning': expected a percentage above 0 and at most 100"],
      [["--warning", "90", "--critical", "80"], "90% must be below --critical 80%"],
      [[], "nothing to set"],
    ] as const) {
      const bad = await runCli([...at(leader.address), "pool", "set", "host1/default", ...args]);
      expect(bad.code).toBe(2);
      expect(bad.err).toContain(err);
    }
    const missing = await runCli([...at(leader.address), "pool", "set", "host9/default", "--overcommit", "2"]);
    expect(missing.code).toBe(1);
    expect(missing.err).toContain('pool "host9/default" not found');
    expect(cluster.poolSets.length).toBe(sets);
  });

  it("pool compress shows the run's progress while it waits, and only the result with -o json", async () => {
    const r = await runCli([...at(leader.address), "pool", "compress", "host1/default", "--cold-after", "0s"]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain("pool host1/default: 30% of 100MiB, 40MiB/s, ETA 2s; image 1 of 2 (vm1 r1)\n");
    expect(r.out).toContain("pool host1/default: 80% of 100MiB, 40MiB/s, ETA 1s; image 2 of 2 (vm2 r2): comparing the copy with the image\n");
    expect(r.out).toMatch(/pool host1\/default: done .*2 of 2 images recompressed in 2.5s/);
    const json = await runCli([...at(leader.address), "pool", "compress", "host1/default", "-o", "json"]);
    expect(json.code, json.err).toBe(0);
    expect(JSON.parse(json.out).run.compressed).toBe(2);
  }, 15_000);
});

describe("replica changes, drains and jobs", () => {
  it("volume set --dry-run shows what would change; set waits with progress until every replica is in sync", async () => {
    await runCli([...at(leader.address), "volume", "create", "vm5", "--size", "64MiB"]);
    const dry = await runCli([...at(leader.address), "volume", "set", "vm5", "--replicas", "3", "--dry-run"]);
    expect(dry).toMatchObject({ code: 0, out: "dry run: volume vm5:\n  would add a replica on host3 (pool default)\nnothing was changed\n" });
    expect(cluster.volumes.get("vm5")!.volume.spec!.replicas).toBe(2);

    const set = await runCli([...at(follower.address), "volume", "set", "vm5", "--replicas", "3"]);
    expect(set.code, set.err).toBe(0);
    expect(set.out).toContain("volume vm5:\n  add a replica on host3 (pool default)\n");
    expect(set.out).toContain("vm5: 2/3 replicas in sync; r2 on host3 copying (full) 25% of 64MiB, 8MiB/s, ETA 6s\n");
    expect(set.out).toMatch(/volume vm5 is healthy with 3 replicas, all in sync\n$/);

    const down = await runCli([...at(leader.address), "volume", "set", "vm5", "--replicas", "1", "--no-wait"]);
    expect(down.out).toBe("volume vm5:\n  remove r2 on host3 (in sync; not on a node the volume is attached to)\n  remove r1 on host2 (in sync; not on a node the volume is attached to)\n");
  });

  it("volume set refuses a count that is not a whole number of at least 1 before calling", async () => {
    const r = await runCli([...at(dead), "volume", "set", "vm5", "--replicas", "0"]);
    expect(r.code).toBe(2);
    expect(r.err).toContain(`option '--replicas': expected a whole number of at least 1, got "0"`);
  });

  it("node drain shows the moves, waits with progress until nothing is left, and get shows the drain", async () => {
    const dry = await runCli([...at(leader.address), "node", "drain", "host1", "--dry-run"]);
    expect(dry.out).toMatch(/^dry run: draining node host1 would move:\nVOLUME\s+REPLICA\s+TO NODE\s+TO POOL\nvm7\s+r0\s+host3\s+default\nvm8\s+r1\s+\(none: enough replicas elsewhere\)\s+-\nnothing was changed\n$/);
    expect(cluster.nodes.get("host1")!.drain).toBeUndefined();

    const r = await runCli([...at(follower.address), "node", "drain", "host1"]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain("host1: 1 replica left; vm8: removing: enough in-sync replicas elsewhere\n");
    expect(r.out).toMatch(/node host1 drained: no replicas left; it stays cordoned until 'stowctl node uncordon host1'\n$/);
    const get = await runCli([...at(leader.address), "node", "get", "host1"]);
    expect(get.out).toContain("Draining since 1970-01-01T00:00:00.001Z: drained, no replicas left\n");
    const list = await runCli([...at(leader.address), "node", "list"]);
    expect(list.out).toMatch(/host1\s+online,cordoned,drained\s/);
    await runCli([...at(leader.address), "node", "uncordon", "host1"]);
    expect(cluster.nodes.get("host1")!.drain).toBeUndefined();
  });

  it("job list: progress, rate and ETA of running copies, why the others wait, and a paused-rebuilds line", async () => {
    const r = await runCli([...at(follower.address), "job", "list"]);
    expect(r.code).toBe(0);
    const lines = r.out.split("\n");
    expect(lines[0]).toBe("2 of 3 nodes offline: automatic rebuilds paused");
    expect(lines[1]).toMatch(/^VOLUME\s+REPLICA\s+KIND\s+TARGET\s+STATE\s+PROGRESS\s+RATE\s+ETA\s+MESSAGE$/);
    expect(lines[2]).toMatch(/^vm5\s+r2\s+full\s+host3\s+running\s+25% of 64MiB\s+8MiB\/s\s+6s\s+copying from r0 on host1$/);
    expect(lines[3]).toMatch(/^vm5\s+r9\s+full\s+host2\s+waiting\s+-\s+-\s+-\s+node host2 offline$/);
    const json = JSON.parse((await runCli([...at(leader.address), "job", "list", "-o", "json"])).out);
    expect(json.jobs[0]).toMatchObject({ volume: "vm5", state: "running", copiedBytes: 16 * 2 ** 20, etaSeconds: 6 });
    expect(json.rebuildsPaused).toBe("2 of 3 nodes offline: automatic rebuilds paused");
  });
});
