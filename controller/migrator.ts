// Drives live migrations on the leader. A migration is recorded in etcd (with
// the destination's attachments: the dual-attach window) before anything runs,
// and every phase change is written before the next step, so a new leader
// picks up where a crashed one stopped:
//
//   preparing    destination frontends starting; wait until they serve
//   migrating    the source agent runs libvirt's live migration; progress polled
//   finishing    the domain runs on the destination: drop the source attachments
//   rolling-back it failed: drop the destination attachments
//   succeeded / failed  (the record stays until the domain's next migration)
//
// Which way a migration that was interrupted went is decided by asking libvirt
// where the domain runs, never assumed.
import { errorMessage, ConflictError } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import type { Logger } from "../lib/logger.js";
import { keys } from "./keys.js";
import type { MigrationPhaseName, MigrationRecord, VolumeSpec } from "./model.js";
import type { WriteBatch } from "./store.js";
import type { VmDeps } from "./vms.js";

export interface MigratorOptions {
  /** How long destination frontends may take to start (default 60 s). */
  prepareTimeoutMs?: number;
  /** Progress poll interval (default 500 ms; each poll is a virsh call on the source). */
  pollMs?: number;
  /** The longest a migration may run (default 1 h). */
  migrateTimeoutMs?: number;
}

const TERMINAL: MigrationPhaseName[] = ["succeeded", "failed"];

