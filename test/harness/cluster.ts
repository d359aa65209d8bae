// A real cluster for integration tests: a fresh etcd on free ports, controller
// and agent processes from dist/, each agent on its own loopback address with
// its own data directory and pool.
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Etcd3 } from "etcd3";
import { execa } from "execa";
import {
  ClusterServiceService,
  NodeServiceService,
  PoolServiceService,
  ReplicaSyncServiceService,
  SnapshotServiceService,
  VmServiceService,
  VolumeServiceService,
} from "../../gen/stowage/v1/controller.js";
import { Channel, INSECURE } from "../../lib/grpc.js";
import { freePort } from "./ports.js";
import { ROOT } from "./root.js";
import { eventually, Proc } from "./processes.js";

export { ROOT } from "./root.js";

/** SIGKILLs an agent's qemu-storage-daemon and frontends (found through their pid files). */
export function killDetached(dataDir: string): void {
  const pids: number[] = [];
  try {
    pids.push(Number(readFileSync(join(dataDir, "qsd", "qsd.pid"), "utf8").trim()));
  } catch {
    // no daemon
  }
  try {
    for (const f of readdirSync(join(dataDir, "frontends")).filter((n) => n.endsWith(".json"))) {
      pids.push(Number(JSON.parse(readFileSync(join(dataDir, "frontends", f), "utf8")).pid));
    }
  } catch {
    // no frontends
  }
  for (const pid of pids.filter((p) => p > 0)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

export interface AgentOptions {
  zone?: string;
  rack?: string;
  overcommitRatio?: number;
  /** Pool directory (default: inside the agent's data dir). */
  poolPath?: string;
  /** The node's libvirtd (default: VM support off). */
  libvirt?: { uri: string; peerUri: string; migrationHost: string };
  /** Frontend socket dir (default: inside the agent's data dir). */
  frontendDir?: string;
  /** Fault points armed in the agent (lib/faults.ts). */
  faults?: string[];
  /** Run the agent in this process's mount namespace (a test libvirt host's, so it sees that host's /run/stowage). */
  mountNamespaceOf?: number;
}

export class TestCluster {
  readonly controllers = new Map<string, Proc>();
  readonly agents = new Map<string, Proc>();
  readonly agentDirs = new Map<string, string>();
  private channels: Channel[] = [];
  etcd!: Proc;
  etcdUrl = "";
  client!: Etcd3;

  private constructor(readonly dir: string) {}

  static async create(): Promise<TestCluster> {
    const c = new TestCluster(await mkdtemp(join(tmpdir(), "stowage-it-")));
    await c.startEtcd();
    return c;
  }

  private async startEtcd(): Promise<void> {
    const client = await freePort();
    const peer = await freePort();
    this.etcdUrl = `http://127.0.0.1:${client}`;
    this.etcd = Proc.start("etcd", "etcd", [
      "--name", "t",
      "--data-dir", join(this.dir, "etcd"),
      "--listen-client-urls", this.etcdUrl,
      "--advertise-client-urls", this.etcdUrl,
      "--listen-peer-urls", `http://127.0.0.1:${peer}`,
      "--initial-advertise-peer-urls", `http://127.0.0.1:${peer}`,
      "--initial-cluster", `t=http://127.0.0.1:${peer}`,
      "--heartbeat-interval", "10",
      "--election-timeout", "100",
    ]);
    this.client = new Etcd3({ hosts: this.etcdUrl });
    await eventually(async () => (await this.client.get("probe").string(), true), 20_000, "etcd ready");
  }

  /** Starts a controller; `faults` arms fault points (see lib/faults.ts); `flags` are passed on. */
  async startController(name: string, opts: { faults?: string[]; address?: string; leaderTtlSec?: number; flags?: string[] } = {}): Promise<string> {
    const address = opts.address ?? `127.0.0.1:${await freePort()}`;
    // TTL 2 by default: under CI load a 1 s lease can lapse without any crash.
    const ttl = String(opts.leaderTtlSec ?? 2);
    const argv = [join(ROOT, "dist/controller/main.js"), "--listen", address, "--etcd", this.etcdUrl, "--leader-ttl", ttl, ...(opts.flags ?? [])];
    const p = Proc.start(name, "node", argv, {
      STOWAGE_FAULTS: (opts.faults ?? []).join(","),
    });
    this.controllers.set(name, p);
    await p.waitFor("serving on");
    return address;
  }

  /** Addresses of the controllers that are running, in start order, without repeats. */
  get controllerAddresses(): string[] {
    const live = [...this.controllers.values()].filter((p) => p.running);
    return [...new Set(live.map((p) => /serving on (\S+)/.exec(p.output)?.[1] ?? "").filter(Boolean))];
  }

  /** The address a controller was started on, running or not. */
  addressOf(name: string): string {
    return /serving on (\S+)/.exec(this.controllers.get(name)?.output ?? "")?.[1] ?? "";
  }

  async startAgent(name: string, ip: string, opts: AgentOptions = {}): Promise<void> {
    const dataDir = this.agentDirs.get(name) ?? join(this.dir, name);
    this.agentDirs.set(name, dataDir);
    const poolPath = opts.poolPath ?? join(dataDir, "pools", "default");
    await mkdir(poolPath, { recursive: true });
    const port = await freePort(ip);
    const config = {
      name,
      listen: `${ip}:${port}`,
      controllers: this.controllerAddresses,
      labels: { zone: opts.zone ?? "", rack: opts.rack ?? "" },
      dataDir,
      pools: [{ name: "default", type: "dir", path: poolPath, overcommitRatio: opts.overcommitRatio ?? 4 }],
      // One machine plays several hosts: each gets its own frontend socket dir and NBD address.
      frontendDir: opts.frontendDir ?? join(dataDir, "run"),
      nbd: { type: "tcp", host: ip, port: 10809 },
      libvirt: opts.libvirt ?? false,
    };
    const file = join(dataDir, "agent.json");
    await writeFile(file, JSON.stringify(config));
    const argv = [join(ROOT, "dist/node-agent/main.js"), "--config", file];
    // nsenter execs node: the process (and its pid) is the agent's.
    const p = opts.mountNamespaceOf
      ? Proc.start(name, "nsenter", [`--mount=/proc/${opts.mountNamespaceOf}/ns/mnt`, "--", "node", ...argv])
      : Proc.start(name, "node", argv, opts.faults ? { STOWAGE_FAULTS: opts.faults.join(",") } : {});
    this.agents.set(name, p);
    await p.waitFor(/serving|listening/i);
  }

  poolDir(node: string): string {
    return join(this.agentDirs.get(node)!, "pools", "default");
  }

  /** Typed API clients against the first controller (callers follow the leader themselves). */
  api(address = this.controllerAddresses[0]!) {
    const ch = new Channel(address, INSECURE);
    this.channels.push(ch);
    return {
      nodes: ch.service(NodeServiceService),
      pools: ch.service(PoolServiceService),
      volumes: ch.service(VolumeServiceService),
      vms: ch.service(VmServiceService),
      sync: ch.service(ReplicaSyncServiceService),
      cluster: ch.service(ClusterServiceService),
      snapshots: ch.service(SnapshotServiceService),
    };
  }

  /** The API of whichever controller currently leads. */
  async leaderApi() {
    const leader = await eventually(async () => {
      for (const a of this.controllerAddresses) {
        const r = await this.api(a).cluster.getLeader({}, { timeoutMs: 1000 }).catch(() => undefined);
        if (r?.isLeader) return a;
      }
      return undefined;
    }, 20_000, "a leader");
    return { address: leader, ...this.api(leader) };
  }

  async waitNodesOnline(n: number): Promise<void> {
    await eventually(async () => {
      const api = await this.leaderApi();
      const r = await api.nodes.listNodes({});
      return r.nodes.filter((x) => x.online).length >= n;
    }, 30_000, `${n} nodes online`);
  }

  /** Runs the real CLI against this cluster. */
  async stowctl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const r = await execa("node", [join(ROOT, "bin/stowctl.js"), "--controller", this.controllerAddresses.join(","), ...args], {
      reject: false,
      env: { STOWAGE_CONFIG: join(this.dir, "none.json") },
    });
    return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
  }

  /**
   * Every key and value under the Stowage prefix, minus node liveness and capacity
   * events (the leader raises those by itself whenever a pool's figures cross a threshold).
   */
  async dumpState(): Promise<Record<string, string>> {
    const all = await this.client.getAll().prefix("/stowage/v1/").strings();
    for (const k of Object.keys(all)) if (k.includes("/nodes/status/") || k.includes("/leader") || k.includes("/events/")) delete all[k];
    return all;
  }

  async stop(): Promise<void> {
    for (const ch of this.channels) ch.close();
    await Promise.all([...this.agents.values()].map((p) => p.kill()));
    // Storage daemons and frontends outlive their agent by design: end them here.
    for (const dir of this.agentDirs.values()) killDetached(dir);
    await Promise.all([...this.controllers.values()].map((p) => p.kill()));
    this.client?.close();
    await this.etcd?.kill();
    await rm(this.dir, { recursive: true, force: true });
  }
}
