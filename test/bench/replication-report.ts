// The replication benchmark's tables and targets: pure functions from each part's
// result to printed lines (and the ratios for --json).
import { round } from "./replication-common.js";
import type { FailoverResult } from "./replication-failover.js";
import { durablePlain, type CopyFigure, type ResyncResult } from "./replication-resync.js";
import { SETUP_LABELS, WRITE_SETUPS, type WriteFigure, type WriteResult, type WriteSetup } from "./replication-write.js";

/** A ratio of two write setups, and its target for some workloads. */
interface RatioSpec {
  label: string;
  of: WriteSetup;
  to: WriteSetup;
  targets: Record<string, number>;
}

export const WRITE_RATIOS: RatioSpec[] = [
  { label: "1 replica / direct", of: "replicas1", to: "direct", targets: {} },
  { label: "2 replicas / direct", of: "replicas2", to: "direct", targets: { "4k randwrite QD32": 0.6 } },
  { label: "3 replicas / direct", of: "replicas3", to: "direct", targets: {} },
  { label: "2 replicas / 2-copy limit", of: "replicas2", to: "limit2", targets: { "1M write QD16": 0.8 } },
  { label: "3 replicas / 3-copy limit", of: "replicas3", to: "limit3", targets: {} },
];
/** Rebuild speed / plain copy speed. */
export const RESYNC_TARGET = 0.9;
/** Kill → next acknowledged write. */
export const FAILOVER_TARGET_MS = 1000;

export interface WriteRatio {
  ratio: string;
  workload: string;
  value: number;
  target?: number;
  met?: boolean;
}

const fmt = (v: number) => Math.round(v).toLocaleString("en-US");
const met = (ok: boolean) => (ok ? "met" : "MISSED");
const LABEL = 44;
const COL = 22;

export function writeRatios(r: WriteResult): WriteRatio[] {
  return WRITE_RATIOS.flatMap((spec) =>
    r.workloads.map((w) => {
      const value = w.figures[spec.of].median / w.figures[spec.to].median;
      const target = spec.targets[w.workload.label];
      return { ratio: spec.label, workload: w.workload.label, value: round(value, 2), ...(target === undefined ? {} : { target, met: value >= target }) };
    }),
  );
}

export function writeLines(r: WriteResult, reps: number, runtimeSec: number): string[] {
  const header = (first: string) => `${first.padEnd(LABEL)}${r.workloads.map((w) => w.workload.label.padStart(COL)).join("")}`;
  const both = (f: (w: WriteResult["workloads"][number]) => string) => r.workloads.map(f).join(" | ");
  const lines = [
    `Writes: fio nbd engine, ${reps} run(s) of ${runtimeSec} s each, medians; one qemu-storage-daemon per replica, raw 1 GiB images`,
    "",
    `${header("setup")}   machine CPU busy`,
  ];
  for (const s of WRITE_SETUPS) {
    const cells = r.workloads.map((w) => `${fmt(w.figures[s].median)} ${w.workload.unit}`.padStart(COL)).join("");
    lines.push(`${SETUP_LABELS[s].padEnd(LABEL)}${cells}   ${both((w) => `${Math.round(w.figures[s].busy * 100)}%`)}`);
  }
  lines.push("", header("ratio"));
  const ratios = writeRatios(r);
  for (const spec of WRITE_RATIOS) {
    const cells = ratios
      .filter((x) => x.ratio === spec.label)
      .map((x) => (x.value.toFixed(2) + (x.target === undefined ? "" : ` (≥ ${x.target} ${met(x.met!)})`)).padStart(COL));
    lines.push(`${spec.label.padEnd(LABEL)}${cells.join("")}`);
  }
  const us = (v: number | undefined) => (v === undefined ? "-" : v < 100 ? v.toFixed(1) : fmt(v));
  lines.push("", `${`CPU µs per request (${both((w) => w.workload.label.split(" ")[0]!)})`.padEnd(LABEL)}${"fio".padStart(COL)}${"frontend".padStart(COL)}${"daemons, per copy".padStart(COL)}`);
  for (const s of WRITE_SETUPS) {
    const cells = [(f: WriteFigure) => f.fioUsPerIo, (f: WriteFigure) => f.cpuUsPerIo, (f: WriteFigure) => f.daemonsUsPerCopy].map((get) =>
      both((w) => us(get(w.figures[s]))).padStart(COL),
    );
    lines.push(`${SETUP_LABELS[s].padEnd(LABEL)}${cells.join("")}`);
  }
  if (reps > 1) {
    lines.push("", `every run (${both((w) => w.workload.label)}):`);
    for (const s of WRITE_SETUPS) lines.push(`  ${SETUP_LABELS[s].padEnd(LABEL)}${both((w) => w.figures[s].runs.map(fmt).join(", "))}`);
  }
  return lines;
}

/** Each rebuild path against the durable plain copy (the headline, with its target) and against the unflushed one. */
export function resyncRatios(r: ResyncResult): { detached: number; attached: number; frontendCopy: number; baseline: string; detachedVsUnflushed: number; attachedVsUnflushed: number } {
  const d = durablePlain(r);
  return {
    detached: round(r.stowage.mbps / d.figure.mbps, 2),
    attached: round(r.attached.mbps / d.figure.mbps, 2),
    frontendCopy: round(r.frontend.mbps / d.figure.mbps, 2),
    baseline: d.label,
    detachedVsUnflushed: round(r.stowage.mbps / r.plain.mbps, 2),
    attachedVsUnflushed: round(r.attached.mbps / r.plain.mbps, 2),
  };
}

