// The report: one section per part, a summary table with the targets, and the JSON shape.
import type { FailoverResult } from "./failover.js";
import type { LatencyResult } from "./latency.js";
import type { MemoryResult } from "./memory.js";

const TARGET = { createP99Ms: 500, failoverMs: 2_000, rssMiB: 300, rssAtVolumes: 10_000 };

interface Row {
  figure: string;
  value: string;
  target: string;
  verdict: "PASS" | "MISS" | "n/a" | "info";
}

/** Every figure of a run; printed as one JSON object with --json. */
export interface BenchResult {
  mode: string;
  seconds: number;
  latency?: LatencyResult;
  failover?: FailoverResult;
  memory?: MemoryResult;
  summary: Row[];
}

const verdict = (ok: boolean): "PASS" | "MISS" => (ok ? "PASS" : "MISS");

/** The summary table's rows for the parts that ran, judged against the targets. */
export function summaryRows(result: BenchResult): Row[] {
  const rows: Row[] = [];
  const L = result.latency;
  if (L) {
    const h = L.createToHealthyMs;
    rows.push(
      { figure: "create->healthy p50", value: `${h.p50} ms`, target: "", verdict: "info" },
      { figure: "create->healthy p99", value: `${h.p99} ms`, target: `< ${TARGET.createP99Ms} ms`, verdict: verdict(h.p99 < TARGET.createP99Ms) },
      { figure: "create->healthy p50 / qemu-img create", value: `${L.p50OverQemuImgCreate}x`, target: "", verdict: "info" },
      { figure: "delete->gone p50 / p99", value: `${L.deleteToGoneMs.p50} / ${L.deleteToGoneMs.p99} ms`, target: "", verdict: "info" },
    );
  }
  const F = result.failover;
  if (F) {
    rows.push(
      { figure: "failover -> ListVolumes (max)", value: `${F.listVolumesMs.max} ms`, target: `< ${TARGET.failoverMs} ms`, verdict: verdict(F.listVolumesMs.max < TARGET.failoverMs) },
      { figure: "failover -> CreateVolume (max)", value: `${F.createVolumeMs.max} ms`, target: `< ${TARGET.failoverMs} ms`, verdict: verdict(F.createVolumeMs.max < TARGET.failoverMs) },
      { figure: "failover -> ListVolumes / CreateVolume (median)", value: `${F.listVolumesMs.median} / ${F.createVolumeMs.median} ms`, target: "", verdict: "info" },
    );
  }
  const M = result.memory;
  if (M) {
    const atTarget = M.volumes >= TARGET.rssAtVolumes;
    rows.push(
      { figure: "controller RSS with 0 volumes", value: `${M.rssIdleMiB} MiB`, target: "", verdict: "info" },
      atTarget
        ? { figure: `controller RSS @ ${M.volumes} volumes`, value: `${M.rssMiB} MiB`, target: `< ${TARGET.rssMiB} MiB`, verdict: verdict(M.rssMiB < TARGET.rssMiB) }
        : { figure: `controller RSS @ ${M.volumes} volumes (quick run)`, value: `${M.rssMiB} MiB`, target: `< ${TARGET.rssMiB} MiB @ ${TARGET.rssAtVolumes}`, verdict: "n/a" },
      { figure: "controller bytes per volume", value: `${M.bytesPerVolume} B`, target: "", verdict: "info" },
      { figure: "volume creation throughput", value: `${M.createPerSec}/s`, target: "", verdict: "info" },
      { figure: "create -> all healthy throughput", value: `${M.healthyPerSec}/s`, target: "", verdict: "info" },
    );
  }
  return rows;
}

