// How a frontend process is started: its command line (the inverse of
// args.ts) and its environment. The agent, the tests and the benchmark all
// start it this way, so what is measured is what runs.
import type { ReplicaAddress } from "./args.js";

/**
 * glibc malloc settings for the frontend. Received data lands in 4 MiB arenas that are
 * freed as soon as the requests using them finish; by default glibc hands such blocks back
 * to the kernel (mmap/trim), so every new arena is fresh memory the kernel must fault in
 * and zero — about 10% of the frontend's CPU at 1 GB/s. Keeping blocks up to 32 MiB in the
 * heap and trimming only past 256 MiB free removed those faults: 60-110 µs less system
 * time per 1 MiB request, +4-11% throughput, same RSS (~100 MB) in the benchmark.
 * (Measured before arenas were reused, lib/nbd/arena.ts; they still cover the arenas that
 * are not: those pinned by handshakes and those beyond the pool.)
 */
export const FRONTEND_GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456";

/** The environment for a frontend process: `base` plus the malloc settings. */
export function frontendEnv(base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const existing = base.GLIBC_TUNABLES;
  return { ...base, GLIBC_TUNABLES: existing ? `${existing}:${FRONTEND_GLIBC_TUNABLES}` : FRONTEND_GLIBC_TUNABLES };
}

function replicaSpec(r: Omit<ReplicaAddress, "spec">): string {
  if (r.socketPath) return `unix:${r.socketPath}:${r.exportName}`;
  const host = r.host?.includes(":") ? `[${r.host}]` : r.host;
  return `tcp:${host}:${r.port}:${r.exportName}`;
}

/** Arguments for `node dist/frontend/main.js`. */
export function frontendArgv(a: {
  socketPath: string;
  exportName: string;
  replicas: Omit<ReplicaAddress, "spec">[];
  connections?: number;
  socketMode?: number;
  controllers?: string[];
  generation?: number;
  stateDir?: string;
  node?: string;
  copyRateMiB?: number;
  sendBufferKiB?: number;
}): string[] {
  const argv = ["--socket", a.socketPath, "--export", a.exportName, "--backend", a.replicas.map(replicaSpec).join(",")];
  if (a.controllers?.length) argv.push("--controllers", a.controllers.join(","));
  if (a.generation !== undefined) argv.push("--generation", String(a.generation));
  if (a.stateDir !== undefined) argv.push("--state-dir", a.stateDir);
  if (a.node) argv.push("--node", a.node);
  if (a.copyRateMiB) argv.push("--copy-rate-mib", String(a.copyRateMiB));
  if (a.connections !== undefined) argv.push("--connections", String(a.connections));
  if (a.sendBufferKiB !== undefined) argv.push("--send-buffer-kib", String(a.sendBufferKiB));
  if (a.socketMode !== undefined) argv.push("--socket-mode", `0${a.socketMode.toString(8)}`);
  return argv;
}