export function resyncLines(r: ResyncResult, reps: number): string[] {
  const q = resyncRatios(r);
  const row = (label: string, f: CopyFigure) =>
    `${label.padEnd(64)}${`${f.seconds.toFixed(2)} s`.padStart(8)}${`${fmt(f.mbps)} MB/s`.padStart(12)}${reps > 1 ? `   runs ${f.runs.map((s) => s.toFixed(2)).join(", ")} s` : ""}`;
  const headline = (v: number) => `${v.toFixed(2)} (≥ ${RESYNC_TARGET} ${met(v >= RESYNC_TARGET)})`;
  return [
    `Resync: ${r.dataBytes / 2 ** 20} MiB of data in a ${r.imageBytes / 2 ** 30} GiB qcow2 image, ${reps} run(s), medians (MB/s of data);`,
    "every image read and written as the agent opens it (O_DIRECT), every copy but the unflushed ones durable at its end",
    "",
    row("detached volume: DirPool.copyFrom (convert -n -t none from NBD)", r.stowage),
    row("attached volume: agent copy + export + frontend catch-up", r.attached),
    row("  of which the agent's copy", r.attachedCopy),
    row("attached volume, fallback: the frontend's copy (allocated regions)", r.frontend),
    row("plain qemu-img convert -T none -t writeback (flushed)", r.plainFlushed),
    row("plain qemu-img convert -T none -t none (direct, flushed)", r.plainDirect),
    row("plain qemu-img convert -T none (unflushed: page cache only)", r.plain),
    row("plain qemu-img convert, no cache options (the old baseline)", r.plainNaive),
    row("the rebuild's convert from NBD, unflushed (page cache only)", r.nbdUnflushed),
    "",
    `durable plain copy (the faster of flushed and direct): ${q.baseline}`,
    `detached rebuild / durable plain copy    ${headline(q.detached)}`,
    `attached rebuild / durable plain copy    ${headline(q.attached)}`,
    `  (the frontend-copy fallback: ${q.frontendCopy.toFixed(2)}; before the copy, the frontend's tracking was recorded in ${(r.trackingSetup.seconds * 1000).toFixed(0)} ms, untimed)`,
    `detached / attached rebuild / unflushed plain copy (reference): ${q.detachedVsUnflushed.toFixed(2)} / ${q.attachedVsUnflushed.toFixed(2)}`,
    `rebuilt replicas identical to the source (qemu-img compare): ${r.verified ? "yes" : "NO"}`,
  ];
}

function clusterWriteLines(r: FailoverResult): string[] {
  if (r.clusterWrites.length === 0) return [];
  const lines = [
    "",
    "Writes in that cluster, through frontends that follow the recorded write policy (fio at the",
    "agent's export of the frontend node's replica, over TCP, as the baseline):",
    "",
    `${"workload".padEnd(28)}${"direct".padStart(12)}${"1 replica".padStart(12)}${"2 replicas".padStart(12)}${"1 / direct".padStart(12)}${"2 / direct".padStart(12)}`,
  ];
  for (const w of r.clusterWrites) {
    lines.push(
      `${`${w.workload} (${w.unit})`.padEnd(28)}${fmt(w.direct).padStart(12)}${fmt(w.replicas1).padStart(12)}${fmt(w.replicas2).padStart(12)}` +
        `${(w.replicas1 / w.direct).toFixed(2).padStart(12)}${(w.replicas2 / w.direct).toFixed(2).padStart(12)}`,
    );
  }
  return lines;
}

export function failoverLines(r: FailoverResult): string[] {
  const row = (label: string, ms: number, extra = "") => `${label.padEnd(60)}${`${ms.toFixed(ms < 10 ? 2 : 0)} ms`.padStart(10)}${extra}`;
  const failed = r.runs.reduce((n, x) => n + x.failedWrites, 0);
  return [
    `Failover: 2-replica volume in a real cluster (etcd, 1 controller, 2 agents), QD1 4 KiB writes,`,
    `the other node's qemu-storage-daemon SIGKILLed; ${r.runs.length} run(s), medians`,
    "",
    row("kill → next acknowledged write (submitted after the kill)", r.nextWriteMs, `   (< ${FAILOVER_TARGET_MS} ms ${met(r.nextWriteMs < FAILOVER_TARGET_MS)})`),
    row("kill → first acknowledgement of any write", r.firstAckMs),
    row("kill → out-of-sync record seen in etcd (a watch)", r.recordedMs ?? NaN),
    row("longest pause between acknowledgements after the kill", r.longestStallMs),
    row("no Stowage: kill → a plain client's write fails", r.plainDeathMs),
    row("QD1 write latency before the kill", r.latencyBeforeMs),
    row("one etcd write (put), for reference", r.etcdPutMs),
    "",
    `every run (next write): ${r.runs.map((x) => `${x.nextWriteMs.toFixed(0)} ms`).join(", ")}; failed writes: ${failed}; ` +
      `replica recorded out-of-sync at the controller: ${r.runs.every((x) => x.recordedOutOfSync) ? "every run" : "NOT every run"}`,
    ...clusterWriteLines(r),
  ];
}
