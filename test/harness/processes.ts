// Child processes for integration tests: spawned directly (never through npx,
// so SIGKILL reaches the real process), output captured for failure messages.
import { spawn, type ChildProcess } from "node:child_process";

export class Proc {
  output = "";
  private exited: Promise<number | null>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    child.stdout?.on("data", (d) => (this.output += d));
    child.stderr?.on("data", (d) => (this.output += d));
    this.exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  }

  static start(name: string, cmd: string, args: string[], env: Record<string, string> = {}): Proc {
    return new Proc(name, spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, STOWAGE_LOG_LEVEL: "info", ...env } }));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Resolves when `text` has appeared in the output. */
  async waitFor(text: string | RegExp, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (typeof text === "string" ? this.output.includes(text) : text.test(this.output)) return;
      if (!this.running) throw new Error(`${this.name} exited before printing ${text}:\n${this.output.slice(-3000)}`);
      await sleep(25);
    }
    throw new Error(`${this.name} did not print ${text} within ${timeoutMs} ms:\n${this.output.slice(-3000)}`);
  }

  async kill(signal: NodeJS.Signals = "SIGTERM", timeoutMs = 10_000): Promise<void> {
    if (!this.running) return;
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    await this.exited;
    clearTimeout(t);
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value or the time is up. */
export async function eventually<T>(fn: () => Promise<T | undefined | false>, timeoutMs = 15_000, what = "condition"): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    await sleep(50);
  }
  throw new Error(`${what} not reached within ${timeoutMs} ms${last ? `: ${String(last)}` : ""}`);
}