/** The human-readable report: a section per part that ran, then `result.summary` as a table. */
export function renderReport(result: BenchResult): string {
  const out: string[] = [];
  out.push("", `Stowage control-plane benchmark (${result.mode} run, ${result.seconds} s)`, "");
  const L = result.latency;
  if (L) {
    const h = L.createToHealthyMs;
    out.push(
      `1. Create-to-healthy, ${L.volumes} two-replica 64 MiB qcow2 volumes one after another (real agents):`,
      `   p50 ${h.p50} ms   p90 ${h.p90} ms   p99 ${h.p99} ms   max ${h.max} ms   (target p99 < ${TARGET.createP99Ms} ms)`,
      `   baseline: bare qemu-img create 64M median ${L.baseline.qemuImgCreateMedianMs} ms -> p50 is ${L.p50OverQemuImgCreate}x that`,
      `             the dir pool's work per replica (create, fsync, rename, fsync dir, info) median ${L.baseline.agentWorkMedianMs} ms -> p50 is ${L.p50OverAgentWork}x that`,
      `   breakdown (medians, from the processes' logs): create call ${L.breakdownMedianMs.createCall} ms, then both images created ${L.breakdownMedianMs.untilBothImagesCreated} ms,`,
      `             then healthy status written ${L.breakdownMedianMs.untilHealthyWritten} ms, then seen by GetVolume ${L.breakdownMedianMs.untilObserved} ms`,
      `   delete-to-NotFound: p50 ${L.deleteToGoneMs.p50} ms   p99 ${L.deleteToGoneMs.p99} ms   max ${L.deleteToGoneMs.max} ms`,
      `   leader lost its election lease ${L.leadershipLost} time(s) during this part; ${L.leaderRedirects} call(s) had to find the leader again`,
      "",
    );
  }
  const F = result.failover;
  if (F) {
    out.push(`2. Leader failover (SIGKILL of the leader, leader TTL 1 s), ${F.runs.length} runs:`);
    for (const [i, r] of F.runs.entries()) {
      const errs = Object.entries(r.errorsSeen).map(([k, v]) => `${k}×${v}`).join(", ");
      out.push(`   run ${i + 1}: ListVolumes ${r.listVolumesMs} ms, CreateVolume ${r.createVolumeMs} ms, new volume healthy ${r.newVolumeHealthyMs} ms   (errors while waiting: ${errs || "none"})`);
    }
    out.push(
      `   ListVolumes:  median ${F.listVolumesMs.median} ms, max ${F.listVolumesMs.max} ms   (target < ${TARGET.failoverMs} ms)`,
      `   CreateVolume: median ${F.createVolumeMs.median} ms, max ${F.createVolumeMs.max} ms   (target < ${TARGET.failoverMs} ms)`,
      `   the volume created during failover was healthy after: median ${F.newVolumeHealthyMs.median} ms, max ${F.newVolumeHealthyMs.max} ms`,
      "",
    );
  }
  const M = result.memory;
  if (M) {
    const atTarget = M.volumes >= TARGET.rssAtVolumes;
    out.push(
      `3. Controller memory, ${M.volumes} volumes (2 replicas each) on 3 simulated agents, ${M.concurrency} creates in flight:`,
      `   RSS with 0 volumes ${M.rssIdleMiB} MiB; with ${M.volumes} volumes ${M.rssMiB} MiB (peak ${M.peakRssMiB} MiB, ${M.rssAfterIdleMiB} MiB after 5 s idle); ${M.bytesPerVolume} bytes per volume`,
      atTarget
        ? `   (target < ${TARGET.rssMiB} MiB at ${TARGET.rssAtVolumes} volumes)`
        : `   (target < ${TARGET.rssMiB} MiB at ${TARGET.rssAtVolumes} volumes: not measured in a quick run; bytes per volume` +
          ` at this size are not a guide, the heap grows in steps early on)`,
      `   create calls: ${M.createSeconds} s, ${M.createPerSec} volumes/s (RPC p50 ${M.createRpcMs.p50} ms, p99 ${M.createRpcMs.p99} ms, max ${M.createRpcMs.max} ms)`,
      `   all healthy after ${M.allHealthySeconds} s: ${M.healthyPerSec} volumes/s; controller CPU ${M.controllerCpuSeconds} s`,
      `   ListVolumes with ${M.volumes} volumes: ${M.listVolumes.ms} ms, ${M.listVolumes.responseMiB} MiB response`,
      `   leader lost its election lease ${M.leadershipLost} time(s); ${M.leaderRedirects} call(s) had to find the leader again; retries: ${JSON.stringify(M.createRetries)}`,
      "",
    );
  }
  out.push("Summary:", table(result.summary), "");
  return out.join("\n") + "\n";
}

function table(rows: Row[]): string {
  const head: Row = { figure: "figure", value: "value", target: "target", verdict: "info" };
  const w = (k: keyof Row) => Math.max(...[head, ...rows].map((r) => (k === "verdict" && r === head ? 6 : r[k].length)));
  const line = (r: Row, verdict: string) =>
    `  ${r.figure.padEnd(w("figure"))}  ${r.value.padStart(w("value"))}  ${r.target.padEnd(w("target"))}  ${verdict}`;
  const rule = `  ${"-".repeat(w("figure") + w("value") + w("target") + 12)}`;
  return [line(head, "result"), rule, ...rows.map((r) => line(r, r.verdict === "info" ? "" : r.verdict))].join("\n");
}
