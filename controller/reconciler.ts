// Level-triggered reconciliation of volumes and nodes. Watches and API calls
// only enqueue names; each pass re-reads spec and status from the store and
// converges: creates or grows missing replicas, deletes the replicas of deleted
// volumes, removes orphaned images from nodes, and writes the derived status.
import type { Etcd3 } from "etcd3";
import { ConflictError, errorMessage } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import type { Logger } from "../lib/logger.js";
import type { AgentClients } from "./agents.js";
import { formatToApi, preallocationToApi } from "./convert.js";
import { keys } from "./keys.js";
import type { FrontendStatus, ReplicaPlacement, ReplicaStatusRecord, VolumeSpec, VolumeStatus } from "./model.js";
import type { NodeRegistry } from "./nodes.js";
import type { Change, ClusterStore } from "./store.js";
import { withReplicaInSync } from "./sync-api.js";
import { deriveVolumeStatus, statusChanged } from "./volume-status.js";
import { WorkQueue } from "./work-queue.js";


export interface ReconcilerOptions {
  /** Seconds between full passes over every volume and node. */
  resyncSec: number;
  concurrency: number;
  /** Bytes per second for copies that bring a replica back (0: unlimited). */
  copyRateBytes?: number;
}

export class Reconciler {
  private readonly volumes: WorkQueue;
  private readonly nodes: WorkQueue;
  private resyncTimer?: NodeJS.Timeout;
  private readonly onChange = (c: Change) => this.changed(c);

  constructor(
    private readonly etcd: Etcd3,
    private readonly store: ClusterStore,
    private readonly agents: AgentClients,
    private readonly registry: NodeRegistry,
    private readonly opts: ReconcilerOptions,
    private readonly log: Logger,
  ) {
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
    else if (c.kind === "node-status" && c.transition !== "updated") this.enqueueVolumesOn(c.name);
  }

