// Level-triggered reconciliation of volumes and nodes. Watches and API calls
// only enqueue names; each pass re-reads spec and status from the store and
// converges: creates or grows missing replicas, keeps each volume's replica set as
// asked (replica-keeper.ts: scaling, grace-period replacement, drains), copies
// out-of-sync replicas of detached volumes (detached-resync.ts) and new replicas of
// attached ones (attached-rebuild.ts, with the frontend), deletes the
// replicas of deleted volumes, removes orphaned images from nodes, and writes the
// derived status.
import type { Etcd3 } from "etcd3";
import { errorMessage } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import type { KeyedMutex } from "../lib/keyed-mutex.js";
import type { Logger } from "../lib/logger.js";
import type { AgentClients } from "./agents.js";
import type { ClusterView } from "./cluster-view.js";
import { formatToApi, preallocationToApi } from "./convert.js";
import { AttachedRebuild, awaitsAgentCopy } from "./attached-rebuild.js";
import { DetachedResync } from "./detached-resync.js";
import { activeExport } from "./transfer-api.js";
import { keys } from "./keys.js";
import type { FrontendStatus, ReplicaPlacement, ReplicaStatusRecord, VolumeSpec, VolumeStatus } from "./model.js";
import type { NodeRegistry } from "./nodes.js";
import { ReplicaKeeper } from "./replica-keeper.js";
import type { Change, ClusterStore } from "./store.js";
import { deriveVolumeStatus, statusChanged, withUnreachableSince } from "./volume-status.js";
import { WorkQueue } from "./work-queue.js";
import type { TemplateRef, Templates } from "./templates.js";


/**
 * How long after an unconfirmed detach another frontend may start: the frontend
 * lease (LEASE_MS in frontend/replica-set.ts, 6 s) plus a margin for requests in
 * flight and clock-rate differences.
 */
export const FENCE_MS = 10_000;

export interface ReconcilerDeps {
  etcd: Etcd3;
  store: ClusterStore;
  agents: AgentClients;
  registry: NodeRegistry;
  view: ClusterView;
  /** The placement lock shared with the volume API. */
  placing: KeyedMutex;
  log: Logger;
  /** Copies a linked clone's template to a node before a replica is made there (the leader's controller/templates.ts). */
  templates?: Pick<Templates, "ensureCopy">;
}

export interface ReconcilerOptions {
  /** Seconds between full passes over every volume and node. */
  resyncSec: number;
  concurrency: number;
  /** Bytes per second for copies that bring a replica back (0: unlimited). */
  copyRateBytes?: number;
  /** How long a replica may stay unreachable or failed before it is replaced elsewhere. */
  replicaGraceMs: number;
}

export class Reconciler {
  private readonly volumes: WorkQueue;
  private readonly nodes: WorkQueue;
  private resyncTimer?: NodeJS.Timeout;
  private readonly onChange = (c: Change) => this.changed(c);
  private readonly etcd: Etcd3;
  private readonly store: ClusterStore;
  private readonly agents: AgentClients;
  private readonly registry: NodeRegistry;
  private readonly log: Logger;
  readonly keeper: ReplicaKeeper;
  private readonly resync: DetachedResync;
  private readonly rebuild: AttachedRebuild;
  private readonly templates?: Pick<Templates, "ensureCopy">;

  constructor(
    deps: ReconcilerDeps,
    private readonly opts: ReconcilerOptions,
  ) {
    ({ etcd: this.etcd, store: this.store, agents: this.agents, registry: this.registry, log: this.log, templates: this.templates } = deps);
    this.keeper = new ReplicaKeeper({ ...deps, graceMs: opts.replicaGraceMs, log: deps.log.child({ part: "replicas" }) });
    this.resync = new DetachedResync({ store: deps.store, agents: deps.agents, log: deps.log, copyRateBytes: opts.copyRateBytes ?? 0 });
    this.rebuild = new AttachedRebuild({ store: deps.store, agents: deps.agents, log: deps.log, copyRateBytes: opts.copyRateBytes ?? 0, enqueue: (v) => this.volumes.add(v) });
    const onError = (what: string) => (id: string, err: unknown) =>
      this.log.warn({ [what]: id, err: errorMessage(err) }, `${what} reconcile failed; will retry`);
    this.volumes = new WorkQueue((n) => this.reconcileVolume(n), opts.concurrency, onError("volume"));
    this.nodes = new WorkQueue((n) => this.sweepNode(n), 2, onError("node"));
  }

