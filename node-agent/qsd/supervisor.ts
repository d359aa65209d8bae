// Starts or adopts the host's one qemu-storage-daemon (QSD) and holds the QMP
// connection to it. The daemon is started with --daemonize (it calls setsid and
// is reparented away from the agent), so it and its NBD exports outlive an agent
// restart: the next agent finds it through `${dataDir}/qsd/qsd.pid`, checks that
// the process is that QSD and that its QMP socket answers, and adopts it.
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { errorMessage, UnavailableError } from "../../lib/errors.js";
import { run } from "../../lib/exec.js";
import type { Logger } from "../../lib/logger.js";
import { KeyedMutex } from "../../lib/keyed-mutex.js";
import { createServer, type Server } from "node:net";
import { readArgv, waitForExit } from "../../lib/proc.js";
import { QsdExports, type ExportDescriptor, type ExportSpec, type FileBackend } from "./exports.js";
import { QmpClient } from "./qmp-client.js";
import { nbdEndpointOf, parseQsdArgv, QSD_BINARY, qsdArgs, qsdPaths, type NbdEndpoint, type NbdServerConfig, type QsdPaths } from "./qsd-args.js";
import { Fleece } from "./fleece.js";

export interface QsdSupervisorOptions {
  /** The agent's data dir; the daemon's sockets and pidfile go to `${dataDir}/qsd/`. */
  dataDir: string;
  /** How the NBD server listens when this supervisor starts the daemon (an adopted one keeps its own). */
  nbd: NbdServerConfig;
  /** How exported image files are opened (default: aio=native, cache.direct=on). */
  backend?: FileBackend;
  logger?: Logger;
  binary?: string;
  startTimeoutMs?: number;
  /** Connect + greeting timeout of the QMP socket (default 5000 ms). */
  qmpTimeoutMs?: number;
  /**
   * Called when the QMP connection drops without detach()/stop() (the daemon
   * died or was killed). The agent should then call ensureRunning() with the
   * exports it wants, which starts a new daemon and re-adds them.
   */
  onLost?: (reason: Error | undefined) => void;
}

export interface QsdStatus {
  pid: number;
  /** True when this call found a running daemon (for example after an agent restart). */
  adopted: boolean;
  /** True when this call started a new daemon. */
  started: boolean;
  nbd: NbdEndpoint;
}

interface Running {
  pid: number;
  client: QmpClient;
  nbd: NbdEndpoint;
}

export class QsdSupervisor {
  readonly paths: QsdPaths;
  readonly exports: QsdExports;
  /** Dirty bitmaps and fleecing for incremental backups. */
  readonly fleece: Fleece;
  private readonly lock = new KeyedMutex();
  private running: Running | undefined;

  constructor(private readonly opts: QsdSupervisorOptions) {
    this.paths = qsdPaths(opts.dataDir);
    qsdArgs(this.paths, opts.nbd); // validates the NBD config now rather than at the first start
    this.exports = new QsdExports({
      qmp: () => this.qmp(),
      endpoint: () => this.nbd,
      backend: opts.backend,
      logger: opts.logger,
    });
    this.fleece = new Fleece({ qmp: () => this.qmp(), endpoint: () => this.nbd, logger: opts.logger });
  }

  /** The QMP connection; throws UnavailableError until start() succeeded or after the daemon is lost. */
  qmp(): QmpClient {
    if (!this.running || this.running.client.closed) {
      throw new UnavailableError("qemu-storage-daemon is not connected", { hint: "the agent starts or adopts it on startup; see its log" });
    }
    return this.running.client;
  }

  get pid(): number | undefined {
    return this.running?.pid;
  }

  /** Where the running daemon serves NBD. */
  get nbd(): NbdEndpoint {
    return this.running?.nbd ?? nbdEndpointOf(this.opts.nbd, this.paths);
  }

  /** Adopts the running daemon or starts one, and connects to it. Idempotent. */
  start(): Promise<QsdStatus> {
    return this.lock.run("qsd", () => this.startLocked());
  }

