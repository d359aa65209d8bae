// VmService: VM-level commands on top of volumes. Attaching a volume to a
// domain = attach the volume on the domain's node (a frontend) + hot-plug its
// socket; live migration = a recorded migration the Migrator drives.
import { randomUUID } from "node:crypto";
import type { VmServiceService, VolumeServiceService } from "../gen/stowage/v1/controller.js";
import { AttachmentState } from "../gen/stowage/v1/types.js";
import { DeadlineError, FailedPreconditionError, InvalidArgumentError, NotFoundError, StowageError } from "../lib/errors.js";
import type { AsyncService, RequestHandlers } from "../lib/grpc.js";
import { faultPoint } from "../lib/faults.js";
import { validateDomainName, validateName } from "../lib/names.js";
import { migrationToApi } from "./convert.js";
import { keys } from "./keys.js";
import type { MigrationRecord, VolumeSpec } from "./model.js";
import { isTerminal, type Migrator } from "./migrator.js";
import { diskVolume, locateDomain, vmNode, vmToApi, type VmDeps } from "./vms.js";

export interface VmApiDeps extends VmDeps {
  instance: string;
  ensureLeader: () => Promise<void>;
  volumes: Pick<RequestHandlers<typeof VolumeServiceService>, "attachVolume" | "detachVolume">;
  migrator: () => Migrator | undefined;
}

const FRONTEND_WAIT_MS = 60_000;

