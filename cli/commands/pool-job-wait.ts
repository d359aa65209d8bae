// While `stowctl pool compress` or `pool dedup` waits for its run: the run's progress
// as `stowctl job list` has it, printed every second or so in table mode (nothing
// in JSON mode, which prints only the result).
import { JobServiceService } from "../../gen/stowage/v1/controller.js";
import type { Job } from "../../gen/stowage/v1/types.js";
import { formatSize } from "../../lib/sizes.js";
import type { CliContext } from "../context.js";
import { formatEta, jobPercent } from "../job-views.js";
import { progressPrinter } from "../wait.js";

/** "pool host1/default: 33% of 1.47GiB, 148MiB/s, ETA 7s; image 1 of 3 (vm1 r-1a2b)" */
export function poolJobLine(j: Job, pool: string): string {
  const step = j.message.startsWith(`pool ${pool}: `) ? j.message.slice(`pool ${pool}: `.length) : j.message;
  const parts = [j.totalBytes > 0 ? `${jobPercent(j)} of ${formatSize(j.totalBytes)}` : "started"];
  if (j.bytesPerSec > 0) parts.push(`${formatSize(j.bytesPerSec)}/s`);
  if (j.etaSeconds > 0) parts.push(`ETA ${formatEta(j.etaSeconds)}`);
  return `pool ${pool}: ${parts.join(", ")}${step ? `; ${step}` : ""}`;
}

/** Awaits `work`, meanwhile printing the progress of the `kind` job of pool NODE/NAME. */
export async function withPoolJobProgress<T>(ctx: CliContext, kind: "compress" | "dedup", ref: { node: string; name: string }, work: Promise<T>, everyMs = 1_000): Promise<T> {
  if (ctx.output !== "table") return work;
  const pool = `${ref.node}/${ref.name}`;
  const say = progressPrinter((l) => ctx.say(l), ctx.deps.now);
  let over = false;
  const ended = work.then(
    () => undefined,
    () => undefined,
  );
  const watch = (async () => {
    while (!over) {
      await Promise.race([ctx.deps.sleep(everyMs), ended]);
      if (over) return;
      const res = await ctx.controllers().service(JobServiceService).listJobs({ volume: "" }).catch(() => undefined);
      const job = res?.jobs.find((j) => j.kind === kind && j.node === ref.node && j.message.startsWith(`pool ${pool}:`));
      if (job && !over) say(poolJobLine(job, pool));
    }
  })();
  try {
    return await work;
  } finally {
    over = true;
    await watch;
  }
}
