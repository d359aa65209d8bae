import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";
import { exited, readArgv, waitForExit } from "./proc.js";

describe("/proc helpers", () => {
  it("reads a live process's argv and sees it exit", async () => {
    const child = spawn("sleep", ["30"], { stdio: "ignore" });
    const pid = child.pid!;
    expect(await readArgv(pid)).toEqual(["sleep", "30"]);
    expect(await exited(pid)).toBe(false);
    expect(await waitForExit(pid, 100)).toBe(false);
    child.kill("SIGKILL");
    // Not reaped yet by us (a zombie) or reaped: either way it has exited.
    expect(await waitForExit(pid, 5_000)).toBe(true);
    expect(await readArgv(pid)).toBeUndefined();
  });

  it("treats an unknown pid as exited", async () => {
    expect(await exited(2 ** 22 + 12345)).toBe(true);
  });
});
