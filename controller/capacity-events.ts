// The leader's capacity watch: after agents report new pool figures, volumes are
// placed or removed, or pool settings change (and every few seconds regardless),
// it judges every online node's pools against their thresholds and makes the
// active events in etcd match (controller/capacity.ts plans; this file writes).
// Events live under events/ID; the last MAX_EVENTS are kept, active ones always.
import { randomBytes } from "node:crypto";
import { ConflictError, errorMessage } from "../lib/errors.js";
import type { Logger } from "../lib/logger.js";
import { eventId, eventsToPrune, planEvents, poolConditions, type Condition } from "./capacity.js";
import type { ClusterView } from "./cluster-view.js";
import { keys } from "./keys.js";
import type { EventRecord } from "./model.js";
import type { ClusterStore } from "./store.js";

export const MAX_EVENTS = 1000;
/** etcd refuses transactions of more than 128 operations by default. */
const OPS_PER_WRITE = 100;

export interface CapacityEventsOptions {
  /** Full pass interval (default 10 s); changes trigger one sooner. */
  everyMs?: number;
  /** Changes within this window share one pass (default 200 ms). */
  debounceMs?: number;
  maxEvents?: number;
}

export class CapacityEvents {
  private timer: NodeJS.Timeout | undefined;
  private soon: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private readonly onChange = (c: { kind: string }) => {
    if (c.kind === "node-status" || c.kind === "node-spec" || c.kind === "volume-spec") this.trigger();
  };

  constructor(
    private readonly store: ClusterStore,
    private readonly view: ClusterView,
    private readonly log: Logger,
    private readonly opts: CapacityEventsOptions = {},
  ) {}

  start(): void {
    this.store.on("change", this.onChange);
    this.timer = setInterval(() => this.trigger(), this.opts.everyMs ?? 10_000);
    this.timer.unref();
    this.trigger();
  }

  stop(): void {
    this.stopped = true;
    this.store.off("change", this.onChange);
    clearInterval(this.timer);
    clearTimeout(this.soon);
  }

  private trigger(): void {
    if (this.stopped || this.soon) return;
    this.soon = setTimeout(() => {
      this.soon = undefined;
      void this.pass();
    }, this.opts.debounceMs ?? 200);
    this.soon.unref();
  }

  /** One pass; a pass asked for while one runs follows it. Resolves when done (tests). */
  pass(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = this.judge()
      .catch((err: unknown) => {
        const level = err instanceof ConflictError ? "info" : "error";
        this.log[level]({ err: errorMessage(err) }, "capacity pass failed; retrying with the next one");
        if (err instanceof ConflictError) this.again = true;
      })
      .finally(() => {
        this.running = undefined;
        if (this.again && !this.stopped) {
          this.again = false;
          this.trigger();
        }
      });
    return this.running;
  }

  private async judge(): Promise<void> {
    const usage = this.view.usage();
    const conditions: Condition[] = [];
    const offline = new Set<string>();
    for (const { value: n } of this.store.nodeSpecs()) {
      // An offline node's figures are stale: its events stay as they are until it reports again.
      if (!this.store.nodeStatus(n.name)) {
        offline.add(n.name);
        continue;
      }
      for (const p of this.view.poolRecords(n.name)) {
        conditions.push(...poolConditions(n.name, p, usage.pools.get(`${n.name}/${p.name}`)?.provisionedBytes ?? 0));
      }
    }
    const all = this.store.events().map((e) => e.value);
    const active = all.filter((e) => !e.resolvedAtMs).sort((a, b) => (a.id < b.id ? -1 : 1));
    const now = Date.now();
    const keep = (object: string) => {
      const m = /^pool ([^/]+)\//.exec(object);
      return m !== null && offline.has(m[1]!);
    };
    const plan = planEvents(conditions, active, now, keep);
    if (plan.raise.length === 0 && plan.resolve.length === 0 && all.length <= (this.opts.maxEvents ?? MAX_EVENTS)) return;

    const puts: { key: string; value: EventRecord }[] = [];
    for (const { event, resolution } of plan.resolve) {
      puts.push({ key: keys.event(event.id), value: { ...event, resolvedAtMs: now, resolution } });
    }
    const raised: EventRecord[] = plan.raise.map((e) => ({ ...e, id: eventId(e.atMs, randomBytes(3).toString("hex")) }));
    for (const e of raised) puts.push({ key: keys.event(e.id), value: e });
    const resolvedIds = new Set(plan.resolve.map((r) => r.event.id));
    const after = [...all.map((e) => (resolvedIds.has(e.id) ? { ...e, resolvedAtMs: now } : e)), ...raised];
    const prune = eventsToPrune(after, this.opts.maxEvents ?? MAX_EVENTS).map((e) => keys.event(e.id));
    const pruned = new Set(prune);

    // Each resolved event must still be the one read (another pass may have resolved it).
    const revisions = new Map(this.store.events().map((e) => [keys.event(e.value.id), e.modRevision]));
    const writes = puts.filter((p) => !pruned.has(p.key));
    for (let i = 0; i < Math.max(writes.length, prune.length); i += OPS_PER_WRITE) {
      const put = writes.slice(i, i + OPS_PER_WRITE);
      await this.store.write({
        unchanged: put.filter((p) => revisions.has(p.key)).map((p) => [p.key, revisions.get(p.key)!] as [string, number]),
        absent: put.filter((p) => !revisions.has(p.key)).map((p) => p.key),
        put,
        delete: prune.slice(i, i + OPS_PER_WRITE),
      });
    }
    for (const e of raised) this.log[e.severity === "critical" ? "error" : "warn"]({ event: e.id, object: e.object, reason: e.reason }, e.message);
    for (const r of plan.resolve) this.log.info({ event: r.event.id, object: r.event.object, reason: r.event.reason, resolution: r.resolution }, "capacity event resolved");
  }
}
