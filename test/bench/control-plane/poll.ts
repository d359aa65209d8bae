// Waiting for a condition, and retrying a call until it succeeds, with deadlines.
import { performance } from "node:perf_hooks";
import { errorMessage } from "../../../lib/errors.js";
import { sleep } from "../../harness/processes.js";

/** Calls `fn` every `intervalMs` until it returns true; throws after `timeoutMs`. */
export async function pollUntil(fn: () => Promise<boolean>, intervalMs: number, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (performance.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms`);
    await sleep(intervalMs);
  }
}

/** Retries `call` every `intervalMs` until it resolves; returns ms since `t0` and the errors seen. */
export async function retryUntilOk(call: () => Promise<unknown>, t0: number, intervalMs: number, timeoutMs: number, what: string) {
  const errors: Record<string, number> = {};
  let last = "";
  while (performance.now() - t0 < timeoutMs) {
    try {
      await call();
      return { ms: performance.now() - t0, errors };
    } catch (err) {
      const name = err instanceof Error ? err.name : "Error";
      errors[name] = (errors[name] ?? 0) + 1;
      last = errorMessage(err);
    }
    await sleep(intervalMs);
  }
  throw new Error(`${what} did not succeed within ${timeoutMs} ms (last error: ${last})`);
}
