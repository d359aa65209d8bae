// Waiting for a volume to reach the state a command asked for, by polling GetVolume.
import { ReplicaState, VolumePhase, type Volume } from "../gen/stowage/v1/types.js";
import { NotLeaderError, UnavailableError } from "../lib/errors.js";

export const POLL_INTERVAL_MS = 100;
export const DEFAULT_WAIT_MS = 60_000;
/** Waits that include copying replicas: a copy takes as long as the data needs. */
export const COPY_WAIT_MS = 3_600_000;

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

/** A replica change finished when the volume is healthy with exactly `replicas` replicas, all in sync. */
export function replicasProgress(v: Volume, replicas: number): Progress {
  if (v.phase === VolumePhase.VOLUME_PHASE_FAILED) return "failed";
  const settled = v.replicas.length === replicas && v.replicas.every((r) => r.state === ReplicaState.REPLICA_STATE_HEALTHY && !r.outOfSync);
  return v.phase === VolumePhase.VOLUME_PHASE_HEALTHY && settled ? "done" : "pending";
}

/**
 * Calls `say` with a progress line when it differs from the last one, and at most
 * every `everyMs` for lines that only move forward (a percentage).
 */
export function progressPrinter(say: (line: string) => void, now: () => number, everyMs = 2_000): (line: string) => void {
  let last = "";
  let lastAt = -Infinity;
  const shape = (l: string) => l.replace(/\d+(\.\d+)?/g, "#");
  return (line) => {
    if (line === last) return;
    if (shape(line) === shape(last) && now() - lastAt < everyMs) return;
    say(line);
    last = line;
    lastAt = now();
  };
}
