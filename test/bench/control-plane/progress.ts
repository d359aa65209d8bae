// Progress lines on stderr, stamped with the time since the benchmark started.
import { performance } from "node:perf_hooks";

let t0Run = performance.now();

/** Starts the clock again: called once the entry's imports have loaded, so loading them is not counted. */
export function startClock(): void {
  t0Run = performance.now();
}

/** Seconds since the benchmark started. */
export function elapsedSeconds(): number {
  return (performance.now() - t0Run) / 1000;
}

export function progress(msg: string): void {
  process.stderr.write(`[bench ${elapsedSeconds().toFixed(1).padStart(6)} s] ${msg}\n`);
}
