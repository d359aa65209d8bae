// The one door to host commands. Every subprocess goes through run(), which
// applies a timeout and turns failures into ExecError with the command's stderr.
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
    const stderr = String(err?.stderr ?? "") || (err?.timedOut ? `timed out after ${opts.timeoutMs ?? 60_000} ms` : String(err?.shortMessage ?? err));
    throw new ExecError(cmd, typeof err?.exitCode === "number" ? err.exitCode : undefined, stderr, err);
  }
}