  start(): void {
    this.volumes.start();
    this.nodes.start();
    this.store.on("change", this.onChange);
    this.resyncAll();
    this.resyncTimer = setInterval(() => this.resyncAll(), this.opts.resyncSec * 1000);
  }

  stop(): void {
    this.rebuild.stop();
    clearInterval(this.resyncTimer);
    this.store.off("change", this.onChange);
    this.volumes.stop();
    this.nodes.stop();
  }

  enqueueVolume(name: string): void {
    this.volumes.add(name);
  }

  /** After a node (re)registers: sweep its orphans and re-apply its replicas. */
  nodeRegistered(node: string): void {
    this.nodes.add(node);
    this.enqueueVolumesOn(node);
  }

  private resyncAll(): void {
    for (const { value } of this.store.volumeSpecs()) this.volumes.add(value.name);
    for (const { value } of this.store.operations()) this.volumes.add(value.volume);
    for (const { value } of this.store.nodeSpecs()) if (this.registry.isOnline(value.name)) this.nodes.add(value.name);
  }

  private changed(c: Change): void {
    if (c.kind === "volume-spec" || c.kind === "operation") this.volumes.add(c.name);
    // A node going online or offline changes its replicas' state; pool figures
    // refreshed by heartbeats do not.
    else if (c.kind === "node-status" && c.transition !== "updated") this.enqueueAfterNodeChange(c.name);
    // A drain starts or ends; and the rebuild brake depends on how many nodes exist.
    else if (c.kind === "node-spec") this.enqueueAfterNodeChange(c.name);
  }

  private enqueueVolumesOn(node: string): void {
    for (const { value } of this.store.volumeSpecs()) {
      if (value.placement.some((p) => p.node === node) || value.removedReplicas?.some((r) => r.node === node)) this.volumes.add(value.name);
    }
  }

  /** A node went online or offline, or its spec changed: its volumes, and every degraded one (the brake may have moved). */
  private enqueueAfterNodeChange(node: string): void {
    this.enqueueVolumesOn(node);
    for (const e of this.store.volumeSpecs()) {
      if (this.store.volumeStatus(e.value.name)?.value.phase === "degraded") this.volumes.add(e.value.name);
    }
  }

