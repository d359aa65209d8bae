// In-memory outside world for running stowctl inside a test: captured output,
// a given environment and files, no real config file.
import { INSECURE } from "../lib/grpc.js";
import type { CliDeps } from "./context.js";
import { run } from "./main.js";
import { sleep } from "./wait.js";

export interface RunResult {
  code: number;
  out: string;
  err: string;
}

export interface FakeWorld {
  env?: Record<string, string | undefined>;
  files?: Record<string, string>;
}

export function memoryDeps(world: FakeWorld = {}): { deps: CliDeps; out: () => string; err: () => string } {
  let out = "";
  let err = "";
  const deps: CliDeps = {
    io: { out: (t) => void (out += t), err: (t) => void (err += t) },
    env: world.env ?? { HOME: "/nonexistent-home" },
    readFile: (path) => world.files?.[path],
    now: Date.now,
    sleep,
    security: INSECURE,
  };
  return { deps, out: () => out, err: () => err };
}

/** Runs `stowctl ARGV...` in-process. */
export async function runCli(argv: string[], world: FakeWorld = {}): Promise<RunResult> {
  const m = memoryDeps(world);
  const code = await run(argv, m.deps);
  return { code, out: m.out(), err: m.err() };
}
