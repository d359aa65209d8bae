// The frontend as a real process, for tests and the benchmark. Tests run
// before any build, so `bundleFrontend()` compiles frontend/main.ts with
// esbuild (which vitest already ships) into node_modules/.cache; the
// benchmark runs the tsc output in dist/ instead.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
import { join } from "node:path";
import { frontendEnv } from "../launch.js";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/dist\/$/, "/");

/** Bundles frontend/main.ts (packages stay external) and returns the path of the script. */
export async function bundleFrontend(): Promise<string> {
  const esbuild = await import("esbuild");
  const cache = join(ROOT, "node_modules", ".cache");
  mkdirSync(cache, { recursive: true });
  const outfile = join(mkdtempSync(join(cache, "stowage-frontend-")), "main.mjs");
  await esbuild.build({
    entryPoints: [join(ROOT, "frontend", "main.ts")],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    packages: "external",
    outfile,
    logLevel: "silent",
  });
  return outfile;
}

export class FrontendProcess {
  output = "";
  exitCode: number | null = null;
  signal: NodeJS.Signals | null = null;
  private readonly exited: Promise<void>;

  private constructor(readonly child: ChildProcess) {
    child.stdout?.on("data", (d) => (this.output += d));
    child.stderr?.on("data", (d) => (this.output += d));
    this.exited = new Promise((resolve) =>
      child.once("exit", (code, signal) => {
        this.exitCode = code;
        this.signal = signal;
        resolve();
      }),
    );
  }

  /** Starts `node SCRIPT ARGS…` as the agent would (launch.ts) and waits for "frontend serving on". */
  static async start(script: string, args: string[], timeoutMs = 15_000): Promise<FrontendProcess> {
    const p = new FrontendProcess(
      spawn(process.execPath, [script, ...args], { stdio: ["ignore", "pipe", "pipe"], env: frontendEnv({ ...process.env, STOWAGE_LOG_LEVEL: "warn" }) }),
    );
    const deadline = Date.now() + timeoutMs;
    while (!p.output.includes("frontend serving on")) {
      if (p.exitCode !== null || p.signal !== null) throw new Error(`frontend exited before serving:\n${p.output}`);
      if (Date.now() > deadline) {
        await p.stop("SIGKILL");
        throw new Error(`frontend did not start within ${timeoutMs} ms:\n${p.output}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    return p;
  }

  get running(): boolean {
    return this.exitCode === null && this.signal === null;
  }

  /** Sends `signal` and waits for the exit (SIGKILL after `timeoutMs`). */
  async stop(signal: NodeJS.Signals = "SIGTERM", timeoutMs = 15_000): Promise<void> {
    if (!this.running) return;
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    await this.exited;
    clearTimeout(t);
  }

  wait(): Promise<void> {
    return this.exited;
  }
}
