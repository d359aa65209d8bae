// Keeps each volume's replica set as asked: runs the pure plan (replica-plan.ts),
// places new replicas with the scheduler and writes the placement change with one
// compare-and-swap on the spec before any agent hears of it; then, in later passes,
// deletes the images of replicas that left and the job records nobody needs. The
// reconciler calls it once per volume pass; everything it knows comes from etcd.
import { ConflictError, errorMessage } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import type { KeyedMutex } from "../lib/keyed-mutex.js";
import type { Logger } from "../lib/logger.js";
import type { AgentClients } from "./agents.js";
import type { ClusterView } from "./cluster-view.js";
import { keys } from "./keys.js";
import type { ReplicaStatusRecord, VolumeSpec } from "./model.js";
import type { NodeRegistry } from "./nodes.js";
import { placeReplicas, withPlacementChanges, type PlacementChanges } from "./placement-edits.js";
import { planReplicas, rebuildBrake, type Brake, type NodeFacts, type ObservedReplica, type ReplicaPlan } from "./replica-plan.js";
import type { ClusterStore } from "./store.js";
import { templateCopyNodes } from "./template-rules.js";

/**
 * A removed replica of an attached volume keeps its image this long: its frontend
 * drops it at its next read of the sync state (every 2 s) and must not find it gone
 * before.
 */
export const REMOVAL_DELAY_MS = 10_000;

/** The one lock under which placements are decided and written (creates, scaling, replacements, drains). */
export const PLACEMENT_LOCK = "placement";

export interface KeeperDeps {
  store: ClusterStore;
  view: ClusterView;
  registry: NodeRegistry;
  agents: AgentClients;
  /** Shared with the volume API: two placements never count the same free space. */
  placing: KeyedMutex;
  graceMs: number;
  log: Logger;
}

export interface Decision {
  changes: PlacementChanges;
  notes: string[];
}

export class ReplicaKeeper {
  constructor(private readonly d: KeeperDeps) {}

  brake(): Brake {
    return rebuildBrake(this.d.store.nodeSpecs().map((e) => ({ online: this.d.registry.isOnline(e.value.name) })));
  }

  private nodeFacts(): Map<string, NodeFacts> {
    return new Map(this.d.store.nodeSpecs().map(({ value: n }) => [n.name, { online: this.d.registry.isOnline(n.name), draining: n.drain !== undefined }]));
  }

  plan(spec: VolumeSpec, replicas: ReplicaStatusRecord[], now = Date.now()): ReplicaPlan {
    const observed = new Map<string, ObservedReplica>(replicas.map((r) => [r.id, { state: r.state, unreachableSinceMs: r.unreachableSinceMs }]));
    return planReplicas({ spec, observed, nodes: this.nodeFacts(), now, graceMs: this.d.graceMs, brake: this.brake() });
  }

  /** Where the plan's new replicas would go against the current snapshot, and what cannot be done. */
  decide(spec: VolumeSpec, plan: ReplicaPlan): Decision {
    const notes: string[] = [];
    const add: PlacementChanges["add"] = [];
    const remove = [...plan.remove];
    if (plan.add.length > 0) {
      // A linked clone's new replicas go where its template is already, when spreading allows.
      const prefer = spec.template ? templateCopyNodes(this.d.store.template(spec.template)?.value) : [];
      const placed = placeReplicas(spec, plan.add.length, this.d.view.snapshot(), [], prefer);
      plan.add.forEach((a, i) => {
        const at = placed.placement[i];
        if (at) {
          add.push({ node: at.node, pool: at.pool });
          if (a.replaces) remove.push(a.replaces);
        } else {
          notes.push(`no node can take a new replica (${a.reason}): ${placed.reason ?? "no eligible node"}`);
        }
      });
    }
    return { changes: { add, remove }, notes };
  }

