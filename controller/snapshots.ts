// Snapshots of volumes: qcow2 internal snapshots of every in-sync replica, all
// at one write boundary, and rolling a volume back to one.
//
// Taking one: the record (state creating, the replicas it is taken on, a fresh
// tag) is written first, conditional on the volume spec not changing meanwhile
// (an attach or a mark races it and loses). On an attached volume the frontend
// then holds new writes and waits for those in flight (FreezeFrontend); every
// replica records the tag; the frontend lets the writes go (ThawFrontend) and
// says whether it held them all along. Only then is the record ready. Any
// failure, a freeze that ran out, or a replica marked out-of-sync meanwhile (it
// missed a write the others took) undoes it. A creation whose leader died is
// found by the sweep and undone the same way: it becomes a deleting record, and
// deleting removes the tag from every replica that may hold it before the
// record goes.
//
// Reverting (volume detached): `reverting` is set in the volume spec (attach is
// refused while it is), every reachable replica holding the snapshot is rolled
// back with qemu-img, then one spec write clears it, bumps the generation and
// records every other replica out-of-sync, so the detached-volume resync copies
// them from the reverted ones. A leader that dies half-way leaves `reverting`
// set; the sweep runs the revert again (rolling back twice is the same).
import { randomUUID } from "node:crypto";
import { ConflictError, FailedPreconditionError, NotFoundError, UnavailableError, errorMessage } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import type { Logger } from "../lib/logger.js";
import { validateName } from "../lib/names.js";
import type { AgentClients } from "./agents.js";
import { keys } from "./keys.js";
import type { ReplicaPlacement, SnapshotRecord, VolumeSpec } from "./model.js";
import type { ClusterStore, Entry } from "./store.js";

/** How long a frontend holds writes at most while a snapshot is taken. */
export const FREEZE_TIMEOUT_MS = 10_000;
const SWEEP_MS = 3_000;

export interface SnapshotsDeps {
  store: ClusterStore;
  agents: AgentClients;
  isOnline: (node: string) => boolean;
  /** This leader's instance id (creations started by another are stale). */
  instance: string;
  log: Logger;
}

export const snapshotRef = (volume: string, name: string) => `${volume}@${name}`;

/**
 * Runs `fn` while the volume's frontend on `attachedTo` (when attached) holds new
 * writes and has none in flight, so that what `fn` does to the replicas happens at
 * one write boundary. Never throws: `failure` says what went wrong, including a
 * frontend that let the writes go before the end (its timeout, a restart).
 */
export async function withWritesHeld(agents: AgentClients, volume: string, attachedTo: string | undefined, fn: () => Promise<void>): Promise<{ failure?: string; heldMs: number }> {
  let token: number | undefined;
  let failure: string | undefined;
  let heldMs = 0;
  try {
    if (attachedTo) token = (await agents.for(attachedTo).freezeFrontend({ volume, timeoutMs: FREEZE_TIMEOUT_MS }, { timeoutMs: FREEZE_TIMEOUT_MS + 10_000 })).token;
  } catch (err) {
    return { failure: `the frontend on ${attachedTo} could not hold writes: ${errorMessage(err)}`, heldMs };
  }
  try {
    await fn();
  } catch (err) {
    failure = errorMessage(err);
  }
  if (token !== undefined) {
    try {
      const t = await agents.for(attachedTo!).thawFrontend({ volume, token }, { timeoutMs: 15_000 });
      heldMs = t.heldMs;
      if (!t.held) failure ??= `writes were not held all along (the frontend let them go after ${FREEZE_TIMEOUT_MS} ms, or restarted)`;
    } catch (err) {
      failure ??= `could not confirm that writes were held: ${errorMessage(err)}`;
    }
  }
  return { failure, heldMs };
}

/** Replicas of the snapshot that the volume still has (rebuilt or removed ones do not hold it). */
export function holders(snap: SnapshotRecord, spec: VolumeSpec): ReplicaPlacement[] {
  const ids = new Set(snap.replicas.map((r) => r.id));
  return spec.placement.filter((p) => ids.has(p.id));
}

