// Waiting for a volume to reach the state a command asked for, by polling GetVolume.
import { VolumePhase, type Volume } from "../gen/stowage/v1/types.js";
import { NotLeaderError, UnavailableError } from "../lib/errors.js";

export const POLL_INTERVAL_MS = 100;
export const DEFAULT_WAIT_MS = 60_000;

export interface PollOptions {
  timeoutMs: number;
  intervalMs?: number;
  now: () => number;
  sleep: (ms: number) => Promise<void>;
  /** The error to throw when time runs out. */
  onTimeout: () => Error;
}

/**
 * Calls `step` until it returns a value. A controller that is briefly unreachable
 * (a leader change) only costs time; any other error ends the wait.
 */
export async function pollUntil<R>(step: () => Promise<R | undefined>, o: PollOptions): Promise<R> {
  const deadline = o.now() + o.timeoutMs;
  for (;;) {
    try {
      const result = await step();
      if (result !== undefined) return result;
    } catch (err) {
      if (!(err instanceof UnavailableError || err instanceof NotLeaderError)) throw err;
    }
    const left = deadline - o.now();
    if (left <= 0) throw o.onTimeout();
    await o.sleep(Math.min(o.intervalMs ?? POLL_INTERVAL_MS, left));
  }
}

export type Progress = "done" | "failed" | "pending";

/** Create finished when the volume is healthy. */
export function createProgress(v: Volume): Progress {
  if (v.phase === VolumePhase.VOLUME_PHASE_HEALTHY) return "done";
  if (v.phase === VolumePhase.VOLUME_PHASE_FAILED) return "failed";
  return "pending";
}

/** Resize finished when the volume is healthy and every replica has the new size. */
export function resizeProgress(v: Volume, sizeBytes: number): Progress {
  if (v.phase === VolumePhase.VOLUME_PHASE_FAILED) return "failed";
  const grown = v.replicas.length > 0 && v.replicas.every((r) => r.virtualSizeBytes >= sizeBytes);
  return v.phase === VolumePhase.VOLUME_PHASE_HEALTHY && grown ? "done" : "pending";
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
