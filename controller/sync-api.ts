// ReplicaSyncService: the durable record of which replicas of a volume hold
// every acknowledged write. Frontends call it: MarkOutOfSync before they
// acknowledge a write a replica failed, MarkInSync after a resync. Each change
// is one compare-and-swap on the volume spec and bumps the volume's generation.
// TrackReplica records which dirty map tracks a new replica of an attached volume
// while its agent copies it (attached-rebuild.ts); it changes no generation.
import type { ReplicaSyncServiceService, SyncState } from "../gen/stowage/v1/controller.js";
import { ConflictError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../lib/errors.js";
import type { RequestHandlers } from "../lib/grpc.js";
import { validateName } from "../lib/names.js";
import { keys } from "./keys.js";
import { awaitsAgentCopy } from "./attached-rebuild.js";
import type { JobRecord, ResyncKind, VolumeSpec, VolumeStatus } from "./model.js";
import type { ClusterStore } from "./store.js";

export interface SyncApiDeps {
  store: ClusterStore;
  ensureLeader: () => Promise<void>;
  enqueue: (volume: string) => void;
  /** Limit for copies frontends run (bytes/s, 0: none). */
  copyRateBytes?: number;
}

export function generationOf(spec: VolumeSpec): number {
  return spec.generation ?? 1;
}

export function syncState(spec: VolumeSpec, status?: VolumeStatus, copyRateBytes = 0): SyncState {
  const exported = new Map((status?.replicas ?? []).filter((r) => r.state === "healthy" && r.exportUri).map((r) => [r.id, r.exportUri!]));
  const attached = (spec.attachments ?? []).length > 0;
  return {
    volume: spec.name,
    generation: generationOf(spec),
    inSync: spec.placement.filter((p) => !p.outOfSync).map((p) => p.id),
    outOfSync: spec.placement.filter((p) => p.outOfSync).map((p) => p.id),
    replicas: spec.placement.map((p) => ({
      id: p.id,
      node: p.node,
      nbdUri: exported.get(p.id) ?? "",
      inSync: !p.outOfSync,
      outOfSyncGeneration: p.outOfSync?.generation ?? 0,
      agentCopy: attached && awaitsAgentCopy(p),
      trackingToken: p.outOfSync?.agentCopy?.token ?? "",
    })),
    copyRateBytes,
    attachedNodes: (spec.attachments ?? []).map((a) => a.node),
  };
}

/** The spec with replica `id` recorded in-sync again (a new generation), with what the copy did. */
export function withReplicaInSync(spec: VolumeSpec, id: string, copy?: { kind: ResyncKind; bytes: number; ms: number }): VolumeSpec {
  return {
    ...spec,
    generation: generationOf(spec) + 1,
    placement: spec.placement.map((x) =>
      x.id === id ? { id: x.id, node: x.node, pool: x.pool, ...(copy ? { lastResync: { atMs: Date.now(), ...copy } } : x.lastResync ? { lastResync: x.lastResync } : {}) } : x,
    ),
  };
}

const KINDS: readonly ResyncKind[] = ["incremental", "full"];
const kindOf = (kind: string): ResyncKind => {
  if (!(KINDS as string[]).includes(kind)) throw new InvalidArgumentError(`unknown copy kind "${kind}"`, { hint: `one of ${KINDS.join(", ")}` });
  return kind as ResyncKind;
};

const ATTEMPTS = 5;

export function syncApi(d: SyncApiDeps): RequestHandlers<typeof ReplicaSyncServiceService> {
  const existing = (name: string) => {
    validateName("volume", name);
    const e = d.store.volumeSpec(name);
    if (!e) throw new NotFoundError("volume", name);
    return e;
  };

  /**
   * Applies `change` to the current spec with compare-and-swap, retrying when the spec
   * moved meanwhile; `alsoDelete` keys go in the same transaction.
   */
  const update = async (name: string, change: (spec: VolumeSpec) => VolumeSpec | undefined, alsoDelete: string[] = []): Promise<VolumeSpec> => {
    for (let attempt = 1; ; attempt++) {
      const e = existing(name);
      const next = change(e.value);
      if (!next) return e.value;
      try {
        await d.store.write({ unchanged: [[keys.volumeSpec(name), e.modRevision]], put: [{ key: keys.volumeSpec(name), value: next }], delete: alsoDelete });
        d.enqueue(name);
        return next;
      } catch (err) {
        if (!(err instanceof ConflictError) || attempt === ATTEMPTS) throw err;
      }
    }
  };

  const replica = (spec: VolumeSpec, id: string) => {
    const p = spec.placement.find((x) => x.id === id);
    if (!p) throw new NotFoundError("replica", id, { hint: `volume ${spec.name} has replicas ${spec.placement.map((x) => x.id).join(", ")}` });
    return p;
  };

  return {
    async getSyncState(req) {
      await d.ensureLeader();
      return { state: syncState(existing(req.volume).value, d.store.volumeStatus(req.volume)?.value, d.copyRateBytes) };
    },

    async markOutOfSync(req) {
      await d.ensureLeader();
      const spec = await update(req.volume, (s) => {
        const p = replica(s, req.replicaId);
        if (p.outOfSync) return undefined; // already recorded: idempotent
        // Inside a live-migration window two frontends serve the volume; the other one could
        // still read the replica this one wants to drop. So no replica is dropped then: the
        // write fails instead, as it would with a single frontend and no record.
        const migrating = (s.attachments ?? []).find((a) => a.migration);
        if (migrating) {
          throw new FailedPreconditionError(`volume ${s.name} is in the live migration of domain ${migrating.migration}; no replica is dropped until it ends`, {
            hint: "the write fails instead; retry after the migration",
          });
        }
        const others = s.placement.filter((x) => x.id !== p.id && !x.outOfSync);
        if (others.length === 0) {
          throw new FailedPreconditionError(`replica ${p.id} is the last in-sync replica of volume ${s.name}`, {
            hint: "the write fails instead; the replica keeps every acknowledged write",
          });
        }
        const generation = generationOf(s) + 1;
        return {
          ...s,
          generation,
          placement: s.placement.map((x) => (x.id === p.id ? { ...x, outOfSync: { sinceMs: Date.now(), reason: req.reason.slice(0, 500), generation } } : x)),
        };
      });
      return { state: syncState(spec, d.store.volumeStatus(req.volume)?.value, d.copyRateBytes) };
    },

    async markInSync(req) {
      await d.ensureLeader();
      if (!Number.isSafeInteger(req.generation) || req.generation <= 0) {
        throw new InvalidArgumentError(`invalid generation ${req.generation}`, { hint: "pass the generation the resync started from" });
      }
      const spec = await update(req.volume, (s) => {
        const p = replica(s, req.replicaId);
        if (!p.outOfSync) return undefined;
        // Inside a live-migration window the other frontend may write without this replica,
        // so a copy made by one frontend does not bring it in sync.
        const migrating = (s.attachments ?? []).find((a) => a.migration);
        if (migrating) {
          throw new FailedPreconditionError(`volume ${s.name} is in the live migration of domain ${migrating.migration}; replica ${p.id} stays out of sync until it ends`, {
            hint: "resync it again after the migration",
          });
        }
        // Marked out-of-sync again after the resync started: that resync does not cover the new gap.
        if (p.outOfSync.generation > req.generation) {
          throw new FailedPreconditionError(`replica ${p.id} was marked out-of-sync again at generation ${p.outOfSync.generation}, after this resync started (${req.generation})`, {
            hint: "resync it again",
          });
        }
        // After an agent copy the frontend copied only what was written meanwhile: the record shows both as one rebuild.
        const agent = p.outOfSync.agentCopy?.copied;
        const copy = agent
          ? { kind: "full" as const, bytes: agent.bytes + req.copiedBytes, ms: Date.now() - agent.startedAtMs }
          : req.kind
            ? { kind: kindOf(req.kind), bytes: req.copiedBytes, ms: req.durationMs }
            : undefined;
        return withReplicaInSync(s, p.id, copy);
      }, [keys.job(req.replicaId)]);
      return { state: syncState(spec, d.store.volumeStatus(req.volume)?.value, d.copyRateBytes) };
    },

    async trackReplica(req) {
      await d.ensureLeader();
      if (!/^[0-9a-z-]{1,32}$/.test(req.token)) throw new InvalidArgumentError(`invalid tracking token ${JSON.stringify(req.token)}`);
      const spec = await update(req.volume, (s) => {
        const p = replica(s, req.replicaId);
        if (!p.outOfSync || !awaitsAgentCopy(p)) {
          throw new FailedPreconditionError(`replica ${p.id} of volume ${s.name} waits for no agent copy`, { hint: "it is in sync, or copied by a frontend" });
        }
        if (p.outOfSync.generation !== req.generation) {
          throw new FailedPreconditionError(`replica ${p.id} was recorded out-of-sync at generation ${p.outOfSync.generation}, not ${req.generation}`, { hint: "read the sync state again" });
        }
        const migrating = (s.attachments ?? []).find((a) => a.migration);
        if (migrating) {
          throw new FailedPreconditionError(`volume ${s.name} is in the live migration of domain ${migrating.migration}; replica ${p.id} is copied after it ends`, { hint: "report again after the migration" });
        }
        const cur = p.outOfSync.agentCopy;
        if (cur?.token === req.token && cur.node === req.node) return undefined; // recorded already: idempotent
        const agentCopy = { token: req.token, node: req.node, sinceMs: Date.now() };
        return { ...s, placement: s.placement.map((x) => (x.id === p.id ? { ...x, outOfSync: { ...x.outOfSync!, agentCopy } } : x)) };
      });
      return { state: syncState(spec, d.store.volumeStatus(req.volume)?.value, d.copyRateBytes) };
    },

    async reportResync(req) {
      await d.ensureLeader();
      const spec = existing(req.volume).value;
      const p = replica(spec, req.replicaId);
      if (!p.outOfSync) return {}; // recorded in-sync meanwhile: the job is over
      const job: JobRecord = {
        replica: p.id,
        volume: spec.name,
        kind: kindOf(req.kind),
        node: p.node,
        runner: req.runner,
        totalBytes: req.totalBytes,
        copiedBytes: Math.min(req.copiedBytes, req.totalBytes),
        bytesPerSec: req.bytesPerSec,
        startedAtMs: req.startedAtMs,
        updatedAtMs: Date.now(),
        message: "",
      };
      await d.store.write({ put: [{ key: keys.job(p.id), value: job }] });
      return {};
    },
  };
}
