// Templates: named, immutable qcow2 images, and the copies of them that linked
// clones need on their nodes (the rules are in template-rules.ts).
//
// Creating one: the record (state creating, its first copy "copying" on the
// node chosen) is written first; that node's agent makes the image from the
// source (a snapshot on the node, or an NBD export: a detached volume's replica
// exported under an export lease that keeps the volume from being attached, or
// a file stowctl serves); then the record is ready. A failure, or a creation
// whose leader died (found by the sweep), is undone: the record turns deleting,
// every copy it lists is removed, then the record goes.
//
// Copies: before a linked clone's replica is made on a node (the reconciler's
// one place that creates replicas), ensureCopy records a "copying" copy for the
// node, has a node holding a ready copy export it read-only, the target's agent
// copies it (into a temp file, renamed), and the copy is recorded ready. A copy
// that no replica on its node uses any more is removed by the sweep (the home
// copy, made at creation, stays while the template exists).
//
// Deleting: refused while any volume is a linked clone of it (checked under the
// placement lock, which volume creation also holds); otherwise the record turns
// deleting, the copies are removed (those on offline nodes when they return),
// and the record goes last.
import { randomUUID } from "node:crypto";
import { ConflictError, FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError, errorMessage } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import { KeyedMutex } from "../lib/keyed-mutex.js";
import type { Logger } from "../lib/logger.js";
import { validateName } from "../lib/names.js";
import type { AgentClients } from "./agents.js";
import type { ClusterView } from "./cluster-view.js";
import { keys } from "./keys.js";
import type { TemplateCopyRecord, TemplateRecord, VolumeSpec } from "./model.js";
import { PLACEMENT_LOCK } from "./replica-keeper.js";
import { place } from "./scheduler.js";
import { holders, snapshotRef } from "./snapshots.js";
import type { ClusterStore } from "./store.js";
import { clonesOf, copySource, unusedCopies } from "./template-rules.js";
import { activeExport } from "./transfer-api.js";

const SWEEP_MS = 5_000;
/** The export lease held on a source volume while its image is read; renewed while the copy runs. */
const LEASE_MS = 30_000;
const COPY_TIMEOUT_MS = 24 * 3600_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface TemplateRef {
  name: string;
  uid: string;
  pool: string;
}

export interface TemplatesDeps {
  store: ClusterStore;
  agents: AgentClients;
  view: ClusterView;
  /** The placement lock shared with volume creation. */
  placing: KeyedMutex;
  isOnline: (node: string) => boolean;
  enqueue: (volume: string) => void;
  /** This leader's instance id. */
  instance: string;
  /** Bytes per second for copies between nodes (0: unlimited). */
  copyRateBytes: number;
  log: Logger;
}

export interface CreateTemplateSource {
  volume?: string;
  snapshot?: string;
  nbdUri?: string;
  sizeBytes?: number;
  file?: string;
  pool?: string;
}

/** Where the first image is made, and from what. */
interface Plan {
  node: string;
  pool: string;
  sizeBytes: number;
  source: string;
  make: (ref: TemplateRef) => Promise<{ path: string; virtualSizeBytes: number; allocatedBytes: number }>;
}

export class Templates {
  private readonly mutex = new KeyedMutex();
  private readonly creating = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private sweeping = false;

  constructor(private readonly d: TemplatesDeps) {}