export function isTerminal(m: MigrationRecord): boolean {
  return TERMINAL.includes(m.phase);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Migrator {
  private readonly running = new Map<string, Promise<void>>();
  private stopped = false;

  constructor(
    private readonly d: VmDeps,
    private readonly enqueueVolume: (name: string) => void,
    private readonly log: Logger,
    private readonly opts: MigratorOptions = {},
  ) {}

  /** Resumes every unfinished migration (called when this controller becomes leader). */
  start(): void {
    for (const { value } of this.d.store.migrations()) if (!isTerminal(value)) this.drive(value.domain);
  }

  stop(): void {
    this.stopped = true;
  }

  /** Runs the domain's migration to its end unless a driver already does. */
  drive(domain: string): void {
    if (this.running.has(domain) || this.stopped) return;
    const p = this.run(domain)
      .catch((err) => this.log.error({ domain, err: errorMessage(err) }, "migration driver stopped; the next leader resumes it"))
      .finally(() => this.running.delete(domain));
    this.running.set(domain, p);
  }

  /** Waits for running drivers (tests). */
  async idle(): Promise<void> {
    await Promise.all(this.running.values());
  }

  private current(domain: string) {
    const e = this.d.store.migration(domain);
    if (!e) throw new Error(`migration record of ${domain} vanished`);
    return e;
  }

  /** Writes fields of the record (and any extra batch) if the record has not changed meanwhile. */
  private async update(domain: string, fields: Partial<MigrationRecord>, extra: (m: MigrationRecord) => WriteBatch = () => ({})): Promise<MigrationRecord> {
    const e = this.current(domain);
    const next = { ...e.value, ...fields };
    const b = extra(next);
    await this.d.store.write({
      unchanged: [[keys.migration(domain), e.modRevision], ...(b.unchanged ?? [])],
      put: [{ key: keys.migration(domain), value: next }, ...(b.put ?? [])],
    });
    return next;
  }

  private async run(domain: string): Promise<void> {
    // Phases this driver went through itself: a "migrating" record it did not
    // prepare is a predecessor's, whose migration may have finished unobserved.
    let prepared = false;
    const t0 = Date.now();
    const marks: Record<string, number> = {};
    for (;;) {
      if (this.stopped) return;
      const m = this.current(domain).value;
      try {
        switch (m.phase) {
          case "preparing":
            await this.prepare(m);
            prepared = true;
            marks["preparedMs"] = Date.now() - t0;
            break;
          case "migrating":
            await this.migrate(m, !prepared);
            marks["migratedMs"] = Date.now() - t0;
            break;
          case "finishing":
            await this.settle(m, "succeeded", { ...marks, settledMs: Date.now() - t0 });
            break;
          case "rolling-back":
            await this.settle(m, "failed", { ...marks, settledMs: Date.now() - t0 });
            break;
          default:
            return;
        }
      } catch (err) {
        // The record or a volume changed underneath (a progress write, an attach): read again.
        if (!(err instanceof ConflictError)) throw err;
      }
    }
  }

  private frontendsReady(m: MigrationRecord): { ready: boolean; problem: string } {
    for (const v of m.volumes) {
      const f = this.d.store.frontend(v, m.to);
      if (f?.state !== "attached") return { ready: false, problem: f?.message ? `volume ${v} on ${m.to}: ${f.message}` : "" };
    }
    return { ready: true, problem: "" };
  }

  private async prepare(m: MigrationRecord): Promise<void> {
    const deadline = Date.now() + (this.opts.prepareTimeoutMs ?? 60_000);
    for (const v of m.volumes) this.enqueueVolume(v);
    for (;;) {
      if (this.stopped) return;
      const { ready, problem } = this.frontendsReady(m);
      if (ready) break;
      if (Date.now() > deadline) {
        await this.update(m.domain, { phase: "rolling-back", message: `frontends on ${m.to} did not start${problem ? `: ${problem}` : ""}` });
        return;
      }
      await this.nextChange(100);
    }
    await this.update(m.domain, { phase: "migrating", message: "" });
    faultPoint("migrate:prepared", m.domain);
  }

  /** Resolves at the store's next change (a frontend's status written), or after `ms` at the latest. */
  private nextChange(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.d.store.off("change", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.d.store.on("change", done);
    });
  }

  /** Where the domain runs now: "from", "to", or "unknown" (neither answered running). */
  private async whereIs(m: MigrationRecord): Promise<"from" | "to" | "unknown"> {
    const ask = async (node: string) => {
      try {
        const r = await this.d.agents.for(node).getDomain({ name: m.domain }, { timeoutMs: 15_000 });
        return r.found ? (r.domain?.state ?? "") : "absent";
      } catch {
        return "unreachable";
      }
    };
    const [src, dst] = await Promise.all([ask(m.from), ask(m.to)]);
    if (dst === "running" && src !== "running") return "to";
    if (src === "running" || src === "paused") return "from";
    return "unknown";
  }

  private async migrate(m: MigrationRecord, resumed: boolean): Promise<void> {
    const target = this.d.store.nodeSpec(m.to)?.value.libvirt;
    if (!target) {
      await this.update(m.domain, { phase: "rolling-back", message: `node ${m.to} has no libvirt endpoint` });
      return;
    }
    // Already there (a previous leader's migration finished while no one watched)?
    if (resumed && (await this.whereIs(m)) === "to") {
      await this.update(m.domain, { phase: "finishing", message: "" });
      return;
    }
    const source = this.d.agents.for(m.from);
    let done = false;
    let wake: () => void = () => undefined;
    const finished = new Promise<void>((r) => (wake = r));
    const progress = (async () => {
      let lastWrite = 0;
      while (!done && !this.stopped) {
        await Promise.race([sleep(this.opts.pollMs ?? 500), finished]);
        if (done) break;
        try {
          const { job } = await source.getDomainJob({ domain: m.domain }, { timeoutMs: 5_000 });
          // Before libvirt starts copying RAM the totals are 0: nothing worth showing.
          if (!job?.active || !job.memoryTotalBytes || done || Date.now() - lastWrite < 400) continue;
          lastWrite = Date.now();
          await this.update(m.domain, {
            memoryTotalBytes: job.memoryTotalBytes,
            memoryProcessedBytes: job.memoryProcessedBytes,
            memoryRemainingBytes: job.memoryRemainingBytes,
          });
        } catch (err) {
          if (err instanceof ConflictError) continue;
          this.log.debug({ domain: m.domain, err: errorMessage(err) }, "migration progress poll failed");
        }
      }
    })();
    let failure = "";
    let downtimeMs = 0;
    try {
      const res = await source.migrateDomain(
        { domain: m.domain, destinationUri: target.uri, destinationHost: target.migrationHost },
        { timeoutMs: this.opts.migrateTimeoutMs ?? 60 * 60_000 },
      );
      downtimeMs = res.job?.downtimeMs ?? 0;
    } catch (err) {
      failure = errorMessage(err);
    } finally {
      done = true;
      wake();
      await progress;
    }
    if (this.stopped) return;
    faultPoint("migrate:migrated", m.domain);
    // A failed call does not mean a finished migration (the agent restarted, the reply
    // was lost): while libvirt still runs the job, the destination keeps its frontends.
    if (failure) await this.waitJobEnded(m);
    // A failure is not the last word either (an error after the handover): ask where it runs.
    const where = failure ? await this.whereIs(m) : "to";
    if (where === "to") {
      await this.update(m.domain, { phase: "finishing", message: "", downtimeMs, memoryRemainingBytes: 0 });
    } else if (where === "from") {
      await this.update(m.domain, { phase: "rolling-back", message: failure || "the domain is still running on the source" });
    } else {
      // Neither side runs it (both unreachable, or the guest stopped): keep both frontends and look again.
      this.log.warn({ domain: m.domain, failure }, "cannot tell where the domain runs; retrying");
      await sleep(2_000);
    }
  }

  /** Polls the source until libvirt runs no job on the domain and its agent no MigrateDomain. */
  private async waitJobEnded(m: MigrationRecord): Promise<void> {
    const deadline = Date.now() + (this.opts.migrateTimeoutMs ?? 60 * 60_000);
    while (!this.stopped && Date.now() < deadline) {
      try {
        const r = await this.d.agents.for(m.from).getDomainJob({ domain: m.domain }, { timeoutMs: 5_000 });
        if (!r.job?.active && !r.migrating) return;
      } catch (err) {
        // Source agent unreachable: whereIs decides with what answers.
        this.log.warn({ domain: m.domain, err: errorMessage(err) }, "cannot read the migration job on the source");
        return;
      }
      await sleep(500);
    }
  }

  /** Drops one side's attachments and ends the migration. */
  private async settle(m: MigrationRecord, outcome: "succeeded" | "failed", timings: Record<string, number>): Promise<void> {
    const drop = outcome === "succeeded" ? m.from : m.to;
    await this.update(m.domain, { phase: outcome, finishedAtMs: Date.now() }, () => {
      const b: WriteBatch = { unchanged: [], put: [] };
      for (const v of m.volumes) {
        const e = this.d.store.volumeSpec(v);
        if (!e) continue;
        const attachments = (e.value.attachments ?? [])
          .filter((a) => !(a.node === drop && (outcome === "succeeded" || a.migration === m.domain)))
          .map((a) => (a.migration === m.domain ? { node: a.node, sinceMs: a.sinceMs } : a));
        const next: VolumeSpec = { ...e.value, attachments };
        b.unchanged!.push([keys.volumeSpec(v), e.modRevision]);
        b.put!.push({ key: keys.volumeSpec(v), value: next });
      }
      return b;
    });
    for (const v of m.volumes) this.enqueueVolume(v);
    this.log.info({ domain: m.domain, from: m.from, to: m.to, outcome, message: m.message, ...timings }, outcome === "succeeded" ? "migration succeeded" : "migration rolled back");
  }
}