  /**
   * Writes the plan (placed again under the placement lock, against the snapshot of
   * that moment) if the spec is still at `revision`. Returns true when it wrote.
   */
  async write(name: string, revision: number, plan: ReplicaPlan): Promise<boolean> {
    return this.d.placing.run(PLACEMENT_LOCK, async () => {
      const cur = this.d.store.volumeSpec(name);
      if (!cur || cur.modRevision !== revision || cur.value.deleting) return false;
      const { changes } = this.decide(cur.value, plan);
      const next = withPlacementChanges(cur.value, changes, Date.now());
      if (next === cur.value) return false;
      try {
        await this.d.store.write({
          unchanged: [[keys.volumeSpec(name), revision]],
          put: [{ key: keys.volumeSpec(name), value: next }],
          delete: changes.remove.map((r) => keys.job(r.id)),
        });
      } catch (err) {
        if (err instanceof ConflictError) return false;
        throw err;
      }
      const before = new Set(cur.value.placement.map((p) => p.id));
      const added = next.placement.filter((p) => !before.has(p.id));
      this.d.log.info(
        {
          volume: name,
          generation: next.generation,
          added: added.map((p) => `${p.id}@${p.node}`),
          removed: changes.remove.map((r) => `${r.id}: ${r.reason}`),
        },
        "replica set changed",
      );
      faultPoint("replicas:recorded", name);
      return true;
    });
  }

  /**
   * Deletes the images of replicas that left the volume, on nodes that are online,
   * then forgets them. Returns a delay when some must wait (REMOVAL_DELAY_MS).
   */
  async deleteRemovedImages(name: string, revision: number, attached: boolean, now = Date.now()): Promise<number | undefined> {
    const spec = this.d.store.volumeSpec(name)?.value;
    let recheck: number | undefined;
    const done: string[] = [];
    for (const r of spec?.removedReplicas ?? []) {
      if (!this.d.registry.isOnline(r.node)) continue; // its registration brings the volume back here
      const wait = r.removedAtMs + REMOVAL_DELAY_MS - now;
      if (attached && wait > 0) {
        recheck = Math.min(recheck ?? Infinity, wait);
        continue;
      }
      try {
        await this.d.agents.for(r.node).deleteReplica({ id: r.id, pool: r.pool }, { timeoutMs: 60_000 });
        done.push(r.id);
        this.d.log.info({ volume: name, replica: r.id, node: r.node, reason: r.reason }, "deleted the image of a removed replica");
      } catch (err) {
        this.d.log.warn({ volume: name, replica: r.id, node: r.node, err: errorMessage(err) }, "deleting a removed replica's image failed; will retry");
        recheck = Math.min(recheck ?? Infinity, 5_000);
      }
    }
    if (done.length > 0) {
      const cur = this.d.store.volumeSpec(name);
      if (cur && cur.modRevision === revision) {
        const next: VolumeSpec = { ...cur.value, removedReplicas: cur.value.removedReplicas!.filter((r) => !done.includes(r.id)) };
        if (next.removedReplicas!.length === 0) delete next.removedReplicas;
        await this.d.store
          .write({ unchanged: [[keys.volumeSpec(name), revision]], put: [{ key: keys.volumeSpec(name), value: next }] })
          .catch((err) => {
            if (!(err instanceof ConflictError)) throw err;
          });
      }
      recheck = Math.min(recheck ?? Infinity, 100);
    }
    return recheck;
  }

  /** Deletes job records of the volume whose replica is in sync again or gone (a copier that died, for instance). */
  async dropStaleJobs(spec: VolumeSpec, revision: number): Promise<void> {
    const outOfSync = new Set(spec.placement.filter((p) => p.outOfSync).map((p) => p.id));
    const stale = this.d.store
      .jobs()
      .filter((j) => j.value.volume === spec.name && !outOfSync.has(j.value.replica))
      .map((j) => keys.job(j.value.replica));
    if (stale.length === 0) return;
    await this.d.store.write({ unchanged: [[keys.volumeSpec(spec.name), revision]], delete: stale }).catch((err) => {
      if (!(err instanceof ConflictError)) throw err;
    });
  }
}