  start(): void {
    this.timer = setInterval(() => void this.sweep(), SWEEP_MS);
    this.timer.unref();
    void this.sweep();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  get(name: string): TemplateRecord {
    validateName("template", name);
    const t = this.d.store.template(name)?.value;
    if (!t) throw new NotFoundError("template", name, { hint: "stowctl template list" });
    return t;
  }

  async create(name: string, from: CreateTemplateSource): Promise<{ template: TemplateRecord; created: boolean }> {
    validateName("template", name);
    const sources = [from.volume, from.nbdUri].filter(Boolean).length;
    if (sources !== 1) throw new InvalidArgumentError("give exactly one source: a volume, a snapshot (VOLUME@SNAPSHOT) or an image file", { hint: "stowctl template create NAME --from VOLUME" });
    const prev = this.d.store.template(name)?.value;
    if (prev?.state === "ready") return { template: prev, created: false };
    if (prev) throw new FailedPreconditionError(`template ${name} is being ${prev.state === "creating" ? "created" : "deleted"}`, { hint: "retry in a moment" });
    const plan = this.plan(from);
    const key = keys.template(name);
    const now = Date.now();
    const record: TemplateRecord = {
      name,
      uid: randomUUID(),
      state: "creating",
      sizeBytes: plan.sizeBytes,
      source: plan.source,
      createdAtMs: now,
      startedBy: this.d.instance,
      copies: [{ node: plan.node, pool: plan.pool, path: "", state: "copying", allocatedBytes: 0, home: true, sinceMs: now, message: "" }],
      message: "",
    };
    this.creating.add(name);
    try {
      try {
        await this.d.store.write({ absent: [key], put: [{ key, value: record }] });
      } catch (err) {
        if (err instanceof ConflictError) throw new ConflictError(`template ${name} was created meanwhile`, { hint: "retry the command" });
        throw err;
      }
      faultPoint("create-template:recorded", name);
      let made;
      try {
        made = await plan.make({ name, uid: record.uid, pool: plan.pool });
      } catch (err) {
        await this.undo(record, errorMessage(err));
        throw new UnavailableError(`template ${name} was not created: ${errorMessage(err)}`, { hint: "nothing was kept; retry the command" });
      }
      faultPoint("create-template:copied", name);
      const ready: TemplateRecord = {
        ...record,
        state: "ready",
        sizeBytes: made.virtualSizeBytes,
        copies: [{ ...record.copies[0]!, path: made.path, state: "ready", allocatedBytes: made.allocatedBytes, sinceMs: Date.now() }],
      };
      await this.d.store.write({ put: [{ key, value: ready }] });
      this.d.log.info({ template: name, node: plan.node, source: plan.source, sizeBytes: ready.sizeBytes, allocatedBytes: made.allocatedBytes }, "template created");
      return { template: ready, created: true };
    } finally {
      this.creating.delete(name);
    }
  }

  /** Checks the source and picks the node that makes the first image. */
  private plan(from: CreateTemplateSource): Plan {
    const agentOf = (node: string) => this.d.agents.for(node);
    if (from.nbdUri) {
      if (!/^nbd:\/\/[^/]+\/[^?]*$/.test(from.nbdUri)) throw new InvalidArgumentError(`template source "${from.nbdUri}" is not an nbd://HOST:PORT/NAME address`);
      const size = from.sizeBytes ?? 0;
      if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidArgumentError(`invalid source size ${size}`, { hint: "stowctl template create --from-file sets it from the file" });
      if (from.pool) validateName("pool", from.pool);
      const placed = place({ sizeBytes: size, replicas: 1, thin: true, pool: from.pool }, this.d.view.snapshot());
      if (!placed.ok) throw new FailedPreconditionError(`no node can hold template image: ${placed.reason}`, { hint: "add nodes or space, or uncordon nodes" });
      const at = placed.placement[0]!;
      return {
        node: at.node,
        pool: at.pool,
        sizeBytes: size,
        source: `file ${from.file || from.nbdUri}`,
        make: (ref) => agentOf(at.node).ensureTemplateImage({ template: ref, sourceNbdUri: from.nbdUri!, sizeBytes: size, rateLimitBytes: 0 }, { timeoutMs: COPY_TIMEOUT_MS }),
      };
    }
    const volume = from.volume!;
    validateName("volume", volume);
    const spec = this.d.store.volumeSpec(volume)?.value;
    if (!spec) throw new NotFoundError("volume", volume, { hint: "stowctl volume list" });
    if (spec.deleting) throw new FailedPreconditionError(`volume ${volume} is being deleted`);
    if (from.snapshot) {
      validateName("snapshot", from.snapshot);
      const ref = snapshotRef(volume, from.snapshot);
      const snap = this.d.store.snapshot(volume, from.snapshot)?.value;
      if (!snap) throw new NotFoundError("snapshot", ref, { hint: `stowctl snapshot list ${volume}` });
      if (snap.state !== "ready") throw new FailedPreconditionError(`snapshot ${ref} is ${snap.state === "creating" ? "being taken" : "being deleted"}`);
      const at = holders(snap, spec).find((p) => this.d.isOnline(p.node));
      if (!at) throw new FailedPreconditionError(`no replica holding ${ref} is online`, { hint: "bring a node holding it back (stowctl snapshot get shows them)" });
      return {
        node: at.node,
        pool: at.pool,
        sizeBytes: snap.sizeBytes,
        source: `snapshot ${ref}`,
        make: (t) =>
          agentOf(at.node).ensureTemplateImage(
            { template: t, sourceSnapshot: { replicaId: at.id, pool: at.pool, snapshotTag: snap.tag }, sourceNbdUri: "", sizeBytes: snap.sizeBytes, rateLimitBytes: 0 },
            { timeoutMs: COPY_TIMEOUT_MS },
          ),
      };
    }
    const busy = spec.importing ? "still being imported" : spec.reverting ? "being reverted" : undefined;
    if (busy) throw new FailedPreconditionError(`volume ${volume} is ${busy}`);
    const attached = (spec.attachments ?? []).map((a) => a.node);
    if (attached.length > 0 || (this.d.store.volumeStatus(volume)?.value.frontends ?? []).length > 0) {
      throw new FailedPreconditionError(`volume ${volume} is attached${attached.length ? ` to ${attached.join(", ")}` : ""}: its content changes while it is read`, {
        hint: `detach it, or snapshot it and make the template from the snapshot (stowctl snapshot create ${volume}@gold; stowctl template create NAME --from ${volume}@gold)`,
      });
    }
    const current = activeExport(spec);
    const at = current
      ? spec.placement.find((p) => p.id === current.replica && !p.outOfSync && this.d.isOnline(p.node))
      : spec.placement.find((p) => !p.outOfSync && this.d.isOnline(p.node));
    if (!at) throw new FailedPreconditionError(`no in-sync replica of ${volume} is on an online node`, { hint: "see stowctl volume get" });
    return {
      node: at.node,
      pool: at.pool,
      sizeBytes: spec.sizeBytes,
      source: `volume ${volume}`,
      make: (t) => this.fromVolume(volume, at.id, (uri) => agentOf(at.node).ensureTemplateImage({ template: t, sourceNbdUri: uri, sizeBytes: spec.sizeBytes, rateLimitBytes: 0 }, { timeoutMs: COPY_TIMEOUT_MS })),
    };
  }

  /**
   * Runs `copy` with the replica exported under an export lease (attach is refused
   * while it lasts; a dead leader's lease simply runs out), renewed meanwhile.
   */
  private async fromVolume<T>(volume: string, replica: string, copy: (uri: string) => Promise<T>): Promise<T> {
    const mine = !activeExport(this.d.store.volumeSpec(volume)!.value);
    const lease = () =>
      this.updateVolume(volume, (s) => {
        const cur = activeExport(s);
        if (cur && cur.replica !== replica) throw new FailedPreconditionError(`volume ${volume} is being exported from another replica`, { hint: "retry once the export finished" });
        if ((s.attachments ?? []).length > 0) throw new FailedPreconditionError(`volume ${volume} was attached meanwhile`);
        return { ...s, exporting: { replica, untilMs: Math.max(cur?.untilMs ?? 0, Date.now() + LEASE_MS) } };
      });
    await lease();
    this.d.enqueue(volume);
    const renew = setInterval(() => void lease().catch((err) => this.d.log.warn({ volume, err: errorMessage(err) }, "export lease renewal failed")), LEASE_MS / 3);
    try {
      const deadline = Date.now() + 60_000;
      let uri: string | undefined;
      while (!(uri = this.d.store.volumeStatus(volume)?.value.replicas.find((r) => r.id === replica)?.exportUri)) {
        if (Date.now() > deadline) throw new UnavailableError(`replica ${replica} of ${volume} was not exported within 60 s`);
        await sleep(200);
      }
      return await copy(uri);
    } finally {
      clearInterval(renew);
      if (mine) {
        await this.updateVolume(volume, (s) => {
          if (!s.exporting) return undefined;
          const { exporting: _, ...rest } = s;
          return rest;
        }).catch(() => undefined);
        this.d.enqueue(volume);
      }
    }
  }

  private async updateVolume(volume: string, fn: (s: VolumeSpec) => VolumeSpec | undefined): Promise<void> {
    for (let i = 0; ; i++) {
      const e = this.d.store.volumeSpec(volume);
      if (!e) throw new NotFoundError("volume", volume);
      const next = fn(e.value);
      if (!next) return;
      try {
        await this.d.store.write({ unchanged: [[keys.volumeSpec(volume), e.modRevision]], put: [{ key: keys.volumeSpec(volume), value: next }] });
        return;
      } catch (err) {
        if (!(err instanceof ConflictError) || i >= 20) throw err;
        await sleep(20);
      }
    }
  }

  /** Read-modify-write of a template record, retried on a conflict; `fn` returning undefined changes nothing, null deletes it. */
  private async update(name: string, fn: (t: TemplateRecord) => TemplateRecord | null | undefined): Promise<TemplateRecord | undefined> {
    for (let i = 0; ; i++) {
      const e = this.d.store.template(name);
      if (!e) return undefined;
      const next = fn(e.value);
      if (next === undefined) return e.value;
      try {
        if (next === null) await this.d.store.write({ unchanged: [[keys.template(name), e.modRevision]], delete: [keys.template(name)] });
        else await this.d.store.write({ unchanged: [[keys.template(name), e.modRevision]], put: [{ key: keys.template(name), value: next }] });
        return next ?? undefined;
      } catch (err) {
        if (!(err instanceof ConflictError) || i >= 20) throw err;
        await sleep(20);
      }
    }
  }

  private static withCopy(t: TemplateRecord, node: string, patch: Partial<TemplateCopyRecord> | null): TemplateRecord {
    const copies = t.copies.flatMap((c) => (c.node !== node ? [c] : patch === null ? [] : [{ ...c, ...patch }]));
    return { ...t, copies };
  }

  /** Turns a failed or stale creation into a deletion, and runs it. */
  private async undo(record: TemplateRecord, why: string): Promise<void> {
    this.d.log.warn({ template: record.name, why }, "template creation undone");
    await this.update(record.name, (t) => (t.uid === record.uid ? { ...t, state: "deleting", message: `not created: ${why}` } : undefined));
    await this.removeCopies(record.name).catch(() => undefined);
  }

  /**
   * The template's copy on `node` (made first if missing, copied from a node that
   * has one): what a linked clone's replica there uses as backing file.
   */
  async ensureCopy(name: string, node: string, pool: string): Promise<TemplateRef> {
    return this.mutex.run(name, async () => {
      const t = this.d.store.template(name)?.value;
      if (!t) throw new NotFoundError("template", name);
      if (t.state !== "ready") throw new FailedPreconditionError(`template ${name} is ${t.state}`);
      const have = t.copies.find((c) => c.node === node);
      if (have?.state === "ready") return { name, uid: t.uid, pool: have.pool };
      const into = have?.pool ?? pool;
      const src = copySource(t, this.d.isOnline, node);
      if (!src) throw new UnavailableError(`no node holding a copy of template ${name} is online (${t.copies.map((c) => c.node).join(", ")})`);
      if (!have || have.state !== "copying") {
        const copying: TemplateCopyRecord = { node, pool: into, path: "", state: "copying", allocatedBytes: 0, sinceMs: Date.now(), message: "" };
        await this.update(name, (x) => ({ ...x, copies: [...x.copies.filter((c) => c.node !== node), copying] }));
      }
      const ref = { name, uid: t.uid, pool: into };
      const t0 = Date.now();
      const srcRef = { name, uid: t.uid, pool: src.pool };
      const uri = (await this.d.agents.for(src.node).openTemplateExport({ template: srcRef }, { timeoutMs: 30_000 })).nbdUri;
      let made;
      try {
        made = await this.d.agents.for(node).ensureTemplateImage({ template: ref, sourceNbdUri: uri, sizeBytes: t.sizeBytes, rateLimitBytes: this.d.copyRateBytes }, { timeoutMs: COPY_TIMEOUT_MS });
      } catch (err) {
        await this.update(name, (x) => Templates.withCopy(x, node, { message: `copy from ${src.node} failed: ${errorMessage(err)}` })).catch(() => undefined);
        throw new UnavailableError(`copying template ${name} from ${src.node} to ${node} failed: ${errorMessage(err)}`);
      } finally {
        await this.d.agents.for(src.node).closeTemplateExport({ template: srcRef }, { timeoutMs: 30_000 }).catch(() => undefined);
      }
      faultPoint("template-copy:copied", name);
      await this.update(name, (x) => Templates.withCopy(x, node, { path: made.path, state: "ready", allocatedBytes: made.allocatedBytes, sinceMs: Date.now(), message: "" }));
      this.d.log.info({ template: name, from: src.node, to: node, ms: Date.now() - t0, allocatedBytes: made.allocatedBytes }, "template copied to a node");
      return ref;
    });
  }

  /** Refuses while any volume is a linked clone of it; else removes every copy, then the record. False when there was none. */
  async delete(name: string): Promise<boolean> {
    validateName("template", name);
    // Under the placement lock: no linked clone can be created between the check and the mark.
    await this.d.placing.run(PLACEMENT_LOCK, async () => {
      const e = this.d.store.template(name);
      if (!e) return;
      if (e.value.state === "creating") throw new FailedPreconditionError(`template ${name} is being created`, { hint: "retry in a moment" });
      const clones = clonesOf(name, this.d.store.volumeSpecs().map((v) => v.value));
      if (clones.length > 0) {
        const names = clones.map((c) => c.name + (c.deleting ? " (being deleted)" : "")).join(", ");
        throw new FailedPreconditionError(`template ${name} has ${clones.length} linked clone${clones.length === 1 ? "" : "s"}: ${names}`, {
          hint: `delete those volumes first (stowctl volume delete ${clones[0]!.name}); their replicas read from the template`,
        });
      }
      if (e.value.state !== "deleting") {
        await this.d.store.write({ unchanged: [[keys.template(name), e.modRevision]], put: [{ key: keys.template(name), value: { ...e.value, state: "deleting", message: "" } }] });
      }
    });
    if (!this.d.store.template(name)) return false;
    await this.removeCopies(name);
    return true;
  }

  /** Removes every copy of a deleting template that can be reached; the record goes once none is left. */
  private async removeCopies(name: string): Promise<void> {
    await this.mutex.run(name, async () => {
      const t = this.d.store.template(name)?.value;
      if (!t || t.state !== "deleting") return;
      const waiting: string[] = [];
      for (const c of t.copies) {
        if (!this.d.isOnline(c.node)) {
          waiting.push(`${c.node} (offline)`);
          continue;
        }
        try {
          await this.d.agents.for(c.node).deleteTemplateImage({ template: { name, uid: t.uid, pool: c.pool } }, { timeoutMs: 60_000 });
          await this.update(name, (x) => Templates.withCopy(x, c.node, null));
        } catch (err) {
          waiting.push(`${c.node}: ${errorMessage(err)}`);
        }
      }
      if (waiting.length === 0) {
        await this.update(name, (x) => (x.copies.length === 0 ? null : undefined));
        if (!this.d.store.template(name)) this.d.log.info({ template: name }, "template deleted");
        return;
      }
      const message = `deleting; waiting for ${waiting.join("; ")}`;
      await this.update(name, (x) => (x.message === message ? undefined : { ...x, message }));
    });
  }

  /** Removes copies no replica on their node uses any more (never the home copy, never the last reachable one). */
  private async removeUnused(name: string): Promise<void> {
    await this.mutex.run(name, async () => {
      const t = this.d.store.template(name)?.value;
      if (!t) return;
      const specs = this.d.store.volumeSpecs().map((v) => v.value);
      for (const c of unusedCopies(t, specs, this.d.isOnline)) {
        if (!this.d.isOnline(c.node)) continue;
        try {
          await this.update(name, (x) => Templates.withCopy(x, c.node, { state: "deleting" }));
          await this.d.agents.for(c.node).deleteTemplateImage({ template: { name, uid: t.uid, pool: c.pool } }, { timeoutMs: 60_000 });
          await this.update(name, (x) => Templates.withCopy(x, c.node, null));
          this.d.log.info({ template: name, node: c.node }, "unused template copy removed");
        } catch (err) {
          this.d.log.warn({ template: name, node: c.node, err: errorMessage(err) }, "removing an unused template copy failed; will retry");
        }
      }
      // A copy left "copying" or "deleting" by a dead leader, on a node no clone uses: its files go too.
      const used = new Set(specs.filter((s) => s.template === name).flatMap((s) => [...s.placement, ...(s.removedReplicas ?? [])].map((p) => p.node)));
      for (const c of (this.d.store.template(name)?.value.copies ?? []).filter((x) => x.state !== "ready" && !used.has(x.node) && this.d.isOnline(x.node))) {
        try {
          await this.d.agents.for(c.node).deleteTemplateImage({ template: { name, uid: t.uid, pool: c.pool } }, { timeoutMs: 60_000 });
          await this.update(name, (x) => Templates.withCopy(x, c.node, null));
        } catch (err) {
          this.d.log.warn({ template: name, node: c.node, err: errorMessage(err) }, "removing a template copy failed; will retry");
        }
      }
    });
  }

  /** Finishes what a dead leader left, and removes copies nothing uses any more. */
  async sweep(): Promise<void> {
    if (this.sweeping) return;
    this.sweeping = true;
    try {
      for (const { value: t } of this.d.store.templates()) {
        try {
          if (t.state === "creating" && !this.creating.has(t.name)) await this.undo(t, "its creation was interrupted (controller restart)");
          else if (t.state === "deleting") await this.removeCopies(t.name);
          else if (t.state === "ready") await this.removeUnused(t.name);
        } catch (err) {
          this.d.log.warn({ template: t.name, err: errorMessage(err) }, "template sweep failed; will retry");
        }
      }
    } finally {
      this.sweeping = false;
    }
  }
}