  /**
   * start(), then ensureExport() for every desired export: after the daemon was
   * restarted the exports are gone, and this puts them back. Exports that are
   * not in `desired` are left alone. One export that fails (say, a missing
   * image) does not hold up the others: it is logged and returned in `failed`.
   */
  async ensureRunning(desired: ExportSpec[] = []): Promise<QsdStatus & { exports: ExportDescriptor[]; failed: { replicaId: string; error: Error }[] }> {
    const status = await this.start();
    const exports: ExportDescriptor[] = [];
    const failed: { replicaId: string; error: Error }[] = [];
    for (const spec of desired) {
      try {
        exports.push(await this.exports.ensureExport(spec));
      } catch (err) {
        const error = err instanceof Error ? err : new Error(String(err));
        failed.push({ replicaId: spec.replicaId, error });
        this.opts.logger?.warn({ replica: spec.replicaId, path: spec.path, err: error.message }, "cannot export replica");
      }
    }
    return { ...status, exports, failed };
  }

  /** Closes the QMP connection and leaves the daemon (and its exports) running: an agent stop or restart. */
  async detach(): Promise<void> {
    const r = this.running;
    this.running = undefined;
    await r?.client.close();
  }

  /** Stops the daemon (every export goes away) and waits until it has exited. */
  async stop(timeoutMs = 10_000): Promise<void> {
    await this.lock.run("qsd", async () => {
      const pid = this.running?.pid ?? (await this.readPid());
      const ours = pid !== undefined && (await this.isOurs(pid)) !== undefined;
      const client = this.running?.client;
      this.running = undefined;
      if (client && !client.closed) {
        await client.execute("quit", undefined, { timeoutMs: 2000 }).catch(() => undefined);
        await client.close();
      } else if (ours) {
        process.kill(pid, "SIGTERM"); // QSD quits cleanly on SIGTERM
      }
      if (!ours) return;
      if (!(await waitForExit(pid, timeoutMs))) {
        process.kill(pid, "SIGKILL");
        await waitForExit(pid, 2000);
      }
      this.opts.logger?.info({ pid }, "qemu-storage-daemon stopped");
    });
  }

  private async startLocked(): Promise<QsdStatus> {
    if (this.running && (await this.healthy(this.running))) {
      return { pid: this.running.pid, adopted: false, started: false, nbd: this.running.nbd };
    }
    await this.detach();
    const pid = await this.readPid();
    const found = pid === undefined ? undefined : await this.isOurs(pid);
    if (pid !== undefined && found) {
      let client: QmpClient;
      try {
        client = await this.connect();
      } catch (err) {
        // Starting a second daemon would fail on the pidfile lock and the image locks; never kill
        // this one either: it may be serving running VMs.
        throw new UnavailableError(`qemu-storage-daemon (pid ${pid}) is running but its QMP socket does not answer: ${errorMessage(err)}`, {
          hint: "is another stowage-agent using this data dir? If the daemon hangs, kill it and the agent will start a new one",
          cause: err,
        });
      }
      // A daemon given its listening socket (addr.type=fd) has the address in a file beside it.
      const nbd = found.nbd ?? (await this.readEndpoint()) ?? this.nbd;
      this.attach({ pid, client, nbd });
      this.opts.logger?.info({ pid, nbd }, "adopted running qemu-storage-daemon");
      return { pid, adopted: true, started: false, nbd };
    }
    return this.launch();
  }

