// Facts about other processes on this host, read from /proc: used to tell
// whether a pid from a pid or state file is still the process we started.
import { readFile } from "node:fs/promises";

/** argv of a live process; undefined for a process that is gone or a zombie (its cmdline is empty). */
export async function readArgv(pid: number): Promise<string[] | undefined> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, "utf8");
    return raw ? raw.replace(/\0$/, "").split("\0") : undefined;
  } catch {
    return undefined;
  }
}

/**
 * True once the process has fully exited: gone, or a zombie (not our child, so
 * we cannot reap it). Its cmdline empties earlier, while it is still tearing
 * down, so the state letter in /proc/PID/stat is what counts.
 */
export async function exited(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state === "Z" || state === "X";
  } catch {
    return true;
  }
}

/** Polls until the process has exited; false if it still runs after timeoutMs. */
export async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await exited(pid)) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
}
