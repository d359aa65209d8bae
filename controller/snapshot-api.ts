// SnapshotService: snapshots (controller/snapshots.ts does the work), reverting
// a volume to one, and cloning a new volume from one.
import { randomUUID } from "node:crypto";
import type { SnapshotServiceService } from "../gen/stowage/v1/controller.js";
import { SnapshotState, type Snapshot } from "../gen/stowage/v1/types.js";
import { AlreadyExistsError, FailedPreconditionError, InsufficientCapacityError, InvalidArgumentError } from "../lib/errors.js";
import type { RequestHandlers } from "../lib/grpc.js";
import type { KeyedMutex } from "../lib/keyed-mutex.js";
import { validateName } from "../lib/names.js";
import type { ClusterView } from "./cluster-view.js";
import { volumeToApi } from "./convert.js";
import { keys } from "./keys.js";
import type { OperationRecord, ReplicaPlacement, SnapshotRecord, VolumeSpec, VolumeStatus } from "./model.js";
import { newReplicaId, placeReplicas } from "./placement-edits.js";
import { PLACEMENT_LOCK } from "./replica-keeper.js";
import { holders, snapshotRef, type Snapshots } from "./snapshots.js";
import type { ClusterStore } from "./store.js";
import { MAX_REPLICAS } from "./volume-api.js";

export interface SnapshotApiDeps {
  store: ClusterStore;
  view: ClusterView;
  placing: KeyedMutex;
  instance: string;
  ensureLeader: () => Promise<void>;
  enqueue: (volume: string) => void;
  isOnline: (node: string) => boolean;
  /** The leader's snapshot worker (absent on a follower: ensureLeader refuses first). */
  snapshots: () => Snapshots;
}

const STATES: Record<SnapshotRecord["state"], SnapshotState> = {
  creating: SnapshotState.SNAPSHOT_STATE_CREATING,
  ready: SnapshotState.SNAPSHOT_STATE_READY,
  deleting: SnapshotState.SNAPSHOT_STATE_DELETING,
};

/**
 * The API view of a snapshot. Only replicas the volume still has hold it: those
 * rebuilt or removed since are left out, and the message says so.
 */
export function snapshotToApi(s: SnapshotRecord, spec?: VolumeSpec): Snapshot {
  const kept = spec && s.state === "ready" ? new Set(holders(s, spec).map((p) => p.id)) : undefined;
  const replicas = kept ? s.replicas.filter((r) => kept.has(r.id)) : s.replicas;
  const gone = s.replicas.length - replicas.length;
  const message = [s.message, gone > 0 ? `${gone} of the replicas that held it were replaced since` : ""].filter(Boolean).join("; ");
  return {
    volume: s.volume,
    name: s.name,
    state: STATES[s.state],
    createdAtMs: s.createdAtMs,
    sizeBytes: s.sizeBytes,
    replicaIds: replicas.map((r) => r.id),
    nodes: replicas.map((r) => r.node),
    message,
    attached: Boolean(s.attachedTo),
    heldMs: s.heldMs,
  };
}

