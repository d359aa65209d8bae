// VolumeService: validates requests, places replicas, and records the desired
// state (and the operation) in etcd before any agent is called. The reconciler
// does the rest, so a crash after any line leaves work the next leader finishes.
import { randomUUID } from "node:crypto";
import type { RemovedReplica, VolumeServiceService } from "../gen/stowage/v1/controller.js";
import type { Job, VolumeSpec as ApiVolumeSpec } from "../gen/stowage/v1/types.js";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InsufficientCapacityError,
  InvalidArgumentError,
  NotFoundError,
} from "../lib/errors.js";
import type { RequestHandlers } from "../lib/grpc.js";
import { validateName } from "../lib/names.js";
import { faultPoint } from "../lib/faults.js";
import type { KeyedMutex } from "../lib/keyed-mutex.js";
import { formatSize } from "../lib/sizes.js";
import type { ClusterView } from "./cluster-view.js";
import { formatFromApi, preallocationFromApi, volumeToApi } from "./convert.js";
import { jobsOf } from "./job-api.js";
import { keys } from "./keys.js";
import type { OperationRecord, VolumeSpec, VolumeStatus } from "./model.js";
import { isThin, newReplicaId, placeReplicas, withPlacementChanges } from "./placement-edits.js";
import { PLACEMENT_LOCK } from "./replica-keeper.js";
import { activeExport } from "./transfer-api.js";
import { planReplicas, rebuildBrake, type ObservedReplica } from "./replica-plan.js";
import { DEFAULT_OVERCOMMIT_RATIO, place } from "./scheduler.js";
import type { ClusterStore } from "./store.js";
import { checkLinkedClone, templateCopyNodes } from "./template-rules.js";

export const MAX_REPLICAS = 5;
export const DEFAULT_REPLICAS = 2;
const MAX_SIZE = 2 ** 50; // 1 PiB

export interface VolumeApiDeps {
  store: ClusterStore;
  view: ClusterView;
  /** Shared with the reconciler: placements are decided and written one at a time. */
  placing: KeyedMutex;
  instance: string;
  ensureLeader: () => Promise<void>;
  enqueue: (volume: string) => void;
  /**
   * Each replica's allocated bytes as the agents of `nodes` see them now (replica id ->
   * bytes; nodes that do not answer are left out). The status record has them as of
   * the replica's last change (creation, export, resize), not of later writes or copies.
   */
  allocations?: (nodes: string[]) => Promise<Map<string, number>>;
}

type Requested = Omit<VolumeSpec, "uid" | "createdAtMs" | "deleting" | "placement">;

/** Checks a create request; returns the normalized spec or throws InvalidArgumentError. */
export function validateVolumeSpec(s: ApiVolumeSpec | undefined): Requested {
  if (!s) throw new InvalidArgumentError("the request has no volume spec", { hint: "set spec.name and spec.size_bytes" });
  validateName("volume", s.name);
  const size = s.sizeBytes;
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new InvalidArgumentError(`invalid volume size ${size}: it must be positive`, { hint: "for example --size 10GiB" });
  }
  if (size % 512 !== 0) {
    throw new InvalidArgumentError(`volume size ${size} is not a multiple of 512 bytes`, { hint: "use KiB, MiB or GiB units" });
  }
  if (size > MAX_SIZE) throw new InvalidArgumentError(`volume size ${formatSize(size)} is larger than ${formatSize(MAX_SIZE)}`);
  const replicas = s.replicas === 0 ? DEFAULT_REPLICAS : s.replicas;
  if (replicas < 1 || replicas > MAX_REPLICAS) {
    throw new InvalidArgumentError(`invalid replica count ${replicas}`, { hint: `use 1 to ${MAX_REPLICAS}` });
  }
  const format = formatFromApi(s.format);
  if (!format) throw new InvalidArgumentError(`unknown image format ${s.format}`, { hint: "use qcow2 or raw" });
  const preallocation = preallocationFromApi(s.preallocation);
  if (!preallocation) throw new InvalidArgumentError(`unknown preallocation ${s.preallocation}`, { hint: "use off, metadata, falloc or full" });
  if (format === "raw" && preallocation === "metadata") {
    throw new InvalidArgumentError("preallocation 'metadata' needs the qcow2 format", { hint: "use --preallocation off, falloc or full with raw" });
  }
  if (s.pool) validateName("pool", s.pool);
  return { name: s.name, sizeBytes: size, replicas, format, preallocation, pool: s.pool };
}