  /** One pass for one volume; returns a delay to run again, if not converged. */
  async reconcileVolume(name: string): Promise<number | void> {
    const specE = this.store.volumeSpec(name);
    const statusE = this.store.volumeStatus(name);
    const opE = this.store.operation(name);
    if (!specE) {
      // Leftovers of a volume that no longer exists.
      if (statusE || opE) await this.store.write({ delete: [keys.volumeStatus(name), keys.operation(name)] });
      return;
    }
    const spec = specE.value;
    if (spec.deleting) return this.reconcileDelete(spec, specE.modRevision, statusE?.value);

    const previous = new Map((statusE?.value.replicas ?? []).map((r) => [r.id, r]));
    const prevFrontends = statusE?.value.frontends ?? [];
    // Frontends of detached nodes stop first: they hold the exports open.
    const stopping = await this.stopFrontends(spec, prevFrontends);
    // Replicas are exported over NBD only while the volume is attached somewhere, or as
    // the source of a resync of a detached volume (the copy's target is never exported;
    // nor is a new replica of an attached one before its agent copied it).
    const attached = (spec.attachments ?? []).length > 0 || stopping.length > 0;
    // Nothing is copied while a revert rolls the in-sync replicas back (a copy would mix old and new).
    const resync = !attached && prevFrontends.length === 0 && !spec.reverting && spec.placement.some((p) => p.outOfSync);
    // And the replica `stowctl volume export` reads from, while its lease lasts.
    const exporting = activeExport(spec)?.replica;
    // And the in-sync replicas while a backup runs (its bitmaps and fleece live in their daemons).
    const backingUp = spec.backingUp !== undefined && spec.backingUp.untilMs > Date.now();
    const replicas = await Promise.all(
      spec.placement.map((p) =>
        this.ensureReplica(
          spec,
          p,
          previous.get(p.id),
          (attached && !awaitsAgentCopy(p)) || (resync && !p.outOfSync) || p.id === exporting || (backingUp && !p.outOfSync),
        ),
      ),
    );
    // A clone's replicas made from the snapshot exist: forget the source, so that an image lost
    // later is never made again from the (older) snapshot.
    if (spec.clone && Object.keys(spec.clone.sources).every((id) => replicas.some((r) => r.id === id && r.state === "healthy"))) {
      const { clone: _, ...rest } = spec;
      await this.store.write({ unchanged: [[keys.volumeSpec(name), specE.modRevision]], put: [{ key: keys.volumeSpec(name), value: rest }] });
      return 50;
    }
    const frontends = [...(await this.startFrontends(spec, replicas, prevFrontends, stopping)), ...stopping];
    const { status, operationDone } = deriveVolumeStatus(spec, replicas, opE?.value, frontends);
    // What the replica set should become (and why not, if it cannot), decided before the
    // status is written so that the status says it.
    const plan = this.keeper.plan(spec, replicas);
    const decision = this.keeper.decide(spec, plan);
    status.message = [status.message, ...plan.notes, ...decision.notes].filter(Boolean).join("; ");
    if (statusChanged(statusE?.value, status) || operationDone) {
      const value: VolumeStatus = { ...status, updatedAtMs: Date.now() };
      await this.store.write({
        unchanged: [[keys.volumeSpec(name), specE.modRevision]],
        put: [{ key: keys.volumeStatus(name), value }],
        delete: operationDone ? [keys.operation(name)] : [],
      });
      if (statusE?.value.phase !== status.phase) this.log.info({ volume: name, phase: status.phase }, "volume phase changed");
    }
    const changing = decision.changes.add.length > 0 || decision.changes.remove.length > 0;
    // A new spec brings a new pass through the watch; the agents hear of it there.
    if (changing && (await this.keeper.write(name, specE.modRevision, plan))) return;
    const removal = await this.keeper.deleteRemovedImages(name, specE.modRevision, attached || prevFrontends.length > 0);
    await this.keeper.dropStaleJobs(spec, specE.modRevision);
    const again = [removal, plan.recheckInMs];
    if (resync) again.push(await this.resync.run(spec, specE.modRevision, replicas));
    else if (attached) again.push(this.rebuild.run(spec, replicas, frontends));
    if (status.phase !== "healthy" || frontends.some((f) => f.state !== "attached")) again.push(2_000);
    // Closes the export once its lease ran out.
    if (exporting) again.push(Math.max(spec.exporting!.untilMs - Date.now(), 0) + 100);
    const soonest = Math.min(...again.filter((x): x is number => x !== undefined));
    if (Number.isFinite(soonest)) return Math.max(soonest, 50);
  }

  /**
   * Starts (or confirms) frontends on the nodes the volume is attached to. Never
   * while a frontend it was detached from elsewhere is not confirmed stopped and
   * may still serve: that one stops by itself when its lease runs out (it cannot
   * read the record, or reads that it was detached), so a new one starts only
   * FENCE_MS after the detach was first seen unconfirmed (a migration's destination
   * is exempt: its source is attached, not detached).
   */
  private async startFrontends(spec: VolumeSpec, replicas: ReplicaStatusRecord[], prev: FrontendStatus[], stopping: FrontendStatus[]): Promise<FrontendStatus[]> {
    const out: FrontendStatus[] = [];
    const before = new Map(prev.map((f) => [f.node, f]));
    const fencedUntil = Math.max(0, ...stopping.map((f) => (f.detachingSinceMs ?? 0) + FENCE_MS));
    for (const { node, migration } of spec.attachments ?? []) {
      const base: FrontendStatus = before.get(node) ?? { node, socketPath: "", nbdUri: "", state: "attaching", message: "" };
      if (!this.registry.isOnline(node)) {
        out.push({ ...base, message: `node ${node} is offline` });
        continue;
      }
      const wait = fencedUntil - Date.now();
      if (!migration && base.state !== "attached" && wait > 0) {
        const old = stopping.map((f) => f.node).join(", ");
        out.push({ ...base, state: "attaching", message: `waiting ${Math.ceil(wait / 1000)} s for the frontend on ${old} (not confirmed stopped) to lose its lease` });
        continue;
      }
      // Read preference: the attached node's own replica first. A replica recorded
      // out-of-sync misses acknowledged writes: never a backend until a resync.
      const outOfSync = new Set(spec.placement.filter((p) => p.outOfSync).map((p) => p.id));
      const backends = replicas
        .filter((r) => r.state === "healthy" && r.exportUri && !outOfSync.has(r.id))
        .sort((a, b) => Number(b.node === node) - Number(a.node === node))
        .map((r) => ({ replicaId: r.id, node: r.node, nbdUri: r.exportUri! }));
      if (backends.length === 0) {
        out.push({ ...base, state: "attaching", message: "waiting for a healthy exported replica" });
        continue;
      }
      try {
        const res = await this.agents.for(node).ensureFrontend({ volume: spec.name, backends, generation: spec.generation ?? 1 }, { timeoutMs: 30_000 });
        out.push({ node, socketPath: res.frontend!.socketPath, nbdUri: res.frontend!.nbdUri, state: "attached", message: "" });
      } catch (err) {
        out.push({ ...base, state: "failed", message: errorMessage(err) });
      }
    }
    return out;
  }

