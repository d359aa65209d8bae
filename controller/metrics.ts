// Prometheus metrics of the controller, in the text exposition format (0.0.4),
// computed from the etcd mirror when scraped: pool capacity figures, threshold
// levels, node and volume counts, active events. Every instance serves them (a
// follower's mirror is as current as the leader's); stowage_controller_leader
// says which one leads. Written by hand rather than with prom-client: every
// figure is a gauge read at scrape time, which is a few lines of text.
import { createServer, type Server } from "node:http";
import { levelOf, provisionLimit, usedBytes } from "./capacity.js";
import type { ClusterView } from "./cluster-view.js";
import type { ClusterStore } from "./store.js";

export interface Sample {
  labels?: Record<string, string>;
  value: number;
}

export interface Metric {
  name: string;
  help: string;
  type: "gauge" | "counter";
  samples: Sample[];
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** The text format: HELP and TYPE lines, then one line per sample. */
export function renderMetrics(metrics: Metric[]): string {
  let out = "";
  for (const m of metrics) {
    out += `# HELP ${m.name} ${m.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}\n# TYPE ${m.name} ${m.type}\n`;
    for (const s of m.samples) {
      const labels = Object.entries(s.labels ?? {});
      const l = labels.length > 0 ? `{${labels.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}` : "";
      out += `${m.name}${l} ${formatValue(s.value)}\n`;
    }
  }
  return out;
}

const LEVEL_VALUE = { ok: 0, warning: 1, critical: 2 } as const;

/** Every metric, from the mirror as it is now. */
export function collectMetrics(store: ClusterStore, view: ClusterView, isLeader: boolean): Metric[] {
  const gauge = (name: string, help: string, samples: Sample[] = []): Metric => ({ name, help, type: "gauge", samples });
  const pool = {
    capacity: gauge("stowage_pool_capacity_bytes", "Size of the pool's filesystem (statfs)."),
    available: gauge("stowage_pool_available_bytes", "Free space for new data on the pool's filesystem (statfs)."),
    used: gauge("stowage_pool_used_bytes", "In use on the pool's filesystem (capacity - available): physical."),
    allocated: gauge("stowage_pool_allocated_bytes", "Disk space the pool's replica images occupy."),
    provisioned: gauge("stowage_pool_provisioned_bytes", "Virtual sizes of the replicas placed in the pool (logical)."),
    limit: gauge("stowage_pool_provisioned_limit_bytes", "How much may be provisioned: capacity x overcommit ratio."),
    ratio: gauge("stowage_pool_overcommit_ratio", "The pool's overcommit ratio (the operator's, else the agent's)."),
    replicas: gauge("stowage_pool_replicas", "Replicas placed in the pool."),
    threshold: gauge("stowage_pool_threshold_percent", "The pool's warning and critical thresholds, in percent."),
    level: gauge("stowage_pool_capacity_level", "Threshold level of a pool figure: 0 ok, 1 warning, 2 critical (without hysteresis; events have it)."),
  };
  const nodeOnline = gauge("stowage_node_online", "1 while the node's agent heartbeats, else 0.");
  const usage = view.usage();
  for (const { value: n } of store.nodeSpecs()) {
    nodeOnline.samples.push({ labels: { node: n.name }, value: store.nodeStatus(n.name) ? 1 : 0 });
    for (const p of view.poolRecords(n.name)) {
      const labels = { node: n.name, pool: p.name };
      const u = usage.pools.get(`${n.name}/${p.name}`);
      const used = usedBytes(p);
      const limit = provisionLimit(p);
      const provisioned = u?.provisionedBytes ?? 0;
      pool.capacity.samples.push({ labels, value: p.capacityBytes });
      pool.available.samples.push({ labels, value: p.availableBytes });
      pool.used.samples.push({ labels, value: used });
      pool.allocated.samples.push({ labels, value: p.allocatedBytes });
      pool.provisioned.samples.push({ labels, value: provisioned });
      pool.limit.samples.push({ labels, value: limit });
      pool.ratio.samples.push({ labels, value: p.overcommitRatio });
      pool.replicas.samples.push({ labels, value: u?.replicaCount ?? 0 });
      pool.threshold.samples.push({ labels: { ...labels, level: "warning" }, value: p.warningPercent });
      pool.threshold.samples.push({ labels: { ...labels, level: "critical" }, value: p.criticalPercent });
      const pct = (a: number, b: number) => (b > 0 ? (100 * a) / b : a > 0 ? 100 : 0);
      pool.level.samples.push({ labels: { ...labels, figure: "used" }, value: LEVEL_VALUE[levelOf(pct(used, p.capacityBytes), p)] });
      pool.level.samples.push({ labels: { ...labels, figure: "provisioned" }, value: LEVEL_VALUE[levelOf(pct(provisioned, limit), p)] });
    }
  }
  const phases = new Map<string, number>();
  for (const { value: v } of store.volumeSpecs()) {
    const phase = v.deleting ? "deleting" : (store.volumeStatus(v.name)?.value.phase ?? "creating");
    phases.set(phase, (phases.get(phase) ?? 0) + 1);
  }
  const volumes = gauge(
    "stowage_volumes",
    "Volumes by phase.",
    ["creating", "healthy", "degraded", "failed", "resizing", "deleting"].map((phase) => ({ labels: { phase }, value: phases.get(phase) ?? 0 })),
  );
  const active = { warning: 0, critical: 0 };
  for (const { value: e } of store.events()) if (!e.resolvedAtMs && (e.severity === "warning" || e.severity === "critical")) active[e.severity]++;
  const events = gauge("stowage_capacity_events_active", "Capacity events not resolved yet, by severity.", [
    { labels: { severity: "warning" }, value: active.warning },
    { labels: { severity: "critical" }, value: active.critical },
  ]);
  const mem = process.memoryUsage();
  const cpu = process.cpuUsage();
  return [
    ...Object.values(pool),
    nodeOnline,
    volumes,
    events,
    gauge("stowage_controller_leader", "1 on the instance that leads, else 0.", [{ value: isLeader ? 1 : 0 }]),
    gauge("process_resident_memory_bytes", "Resident memory size in bytes.", [{ value: mem.rss }]),
    { name: "process_cpu_seconds_total", help: "User and system CPU time spent in seconds.", type: "counter", samples: [{ value: (cpu.user + cpu.system) / 1e6 }] },
    gauge("process_start_time_seconds", "Start time of the process since the epoch in seconds.", [{ value: Math.round((Date.now() - process.uptime() * 1000) / 1000) }]),
  ];
}

/** Serves GET /metrics on host:port; resolves to the port (port 0 picks one). */
export async function serveMetrics(host: string, port: number, render: () => string): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    if (req.method !== "GET" || (req.url !== "/metrics" && !req.url?.startsWith("/metrics?"))) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: metrics are at /metrics\n");
      return;
    }
    try {
      const body = render();
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(body);
    } catch (err) {
      res.writeHead(500, { "content-type": "text/plain" }).end(`cannot collect metrics: ${String(err)}\n`);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address();
  return { server, port: typeof address === "object" && address ? address.port : port };
}