function sameRequest(a: Requested, b: VolumeSpec): boolean {
  return a.sizeBytes === b.sizeBytes && a.replicas === b.replicas && a.format === b.format && a.preallocation === b.preallocation && a.pool === b.pool && (a.template ?? "") === (b.template ?? "");
}

export function volumeApi(d: VolumeApiDeps): RequestHandlers<typeof VolumeServiceService> {
  // Placement decisions run one at a time, so two of them never count the same free space.
  const placing = { run: <T>(fn: () => Promise<T>) => d.placing.run(PLACEMENT_LOCK, fn) };
  /** The status records of `specs`, with each replica's allocation fresh from its agent where it answered. */
  const liveStatus = async (specs: VolumeSpec[]): Promise<(name: string) => VolumeStatus | undefined> => {
    const nodes = [...new Set(specs.flatMap((s) => s.placement.map((p) => p.node)))];
    const alloc = d.allocations && nodes.length > 0 ? await d.allocations(nodes) : new Map<string, number>();
    return (name) => {
      const st = d.store.volumeStatus(name)?.value;
      if (!st || alloc.size === 0) return st;
      return { ...st, replicas: st.replicas.map((r) => (alloc.has(r.id) ? { ...r, allocatedBytes: alloc.get(r.id)! } : r)) };
    };
  };
  /** The API view of a volume, with its running and waiting copies. */
  const apiVolume = (spec: VolumeSpec) => volumeToApi(spec, d.store.volumeStatus(spec.name)?.value, jobsOf(d.store, [spec]));

  const operation = (kind: OperationRecord["kind"], volume: string): OperationRecord => ({
    id: randomUUID(),
    kind,
    volume,
    startedAtMs: Date.now(),
    startedBy: d.instance,
  });

  const existing = (name: string) => {
    validateName("volume", name);
    const e = d.store.volumeSpec(name);
    if (!e) throw new NotFoundError("volume", name);
    return e;
  };

  return {
    async createVolume(req) {
      await d.ensureLeader();
      const want = validateVolumeSpec(req.spec);
      // A linked clone (stowctl volume create --template): its replicas are qcow2 images over the template's copies.
      if (req.spec?.template) {
        validateName("template", req.spec.template);
        want.template = req.spec.template;
      }
      return placing.run(async () => {
        const prev = d.store.volumeSpec(want.name);
        if (prev) {
          if (!prev.value.deleting && sameRequest(want, prev.value)) {
            return { volume: volumeToApi(prev.value, d.store.volumeStatus(want.name)?.value), placement: [], rejections: [] };
          }
          throw new AlreadyExistsError("volume", want.name, {
            hint: prev.value.deleting ? "the old volume is still being deleted; retry shortly" : undefined,
          });
        }
        // Checked under the placement lock, which template deletion holds too.
        const linked = want.template ? checkLinkedClone(want.template, d.store.template(want.template)?.value, want) : undefined;
        const snapshot = d.view.snapshot();
        if (want.pool && !snapshot.nodes.some((n) => n.pools.some((p) => p.name === want.pool))) {
          throw new NotFoundError("pool", want.pool);
        }
        const result = place(
          { sizeBytes: want.sizeBytes, replicas: want.replicas, thin: isThin(want), pool: want.pool, preferNodes: templateCopyNodes(linked) },
          snapshot,
        );
        if (!result.ok) {
          throw new InsufficientCapacityError(`cannot place volume ${want.name}: ${result.reason}`, {
            hint:
              "add nodes or pools, free space, uncordon nodes, raise a full pool's overcommit ratio (stowctl pool set NODE/POOL --overcommit N), " +
              "or ask for fewer replicas; --dry-run shows every node's reasons; nothing was created",
            rejections: result.rejections,
            neededBytes: want.sizeBytes,
          });
        }
        if (req.dryRun) return { volume: undefined, placement: result.placement, rejections: result.rejections };
        const spec: VolumeSpec = {
          ...want,
          uid: randomUUID(),
          createdAtMs: Date.now(),
          deleting: false,
          placement: result.placement.map((p) => ({ id: newReplicaId(), node: p.node, pool: p.pool })),
        };
        const status: VolumeStatus = { phase: "creating", message: "", replicas: [], updatedAtMs: Date.now() };
        await d.store.write({
          absent: [keys.volumeSpec(spec.name), keys.operation(spec.name)],
          put: [
            { key: keys.volumeSpec(spec.name), value: spec },
            { key: keys.volumeStatus(spec.name), value: status },
            { key: keys.operation(spec.name), value: operation("create-volume", spec.name) },
          ],
        });
        faultPoint("create-volume:recorded", spec.name);
        d.enqueue(spec.name);
        return { volume: volumeToApi(spec, status), placement: result.placement, rejections: result.rejections };
      });
    },

    async getVolume(req) {
      await d.ensureLeader();
      const spec = existing(req.name).value;
      return { volume: volumeToApi(spec, (await liveStatus([spec]))(spec.name), jobsOf(d.store, [spec])) };
    },

    async listVolumes() {
      await d.ensureLeader();
      const specs = d.store.volumeSpecs().map((e) => e.value);
      const jobs = new Map<string, Job[]>();
      for (const j of jobsOf(d.store, specs)) jobs.set(j.volume, [...(jobs.get(j.volume) ?? []), j]);
      const status = await liveStatus(specs);
      const volumes = specs
        .map((s) => volumeToApi(s, status(s.name), jobs.get(s.name)))
        .sort((a, b) => a.spec!.name.localeCompare(b.spec!.name));
      return { volumes };
    },

    async deleteVolume(req) {
      await d.ensureLeader();
      const e = existing(req.name);
      if (e.value.deleting) return { volume: volumeToApi(e.value, d.store.volumeStatus(req.name)?.value) };
      const attached = (e.value.attachments ?? []).map((a) => a.node);
      if (attached.length > 0) {
        throw new FailedPreconditionError(`volume ${req.name} is attached to ${attached.join(", ")}`, {
          hint: `detach it first: stowctl volume detach ${req.name} --node ${attached[0]}`,
        });
      }
      const spec: VolumeSpec = { ...e.value, deleting: true };
      await d.store.write({
        unchanged: [[keys.volumeSpec(req.name), e.modRevision]],
        put: [
          { key: keys.volumeSpec(req.name), value: spec },
          { key: keys.operation(req.name), value: operation("delete-volume", req.name) },
        ],
      });
      d.enqueue(req.name);
      return { volume: volumeToApi(spec, d.store.volumeStatus(req.name)?.value) };
    },

    async attachVolume(req) {
      await d.ensureLeader();
      const e = existing(req.name);
      const node = d.store.nodeSpec(req.node)?.value;
      if (!node) {
        validateName("node", req.node);
        throw new NotFoundError("node", req.node);
      }
      const spec = e.value;
      if (spec.deleting) throw new FailedPreconditionError(`volume ${req.name} is being deleted`);
      if (spec.reverting) throw new FailedPreconditionError(`volume ${req.name} is being reverted to snapshot ${spec.reverting.snapshot}`, { hint: "retry once the revert finished" });
      if (spec.backingUp?.marking && spec.backingUp.untilMs > Date.now() && !(spec.attachments ?? []).some((a) => a.node === req.node)) {
        throw new FailedPreconditionError(`a backup of ${req.name} is marking its replicas`, { hint: "retry in a moment" });
      }
      if (spec.importing) throw new FailedPreconditionError(`volume ${req.name} is being imported`, { hint: "retry once stowctl volume import finished (or repeat the import if it was interrupted)" });
      const exporting = activeExport(spec);
      if (exporting) {
        throw new FailedPreconditionError(`volume ${req.name} is being exported (stowctl volume export) until ${new Date(exporting.untilMs).toISOString()}`, { hint: "retry once the export finished" });
      }
      const taking = d.store.snapshotsOf(req.name).find((s) => s.value.state === "creating");
      if (taking && !(spec.attachments ?? []).some((a) => a.node === req.node)) {
        throw new FailedPreconditionError(`snapshot ${req.name}@${taking.value.name} is being taken`, { hint: "retry in a moment" });
      }
      const attachments = spec.attachments ?? [];
      if (!attachments.some((a) => a.node === req.node)) {
        if (attachments.length > 0) {
          throw new FailedPreconditionError(`volume ${req.name} is already attached to ${attachments.map((a) => a.node).join(", ")}`, {
            hint: `a volume is attached to one node at a time; detach it there first (stowctl volume detach ${req.name} --node ${attachments[0]!.node})`,
          });
        }
        if (!d.store.nodeStatus(req.node)) {
          throw new FailedPreconditionError(`node ${req.node} is offline`, { hint: "attach the volume on an online node; see stowctl node list" });
        }
        const next: VolumeSpec = { ...spec, attachments: [...attachments, { node: req.node, sinceMs: Date.now() }] };
        await d.store.write({ unchanged: [[keys.volumeSpec(req.name), e.modRevision]], put: [{ key: keys.volumeSpec(req.name), value: next }] });
        d.enqueue(req.name);
      }
      const volume = volumeToApi(d.store.volumeSpec(req.name)!.value, d.store.volumeStatus(req.name)?.value);
      return { volume, attachment: volume.attachments.find((a) => a.node === req.node) };
    },

    async detachVolume(req) {
      await d.ensureLeader();
      const e = existing(req.name);
      validateName("node", req.node);
      const attachments = e.value.attachments ?? [];
      const migrating = attachments.find((a) => a.migration);
      if (migrating && attachments.some((a) => a.node === req.node)) {
        throw new FailedPreconditionError(`volume ${req.name} is part of the live migration of domain ${migrating.migration}`, {
          hint: `wait for the migration to end: stowctl vm migration ${migrating.migration}`,
        });
      }
      if (attachments.some((a) => a.node === req.node)) {
        const next: VolumeSpec = { ...e.value, attachments: attachments.filter((a) => a.node !== req.node) };
        await d.store.write({ unchanged: [[keys.volumeSpec(req.name), e.modRevision]], put: [{ key: keys.volumeSpec(req.name), value: next }] });
        d.enqueue(req.name);
      }
      return { volume: volumeToApi(d.store.volumeSpec(req.name)!.value, d.store.volumeStatus(req.name)?.value) };
    },

    async resizeVolume(req) {
      await d.ensureLeader();
      return placing.run(async () => {
        const e = existing(req.name);
        const spec = e.value;
        if (spec.deleting) throw new FailedPreconditionError(`volume ${req.name} is being deleted`);
        const size = req.sizeBytes;
        if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) {
          throw new InvalidArgumentError(`invalid size ${size}: it must be a positive multiple of 512 bytes`, { hint: "for example --size 20GiB" });
        }
        if (size < spec.sizeBytes) {
          throw new InvalidArgumentError(`cannot shrink volume ${req.name} from ${formatSize(spec.sizeBytes)} to ${formatSize(size)}`, {
            hint: "volumes only grow; create a smaller volume and copy the data instead",
          });
        }
        if (size === spec.sizeBytes) return { volume: volumeToApi(spec, d.store.volumeStatus(req.name)?.value) };
        if ((spec.attachments ?? []).length > 0) {
          // A running export holds the image; growing it live needs the data path's support first.
          throw new FailedPreconditionError(`volume ${req.name} is attached; resizing an attached volume is not supported yet`, {
            hint: `detach it (stowctl volume detach ${req.name} --node ${spec.attachments![0]!.node}), resize, then attach again`,
          });
        }
        const op = d.store.operation(req.name)?.value;
        if (op && op.kind !== "resize-volume") {
          throw new FailedPreconditionError(`volume ${req.name} is busy (${op.kind} in progress)`, { hint: "retry when 'stowctl volume get' shows it healthy" });
        }
        const grow = size - spec.sizeBytes;
        const usage = d.view.usage();
        for (const p of spec.placement) {
          const pool = d.view.poolRecords(p.node).find((x) => x.name === p.pool);
          if (!pool) continue;
          const limit = pool.capacityBytes * (pool.overcommitRatio > 0 ? pool.overcommitRatio : DEFAULT_OVERCOMMIT_RATIO);
          const provisioned = usage.pools.get(`${p.node}/${p.pool}`)?.provisionedBytes ?? 0;
          if (provisioned + grow > limit) {
            throw new InsufficientCapacityError(
              `cannot grow volume ${req.name} by ${formatSize(grow)}: pool ${p.pool} on ${p.node} would hold ${formatSize(provisioned + grow)} of its ${formatSize(limit)} limit`,
              { hint: "free space in that pool or raise its overcommit ratio", neededBytes: grow, availableBytes: Math.max(0, limit - provisioned) },
            );
          }
        }
        const next: VolumeSpec = { ...spec, sizeBytes: size };
        await d.store.write({
          unchanged: [[keys.volumeSpec(req.name), e.modRevision]],
          put: [
            { key: keys.volumeSpec(req.name), value: next },
            { key: keys.operation(req.name), value: op ?? operation("resize-volume", req.name) },
          ],
        });
        d.enqueue(req.name);
        return { volume: volumeToApi(next, d.store.volumeStatus(req.name)?.value) };
      });
    },

    async setVolumeReplicas(req) {
      await d.ensureLeader();
      return placing.run(async () => {
        const e = existing(req.name);
        const spec = e.value;
        if (spec.deleting) throw new FailedPreconditionError(`volume ${req.name} is being deleted`, { hint: "its replicas cannot change any more" });
        const n = req.replicas;
        const nodes = d.store.nodeSpecs().map((x) => x.value);
        if (!Number.isInteger(n) || n < 1 || n > MAX_REPLICAS) {
          throw new InvalidArgumentError(`invalid replica count ${n}`, { hint: `use 1 to ${Math.min(MAX_REPLICAS, Math.max(1, nodes.length))}` });
        }
        if (n > nodes.length) {
          throw new InvalidArgumentError(`volume ${req.name} cannot have ${n} replicas: the cluster has ${nodes.length} nodes and each replica needs its own`, {
            hint: `use at most ${nodes.length}, or add nodes first`,
          });
        }
        const wanted: VolumeSpec = { ...spec, replicas: n };
        // The reconciler's own plan, for the count only: replacing unreachable replicas stays its job.
        const observed = new Map<string, ObservedReplica>((d.store.volumeStatus(req.name)?.value.replicas ?? []).map((r) => [r.id, { state: r.state, unreachableSinceMs: r.unreachableSinceMs }]));
        const online = (node: string) => d.store.nodeStatus(node) !== undefined;
        const plan = planReplicas({
          spec: wanted,
          observed,
          nodes: new Map(nodes.map((x) => [x.name, { online: online(x.name), draining: x.drain !== undefined }])),
          now: Date.now(),
          graceMs: 0,
          brake: rebuildBrake(nodes.map((x) => ({ online: online(x.name) }))),
          replaceUnreachable: false,
        });
        const placed = placeReplicas(wanted, plan.add.length, d.view.snapshot(), [], spec.template ? templateCopyNodes(d.store.template(spec.template)?.value) : []);
        if (placed.placement.length < plan.add.length) {
          const missing = plan.add.length - placed.placement.length;
          throw new InsufficientCapacityError(`cannot place ${missing} more replica${missing === 1 ? "" : "s"} of volume ${req.name}: ${placed.reason}`, {
            hint: "add nodes or pools, free space, or uncordon nodes; nothing was changed",
            rejections: placed.rejections,
            neededBytes: spec.sizeBytes,
          });
        }
        const draining = new Set(nodes.filter((x) => x.drain).map((x) => x.name));
        const gone = new Set(plan.remove.map((r) => r.id));
        const staying = spec.placement.filter((p) => !draining.has(p.node) && !gone.has(p.id)).length;
        if (staying > n) {
          throw new FailedPreconditionError(`cannot remove ${staying - n} more replica${staying - n === 1 ? "" : "s"} of volume ${req.name} now: ${plan.notes.join("; ") || "each remaining one is needed"}`, {
            hint: "nothing was changed; retry when the volume is healthy",
          });
        }
        const removed: RemovedReplica[] = plan.remove.map((r) => ({ id: r.id, node: r.node, reason: r.reason }));
        const changes = { add: placed.placement.map((p) => ({ node: p.node, pool: p.pool })), remove: plan.remove };
        if (req.dryRun) return { volume: apiVolume(spec), added: placed.placement, removed, rejections: placed.rejections };
        const next = withPlacementChanges(wanted, changes, Date.now());
        if (next === wanted && n === spec.replicas) return { volume: apiVolume(spec), added: [], removed: [], rejections: [] };
        await d.store.write({
          unchanged: [[keys.volumeSpec(req.name), e.modRevision]],
          put: [{ key: keys.volumeSpec(req.name), value: next }],
          delete: plan.remove.map((r) => keys.job(r.id)),
        });
        faultPoint("set-replicas:recorded", req.name);
        d.enqueue(req.name);
        return { volume: apiVolume(next), added: placed.placement, removed, rejections: placed.rejections };
      });
    },
  };
}
