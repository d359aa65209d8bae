// stowctl pool compress NODE/POOL: recompress the pool's cold images now and wait.
import type { Command } from "commander";
import { PoolServiceService } from "../../gen/stowage/v1/controller.js";
import { FailedPreconditionError } from "../../lib/errors.js";
import { compressImageLines, compressRunLine } from "../compress-views.js";
import type { Session } from "../context.js";
import { examples } from "../help.js";
import { parsePoolRef } from "../flags.js";
import { COPY_WAIT_MS } from "../wait.js";
import { withPoolJobProgress } from "./pool-job-wait.js";

export function registerPoolCompressCommand(pool: Command, session: Session): void {
  pool
    .command("compress")
    .description("recompress the pool's cold qcow2 images into zstd-compressed clusters now and wait for the result")
    .argument("<pool>", "NODE/POOL, or NODE followed by POOL")
    .argument("[name]", "pool name when the node is given separately")
    .option("--cold-after <age>", "only images unmodified for this long: 7d, 12h, 30m, 0s (default: the pool's policy, else 7d)")
    .addHelpText(
      "after",
      `
Only images not in use are rewritten: not exported (volume detached), without
internal snapshots (a rewrite would lose them), not linked clones, unmodified for
--cold-after. Each is copied with 'qemu-img convert -c' at nice 19 and idle I/O
class, compared with 'qemu-img compare', and replaced only when smaller. An attach
of that volume waits for the image being rewritten. Template images are left alone.
While it runs, its progress (share of the images' bytes, rate, ETA, the image it is
on) is printed every second and shows in 'stowctl job list'.
Schedule it with 'stowctl pool set NODE/POOL --compress daily --cold-after 7d'.
` + examples(["stowctl pool compress host1/default", "stowctl pool compress host1 default --cold-after 0s -o json"]),
    )
    .action(async (first: string, second: string | undefined, opts: { coldAfter?: string }, cmd: Command) => {
      const ref = parsePoolRef(first, second);
      const ctx = session.context(cmd);
      const call = ctx
        .controllers()
        .service(PoolServiceService)
        .compressPool({ ...ref, coldAfter: opts.coldAfter ?? "" }, { timeoutMs: Math.max(ctx.timeoutMs, 24 * COPY_WAIT_MS) });
      const res = await withPoolJobProgress(ctx, "compress", ref, call);
      ctx.print(res, () => `pool ${ref.node}/${ref.name}: ${res.run ? [compressRunLine(res.run), ...compressImageLines(res.run)].join("\n") : "no result"}\n`);
      if (res.run?.state === "failed") throw new FailedPreconditionError(`compression of pool ${ref.node}/${ref.name} failed: ${res.run.message}`);
    });
}
