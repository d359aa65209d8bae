// The waiting half of volume create / resize / delete: poll GetVolume until done.
import { VolumeServiceService, type GetVolumeResponse } from "../../gen/stowage/v1/controller.js";
import type { Volume } from "../../gen/stowage/v1/types.js";
import { DeadlineError, NotFoundError, StowageError } from "../../lib/errors.js";
import type { CliContext } from "../context.js";
import { enumLabel, VOLUME_PHASE } from "../convert.js";
import { parseSecondsFlag } from "../flags.js";
import { COPY_WAIT_MS, createProgress, DEFAULT_WAIT_MS, pollUntil, progressPrinter, replicasProgress, resizeProgress, type Progress } from "../wait.js";
import { volumeProgressLine } from "../job-views.js";

function failed(name: string, v: Volume): StowageError {
  return new StowageError(`volume ${name} failed: ${v.message || "no reason given"}`, {
    hint: `see each replica's state with 'stowctl volume get ${name}'; remove it with 'stowctl volume delete ${name}'`,
  });
}

function stillBusy(name: string, doing: string, last: Volume | undefined, waitMs: number): DeadlineError {
  const phase = last ? ` (phase ${enumLabel(VOLUME_PHASE, last.phase)})` : "";
  return new DeadlineError(`volume ${name} is still ${doing} after ${waitMs / 1000}s${phase}`, {
    hint: `check it with 'stowctl volume get ${name}', or wait longer with --wait-timeout SECONDS`,
  });
}

export const WAIT_HELP = `wait at most this long (default: ${DEFAULT_WAIT_MS / 1000})`;
export const COPY_WAIT_HELP = `wait at most this long (default: ${COPY_WAIT_MS / 1000})`;
export const NO_WAIT_HELP = "return once the controller accepted the request, without waiting";

export interface WaitFlags {
  wait: boolean;
  waitTimeout?: string;
}

/** The --wait-timeout flag in milliseconds (the default when absent). */
export function waitMs(flags: WaitFlags, defaultMs = DEFAULT_WAIT_MS): number {
  return flags.waitTimeout === undefined ? defaultMs : parseSecondsFlag("--wait-timeout", flags.waitTimeout);
}

/**
 * Polls until `progress` says done; returns the last GetVolume response.
 * `progress` may throw its own error to stop early.
 */
export async function waitForVolume(
  ctx: CliContext,
  name: string,
  doing: string,
  waitMs: number,
  progress: (v: Volume) => Progress,
  onPoll?: (v: Volume) => void,
  intervalMs?: number,
): Promise<GetVolumeResponse> {
  const volumes = ctx.controllers().service(VolumeServiceService);
  let last: Volume | undefined;
  return pollUntil(
    async () => {
      const res = await volumes.getVolume({ name });
      if (!res.volume) return undefined;
      last = res.volume;
      const p = progress(res.volume);
      if (p === "failed") throw failed(name, res.volume);
      if (p !== "done") onPoll?.(res.volume);
      return p === "done" ? res : undefined;
    },
    { timeoutMs: waitMs, intervalMs, now: ctx.deps.now, sleep: ctx.deps.sleep, onTimeout: () => stillBusy(name, doing, last, waitMs) },
  );
}

export function waitCreated(ctx: CliContext, name: string, waitMs: number): Promise<GetVolumeResponse> {
  return waitForVolume(ctx, name, "creating", waitMs, createProgress);
}

export function waitResized(ctx: CliContext, name: string, sizeBytes: number, waitMs: number): Promise<GetVolumeResponse> {
  return waitForVolume(ctx, name, "resizing", waitMs, (v) => resizeProgress(v, sizeBytes));
}

/** Deleted once GetVolume answers NotFound. */
export async function waitDeleted(ctx: CliContext, name: string, waitMs: number): Promise<void> {
  const volumes = ctx.controllers().service(VolumeServiceService);
  let last: Volume | undefined;
  await pollUntil(
    async () => {
      try {
        last = (await volumes.getVolume({ name })).volume;
        return undefined;
      } catch (err) {
        if (err instanceof NotFoundError) return true;
        throw err;
      }
    },
    { timeoutMs: waitMs, now: ctx.deps.now, sleep: ctx.deps.sleep, onTimeout: () => stillBusy(name, "deleting", last, waitMs) },
  );
}

/** Until the volume is healthy with every replica in sync, printing copy progress (imports, clones). */
export function waitInSync(ctx: CliContext, name: string, doing: string, waitMs: number): Promise<GetVolumeResponse> {
  const say = progressPrinter((l) => ctx.say(l), ctx.deps.now);
  return waitForVolume(ctx, name, doing, waitMs, (v) => replicasProgress(v, v.spec?.replicas ?? v.replicas.length), (v) => say(volumeProgressLine(v)), 500);
}