export function vmApi(d: VmApiDeps): AsyncService<typeof VmServiceService> {
  /** Waits until the volume's frontend on `node` serves; returns its socket. */
  const frontendSocket = async (volume: string, node: string): Promise<string> => {
    const deadline = Date.now() + FRONTEND_WAIT_MS;
    for (;;) {
      const f = d.store.frontend(volume, node);
      if (f?.state === "attached" && f.socketPath) return f.socketPath;
      if (f?.state === "failed") throw new StowageError(`the frontend of volume ${volume} on ${node} failed: ${f.message}`, { hint: `see 'stowctl volume get ${volume}'` });
      if (Date.now() > deadline) {
        throw new DeadlineError(`the frontend of volume ${volume} on ${node} is not serving after ${FRONTEND_WAIT_MS / 1000} s${f?.message ? `: ${f.message}` : ""}`, {
          hint: `see 'stowctl volume get ${volume}'`,
        });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  const activeMigration = (domain: string): MigrationRecord | undefined => {
    const m = d.store.migration(domain)?.value;
    return m && !isTerminal(m) ? m : undefined;
  };

  return {
    async getVm(req) {
      await d.ensureLeader();
      return { vm: vmToApi(d, await locateDomain(d, req.name)) };
    },

    async attachVmDisk(req) {
      await d.ensureLeader();
      validateDomainName(req.domain);
      validateName("volume", req.volume);
      if (req.node) validateName("node", req.node);
      if (!d.store.volumeSpec(req.volume)) throw new NotFoundError("volume", req.volume);
      if (activeMigration(req.domain)) throw new FailedPreconditionError(`domain ${req.domain} is being migrated`, { hint: `wait for it: stowctl vm migration ${req.domain}` });
      const at = await locateDomain(d, req.domain, req.node || undefined);
      const wasAttached = (d.store.volumeSpec(req.volume)?.value.attachments ?? []).some((a) => a.node === at.node);
      const res = await d.volumes.attachVolume({ name: req.volume, node: at.node });
      try {
        const socketPath =
          res.attachment?.state === AttachmentState.ATTACHMENT_STATE_ATTACHED && res.attachment.socketPath ? res.attachment.socketPath : await frontendSocket(req.volume, at.node);
        const r = await d.agents.for(at.node).attachDisk({ domain: req.domain, volume: req.volume, socketPath, target: req.target }, { timeoutMs: 60_000 });
        return { vm: vmToApi(d, await locateDomain(d, req.domain, at.node)), target: r.target };
      } catch (err) {
        // Leave nothing half done: an attachment made for this call goes again.
        if (!wasAttached) await d.volumes.detachVolume({ name: req.volume, node: at.node }).catch(() => undefined);
        throw err;
      }
    },

    async detachVmDisk(req) {
      await d.ensureLeader();
      validateDomainName(req.domain);
      validateName("volume", req.volume);
      if (req.node) validateName("node", req.node);
      if (!d.store.volumeSpec(req.volume)) throw new NotFoundError("volume", req.volume);
      if (activeMigration(req.domain)) throw new FailedPreconditionError(`domain ${req.domain} is being migrated`, { hint: `wait for it: stowctl vm migration ${req.domain}` });
      const at = await locateDomain(d, req.domain, req.node || undefined);
      await d.agents.for(at.node).detachDisk({ domain: req.domain, volume: req.volume }, { timeoutMs: 60_000 });
      await d.volumes.detachVolume({ name: req.volume, node: at.node });
      return { vm: vmToApi(d, await locateDomain(d, req.domain, at.node)) };
    },

    async migrateVm(req) {
      await d.ensureLeader();
      validateDomainName(req.domain);
      if (!req.toNode) throw new InvalidArgumentError("the destination node is missing", { hint: "stowctl vm migrate DOMAIN --to NODE" });
      vmNode(d, req.toNode);
      const running = activeMigration(req.domain);
      if (running) {
        if (running.to === req.toNode) return { migration: migrationToApi(running) };
        throw new FailedPreconditionError(`domain ${req.domain} is already being migrated to ${running.to}`, { hint: `wait for it: stowctl vm migration ${req.domain}` });
      }
      const at = await locateDomain(d, req.domain);
      if (at.node === req.toNode) throw new InvalidArgumentError(`domain ${req.domain} already runs on ${req.toNode}`, { hint: "choose another node with --to" });
      vmNode(d, at.node);
      // Every disk must be a Stowage volume attached on the source: nothing else exists on the destination.
      const volumes: string[] = [];
      for (const disk of at.domain.disks) {
        if (disk.device === "cdrom" && !disk.source) continue; // an empty drive
        const v = diskVolume(d, at.node, disk);
        if (!v) {
          throw new FailedPreconditionError(`disk ${disk.target} of domain ${req.domain} is not a Stowage volume (${disk.type}${disk.protocol ? `/${disk.protocol}` : ""} ${disk.source || "no source"})`, {
            hint: "only domains whose every disk is a Stowage volume can be live-migrated without copying disks; move the disk into a volume first",
            resource: "domain",
            name: req.domain,
          });
        }
        volumes.push(v);
      }
      if (at.domain.state !== "running") {
        throw new FailedPreconditionError(`domain ${req.domain} is ${at.domain.state}; only a running domain can be live-migrated`, { hint: `start or resume it first (virsh resume ${req.domain})` });
      }
      const specs = volumes.map((v) => d.store.volumeSpec(v)!);
      for (const e of specs) {
        const others = (e.value.attachments ?? []).filter((a) => a.node !== at.node).map((a) => a.node);
        if (e.value.deleting) throw new FailedPreconditionError(`volume ${e.value.name} is being deleted`);
        if (others.length > 0) {
          throw new FailedPreconditionError(`volume ${e.value.name} is also attached to ${others.join(", ")}`, { hint: `detach it there first: stowctl volume detach ${e.value.name} --node ${others[0]}` });
        }
      }
      const now = Date.now();
      const record: MigrationRecord = {
        id: randomUUID(),
        domain: req.domain,
        from: at.node,
        to: req.toNode,
        volumes,
        phase: "preparing",
        message: "",
        startedAtMs: now,
        finishedAtMs: 0,
        startedBy: d.instance,
        memoryTotalBytes: 0,
        memoryProcessedBytes: 0,
        memoryRemainingBytes: 0,
        downtimeMs: 0,
      };
      const prev = d.store.migration(req.domain);
      const unchanged: [string, number][] = specs.map((e) => [keys.volumeSpec(e.value.name), e.modRevision]);
      if (prev) unchanged.push([keys.migration(req.domain), prev.modRevision]);
      // The dual-attach window: recorded together with the migration, in one transaction.
      await d.store.write({
        absent: prev ? [] : [keys.migration(req.domain)],
        unchanged,
        put: [
          { key: keys.migration(req.domain), value: record },
          ...specs.map((e) => {
            const next: VolumeSpec = { ...e.value, attachments: [...(e.value.attachments ?? []), { node: req.toNode, sinceMs: now, migration: req.domain }] };
            return { key: keys.volumeSpec(e.value.name), value: next };
          }),
        ],
      });
      faultPoint("migrate:recorded", req.domain);
      d.migrator()?.drive(req.domain);
      return { migration: migrationToApi(record) };
    },

    async getMigration(req) {
      await d.ensureLeader();
      validateDomainName(req.domain);
      const m = d.store.migration(req.domain)?.value;
      if (!m) throw new NotFoundError("migration", req.domain, { hint: `no migration of ${req.domain} was recorded; start one with stowctl vm migrate ${req.domain} --to NODE` });
      return { migration: migrationToApi(m) };
    },
  };
}
