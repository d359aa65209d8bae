// The one door to host commands. Every subprocess goes through run(), which
// applies a timeout and turns failures into ExecError with the command's stderr.
import { createInterface } from "node:readline";
import { execa, type Options } from "execa";
import { StowageError } from "./errors.js";

export class ExecError extends StowageError {
  constructor(
    readonly cmd: string,
    readonly exitCode: number | undefined,
    readonly stderr: string,
    cause?: unknown,
  ) {
    super(`${cmd} failed${exitCode === undefined ? "" : ` (exit ${exitCode})`}: ${stderr.trim() || "no output"}`, { cause });
  }
}

export interface RunOptions {
  timeoutMs?: number;
  input?: string;
  /** Open file descriptors of this process the child gets as its fd 3, 4, ... */
  fds?: number[];
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

export async function run(file: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const cmd = [file, ...args].join(" ");
  try {
    const r = await execa(file, args, {
      timeout: opts.timeoutMs ?? 60_000,
      input: opts.input,
      // Extra descriptors by number: execa passes them on (its types only list streams there).
      ...(opts.fds?.length ? { stdio: [opts.input === undefined ? "ignore" : "pipe", "pipe", "pipe", ...opts.fds] as unknown as Options["stdio"] } : {}),
      stripFinalNewline: false,
      env: { LC_ALL: "C" },
    });
    return { stdout: String(r.stdout), stderr: String(r.stderr) };
  } catch (err: any) {
    throw execError(cmd, err, opts.timeoutMs ?? 60_000);
  }
}

/** An execa failure as ExecError: the command's stderr, else why it ended. */
function execError(cmd: string, err: any, timeoutMs: number): ExecError {
  const stderr = String(err?.stderr ?? "") || (err?.timedOut ? `timed out after ${timeoutMs} ms` : String(err?.shortMessage ?? err));
  return new ExecError(cmd, typeof err?.exitCode === "number" ? err.exitCode : undefined, stderr, err);
}

export interface Watcher {
  /** Settles once the command has exited: resolves after stop() or exit 0, rejects with ExecError otherwise. */
  readonly exited: Promise<void>;
  /** Ends the command (SIGTERM); safe to call more than once. */
  stop(): void;
}

/**
 * Runs a long-lived command (an event watcher) and hands each line of its
 * stdout to `onLine` as it arrives; it runs until it exits, stop() is called or
 * timeoutMs passes. Same environment and error type as run().
 */
export function watchLines(file: string, args: string[], onLine: (line: string) => void, opts: { timeoutMs?: number } = {}): Watcher {
  const cmd = [file, ...args].join(" ");
  const timeoutMs = opts.timeoutMs ?? 60_000;
  let stopped = false;
  const child = execa(file, args, { timeout: timeoutMs, stdin: "ignore", buffer: { stdout: false, stderr: true }, env: { LC_ALL: "C" } });
  createInterface({ input: child.stdout }).on("line", onLine);
  const exited = child.then(
    () => undefined,
    (err: any) => {
      if (stopped && err?.isTerminated) return;
      throw execError(cmd, err, timeoutMs);
    },
  );
  return {
    exited,
    stop: () => {
      stopped = true;
      child.kill("SIGTERM");
    },
  };
}
