// The frontends running on this node: one process per attached volume (an NBD
// server on a unix socket at a fixed per-volume path, forwarding to the
// volume's replicas). They are started detached, so they outlive an agent
// restart; the agent finds them again through a state file per volume.
import { spawn } from "node:child_process";
import { existsSync, openSync, closeSync, readFileSync } from "node:fs";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { frontendArgv, frontendEnv } from "../frontend/launch.js";
import { InvalidArgumentError, UnavailableError } from "../lib/errors.js";
import type { Logger } from "../lib/logger.js";
import { validateName } from "../lib/names.js";
import { readArgv, waitForExit } from "../lib/proc.js";
import { formatNbdUri, parseNbdUri } from "../lib/nbd-uri.js";
import { KeyedMutex } from "../lib/keyed-mutex.js";
import { controlRequest, controlSocketPath, type ControlReply } from "../frontend/control.js";
import { FailedPreconditionError, NotFoundError } from "../lib/errors.js";

const FRONTEND_MAIN = fileURLToPath(new URL("../frontend/main.js", import.meta.url));

export interface FrontendBackendSpec {
  replicaId: string;
  nbdUri: string;
}

export interface RunningFrontend {
  volume: string;
  socketPath: string;
  nbdUri: string;
  pid: number;
  backends: FrontendBackendSpec[];
}

