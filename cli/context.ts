// What a command needs from the outside world, and the global options it runs under.
// Tests hand in their own deps; bin/stowctl.js uses the real process.
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import type { Command } from "commander";
import { INSECURE, type TransportSecurity } from "../lib/grpc.js";
import type { Controllers } from "../lib/controllers.js";
import { cliControllers, resolveControllers } from "./connect.js";
import { jsonText } from "./convert.js";
import { parseSecondsFlag } from "./flags.js";
import { sleep } from "./wait.js";

export const DEFAULT_TIMEOUT_SECONDS = "10";

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

export interface CliDeps {
  io: Io;
  env: Record<string, string | undefined>;
  /** File contents, or undefined when the file does not exist. */
  readFile(path: string): string | undefined;
  now(): number;
  sleep(ms: number): Promise<void>;
  security: TransportSecurity;
}

export function processDeps(): CliDeps {
  return {
    io: { out: (t) => void process.stdout.write(t), err: (t) => void process.stderr.write(t) },
    env: process.env,
    readFile: (path) => {
      try {
        return readFileSync(path, "utf8");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw err;
      }
    },
    now: Date.now,
    sleep,
    // TLS for the public API is not configured yet; plaintext like the local cluster.
    security: INSECURE,
  };
}

export type OutputFormat = "table" | "json";

/** The global options, as commander collects them from any level. */
interface GlobalOptions {
  controller?: string;
  output?: OutputFormat;
  timeout?: string;
}

/** One command run: its output format, call timeout and (lazily) its controllers. */
export class CliContext {
  readonly output: OutputFormat;
  readonly timeoutMs: number;
  private controllersCache?: Controllers;

  constructor(
    readonly deps: CliDeps,
    private readonly globals: GlobalOptions,
  ) {
    this.output = globals.output ?? "table";
    this.timeoutMs = parseSecondsFlag("--timeout", globals.timeout ?? DEFAULT_TIMEOUT_SECONDS);
  }

  /** The controllers to call; resolved on first use so usage errors come first. */
  controllers(): Controllers {
    if (!this.controllersCache) {
      const { addresses, source } = resolveControllers({
        flag: this.globals.controller,
        env: this.deps.env,
        readFile: this.deps.readFile,
        homeDir: homedir(),
      });
      this.controllersCache = cliControllers(addresses, this.deps.security, this.timeoutMs, source);
    }
    return this.controllersCache;
  }

  /** The controller addresses this command uses (HOST:PORT). */
  controllerAddresses(): string[] {
    return resolveControllers({ flag: this.globals.controller, env: this.deps.env, readFile: this.deps.readFile, homeDir: homedir() }).addresses;
  }

  /** Prints the API response as JSON, or the table/text view of it. */
  print(response: unknown, table: () => string): void {
    this.deps.io.out(this.output === "json" ? jsonText(response) : table());
  }

  /** Prints a line in table mode only (JSON output stays parseable). */
  say(line: string): void {
    if (this.output === "table") this.deps.io.out(`${line}\n`);
  }

  close(): void {
    this.controllersCache?.close();
  }
}

/** Hands out contexts to command actions and closes them when the program ends. */
export class Session {
  private readonly contexts: CliContext[] = [];

  constructor(readonly deps: CliDeps) {}

  context(cmd: Command): CliContext {
    const ctx = new CliContext(this.deps, cmd.optsWithGlobals<GlobalOptions>());
    this.contexts.push(ctx);
    return ctx;
  }

  close(): void {
    for (const ctx of this.contexts) ctx.close();
  }
}
