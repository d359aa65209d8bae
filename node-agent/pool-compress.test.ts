// A recompression run with real qemu-img, qemu-io and a DirPool: its progress can be
// followed while it runs (what GetPoolJobProgress serves), and it is gone afterwards.
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentPools } from "./agent-pools.js";
import { DirPool } from "./dir-pool.js";
import { PoolCompress } from "./pool-compress.js";
import type { PoolJobProgressView } from "./pool-job-progress.js";

const MiB = 2 ** 20;
let root: string;
let pools: AgentPools;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "pool-compress-"));
  await mkdir(join(root, "pool"));
  const pool = new DirPool({ name: "default", type: "dir", path: join(root, "pool"), overcommitRatio: 1 });
  pools = new AgentPools("node1", [pool]);
  for (const id of ["r-00000001", "r-00000002"]) {
    const { replica } = await pool.ensureReplica({ id, volume: `v${id.slice(-1)}`, sizeBytes: 64 * MiB, format: "qcow2", preallocation: "off" });
    // Compressible data: a repeating pattern qemu-io writes in 1 MiB pieces.
    await execa("qemu-io", ["-f", "qcow2", "-c", "write -P 0x61 0 16M", replica.path]);
  }
});

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

describe("PoolCompress progress", () => {
  it("shows bytes and images done while it runs, and nothing once it is over", async () => {
    // 8 MiB/s: each image's rewrite takes a few seconds, long enough to look at it.
    const compress = new PoolCompress(pools, join(root, "data"), { exportedIds: async () => new Set(), rateLimitBytes: 8 * MiB });
    expect(compress.progress.get("compress", "default").running).toBe(false);
    const seen: PoolJobProgressView[] = [];
    const run = compress.run("default", 0);
    let over = false;
    void run.finally(() => (over = true)).catch(() => undefined);
    while (!over) {
      seen.push(compress.progress.get("compress", "default"));
      await new Promise((r) => setTimeout(r, 50));
    }
    const result = await run;
    expect(result.images.map((i) => i.action)).toEqual(["compressed", "compressed"]);
    const running = seen.filter((s) => s.running);
    expect(running.length).toBeGreaterThan(0);
    const total = running[0]!.totalBytes;
    expect(total).toBeGreaterThanOrEqual(32 * MiB);
    expect(running.every((s) => s.totalBytes === total && s.itemsTotal === 2)).toBe(true);
    // Part-way through an image, not only between images, and never backwards.
    expect(running.some((s) => s.doneBytes > 0 && s.doneBytes < total / 2)).toBe(true);
    expect(running.some((s) => s.itemsDone === 1 && s.phase.startsWith("image 2 of 2 (v2 r-00000002)"))).toBe(true);
    for (let i = 1; i < running.length; i++) expect(running[i]!.doneBytes).toBeGreaterThanOrEqual(running[i - 1]!.doneBytes);
    expect(compress.progress.get("compress", "default").running).toBe(false);
  }, 60_000);
});
