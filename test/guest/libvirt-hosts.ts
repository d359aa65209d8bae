// Two libvirt "hosts" on this one machine, so tests can live-migrate between them.
//
// Each host is one deploy/libvirt-host.sh: a `libvirtd --listen` on
// 127.0.0.1:PORT in its own mount namespace, with its own /etc/libvirt,
// /run/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and
// /run/stowage (see the script and shared/DESIGN.md; libvirt refuses to
// migrate to the daemon a domain runs on). Neither host is the machine's own
// libvirtd, so tests never touch one the machine may run. A node agent started
// in a host's namespace (TestCluster.startAgent's mountNamespaceOf: host.pid)
// sees that host's /run/stowage. Everything lives under one temp dir; stop()
// destroys the domains, stops the daemons and removes the dir, on success and
// on failure.
//
// Files the guests use (serial logs, images, test NBD sockets) must live
// outside the bind-mounted dirs (both hosts then see the same path) and be
// usable by the user QEMU runs as under libvirt (libvirt-qemu): world-readable
// dirs, a world-writable serial log and NBD socket.
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { ROOT } from "../harness/root.js";
import { freePort } from "../harness/ports.js";
import { Proc, sleep } from "../harness/processes.js";
import { killOnExit, onExit } from "../harness/reaper.js";

/** Persistent cache of libvirt's QEMU capabilities (probing takes ~15 s under TCG load; libvirt re-probes when stale). */
export const CAPS_CACHE_DIR = process.env.STOWAGE_LIBVIRT_CAPS_CACHE ?? "/var/tmp/stowage-libvirt-caps";

// run-stowage: each host has its own /run/stowage (volume frontend sockets live at the same path on every host).
/** Configures and runs one namespaced libvirtd (also used by the local cluster). */
const HOST_SCRIPT = join(ROOT, "deploy/libvirt-host.sh");

export interface LibvirtHost {
  name: string;
  dir: string;
  port: number;
  /** qemu+tcp://127.0.0.1:PORT/system */
  uri: string;
  hostUuid: string;
  migrationPorts: [number, number];
  proc: Proc;
  /** The daemon's log (errors and warnings). */
  log(): Promise<string>;
  /** libvirtd's pid: enter its mount namespace to see this host's /run/stowage. */
  pid: number;
  /** Pids of the QEMU processes this daemon started (from its pid files). */
  qemuPids(): Promise<number[]>;
  stop(): Promise<void>;
}

/** Where frontends put volume sockets on every host (inside each host's mount namespace). */
export const HOST_FRONTEND_DIR = "/run/stowage/volumes";

/** TestCluster.startAgent options for a node agent that plays this libvirt host. */
export function hostAgentOptions(h: LibvirtHost) {
  return {
    frontendDir: HOST_FRONTEND_DIR,
    mountNamespaceOf: h.pid,
    libvirt: { uri: h.uri, peerUri: h.uri, migrationHost: "127.0.0.1" },
  };
}

export interface TwoHosts {
  uri1: string;
  uri2: string;
  hosts: [LibvirtHost, LibvirtHost];
  dir: string;
  stop(): Promise<void>;
}

/** Runs virsh against `uri`; resolves with stdout, rejects with virsh's error text. */
export async function virsh(uri: string, args: string[], timeoutMs = 60_000): Promise<string> {
  const r = await execa("virsh", ["-c", uri, ...args], { timeout: timeoutMs, reject: false });
  if (r.exitCode !== 0 || r.failed) {
    throw new Error(`virsh -c ${uri} ${args.join(" ")} failed (${r.exitCode ?? r.signal}): ${(r.stderr || r.stdout).trim()}`);
  }
  return r.stdout;
}

function portsFree(from: number, count: number): Promise<boolean> {
  return new Promise((resolve) => {
    let i = 0;
    const next = () => {
      if (i === count) return resolve(true);
      const s = createServer();
      s.once("error", () => resolve(false));
      s.listen(from + i, "127.0.0.1", () => s.close(() => (i++, next())));
    };
    next();
  });
}

/** A run of `count` free loopback ports. */
async function freePortRange(count: number, avoid: number[] = []): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 20_000);
    if (avoid.some((a) => a >= base && a < base + count)) continue;
    if (await portsFree(base, count)) return base;
  }
  throw new Error("no free port range");
}

async function saveCaps(dir: string): Promise<void> {
  const src = join(dir, "cache", "qemu", "capabilities");
  if (!existsSync(src)) return;
  await mkdir(CAPS_CACHE_DIR, { recursive: true });
  for (const f of await readdir(src)) if (f.endsWith(".xml")) await copyFile(join(src, f), join(CAPS_CACHE_DIR, f)).catch(() => undefined);
}

export interface HostOptions {
  name: string;
  dir: string;
  port?: number;
  migrationPortMin?: number;
  readyTimeoutMs?: number;
}

