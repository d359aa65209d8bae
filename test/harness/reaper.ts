// Best effort: SIGKILL the processes a test started if the test process exits
// (or gets SIGTERM) without stopping them, e.g. a test that failed before its
// cleanup or an aborted run, so no QEMU, QSD or libvirtd is left running.
// Normal cleanup is still each helper's stop().
import type { ChildProcess } from "node:child_process";

const children = new Set<ChildProcess>();
const hooks = new Set<() => void>();
const lateHooks = new Set<() => void>();
let installed = false;

function install(): void {
  if (installed) return;
  installed = true;
  process.once("exit", cleanup);
  // vitest ends its worker processes with SIGTERM (then SIGKILL after 1 s): no "exit" event then.
  process.once("SIGTERM", () => {
    cleanup();
    if (process.listenerCount("SIGTERM") === 0) process.exit(143);
  });
}

function cleanup(): void {
  const run = (fns: Iterable<() => void>) => {
    for (const f of fns) {
      try {
        f();
      } catch {
        // best effort
      }
    }
  };
  run(hooks);
  run([...children].map((c) => () => c.kill("SIGKILL")));
  run(lateHooks);
}

export function killOnExit(child: ChildProcess): void {
  children.add(child);
  child.once("exit", () => children.delete(child));
  install();
}

/**
 * Runs `fn` (synchronous) when the process exits: before the child processes
 * are killed, or after them when `late` (to remove their directories).
 * Returns a function that cancels it.
 */
export function onExit(fn: () => void, late = false): () => void {
  const set = late ? lateHooks : hooks;
  set.add(fn);
  install();
  return () => set.delete(fn);
}