export class Snapshots {
  private readonly creating = new Set<string>();
  private readonly reverting = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private sweeping = false;

  constructor(private readonly d: SnapshotsDeps) {}

  start(): void {
    this.timer = setInterval(() => void this.sweep(), SWEEP_MS);
    this.timer.unref();
    void this.sweep();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** The volume, or a clear error. */
  private volume(name: string): Entry<VolumeSpec> {
    validateName("volume", name);
    const e = this.d.store.volumeSpec(name);
    if (!e) throw new NotFoundError("volume", name);
    return e;
  }

  /** The snapshot, or a clear error. */
  get(volume: string, name: string): SnapshotRecord {
    this.volume(volume);
    validateName("snapshot", name);
    const s = this.d.store.snapshot(volume, name)?.value;
    if (!s) throw new NotFoundError("snapshot", snapshotRef(volume, name), { hint: `stowctl snapshot list ${volume}` });
    return s;
  }

  async create(volume: string, name: string): Promise<{ snapshot: SnapshotRecord; created: boolean }> {
    const e = this.volume(volume);
    validateName("snapshot", name);
    const spec = e.value;
    const ref = snapshotRef(volume, name);
    const prev = this.d.store.snapshot(volume, name)?.value;
    if (prev?.state === "ready") return { snapshot: prev, created: false };
    if (prev) throw new FailedPreconditionError(`snapshot ${ref} is being ${prev.state === "creating" ? "taken" : "deleted"}`, { hint: "retry in a moment" });
    if (spec.deleting) throw new FailedPreconditionError(`volume ${volume} is being deleted`);
    if (spec.format !== "qcow2") {
      throw new FailedPreconditionError(`volume ${volume} is a raw volume: snapshots need qcow2 images`, {
        hint: "snapshots work on qcow2 volumes (the default format); copy the data into one to snapshot it",
      });
    }
    if (spec.reverting) throw new FailedPreconditionError(`volume ${volume} is being reverted to ${spec.reverting.snapshot}`, { hint: "retry once the revert finished" });
    const attachments = spec.attachments ?? [];
    if (attachments.length > 1) {
      throw new FailedPreconditionError(`volume ${volume} is attached to ${attachments.map((a) => a.node).join(" and ")} (a live migration)`, {
        hint: "take the snapshot once the migration finished",
      });
    }
    const attachedTo = attachments[0]?.node;
    if (attachedTo && this.d.store.frontend(volume, attachedTo)?.state !== "attached") {
      throw new FailedPreconditionError(`volume ${volume} is being attached to ${attachedTo}`, { hint: "retry once stowctl volume get shows it attached" });
    }
    if (this.d.store.operation(volume)) throw new FailedPreconditionError(`volume ${volume} is being ${this.d.store.operation(volume)!.value.kind.replace("-volume", "d")}`, { hint: "retry in a moment" });
    const inSync = spec.placement.filter((p) => !p.outOfSync);
    const targets = inSync.filter((p) => this.d.isOnline(p.node));
    if (targets.length === 0) {
      throw new FailedPreconditionError(`no in-sync replica of ${volume} is online`, { hint: "bring a node holding one back (stowctl volume get shows them)" });
    }
    const missing = inSync.filter((p) => !targets.includes(p));
    const record: SnapshotRecord = {
      volume,
      name,
      tag: `stow-${randomUUID()}`,
      state: "creating",
      createdAtMs: Date.now(),
      sizeBytes: spec.sizeBytes,
      replicas: targets.map((p) => ({ id: p.id, node: p.node, pool: p.pool })),
      attachedTo,
      heldMs: 0,
      startedBy: this.d.instance,
      message: missing.length > 0 ? `not on ${missing.map((p) => `${p.id} (node ${p.node} offline)`).join(", ")}` : "",
    };
    const key = keys.snapshot(volume, name);
    this.creating.add(key);
    try {
      try {
        await this.d.store.write({ absent: [key], unchanged: [[keys.volumeSpec(volume), e.modRevision]], put: [{ key, value: record }] });
      } catch (err) {
        if (err instanceof ConflictError) throw new ConflictError(`volume ${volume} or snapshot ${ref} changed meanwhile`, { hint: "retry the command" });
        throw err;
      }
      faultPoint("create-snapshot:recorded", ref);
      return { snapshot: await this.take(record), created: true };
    } finally {
      this.creating.delete(key);
    }
  }

  /** Holds writes (attached volume), records the tag on every target, lets writes go; undoes it on any failure. */
  private async take(record: SnapshotRecord): Promise<SnapshotRecord> {
    const { volume, name, tag, attachedTo } = record;
    const ref = snapshotRef(volume, name);
    const held = await withWritesHeld(this.d.agents, volume, attachedTo, async () => {
      const results = await Promise.allSettled(
        record.replicas.map((r) => this.d.agents.for(r.node).snapshotReplica({ replicaId: r.id, tag, pool: r.pool }, { timeoutMs: 60_000 })),
      );
      faultPoint("create-snapshot:taken", ref);
      const failed = results.flatMap((r, i) => (r.status === "rejected" ? [`${record.replicas[i]!.id}: ${errorMessage(r.reason)}`] : []));
      if (failed.length > 0) throw new Error(`a replica could not record it (${failed.join("; ")})`);
    });
    let failure = held.failure;
    const heldMs = held.heldMs;
    // A replica marked out-of-sync meanwhile missed a write that the others took.
    const spec = this.d.store.volumeSpec(volume)?.value;
    const stillInSync = new Set(spec?.placement.filter((p) => !p.outOfSync).map((p) => p.id) ?? []);
    const kept = record.replicas.filter((r) => stillInSync.has(r.id));
    if (!failure && kept.length === 0) failure = "every replica it was taken on was marked out-of-sync meanwhile";
    if (failure) {
      await this.undo(record, failure);
      throw new UnavailableError(`snapshot ${ref} was not taken: ${failure}`, { hint: "nothing was kept; retry the command" });
    }
    const dropped = record.replicas.filter((r) => !stillInSync.has(r.id));
    await Promise.allSettled(dropped.map((r) => this.d.agents.for(r.node).deleteReplicaSnapshot({ replicaId: r.id, pool: r.pool, tag }, { timeoutMs: 60_000 })));
    const notes = [record.message, ...dropped.map((r) => `not on ${r.id} (marked out-of-sync while it was taken)`)].filter(Boolean);
    const ready: SnapshotRecord = { ...record, state: "ready", replicas: kept, heldMs, message: notes.join("; ") };
    await this.d.store.write({ put: [{ key: keys.snapshot(volume, name), value: ready }] });
    this.d.log.info({ snapshot: ref, replicas: kept.map((r) => r.id), heldMs }, "snapshot taken");
    return ready;
  }

  /** Turns a failed or stale creation into a deletion, and runs it. */
  private async undo(record: SnapshotRecord, why: string): Promise<void> {
    this.d.log.warn({ snapshot: snapshotRef(record.volume, record.name), why }, "snapshot creation undone");
    const deleting: SnapshotRecord = { ...record, state: "deleting", message: `not taken: ${why}` };
    await this.d.store.write({ put: [{ key: keys.snapshot(record.volume, record.name), value: deleting }] });
    await this.removeTags(deleting).catch(() => undefined);
  }

  /** Marks the snapshot deleting and removes it from its replicas; false when there was none. */
  async delete(volume: string, name: string): Promise<boolean> {
    validateName("volume", volume);
    validateName("snapshot", name);
    const e = this.d.store.snapshot(volume, name);
    if (!e) return false;
    const ref = snapshotRef(volume, name);
    if (e.value.state === "creating") throw new FailedPreconditionError(`snapshot ${ref} is being taken`, { hint: "retry in a moment" });
    const spec = this.d.store.volumeSpec(volume)?.value;
    if (spec?.reverting?.snapshot === name) throw new FailedPreconditionError(`volume ${volume} is being reverted to ${ref}`, { hint: "retry once the revert finished" });
    const cloning = this.d.store.volumeSpecs().find((v) => v.value.clone?.volume === volume && v.value.clone.snapshot === name);
    if (cloning) throw new FailedPreconditionError(`volume ${cloning.value.name} is being cloned from ${ref}`, { hint: "retry once it is healthy" });
    if (e.value.state !== "deleting") {
      await this.d.store.write({ unchanged: [[keys.snapshot(volume, name), e.modRevision]], put: [{ key: keys.snapshot(volume, name), value: { ...e.value, state: "deleting" } }] });
    }
    await this.removeTags({ ...e.value, state: "deleting" });
    return true;
  }

  /**
   * Removes the tag from every replica of the record that the volume still has
   * (removed or rebuilt ones went with their images); the record goes once none is
   * left. A replica on an offline node keeps the record until the node is back.
   */
  private async removeTags(record: SnapshotRecord): Promise<void> {
    const spec = this.d.store.volumeSpec(record.volume)?.value;
    const present = new Set(spec && !spec.deleting ? spec.placement.map((p) => p.id) : []);
    const left = record.replicas.filter((r) => present.has(r.id));
    const results = await Promise.allSettled(
      left.map(async (r) => {
        if (!this.d.isOnline(r.node)) throw new UnavailableError(`node ${r.node} is offline`);
        await this.d.agents.for(r.node).deleteReplicaSnapshot({ replicaId: r.id, pool: r.pool, tag: record.tag }, { timeoutMs: 60_000 });
      }),
    );
    const waiting = left.filter((_, i) => results[i]!.status === "rejected");
    const key = keys.snapshot(record.volume, record.name);
    if (waiting.length === 0) {
      await this.d.store.write({ delete: [key] });
      this.d.log.info({ snapshot: snapshotRef(record.volume, record.name) }, "snapshot deleted");
      return;
    }
    const why = waiting.map((r, i) => `${r.id}: ${errorMessage((results[left.indexOf(r)] as PromiseRejectedResult).reason ?? i)}`).join("; ");
    const cur = this.d.store.snapshot(record.volume, record.name);
    if (cur && cur.value.message !== `deleting; waiting for ${why}`) {
      await this.d.store.write({ put: [{ key, value: { ...cur.value, message: `deleting; waiting for ${why}` } }] });
    }
  }

  /** Rolls a detached volume back to a snapshot (see the file comment). Returns the replicas rolled back. */
  async revert(volume: string, name: string): Promise<string[]> {
    const e = this.volume(volume);
    const snap = this.get(volume, name);
    const ref = snapshotRef(volume, name);
    const spec = e.value;
    if (snap.state !== "ready") throw new FailedPreconditionError(`snapshot ${ref} is ${snap.state === "creating" ? "being taken" : "being deleted"}`);
    if (spec.deleting) throw new FailedPreconditionError(`volume ${volume} is being deleted`);
    if (spec.reverting && spec.reverting.snapshot !== name) {
      throw new FailedPreconditionError(`volume ${volume} is being reverted to ${spec.reverting.snapshot}`, { hint: "retry once that revert finished" });
    }
    const attached = (spec.attachments ?? []).map((a) => a.node);
    if (attached.length > 0) {
      throw new FailedPreconditionError(`volume ${volume} is attached to ${attached.join(", ")}: a volume in use cannot be reverted`, {
        hint: `stop what uses it, then stowctl volume detach ${volume} --node ${attached[0]}`,
      });
    }
    if ((this.d.store.volumeStatus(volume)?.value.frontends ?? []).length > 0) {
      throw new FailedPreconditionError(`the frontend of ${volume} is still stopping`, { hint: "retry in a few seconds" });
    }
    if (this.d.store.operation(volume)) throw new FailedPreconditionError(`volume ${volume} is being ${this.d.store.operation(volume)!.value.kind.replace("-volume", "d")}`, { hint: "retry in a moment" });
    const online = holders(snap, spec).filter((p) => this.d.isOnline(p.node));
    if (online.length === 0) {
      throw new FailedPreconditionError(`no replica holding ${ref} is online`, {
        hint: holders(snap, spec).length > 0 ? `bring back ${holders(snap, spec).map((p) => p.node).join(" or ")}` : "the replicas that held it were replaced since",
      });
    }
    if (!spec.reverting) {
      await this.d.store.write({
        unchanged: [[keys.volumeSpec(volume), e.modRevision]],
        put: [{ key: keys.volumeSpec(volume), value: { ...spec, reverting: { snapshot: name, tag: snap.tag, sinceMs: Date.now() } } }],
      });
    }
    faultPoint("revert-volume:recorded", volume);
    return this.runRevert(volume);
  }

  /** Rolls back every reachable replica holding the snapshot, then clears `reverting` in one write. */
  private async runRevert(volume: string): Promise<string[]> {
    if (this.reverting.has(volume)) throw new FailedPreconditionError(`volume ${volume} is being reverted`, { hint: "retry in a moment" });
    this.reverting.add(volume);
    try {
      const e = this.d.store.volumeSpec(volume);
      const r = e?.value.reverting;
      if (!e || !r) return [];
      const snap = this.d.store.snapshot(volume, r.snapshot)?.value;
      const targets = snap ? holders(snap, e.value).filter((p) => this.d.isOnline(p.node)) : [];
      if (targets.length === 0) {
        throw new UnavailableError(`no replica holding ${snapshotRef(volume, r.snapshot)} is online; the revert waits`);
      }
      await Promise.all(targets.map((p) => this.d.agents.for(p.node).revertReplica({ replicaId: p.id, pool: p.pool, tag: r.tag, sizeBytes: e.value.sizeBytes }, { timeoutMs: 600_000 })));
      faultPoint("revert-volume:reverted", volume);
      const cur = this.d.store.volumeSpec(volume)!;
      const generation = (cur.value.generation ?? 1) + 1;
      const done = new Set(targets.map((p) => p.id));
      const now = Date.now();
      const placement = cur.value.placement.map((p) => {
        if (done.has(p.id)) return { ...p, outOfSync: undefined };
        return { ...p, outOfSync: { sinceMs: now, reason: `not reverted to snapshot ${r.snapshot}`, generation } };
      });
      const { reverting: _, ...rest } = cur.value;
      await this.d.store.write({
        unchanged: [[keys.volumeSpec(volume), cur.modRevision]],
        put: [{ key: keys.volumeSpec(volume), value: { ...rest, placement, generation } }],
      });
      this.d.log.info({ volume, snapshot: r.snapshot, reverted: [...done], copied: placement.filter((p) => p.outOfSync).map((p) => p.id) }, "volume reverted");
      return [...done];
    } finally {
      this.reverting.delete(volume);
    }
  }

  /** Finishes what a dead leader left: stale creations are undone, deletions and reverts run again. */
  async sweep(): Promise<void> {
    if (this.sweeping) return;
    this.sweeping = true;
    try {
      for (const { value: s } of this.d.store.snapshots()) {
        const key = keys.snapshot(s.volume, s.name);
        try {
          if (s.state === "creating" && !this.creating.has(key)) await this.undo(s, "its creation was interrupted (controller restart)");
          else if (s.state === "deleting") await this.removeTags(s);
          else if (s.state === "ready" && !this.d.store.volumeSpec(s.volume)) await this.d.store.write({ delete: [key] });
        } catch (err) {
          this.d.log.warn({ snapshot: snapshotRef(s.volume, s.name), err: errorMessage(err) }, "snapshot sweep failed; will retry");
        }
      }
      for (const { value: v } of this.d.store.volumeSpecs()) {
        if (!v.reverting || this.reverting.has(v.name)) continue;
        await this.runRevert(v.name).catch((err) => this.d.log.warn({ volume: v.name, err: errorMessage(err) }, "revert failed; will retry"));
      }
    } finally {
      this.sweeping = false;
    }
  }
}