  private async launch(): Promise<QsdStatus> {
    const { stateDir, pidFile, qmpSocket, nbdSocket } = this.paths;
    await mkdir(stateDir, { recursive: true, mode: 0o750 });
    // Leftovers of a daemon that died without cleaning up (SIGKILL, host crash).
    await Promise.all([pidFile, qmpSocket, nbdSocket].map((p) => rm(p, { force: true })));
    // A TCP export listens on a socket opened here with TCP_NODELAY, handed to the daemon as
    // its fd 3 (see qsdArgs): without it, small NBD replies wait for delayed ACKs (measured:
    // 2 replicas over TCP at 4k, 7,600-12,954 IOPS before, 26,736-31,661 after).
    const listener = this.opts.nbd.type === "tcp" ? await listenNoDelay(this.opts.nbd.host, this.opts.nbd.port) : undefined;
    try {
      // With --daemonize the command returns once the daemon is ready (sockets listening, pidfile written).
      await run(this.opts.binary ?? QSD_BINARY, qsdArgs(this.paths, this.opts.nbd, listener && 3), {
        timeoutMs: this.opts.startTimeoutMs ?? 30_000,
        fds: listener ? [listener.fd] : undefined,
      });
    } finally {
      // The daemon holds its own copy; this process must not accept on it.
      listener?.server.close();
    }
    const pid = await this.readPid();
    if (pid === undefined) throw new UnavailableError(`qemu-storage-daemon started but wrote no pidfile ${pidFile}`);
    const client = await this.connect();
    const nbd = nbdEndpointOf(this.opts.nbd, this.paths);
    await writeFile(this.endpointFile, JSON.stringify(nbd));
    this.attach({ pid, client, nbd });
    this.opts.logger?.info({ pid, nbd, version: client.greeting.version.package }, "started qemu-storage-daemon");
    return { pid, adopted: false, started: true, nbd };
  }

  private attach(r: Running): void {
    this.running = r;
    r.client.on("close", (reason) => {
      if (this.running !== r) return; // detach() or stop()
      this.running = undefined;
      this.opts.logger?.warn({ pid: r.pid, err: reason && errorMessage(reason) }, "lost the QMP connection to qemu-storage-daemon");
      this.opts.onLost?.(reason);
    });
  }

  private connect(): Promise<QmpClient> {
    return QmpClient.connect({ path: this.paths.qmpSocket, connectTimeoutMs: this.opts.qmpTimeoutMs ?? 5000, logger: this.opts.logger });
  }

  private async healthy(r: Running): Promise<boolean> {
    if (r.client.closed) return false;
    try {
      await r.client.execute("query-version", undefined, { timeoutMs: 2000 });
      return true;
    } catch {
      return false;
    }
  }

  private get endpointFile(): string {
    return join(this.paths.stateDir, "nbd-endpoint.json");
  }

  private async readEndpoint(): Promise<NbdEndpoint | undefined> {
    try {
      return JSON.parse(await readFile(this.endpointFile, "utf8")) as NbdEndpoint;
    } catch {
      return undefined;
    }
  }

  private async readPid(): Promise<number | undefined> {
    try {
      const pid = Number((await readFile(this.paths.pidFile, "utf8")).trim());
      return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  /** The running QSD with our QMP socket (not a reused pid of some other process), as started. */
  private async isOurs(pid: number): Promise<ReturnType<typeof parseQsdArgv>> {
    const argv = await readArgv(pid);
    const parsed = argv && parseQsdArgv(argv);
    return parsed?.qmpSocket === this.paths.qmpSocket ? parsed : undefined;
  }
}

/**
 * A TCP server socket with TCP_NODELAY, for the daemon to inherit. Node accepts on it
 * until it is closed right after the daemon started; nothing is exported then, so a
 * connection it takes in that moment would have failed anyway, and clients retry.
 */
async function listenNoDelay(host: string, port: number): Promise<{ server: Server; fd: number }> {
  const server = createServer((sock) => sock.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host, port, exclusive: true }, () => resolve());
  });
  const handle = (server as unknown as { _handle?: { fd?: number; setNoDelay?: (on: boolean) => number } })._handle;
  if (!handle || typeof handle.fd !== "number" || handle.fd < 0) {
    server.close();
    throw new UnavailableError(`cannot hand the NBD listening socket on ${host}:${port} to qemu-storage-daemon`);
  }
  handle.setNoDelay?.(true);
  return { server, fd: handle.fd };
}
