// Cleanup: everything the benchmark starts is registered here, and released in reverse
// order at the end, on error, on SIGINT/SIGTERM and when the watchdog fires.
import { errorMessage } from "../../../lib/errors.js";
import { progress } from "./progress.js";

const cleanups: { what: string; fn: () => Promise<void> }[] = [];

/** Registers `fn`; the returned function runs it now (at the end of a part) and forgets it. */
export function onCleanup(what: string, fn: () => Promise<void>): () => Promise<void> {
  const entry = { what, fn };
  cleanups.push(entry);
  return async () => {
    const i = cleanups.indexOf(entry);
    if (i >= 0) cleanups.splice(i, 1);
    await fn();
  };
}

export async function cleanupAll(): Promise<void> {
  while (cleanups.length) {
    const { what, fn } = cleanups.pop()!;
    await fn().catch((err) => progress(`cleanup of ${what} failed: ${errorMessage(err)}`));
  }
}

/** On the first SIGINT or SIGTERM: clean up and exit 130. */
export function cleanUpOnSignals(): void {
  let exiting = false;
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.on(sig, () => {
      if (exiting) return;
      exiting = true;
      progress(`${sig}: cleaning up`);
      void cleanupAll().finally(() => process.exit(130));
    });
  }
}

/** Gives up (cleans up, exits 2) if the run takes longer than `ms`; returns a disarm function. */
export function startWatchdog(ms: number): () => void {
  const watchdog = setTimeout(() => {
    progress(`watchdog: still running after ${ms / 1000} s; cleaning up and giving up`);
    void cleanupAll().finally(() => process.exit(2));
  }, ms);
  watchdog.unref();
  return () => clearTimeout(watchdog);
}