  private enqueueVolumesOn(node: string): void {
    for (const { value } of this.store.volumeSpecs()) {
      if (value.placement.some((p) => p.node === node)) this.volumes.add(value.name);
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
    // the source of a resync of a detached volume (the copy's target is never exported).
    const attached = (spec.attachments ?? []).length > 0 || stopping.length > 0;
    const resync = !attached && prevFrontends.length === 0 && spec.placement.some((p) => p.outOfSync);
    const replicas = await Promise.all(
      spec.placement.map((p) => this.ensureReplica(spec, p, previous.get(p.id), attached || (resync && !p.outOfSync))),
    );
    const frontends = [...(await this.startFrontends(spec, replicas, prevFrontends)), ...stopping];
    const { status, operationDone } = deriveVolumeStatus(spec, replicas, opE?.value, frontends);
    if (statusChanged(statusE?.value, status) || operationDone) {
      const value: VolumeStatus = { ...status, updatedAtMs: Date.now() };
      await this.store.write({
        unchanged: [[keys.volumeSpec(name), specE.modRevision]],
        put: [{ key: keys.volumeStatus(name), value }],
        delete: operationDone ? [keys.operation(name)] : [],
      });
      if (statusE?.value.phase !== status.phase) this.log.info({ volume: name, phase: status.phase }, "volume phase changed");
    }
    if (resync) return this.resyncDetached(spec, specE.modRevision, replicas);
    if (status.phase !== "healthy" || frontends.some((f) => f.state !== "attached")) return 2_000;
  }

  /**
   * Brings the out-of-sync replicas of a DETACHED volume back: a full copy from an
   * in-sync replica's export, then the in-sync record. The record is written only
   * if the spec did not change during the copy: an attach meanwhile means a writer
   * the copy may have missed, so the next pass copies again.
   */
  private async resyncDetached(spec: VolumeSpec, specRevision: number, replicas: ReplicaStatusRecord[]): Promise<number> {
    const outOfSync = new Set(spec.placement.filter((p) => p.outOfSync).map((p) => p.id));
    const source = replicas.find((r) => r.state === "healthy" && r.exportUri && !outOfSync.has(r.id));
    if (!source) return 5_000;
    for (const p of spec.placement.filter((x) => x.outOfSync)) {
      const target = replicas.find((r) => r.id === p.id);
      if (target?.state !== "healthy" || target.exportUri) continue;
      this.log.info({ volume: spec.name, replica: p.id, source: source.id }, "resync of a detached volume: copying from an in-sync replica");
      let res;
      try {
        res = await this.agents.for(p.node).copyReplica(
          { id: p.id, pool: p.pool, sourceNbdUri: source.exportUri!, rateLimitBytes: this.opts.copyRateBytes ?? 0 },
          { timeoutMs: 24 * 3600_000 },
        );
      } catch (err) {
        this.log.warn({ volume: spec.name, replica: p.id, err: errorMessage(err) }, "resync copy failed; will retry");
        return 10_000;
      }
      const cur = this.store.volumeSpec(spec.name);
      if (!cur || cur.modRevision !== specRevision) return 500; // changed meanwhile: judge again
      const next = withReplicaInSync(cur.value, p.id, { kind: "full", bytes: res.bytes, ms: res.durationMs });
      try {
        specRevision = await this.store.write({
          unchanged: [[keys.volumeSpec(spec.name), specRevision]],
          put: [{ key: keys.volumeSpec(spec.name), value: next }],
          delete: [keys.job(p.id)],
        });
      } catch (err) {
        if (err instanceof ConflictError) return 500;
        throw err;
      }
      this.log.info({ volume: spec.name, replica: p.id, bytes: res.bytes, ms: res.durationMs, generation: next.generation }, "replica resynced; recorded in-sync");
    }
    return 500;
  }

  /** Starts (or confirms) frontends on the nodes the volume is attached to. */
  private async startFrontends(spec: VolumeSpec, replicas: ReplicaStatusRecord[], prev: FrontendStatus[]): Promise<FrontendStatus[]> {
    const out: FrontendStatus[] = [];
    const before = new Map(prev.map((f) => [f.node, f]));
    for (const { node } of spec.attachments ?? []) {
      const base: FrontendStatus = before.get(node) ?? { node, socketPath: "", nbdUri: "", state: "attaching", message: "" };
      if (!this.registry.isOnline(node)) {
        out.push({ ...base, message: `node ${node} is offline` });
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
      if (!this.registry.isOnline(f.node)) {
        left.push({ ...f, state: "detaching", message: `node ${f.node} is offline` });
        continue;
      }
      try {
        await this.agents.for(f.node).removeFrontend({ volume: spec.name }, { timeoutMs: 30_000 });
      } catch (err) {
        left.push({ ...f, state: "detaching", message: errorMessage(err) });
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
        },
        { timeoutMs: 120_000 },
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
    for (const p of spec.placement) {
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
      delete: [keys.volumeSpec(spec.name), keys.volumeStatus(spec.name), keys.operation(spec.name)],
    });
    this.log.info({ volume: spec.name, replicas: status?.replicas.length ?? 0 }, "volume deleted");
  }

  /** Deletes replica images on a node that no volume spec places there. */
  async sweepNode(node: string): Promise<number | void> {
    if (!this.registry.isOnline(node)) return;
    const inventory = await this.agents.for(node).getInventory({}, { timeoutMs: 60_000 });
    const wanted = new Set<string>();
    for (const { value } of this.store.volumeSpecs()) {
      for (const p of value.placement) if (p.node === node) wanted.add(p.id);
    }
    for (const r of inventory.replicas) {
      if (wanted.has(r.id)) continue;
      // The mirror may lag etcd by a moment: confirm with a direct read before deleting.
      const raw = await this.etcd.get(keys.volumeSpec(r.volume)).string();
      if (raw && (JSON.parse(raw) as VolumeSpec).placement.some((p) => p.id === r.id)) continue;
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
