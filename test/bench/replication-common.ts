// What the parts of the replication benchmark (replication.ts) share: the cleanup
// list, progress lines on stderr, medians, and fio with its nbd engine.
import { readFileSync } from "node:fs";
import { run } from "../../lib/exec.js";
import { DEFAULT_FILE_BACKEND } from "../../node-agent/qsd/exports.js";

const t0 = Date.now();
export function progress(msg: string): void {
  process.stderr.write(`[replication ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);
}

export const median = (v: number[]): number => {
  const s = [...v].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Rounded to `digits` decimals. */
export const round = (v: number, digits = 0): number => Math.round(v * 10 ** digits) / 10 ** digits;

/**
 * Everything the benchmark starts is registered here and released in reverse order:
 * at the end of its part, at the end of the run, on error and on SIGINT/SIGTERM.
 */
export class Cleanups {
  private readonly entries: { what: string; fn: () => Promise<void> | void }[] = [];
  /** Set on SIGINT/SIGTERM: what fails after that failed because it was stopped. */
  interrupted = false;

  /** Registers `fn`; the returned function runs it now and forgets it. */
  add(what: string, fn: () => Promise<void> | void): () => Promise<void> {
    const entry = { what, fn };
    this.entries.push(entry);
    return async () => {
      const i = this.entries.indexOf(entry);
      if (i < 0) return;
      this.entries.splice(i, 1);
      await fn();
    };
  }

  async runAll(): Promise<void> {
    while (this.entries.length) {
      const { what, fn } = this.entries.pop()!;
      await Promise.resolve()
        .then(fn)
        .catch((err) => progress(`cleanup of ${what} failed: ${err instanceof Error ? err.message : String(err)}`));
    }
  }
}

/** Options of a qemu-storage-daemon file blockdev that open an image as the agent does. */
export const AGENT_FILE_OPTIONS = [`aio=${DEFAULT_FILE_BACKEND.aio}`, `cache.direct=${DEFAULT_FILE_BACKEND.direct ? "on" : "off"}`];

/** One fio write workload. */
export interface FioWorkload {
  label: string;
  rw: "randwrite" | "write";
  bs: string;
  iodepth: number;
  /** The figure that matters: IOPS for small blocks, MB/s for large ones. */
  unit: "IOPS" | "MB/s";
}

export interface FioSample {
  iops: number;
  mbps: number;
  /** fio's own CPU (user + system), in cores. */
  cpuCores: number;
}

/**
 * One fio run with one job per NBD URI, all at once (one job: a plain run). Returns
 * each job's figures. `sizeBytes` is the span each job writes in.
 */
export async function fioWrite(uris: string[], w: FioWorkload, o: { sizeBytes: number; runtimeSec: number; out: string }): Promise<FioSample[]> {
  await run(
    "fio",
    [
      "--ioengine=nbd", `--rw=${w.rw}`, `--bs=${w.bs}`, `--iodepth=${w.iodepth}`, `--size=${o.sizeBytes}`,
      `--runtime=${o.runtimeSec}`, "--time_based", "--ramp_time=1", "--output-format=json", `--output=${o.out}`,
      ...uris.flatMap((uri, i) => [`--name=copy${i}`, `--uri=${uri}`]),
    ],
    { timeoutMs: (o.runtimeSec + 60) * 1000 },
  );
  const jobs: { write: { iops: number; bw_bytes: number }; usr_cpu: number; sys_cpu: number }[] = JSON.parse(readFileSync(o.out, "utf8")).jobs;
  return jobs.map((j) => ({ iops: j.write.iops, mbps: j.write.bw_bytes / 1e6, cpuCores: (j.usr_cpu + j.sys_cpu) / 100 }));
}

/** Writes every byte of each export once, 1 MiB at a time, all exports at once. */
export async function fioFill(uris: string[], sizeBytes: number, out: string): Promise<void> {
  await run(
    "fio",
    ["--ioengine=nbd", "--rw=write", "--bs=1M", "--iodepth=16", `--size=${sizeBytes}`, `--output=${out}`, ...uris.flatMap((uri, i) => [`--name=fill${i}`, `--uri=${uri}`])],
    { timeoutMs: 600_000 },
  );
}

/** utime+stime of a process in clock ticks (100/s on Linux). */
export function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

/** Busy and total CPU time of the whole machine so far, in clock ticks (/proc/stat). */
export function machineTicks(): { busy: number; total: number } {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0); // guest time is already counted in user
  const idle = cpu[3]! + cpu[4]!; // idle + iowait
  return { busy: total - idle, total };
}

/** Writes dirty pages to disk, so one copy's write-back does not land in the next one's time. */
export async function syncDisks(): Promise<void> {
  await run("sync", [], { timeoutMs: 300_000 });
}