  /** Stops frontends on nodes the volume was detached from; returns those not stopped yet. */
  private async stopFrontends(spec: VolumeSpec, prev: FrontendStatus[]): Promise<FrontendStatus[]> {
    const wanted = new Set((spec.attachments ?? []).map((a) => a.node));
    const left: FrontendStatus[] = [];
    for (const f of prev) {
      if (wanted.has(f.node)) continue;
      const detachingSinceMs = f.detachingSinceMs ?? Date.now();
      if (!this.registry.isOnline(f.node)) {
        left.push({ ...f, state: "detaching", detachingSinceMs, message: `node ${f.node} is offline` });
        continue;
      }
      try {
        await this.agents.for(f.node).removeFrontend({ volume: spec.name }, { timeoutMs: 30_000 });
      } catch (err) {
        left.push({ ...f, state: "detaching", detachingSinceMs, message: errorMessage(err) });
      }
    }
    return left;
  }

  private async ensureReplica(
    spec: VolumeSpec,
    p: ReplicaPlacement,
    prev: ReplicaStatusRecord | undefined,
    exported: boolean,
  ): Promise<ReplicaStatusRecord> {
    return withUnreachableSince(await this.applyReplica(spec, p, prev, exported), prev, Date.now());
  }

  private async applyReplica(
    spec: VolumeSpec,
    p: ReplicaPlacement,
    prev: ReplicaStatusRecord | undefined,
    exported: boolean,
  ): Promise<ReplicaStatusRecord> {
    const base: ReplicaStatusRecord = prev ?? {
      id: p.id,
      node: p.node,
      pool: p.pool,
      path: "",
      state: "creating",
      virtualSizeBytes: 0,
      allocatedBytes: 0,
      message: "",
      nodeEpoch: 0,
    };
    const node = this.store.nodeSpec(p.node)?.value;
    if (!node || !this.registry.isOnline(p.node)) {
      return { ...base, state: "unreachable", message: `node ${p.node} is offline` };
    }
    // Already confirmed by this incarnation of the agent at the right size: nothing to do.
    if (
      prev &&
      prev.state === "healthy" &&
      prev.nodeEpoch === node.registeredAtMs &&
      prev.virtualSizeBytes >= spec.sizeBytes &&
      Boolean(prev.exportUri) === exported
    ) {
      return prev;
    }
    // A linked clone's replica is made over the template's copy on its node: that copy comes first.
    let backing: TemplateRef | undefined;
    if (spec.template) {
      try {
        if (!this.templates) throw new Error("no template worker");
        backing = await this.templates.ensureCopy(spec.template, p.node, p.pool);
      } catch (err) {
        return { ...base, state: base.state === "creating" ? "creating" : "failed", message: `template ${spec.template}: ${errorMessage(err)}` };
      }
    }
    const from = spec.clone?.sources[p.id];
    try {
      const res = await this.agents.for(p.node).ensureReplica(
        {
          id: p.id,
          volume: spec.name,
          pool: p.pool,
          sizeBytes: spec.sizeBytes,
          format: formatToApi[spec.format],
          preallocation: preallocationToApi[spec.preallocation],
          exported,
          source: from && { replicaId: from.replicaId, pool: from.pool, snapshotTag: spec.clone!.tag },
          // Used by the agent only if the image does not exist yet.
          backing,
        },
        // Made from a snapshot, the image is a copy of its data.
        { timeoutMs: from ? 3_600_000 : 120_000 },
      );
      const r = res.replica!;
      faultPoint("reconcile:replica-ensured", spec.name);
      return {
        ...base,
        path: r.path,
        state: "healthy",
        virtualSizeBytes: r.virtualSizeBytes,
        allocatedBytes: r.allocatedBytes,
        message: "",
        nodeEpoch: node.registeredAtMs,
        exportUri: r.export?.nbdUri || undefined,
      };
    } catch (err) {
      return { ...base, state: base.state === "healthy" ? "failed" : base.state === "creating" ? "creating" : "failed", message: errorMessage(err) };
    }
  }