/** True while `pid` runs the frontend (a reused pid of another program is not ours). */
async function alive(pid: number): Promise<boolean> {
  return (await readArgv(pid))?.some((a) => a.endsWith("frontend/main.js")) ?? false;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class FrontendManager {
  private readonly lock = new KeyedMutex();
  private readonly stateDir: string;

  constructor(
    dataDir: string,
    /** Where the per-volume sockets live: the same path on every node. */
    private readonly socketDir: string,
    private readonly log: Logger,
    /** Controllers a frontend records out-of-sync replicas with (empty: writes need every replica). */
    private readonly controllers: string[] = [],
    /** This node's name (frontends name it in resync job records). */
    private readonly node = "",
  ) {
    this.stateDir = join(dataDir, "frontends");
  }

  socketPath(volume: string): string {
    return join(this.socketDir, `${volume}.sock`);
  }

  private statePath(volume: string): string {
    return join(this.stateDir, `${volume}.json`);
  }

  private async read(volume: string): Promise<RunningFrontend | undefined> {
    try {
      const f = JSON.parse(await readFile(this.statePath(volume), "utf8")) as RunningFrontend;
      return (await alive(f.pid)) ? f : undefined;
    } catch {
      return undefined;
    }
  }

  /** Starts the volume's frontend unless it runs already. */
  ensure(volume: string, backends: FrontendBackendSpec[], generation = 1): Promise<{ frontend: RunningFrontend; started: boolean }> {
    validateName("volume", volume);
    if (backends.length === 0) throw new InvalidArgumentError(`volume ${volume}: a frontend needs at least one replica`);
    const replicas = backends.map((b) => parseNbdUri(b.nbdUri));
    return this.lock.run(volume, async () => {
      const running = await this.read(volume);
      if (running) {
        if (JSON.stringify(running.backends) !== JSON.stringify(backends)) {
          // Changing replicas under a live frontend is the replication work's job; never cut I/O here.
          this.log.debug({ volume, running: running.backends, wanted: backends }, "frontend keeps its current replicas");
        }
        return { frontend: running, started: false };
      }
      await mkdir(this.stateDir, { recursive: true });
      await mkdir(this.socketDir, { recursive: true, mode: 0o755 });
      const socketPath = this.socketPath(volume);
      const logPath = join(this.stateDir, `${volume}.log`);
      const out = openSync(logPath, "w");
      const argv = frontendArgv({
        socketPath,
        exportName: volume,
        replicas,
        controllers: this.controllers,
        generation,
        // Dirty maps live beside the state files: they must outlive the frontend.
        stateDir: this.controllers.length > 0 ? this.stateDir : undefined,
        node: this.node,
      });
      const child = spawn(process.execPath, [FRONTEND_MAIN, ...argv], { detached: true, stdio: ["ignore", out, out], env: frontendEnv() });
      closeSync(out);
      child.unref();
      const pid = child.pid!;
      await this.waitServing(pid, logPath, socketPath);
      const frontend: RunningFrontend = { volume, socketPath, nbdUri: formatNbdUri({ exportName: volume, socketPath }), pid, backends };
      await writeFile(this.statePath(volume), JSON.stringify(frontend));
      this.log.info({ volume, pid, socketPath, backends: backends.map((b) => b.nbdUri) }, "frontend started");
      return { frontend, started: true };
    });
  }

  private async waitServing(pid: number, logPath: string, socketPath: string): Promise<void> {
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      const text = existsSync(logPath) ? readFileSync(logPath, "utf8") : "";
      if (text.includes("frontend serving on") && existsSync(socketPath)) return;
      if (!(await alive(pid))) {
        throw new UnavailableError(`the frontend exited at start: ${text.trim().split("\n").slice(-3).join(" | ") || "no output"}`, {
          hint: "are the volume's replicas exported and reachable from this node?",
        });
      }
      await sleep(20);
    }
    process.kill(pid, "SIGKILL");
    throw new UnavailableError(`the frontend did not start within 15 s (log: ${logPath})`);
  }

  /** Stops the volume's frontend (flushing its replicas); false if none ran. */
  remove(volume: string): Promise<boolean> {
    validateName("volume", volume);
    return this.lock.run(volume, async () => {
      const running = await this.read(volume);
      if (running) {
        process.kill(running.pid, "SIGTERM");
        // It drains and flushes its replicas first; past 10 s it is killed.
        if (!(await waitForExit(running.pid, 10_000))) process.kill(running.pid, "SIGKILL");
        this.log.info({ volume, pid: running.pid }, "frontend stopped");
      }
      await rm(this.statePath(volume), { force: true });
      await rm(this.socketPath(volume), { force: true });
      await rm(controlSocketPath(this.socketPath(volume)), { force: true });
      // Dirty maps of a detached volume are of no use: the next frontend copies in full.
      for (const f of await readdir(this.stateDir).catch(() => [] as string[])) {
        if (f.startsWith(`${volume}.r-`) && f.endsWith(".dirty") && !f.slice(volume.length + 1, -6).includes(".")) await rm(join(this.stateDir, f), { force: true });
      }
      return running !== undefined;
    });
  }

  /** Has the volume's frontend hold new writes until thaw (or until timeoutMs passed). */
  async freeze(volume: string, timeoutMs: number): Promise<{ token: number; drainMs: number }> {
    const r = await this.control(volume, { op: "freeze", timeoutMs }, timeoutMs + 5_000);
    return { token: r.token ?? 0, drainMs: r.drainMs ?? 0 };
  }

  /** Lets the writes held by `token` go; held=false when they were let go before (timeout, restart). */
  async thaw(volume: string, token: number): Promise<{ held: boolean; heldMs: number }> {
    const r = await this.control(volume, { op: "thaw", token }, 10_000);
    return { held: r.held ?? false, heldMs: r.heldMs ?? 0 };
  }

  private async control(volume: string, req: Parameters<typeof controlRequest>[1], timeoutMs: number): Promise<ControlReply & { ok: true }> {
    validateName("volume", volume);
    if (!(await this.read(volume))) throw new NotFoundError("frontend", volume, { hint: `the volume is not attached on this node` });
    const reply = await controlRequest(controlSocketPath(this.socketPath(volume)), req, timeoutMs);
    if (!reply.ok) throw new FailedPreconditionError(`the frontend of ${volume} refused to ${req.op}: ${reply.error}`);
    return reply;
  }

  async list(): Promise<RunningFrontend[]> {
    const names = await readdir(this.stateDir).catch(() => [] as string[]);
    const all = await Promise.all(names.filter((n) => n.endsWith(".json")).map((n) => this.read(n.slice(0, -5))));
    return all.filter((f): f is RunningFrontend => f !== undefined);
  }
}
