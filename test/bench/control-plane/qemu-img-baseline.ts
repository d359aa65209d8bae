// Baseline for the latency part: the work an agent must do for one replica, run directly.
import { execFile } from "node:child_process";
import { mkdir, open, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";
import { median, MiB } from "./stats.js";

const execFileP = promisify(execFile);

export async function qemuImgBaseline(dir: string, runs: number) {
  await mkdir(dir, { recursive: true });
  const create: number[] = [];
  const agentLike: number[] = [];
  const fsync = async (path: string) => {
    const fh = await open(path, "r");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  };
  for (let i = 0; i < runs; i++) {
    // The reference: a bare `qemu-img create -f qcow2 FILE 64M`.
    const file = join(dir, `base-${i}.qcow2`);
    let t = performance.now();
    await execFileP("qemu-img", ["create", "-q", "-f", "qcow2", file, "64M"]);
    create.push(performance.now() - t);
    await rm(file, { force: true });
    // For information: what the dir pool does per new replica (create under a temp name,
    // fsync, rename, fsync the directory, qemu-img info).
    const tmp = join(dir, `tmp-${i}.qcow2`);
    const final = join(dir, `agent-${i}.qcow2`);
    t = performance.now();
    await execFileP("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "preallocation=off", tmp, String(64 * MiB)]);
    await fsync(tmp);
    await rename(tmp, final);
    await fsync(dir);
    await execFileP("qemu-img", ["info", "--output=json", "-f", "qcow2", "-U", final]);
    agentLike.push(performance.now() - t);
    await rm(final, { force: true });
  }
  return { createMedianMs: median(create), agentLikeMedianMs: median(agentLike), runs };
}