  private async reconcileDelete(spec: VolumeSpec, specRevision: number, status: VolumeStatus | undefined): Promise<number | void> {
    let waiting = false;
    // Frontends still stopping after a detach go first: they hold the replicas' exports open.
    for (const f of status?.frontends ?? []) {
      if (!this.registry.isOnline(f.node)) continue;
      try {
        await this.agents.for(f.node).removeFrontend({ volume: spec.name }, { timeoutMs: 30_000 });
      } catch (err) {
        waiting = true;
        this.log.warn({ volume: spec.name, node: f.node, err: errorMessage(err) }, "frontend stop failed; will retry");
      }
    }
    // Replicas that left the volume earlier go too (their images may still be there).
    for (const p of [...spec.placement, ...(spec.removedReplicas ?? [])]) {
      // An offline node keeps its image until it returns; the node sweep removes it then.
      if (!this.registry.isOnline(p.node)) continue;
      try {
        await this.agents.for(p.node).deleteReplica({ id: p.id, pool: p.pool }, { timeoutMs: 60_000 });
      } catch (err) {
        waiting = true;
        this.log.warn({ volume: spec.name, replica: p.id, err: errorMessage(err) }, "replica delete failed; will retry");
      }
    }
    if (waiting) return 2_000;
    await this.store.write({
      unchanged: [[keys.volumeSpec(spec.name), specRevision]],
      delete: [
        keys.volumeSpec(spec.name),
        keys.volumeStatus(spec.name),
        keys.operation(spec.name),
        ...this.store.jobs().filter((j) => j.value.volume === spec.name).map((j) => keys.job(j.value.replica)),
      ],
    });
    this.log.info({ volume: spec.name, replicas: status?.replicas.length ?? 0 }, "volume deleted");
  }

  /**
   * Deletes replica images on a node that no volume spec places there. Replicas that
   * left a volume (removedReplicas) are the volume's own pass to delete: an attached
   * volume's frontend may hold one for a few seconds more.
   */
  async sweepNode(node: string): Promise<number | void> {
    if (!this.registry.isOnline(node)) return;
    const inventory = await this.agents.for(node).getInventory({}, { timeoutMs: 60_000 });
    const known = (v: VolumeSpec, id: string) => v.placement.some((p) => p.id === id) || (v.removedReplicas ?? []).some((r) => r.id === id);
    const wanted = new Set<string>();
    for (const { value } of this.store.volumeSpecs()) {
      for (const p of [...value.placement, ...(value.removedReplicas ?? [])]) if (p.node === node) wanted.add(p.id);
    }
    for (const r of inventory.replicas) {
      if (wanted.has(r.id)) continue;
      // The mirror may lag etcd by a moment: confirm with a direct read before deleting.
      const raw = await this.etcd.get(keys.volumeSpec(r.volume)).string();
      if (raw && known(JSON.parse(raw) as VolumeSpec, r.id)) continue;
      await this.agents.for(node).deleteReplica({ id: r.id, pool: r.pool }, { timeoutMs: 60_000 });
      this.log.info({ node, replica: r.id, volume: r.volume, path: r.path }, "deleted orphaned replica");
    }
    for (const f of inventory.frontends) {
      const spec = this.store.volumeSpec(f.volume)?.value;
      if (spec?.attachments?.some((a) => a.node === node)) continue;
      if (this.store.volumeStatus(f.volume)?.value.frontends?.some((x) => x.node === node)) continue; // the volume's own pass removes it
      await this.agents.for(node).removeFrontend({ volume: f.volume }, { timeoutMs: 30_000 });
      this.log.info({ node, volume: f.volume }, "stopped orphaned frontend");
    }
  }
}
