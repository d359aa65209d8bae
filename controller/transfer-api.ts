// TransferService: images into and out of the cluster (stowctl volume import / export).
//
// Import: the volume is created like any other, then marked `importing` (attach
// is refused while it is; an attach that came first makes the import refuse), one
// replica's agent copies the source (an NBD export stowctl serves) into its image,
// and one spec write clears the mark and records the other replicas out-of-sync,
// so the detached-volume resync copies them from the first inside the cluster. A
// controller that dies half-way leaves the mark: repeating the command copies again.
//
// Export: an in-sync replica of a detached volume is exported (the reconciler
// exports a replica named by `exporting` until the lease ends); stowctl copies
// from it and closes the export, or the lease runs out.
import { FailedPreconditionError, InvalidArgumentError, UnavailableError, AlreadyExistsError, errorMessage } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import type { RequestHandlers } from "../lib/grpc.js";
import { validateName } from "../lib/names.js";
import type { ImportVolumeRequest, ImportVolumeResponse, TransferServiceService, VolumeServiceService } from "../gen/stowage/v1/controller.js";
import type { AgentClients } from "./agents.js";
import { volumeToApi } from "./convert.js";
import { keys } from "./keys.js";
import type { VolumeSpec } from "./model.js";
import type { ClusterStore } from "./store.js";
import { validateVolumeSpec } from "./volume-api.js";

export interface TransferApiDeps {
  store: ClusterStore;
  agents: AgentClients;
  isOnline: (node: string) => boolean;
  ensureLeader: () => Promise<void>;
  enqueue: (volume: string) => void;
  volumes: Pick<RequestHandlers<typeof VolumeServiceService>, "createVolume">;
}