/** Starts one namespaced libvirtd listening on qemu+tcp://127.0.0.1:PORT/system. */
export async function startLibvirtHost(o: HostOptions): Promise<LibvirtHost> {
  const dir = o.dir;
  const port = o.port ?? (await freePort());
  const migMin = o.migrationPortMin ?? (await freePortRange(16, [port]));
  const migrationPorts: [number, number] = [migMin, migMin + 15];
  const uri = `qemu+tcp://127.0.0.1:${port}/system`;
  await mkdir(dir, { recursive: true });
  // The script writes the configs, seeds the capability cache and execs libvirtd: the child's pid is the daemon's.
  const proc = Proc.start(`libvirtd ${o.name}`, "bash", [HOST_SCRIPT, dir, "127.0.0.1", String(port), String(migMin)], {
    STOWAGE_LIBVIRT_CAPS_CACHE: CAPS_CACHE_DIR,
  });
  const hostUuid = async () => (await readFile(join(dir, "etc", "host-uuid"), "utf8").catch(() => "")).trim();

  const host: LibvirtHost = {
    name: o.name,
    dir,
    port,
    uri,
    hostUuid: "",
    migrationPorts,
    proc,
    pid: proc.child.pid!,
    log: () => readFile(join(dir, "log", "libvirtd.log"), "utf8").catch(() => ""),
    qemuPids: async () => {
      const qdir = join(dir, "run", "qemu");
      if (!existsSync(qdir)) return [];
      const pids: number[] = [];
      for (const f of await readdir(qdir)) {
        if (!f.endsWith(".pid") || f === "driver.pid") continue; // driver.pid is libvirtd's own
        const pid = Number((await readFile(join(qdir, f), "utf8").catch(() => "")).trim());
        if (pid > 0) pids.push(pid);
      }
      return pids;
    },
    stop: async () => {
      if (proc.running) {
        const names = (await virsh(uri, ["list", "--name"], 10_000).catch(() => "")).split("\n").map((s) => s.trim()).filter(Boolean);
        for (const n of names) await virsh(uri, ["destroy", n], 20_000).catch(() => undefined);
      }
      // QEMU processes the daemon could not destroy: killed by pid, if the pid is still a QEMU.
      for (const pid of await host.qemuPids()) {
        const cmd = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
        if (cmd.includes("qemu-system")) {
          try {
            process.kill(pid, "SIGKILL");
          } catch {
            // gone
          }
        }
      }
      await proc.kill("SIGTERM", 10_000);
      cancelExitHook();
    },
  };
  killOnExit(proc.child);
  // Its QEMU processes are not our children: kill them by pid file too.
  const cancelExitHook = onExit(() => {
    const qdir = join(dir, "run", "qemu");
    for (const f of existsSync(qdir) ? readdirSync(qdir) : []) {
      if (!f.endsWith(".pid") || f === "driver.pid") continue;
      try {
        const pid = Number(readFileSync(join(qdir, f), "utf8").trim());
        if (pid > 0 && readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("qemu-system")) process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
  });

  // Ready when virsh gets an answer (the first start probes QEMU's capabilities: slow).
  const deadline = Date.now() + (o.readyTimeoutMs ?? 90_000);
  for (;;) {
    if (!proc.running) {
      throw new Error(`libvirtd ${o.name} exited:\n${proc.output.slice(-2000)}\n${(await host.log()).slice(-2000)}`);
    }
    const r = await execa("virsh", ["-c", uri, "version"], { reject: false, timeout: 20_000 });
    if (r.exitCode === 0 && /Running hypervisor: QEMU/.test(r.stdout)) break;
    if (Date.now() > deadline) {
      await host.stop();
      throw new Error(`libvirtd ${o.name} not ready within ${o.readyTimeoutMs ?? 90_000} ms: ${r.stderr}\n${(await host.log()).slice(-2000)}`);
    }
    await sleep(100);
  }
  await saveCaps(dir);
  host.hostUuid = await hostUuid();
  return host;
}

/**
 * Starts two namespaced libvirt hosts (host 1, then host 2 reusing the QEMU
 * capabilities host 1 probed). `baseDir` (default: a new temp dir) is removed by stop().
 */
export async function startTwoHosts(opts: { baseDir?: string } = {}): Promise<TwoHosts> {
  const dir = opts.baseDir ?? (await mkdtemp(join(tmpdir(), "stowage-libvirt-")));
  await mkdir(dir, { recursive: true });
  await chmod(dir, 0o755);
  const hosts: LibvirtHost[] = [];
  const cancelRm = onExit(() => rmSync(dir, { recursive: true, force: true }), true);
  const stop = async () => {
    for (const h of hosts.splice(0).reverse()) await h.stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    cancelRm();
  };
  try {
    hosts.push(await startLibvirtHost({ name: "host1", dir: join(dir, "host1") }));
    const [m1, m2] = hosts[0]!.migrationPorts;
    const used = [hosts[0]!.port, ...Array.from({ length: m2 - m1 + 1 }, (_, i) => m1 + i)];
    let port2 = await freePort();
    while (used.includes(port2)) port2 = await freePort();
    const mig2 = await freePortRange(16, [...used, port2]);
    hosts.push(await startLibvirtHost({ name: "host2", dir: join(dir, "host2"), port: port2, migrationPortMin: mig2 }));
  } catch (err) {
    await stop();
    throw err;
  }
  const [h1, h2] = hosts as [LibvirtHost, LibvirtHost];
  return { uri1: h1.uri, uri2: h2.uri, hosts: [h1, h2], dir, stop };
}
