// Exit codes and messages of the program, run in-process with no server.
import type { Command } from "commander";
import { describe, expect, it } from "vitest";
import { NO_CONTROLLER_HINT } from "./connect.js";
import { Session } from "./context.js";
import { DeadlineError } from "../lib/errors.js";
import { buildProgram, EXIT_ERROR, EXIT_OK, EXIT_USAGE, reportError } from "./main.js";
import { memoryDeps, runCli } from "./testing.js";

// Nothing listens there: had a command been sent, the exit code would be 1, not 2.
const NOWHERE = ["--controller", "127.0.0.1:1"];

describe("usage errors exit 2 before any call", () => {
  const cases: Record<string, [string[], RegExp]> = {
    "negative size": [["volume", "create", "v1", "--size", "-1"], /invalid size "-1"/],
    "zero size": [["volume", "create", "v1", "--size", "0"], /greater than zero/],
    "garbage size": [["volume", "create", "v1", "--size", "abc"], /invalid size "abc"/],
    "zero replicas": [["volume", "create", "v1", "--size", "1GiB", "--replicas", "0"], /--replicas/],
    "unknown format": [["volume", "create", "v1", "--size", "1GiB", "--format", "vmdk"], /--format.*vmdk/],
    "missing size": [["volume", "create", "v1"], /required option '--size <size>' not specified/],
    "bad resize size": [["volume", "resize", "v1", "--size", "-5G"], /invalid size/],
    "bad wait timeout": [["volume", "delete", "v1", "--wait-timeout", "never"], /--wait-timeout/],
    "bad pool reference": [["pool", "get", "host1"], /NODE\/POOL/],
  };
  for (const [title, [argv, message]] of Object.entries(cases)) {
    it(title, async () => {
      const r = await runCli([...NOWHERE, ...argv]);
      expect(r.code).toBe(EXIT_USAGE);
      expect(r.out).toBe("");
      expect(r.err).toMatch(/^error: /);
      expect(r.err).toMatch(message);
      expect(r.err).toContain("--help' for usage)");
    });
  }

  it("points to the help of the command that was wrong", async () => {
    const r = await runCli([...NOWHERE, "volume", "create", "v1", "--size", "abc"]);
    expect(r.err).toContain("(run 'stowctl volume create --help' for usage)");
  });
});

describe("commander's own errors exit 2", () => {
  const cases: Record<string, [string[], RegExp]> = {
    "unknown command": [["frobnicate"], /unknown command 'frobnicate'/],
    "unknown subcommand": [["volume", "explode"], /unknown command 'explode'/],
    "unknown option": [["volume", "list", "--colour"], /unknown option '--colour'/],
    "missing argument": [["node", "get"], /missing required argument 'name'/],
    "too many arguments": [["node", "get", "a", "b"], /too many arguments/],
    "bad output format": [["-o", "yaml", "node", "list"], /Allowed choices are table, json/],
    "bad timeout": [["--timeout", "0", "node", "list"], /--timeout/],
  };
  for (const [title, [argv, message]] of Object.entries(cases)) {
    it(title, async () => {
      const r = await runCli([...NOWHERE, ...argv]);
      expect(r.code).toBe(EXIT_USAGE);
      expect(r.err).toMatch(message);
      expect(r.err).toMatch(/--help/);
      expect(r.err).not.toMatch(/\n\s+at /);
    });
  }

  it("no command at all shows the help on stderr", async () => {
    const r = await runCli([]);
    expect(r.code).toBe(EXIT_USAGE);
    expect(r.err).toContain("Usage: stowctl");
  });
});

describe("help", () => {
  it("--help exits 0 and explains addresses, exit codes and examples", async () => {
    const r = await runCli(["--help"]);
    expect(r.code).toBe(EXIT_OK);
    expect(r.out).toContain("Usage: stowctl");
    expect(r.out).toContain("STOWAGE_CONTROLLER");
    expect(r.out).toContain("Exit codes");
    expect(r.err).toBe("");
  });

  it("every command has a description, described options and an example", async () => {
    const program = buildProgram(new Session(memoryDeps().deps));
    const all: Command[] = [];
    const walk = (c: Command) => {
      all.push(c);
      c.commands.forEach(walk);
    };
    walk(program);
    expect(all.length).toBeGreaterThan(12);
    for (const cmd of all) {
      const path: string[] = [];
      for (let c: Command | null = cmd; c && c.parent; c = c.parent) path.unshift(c.name());
      const r = await runCli([...path, "--help"]);
      expect(r.code, path.join(" ")).toBe(EXIT_OK);
      expect(cmd.description(), path.join(" ")).not.toBe("");
      expect(r.out, path.join(" ")).toContain("Examples:\n  $ stowctl");
      for (const opt of cmd.options) expect(opt.description, `${path.join(" ")} ${opt.flags}`).not.toBe("");
    }
  });

  it("volume create --help lists the choices and the global options", async () => {
    const r = await runCli(["volume", "create", "--help"]);
    expect(r.out).toContain("qcow2 or raw");
    expect(r.out.replace(/\s+/g, " ")).toContain("off, metadata, falloc, full");
    expect(r.out).toContain("--controller <addr>");
    expect(r.out).toContain("stowctl volume create vm1 --size 10GiB");
  });
});

describe("runtime errors exit 1", () => {
  it("no controller configured: error and hint, no stack", async () => {
    const r = await runCli(["node", "list"], { env: { HOME: "/nowhere" } });
    expect(r.code).toBe(EXIT_ERROR);
    expect(r.err).toBe(
      "error: no controller address: no --controller, no STOWAGE_CONTROLLER and no /nowhere/.config/stowage/cluster.json\n" +
        `hint: ${NO_CONTROLLER_HINT}\n`,
    );
  });

  it("an unreachable controller is an error, not a usage error", async () => {
    const r = await runCli([...NOWHERE, "--timeout", "5", "node", "list"]);
    expect(r.code).toBe(EXIT_ERROR);
    expect(r.err).toMatch(/^error: cannot reach a controller at 127\.0\.0\.1:1: .*ECONNREFUSED/);
    expect(r.err).toMatch(/\nhint: is the controller running\? the addresses came from --controller; start a local/);
  });
});

describe("reportError", () => {
  const program = buildProgram(new Session(memoryDeps().deps));
  const report = (err: unknown) => {
    let text = "";
    const code = reportError(err, program, { out: () => undefined, err: (t) => void (text += t) });
    return { code, text };
  };

  it("prints any other error as one line, never a stack", () => {
    expect(report(new TypeError("boom"))).toEqual({ code: EXIT_ERROR, text: "error: boom\n" });
  });

  it("gives a call that timed out a hint", () => {
    expect(report(new DeadlineError("127.0.0.1:7400: Deadline exceeded")).text).toBe(
      "error: 127.0.0.1:7400: Deadline exceeded\nhint: the controller did not answer in time; retry, or allow longer with --timeout SECONDS\n",
    );
  });
});