const DEFAULT_LEASE_S = 60;
const MAX_LEASE_S = 600;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` every 50 ms until it returns a value, or fails with `what` after `ms`. */
export async function until<T>(what: string, ms: number, fn: () => T | undefined): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new UnavailableError(`${what} did not happen within ${ms / 1000} s`, { hint: "see stowctl volume get; retry the command" });
    await sleep(50);
  }
}

/** Attach and the reconciler consult this: an unexpired export lease, if any. */
export function activeExport(spec: VolumeSpec, now = Date.now()): VolumeSpec["exporting"] {
  return spec.exporting && spec.exporting.untilMs > now ? spec.exporting : undefined;
}

/**
 * Creates volume `apiSpec.name` marked importing (or takes up an unfinished import of
 * it), copies `sourceUri` into one replica, then records the others out-of-sync so
 * they are copied from it. Used by imports and by restores of backups.
 */
export async function importFromNbd(
  d: Omit<TransferApiDeps, "ensureLeader">,
  apiSpec: NonNullable<ImportVolumeRequest["spec"]>,
  sourceUri: string,
): Promise<ImportVolumeResponse> {
  const want = validateVolumeSpec(apiSpec);
  const name = want.name;
  let e = d.store.volumeSpec(name);
  if (e && !e.value.importing) {
    throw new AlreadyExistsError("volume", name, { hint: "an import never overwrites a volume; choose another name or delete that volume first" });
  }
  if (!e) {
    await d.volumes.createVolume({ spec: apiSpec, dryRun: false });
    e = d.store.volumeSpec(name)!;
    const attached = (e.value.attachments ?? []).length > 0;
    if (attached) throw new FailedPreconditionError(`volume ${name} was attached before the import began`, { hint: "detach it and repeat the import" });
    await d.store.write({
      unchanged: [[keys.volumeSpec(name), e.modRevision]],
      put: [{ key: keys.volumeSpec(name), value: { ...e.value, importing: { sinceMs: Date.now(), source: sourceUri } } }],
    });
  }
  if (e.value.sizeBytes !== want.sizeBytes) {
    throw new FailedPreconditionError(`volume ${name} is an unfinished import of ${e.value.sizeBytes} bytes, not ${want.sizeBytes}`, { hint: `delete it first: stowctl volume delete ${name}` });
  }
  // Every replica exists (empty) before one is written.
  await until(`creating the replicas of ${name}`, 120_000, () => {
    const st = d.store.volumeStatus(name)?.value;
    const spec = d.store.volumeSpec(name)?.value;
    return spec && !d.store.operation(name) && st && spec.placement.every((p) => st.replicas.some((r) => r.id === p.id && r.state === "healthy")) ? true : undefined;
  });
  const spec = d.store.volumeSpec(name)!.value;
  const target = spec.placement.find((p) => !p.outOfSync && d.isOnline(p.node));
  if (!target) throw new UnavailableError(`no replica of ${name} is on an online node`);
  const t0 = Date.now();
  let bytes: number;
  try {
    const res = await d.agents.for(target.node).copyReplica({ id: target.id, pool: target.pool, sourceNbdUri: sourceUri, rateLimitBytes: 0 }, { timeoutMs: 24 * 3600_000 });
    bytes = res.bytes;
  } catch (err) {
    throw new UnavailableError(`copying ${sourceUri} into replica ${target.id} on ${target.node} failed: ${errorMessage(err)}`, {
      hint: "check that the node reaches the address (stowctl volume import --address), then repeat the import",
    });
  }
  faultPoint("import-volume:copied", name);
  const cur = d.store.volumeSpec(name)!;
  const generation = (cur.value.generation ?? 1) + 1;
  const now = Date.now();
  const { importing: _, ...rest } = cur.value;
  const placement = cur.value.placement.map((p) =>
    p.id === target.id ? { ...p, outOfSync: undefined } : { ...p, outOfSync: { sinceMs: now, reason: `copied from ${target.id} after the import`, generation } },
  );
  await d.store.write({ unchanged: [[keys.volumeSpec(name), cur.modRevision]], put: [{ key: keys.volumeSpec(name), value: { ...rest, placement, generation } }] });
  d.enqueue(name);
  const after = d.store.volumeSpec(name)!.value;
  return { volume: volumeToApi(after, d.store.volumeStatus(name)?.value), replicaId: target.id, bytes, durationMs: Date.now() - t0 };
}

export function transferApi(d: TransferApiDeps): RequestHandlers<typeof TransferServiceService> {
  return {
    async importVolume(req) {
      await d.ensureLeader();
      validateVolumeSpec(req.spec);
      if (!/^nbd:\/\/[^/]+\/[^?]*$/.test(req.sourceNbdUri)) {
        throw new InvalidArgumentError(`import source "${req.sourceNbdUri}" is not an nbd://HOST:PORT/NAME address`, {
          hint: "the volume's nodes copy from it over TCP; stowctl volume import serves the file that way",
        });
      }
      return importFromNbd(d, req.spec!, req.sourceNbdUri);
    },

    async openVolumeExport(req) {
      await d.ensureLeader();
      validateName("volume", req.volume);
      const lease = req.leaseSeconds || DEFAULT_LEASE_S;
      if (lease > MAX_LEASE_S) throw new InvalidArgumentError(`lease of ${lease} s is longer than ${MAX_LEASE_S} s`, { hint: "call again to extend it" });
      const e = d.store.volumeSpec(req.volume);
      if (!e) throw new FailedPreconditionError(`volume ${req.volume} not found`, { hint: "stowctl volume list" });
      const spec = e.value;
      const busy = spec.deleting ? "being deleted" : spec.importing ? "still being imported" : spec.reverting ? "being reverted" : undefined;
      if (busy) throw new FailedPreconditionError(`volume ${req.volume} is ${busy}`);
      const attached = (spec.attachments ?? []).map((a) => a.node);
      if (attached.length > 0 || (d.store.volumeStatus(req.volume)?.value.frontends ?? []).length > 0) {
        throw new FailedPreconditionError(`volume ${req.volume} is attached${attached.length ? ` to ${attached.join(", ")}` : ""}: its content changes while it is read`, {
          hint: `detach it first, or snapshot and clone it and export the clone (stowctl snapshot create ${req.volume}@NAME; stowctl volume clone ...)`,
        });
      }
      const current = activeExport(spec);
      const replica = current
        ? spec.placement.find((p) => p.id === current.replica && !p.outOfSync && d.isOnline(p.node))
        : spec.placement.find((p) => !p.outOfSync && d.isOnline(p.node));
      if (!replica) throw new UnavailableError(`no in-sync replica of ${req.volume} is on an online node`, { hint: "see stowctl volume get" });
      const untilMs = Date.now() + lease * 1000;
      await d.store.write({
        unchanged: [[keys.volumeSpec(req.volume), e.modRevision]],
        put: [{ key: keys.volumeSpec(req.volume), value: { ...spec, exporting: { replica: replica.id, untilMs } } }],
      });
      d.enqueue(req.volume);
      const uri = await until(`exporting replica ${replica.id}`, 30_000, () => d.store.volumeStatus(req.volume)?.value.replicas.find((r) => r.id === replica.id)?.exportUri);
      return { nbdUri: uri, replicaId: replica.id, node: replica.node, untilMs, sizeBytes: spec.sizeBytes };
    },

    async closeVolumeExport(req) {
      await d.ensureLeader();
      validateName("volume", req.volume);
      const e = d.store.volumeSpec(req.volume);
      if (!e?.value.exporting) return { closed: false };
      const { exporting: _, ...rest } = e.value;
      await d.store.write({ unchanged: [[keys.volumeSpec(req.volume), e.modRevision]], put: [{ key: keys.volumeSpec(req.volume), value: rest }] });
      d.enqueue(req.volume);
      return { closed: true };
    },
  };
}