export function snapshotApi(d: SnapshotApiDeps): RequestHandlers<typeof SnapshotServiceService> {
  return {
    async createSnapshot(req) {
      await d.ensureLeader();
      const r = await d.snapshots().create(req.volume, req.name);
      return { snapshot: snapshotToApi(r.snapshot, d.store.volumeSpec(req.volume)?.value), created: r.created };
    },

    async getSnapshot(req) {
      await d.ensureLeader();
      return { snapshot: snapshotToApi(d.snapshots().get(req.volume, req.name), d.store.volumeSpec(req.volume)?.value) };
    },

    async listSnapshots(req) {
      await d.ensureLeader();
      if (req.volume) validateName("volume", req.volume);
      const all = req.volume ? d.store.snapshotsOf(req.volume) : d.store.snapshots();
      const snapshots = all
        .map((e) => e.value)
        .sort((a, b) => a.volume.localeCompare(b.volume) || a.createdAtMs - b.createdAtMs)
        .map((s) => snapshotToApi(s, d.store.volumeSpec(s.volume)?.value));
      return { snapshots };
    },

    async deleteSnapshot(req) {
      await d.ensureLeader();
      return { deleted: await d.snapshots().delete(req.volume, req.name) };
    },

    async revertVolume(req) {
      await d.ensureLeader();
      const reverted = await d.snapshots().revert(req.volume, req.snapshot);
      d.enqueue(req.volume);
      const spec = d.store.volumeSpec(req.volume)!.value;
      return { volume: volumeToApi(spec, d.store.volumeStatus(req.volume)?.value), revertedReplicaIds: reverted };
    },

    async cloneVolume(req) {
      await d.ensureLeader();
      const snap = d.snapshots().get(req.volume, req.snapshot);
      const ref = snapshotRef(req.volume, req.snapshot);
      validateName("volume", req.name);
      if (snap.state !== "ready") throw new FailedPreconditionError(`snapshot ${ref} is ${snap.state === "creating" ? "being taken" : "being deleted"}`);
      if (req.replicas > MAX_REPLICAS) throw new InvalidArgumentError(`invalid replica count ${req.replicas}`, { hint: `use 1 to ${MAX_REPLICAS}` });
      return d.placing.run(PLACEMENT_LOCK, async () => {
        const prev = d.store.volumeSpec(req.name)?.value;
        if (prev) {
          if (!prev.deleting && prev.clone?.volume === req.volume && prev.clone.snapshot === req.snapshot) {
            return { volume: volumeToApi(prev, d.store.volumeStatus(req.name)?.value) };
          }
          throw new AlreadyExistsError("volume", req.name);
        }
        const source = d.store.volumeSpec(req.volume)!.value;
        const from = holders(snap, source).filter((p) => d.isOnline(p.node));
        if (from.length === 0) {
          throw new FailedPreconditionError(`no replica holding ${ref} is online`, {
            hint: holders(snap, source).length > 0 ? `bring back ${holders(snap, source).map((p) => p.node).join(" or ")}` : "the replicas that held it were replaced since",
          });
        }
        const count = req.replicas || source.replicas;
        const made = from.slice(0, count).map((h) => ({ source: h, replica: { id: newReplicaId(), node: h.node, pool: h.pool } as ReplicaPlacement }));
        const spec: VolumeSpec = {
          name: req.name,
          uid: randomUUID(),
          sizeBytes: snap.sizeBytes,
          replicas: count,
          format: "qcow2",
          preallocation: "off",
          pool: source.pool,
          createdAtMs: Date.now(),
          deleting: false,
          placement: made.map((m) => m.replica),
          generation: 1,
          clone: {
            volume: req.volume,
            snapshot: req.snapshot,
            tag: snap.tag,
            sources: Object.fromEntries(made.map((m) => [m.replica.id, { replicaId: m.source.id, pool: m.source.pool }])),
          },
        };
        // More replicas than nodes holding the snapshot: the rest are copied from those.
        const extra = placeReplicas(spec, count - made.length, d.view.snapshot());
        if (extra.placement.length < count - made.length) {
          throw new InsufficientCapacityError(`cannot place ${count} replicas of ${req.name}: ${extra.reason ?? "no room"}`, {
            hint: `ask for fewer (--replicas ${made.length + extra.placement.length}), or add nodes or space`,
            rejections: extra.rejections,
            neededBytes: snap.sizeBytes,
          });
        }
        const now = Date.now();
        for (const p of extra.placement) {
          spec.placement.push({ id: newReplicaId(), node: p.node, pool: p.pool, outOfSync: { sinceMs: now, reason: `new replica of a clone of ${ref}`, generation: 1 } });
        }
        const status: VolumeStatus = { phase: "creating", message: "", replicas: [], updatedAtMs: now };
        const op: OperationRecord = { id: randomUUID(), kind: "create-volume", volume: req.name, startedAtMs: now, startedBy: d.instance };
        await d.store.write({
          absent: [keys.volumeSpec(req.name), keys.operation(req.name)],
          put: [
            { key: keys.volumeSpec(req.name), value: spec },
            { key: keys.volumeStatus(req.name), value: status },
            { key: keys.operation(req.name), value: op },
          ],
        });
        d.enqueue(req.name);
        return { volume: volumeToApi(spec, status) };
      });
    },
  };
}
