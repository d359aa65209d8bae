// VM operations of one node: look up a domain, hot-plug and unplug volume
// disks, live-migrate to another node's libvirtd. Calls are idempotent; a
// migration runs once per domain however often it is asked for.
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, StowageError, errorMessage } from "../../lib/errors.js";
import { diskXml, firstFreeTarget } from "../../lib/libvirt-xml.js";
import type { Logger } from "../../lib/logger.js";
import { validateDomainName, validateName } from "../../lib/names.js";
import type { Domain, DomainJob } from "../../gen/stowage/v1/agent.js";
import { Virsh, type DomainState, type JobInfo } from "./virsh.js";

const DETACH_WAIT_MS = 15_000;
const MIGRATE_TIMEOUT_MS = 60 * 60_000;

export function jobToProto(j: JobInfo): DomainJob {
  const type = j.type.toLowerCase();
  return {
    active: type === "unbounded" || type === "bounded",
    operation: j.operation,
    elapsedMs: j.elapsedMs,
    memoryTotalBytes: j.memoryTotalBytes,
    memoryProcessedBytes: j.memoryProcessedBytes,
    memoryRemainingBytes: j.memoryRemainingBytes,
    downtimeMs: j.downtimeMs,
    result: type === "unbounded" || type === "bounded" ? "active" : type,
  };
}

function domainToProto(d: DomainState): Domain {
  return {
    name: d.name,
    uuid: d.uuid,
    state: d.state,
    persistent: d.persistent,
    disks: d.disks.map((x) => ({ ...x })),
  };
}

export class DomainManager {
  private readonly migrations = new Map<string, Promise<DomainJob>>();

  constructor(
    private readonly virsh: Virsh,
    private readonly log: Logger,
    private readonly pollMs = 200,
  ) {}

  async get(name: string): Promise<Domain | undefined> {
    validateDomainName(name);
    const d = await this.virsh.domain(name);
    return d && domainToProto(d);
  }

  private async require(name: string): Promise<DomainState> {
    validateDomainName(name);
    const d = await this.virsh.domain(name);
    if (!d) throw this.virsh.notFound(name);
    return d;
  }

  /** Hot-plugs the volume's frontend socket into the domain; returns the guest device name. */
  async attachDisk(req: { domain: string; volume: string; socketPath: string; target: string }): Promise<{ target: string; attached: boolean }> {
    validateName("volume", req.volume);
    const d = await this.require(req.domain);
    const same = d.disks.find((x) => x.protocol === "nbd" && x.exportName === req.volume && x.socketPath === req.socketPath);
    if (same) return { target: same.target, attached: false };
    if (req.target && !/^(vd|sd|hd|xvd)[a-z]{1,2}$/.test(req.target)) {
      throw new InvalidArgumentError(`invalid guest device name "${req.target}"`, { hint: "use a name like vdb" });
    }
    const taken = d.disks.find((x) => x.target === req.target);
    if (req.target && taken) {
      throw new FailedPreconditionError(`domain ${req.domain} already has a disk ${req.target} (${taken.source})`, { hint: "choose another --target, or leave it out to use the first free one" });
    }
    const target = req.target || firstFreeTarget(d.disks.map((x) => x.target));
    await this.virsh.attachDevice(req.domain, diskXml({ volume: req.volume, socketPath: req.socketPath, target }), d.persistent);
    this.log.info({ domain: req.domain, volume: req.volume, target }, "disk attached");
    return { target, attached: true };
  }

  /** Unplugs the disk backed by the volume and waits until the guest released it. */
  async detachDisk(req: { domain: string; volume: string }): Promise<boolean> {
    validateName("volume", req.volume);
    const d = await this.require(req.domain);
    const disk = d.disks.find((x) => x.protocol === "nbd" && x.exportName === req.volume);
    if (!disk) return false;
    await this.virsh.detachDisk(req.domain, disk.target, d.persistent);
    const deadline = Date.now() + DETACH_WAIT_MS;
    for (;;) {
      const now = await this.virsh.domain(req.domain);
      if (!now?.disks.some((x) => x.target === disk.target)) break;
      if (Date.now() > deadline) {
        throw new StowageError(`the guest of ${req.domain} has not released disk ${disk.target} after ${DETACH_WAIT_MS / 1000} s`, {
          hint: "the guest must acknowledge the unplug (ACPI hotplug); retry, or shut the domain down",
        });
      }
      await new Promise((r) => setTimeout(r, this.pollMs));
    }
    this.log.info({ domain: req.domain, volume: req.volume, target: disk.target }, "disk detached");
    return true;
  }

  /** The domain's libvirt job now, and whether this agent is migrating it. */
  async job(domain: string): Promise<{ job: DomainJob; migrating: boolean }> {
    validateDomainName(domain);
    const migrating = this.migrations.has(domain);
    try {
      return { job: jobToProto(await this.virsh.jobInfo(domain)), migrating };
    } catch (err) {
      // Gone from this node (migrated away): no job here.
      if (err instanceof NotFoundError) return { job: jobToProto({ type: "None", operation: "", elapsedMs: 0, memoryTotalBytes: 0, memoryProcessedBytes: 0, memoryRemainingBytes: 0, downtimeMs: 0 }), migrating };
      throw err;
    }
  }

  /** Live-migrates the domain; a second call while one runs joins it. Resolves with the destination's completed-job figures. */
  migrate(req: { domain: string; destinationUri: string; destinationHost: string }): Promise<DomainJob> {
    validateDomainName(req.domain);
    const running = this.migrations.get(req.domain);
    if (running) return running;
    const p = this.runMigration(req).finally(() => this.migrations.delete(req.domain));
    this.migrations.set(req.domain, p);
    return p;
  }

  private async runMigration(req: { domain: string; destinationUri: string; destinationHost: string }): Promise<DomainJob> {
    if (!req.destinationUri || !req.destinationHost) throw new InvalidArgumentError("migration needs a destination libvirt URI and host");
    const d = await this.virsh.info(req.domain);
    if (!d) throw this.virsh.notFound(req.domain);
    if (d.state !== "running" && d.state !== "paused") {
      throw new FailedPreconditionError(`domain ${req.domain} is ${d.state}; only a running domain can be live-migrated`);
    }
    const t0 = Date.now();
    this.log.info({ domain: req.domain, to: req.destinationUri }, "live migration started");
    try {
      await this.virsh.migrate(req.domain, req.destinationUri, req.destinationHost, d.persistent, MIGRATE_TIMEOUT_MS);
    } catch (err) {
      this.log.warn({ domain: req.domain, to: req.destinationUri, err: errorMessage(err) }, "live migration failed");
      throw new StowageError(`live migration of ${req.domain} failed: ${errorMessage(err)}`, { cause: err });
    }
    const wallMs = Date.now() - t0;
    // The destination keeps the completed job's statistics (downtime).
    const job = await new Virsh(req.destinationUri).jobInfo(req.domain, true).then(jobToProto, () => undefined);
    this.log.info({ domain: req.domain, to: req.destinationUri, wallMs, downtimeMs: job?.downtimeMs }, "live migration completed");
    return { ...(job ?? jobToProto({ type: "Completed", operation: "Outgoing migration", elapsedMs: wallMs, memoryTotalBytes: 0, memoryProcessedBytes: 0, memoryRemainingBytes: 0, downtimeMs: 0 })), active: false, result: "completed" };
  }
}
