// stowctl pool dedup NODE/POOL: deduplicate a pool's images now and wait.
import type { Command } from "commander";
import { PoolServiceService } from "../../gen/stowage/v1/controller.js";
import { FailedPreconditionError } from "../../lib/errors.js";
import type { Session } from "../context.js";
import { dedupRunLine } from "../dedup-views.js";
import { examples } from "../help.js";
import { parsePoolRef } from "../flags.js";
import { COPY_WAIT_MS } from "../wait.js";
import { withPoolJobProgress } from "./pool-job-wait.js";

export function registerPoolDedupCommand(pool: Command, session: Session): void {
  pool
    .command("dedup")
    .description("deduplicate identical blocks of the pool's images now (reflink; XFS made with reflink=1, or btrfs) and wait for the result")
    .argument("<pool>", "NODE/POOL, or NODE followed by POOL")
    .argument("[name]", "pool name when the node is given separately")
    .addHelpText(
      "after",
      `
Safe on images in use: the kernel compares and locks both ranges before it shares
them. Runs throttled (nice 19, idle I/O class, one thread). A pool on another
filesystem (ext4, ...) is refused and nothing changes. While it runs, its progress
(files hashed, then sets of identical extents shared) is printed every second and
shows in 'stowctl job list'. Schedule it instead with
'stowctl pool set NODE/POOL --dedup daily --quiet-hours 01:00-05:00'.
` + examples(["stowctl pool dedup host1/default", "stowctl pool dedup host1 default -o json"]),
    )
    .action(async (first: string, second: string | undefined, _opts: unknown, cmd: Command) => {
      const ref = parsePoolRef(first, second);
      const ctx = session.context(cmd);
      const call = ctx.controllers().service(PoolServiceService).dedupPool(ref, { timeoutMs: Math.max(ctx.timeoutMs, 12 * COPY_WAIT_MS) });
      const res = await withPoolJobProgress(ctx, "dedup", ref, call);
      ctx.print(res, () => `pool ${ref.node}/${ref.name}: ${res.run ? dedupRunLine(res.run) : "no result"}\n`);
      if (res.run?.state === "failed") throw new FailedPreconditionError(`dedup of pool ${ref.node}/${ref.name} failed: ${res.run.message}`);
    });
}
