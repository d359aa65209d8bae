// VM operations of one node: look up a domain, hot-plug and unplug volume
// disks, live-migrate to another node's libvirtd. Calls are idempotent; a
// migration runs once per domain however often it is asked for.
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, StowageError, errorMessage } from "../../lib/errors.js";
import { diskXml, firstFreeTarget } from "../../lib/libvirt-xml.js";
import type { Logger } from "../../lib/logger.js";
import { validateDomainName, validateName } from "../../lib/names.js";
import type { Domain, DomainJob } from "../../gen/stowage/v1/agent.js";
import { setTimeout as sleep } from "node:timers/promises";
import type { Watcher } from "../../lib/exec.js";
import { Virsh, type DomainState, type JobInfo } from "./virsh.js";

const DETACH_WAIT_MS = 15_000;
const MIGRATE_TIMEOUT_MS = 60 * 60_000;
/** A destination event watcher runs this long, then the next one (so one orphaned by an agent crash ends soon). */
const WATCH_SLICE_S = 30;

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
    /** Another node's libvirtd (a migration's destination). */
    private readonly peer: (uri: string) => Virsh = (uri) => new Virsh(uri),
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

  /**
   * Live-migrates the domain; a second call while one runs joins it. Resolves with the
   * destination's completed-job figures once the guest runs there: libvirt's last step,
   * stopping the source QEMU, may still be under way (the domain counts as migrating on
   * this node until it is over).
   */
  migrate(req: { domain: string; destinationUri: string; destinationHost: string }): Promise<DomainJob> {
    validateDomainName(req.domain);
    const running = this.migrations.get(req.domain);
    if (running) return running;
    let virshEnded: Promise<unknown> = Promise.resolve();
    const result = this.runMigration(req, (p) => (virshEnded = p));
    this.migrations.set(req.domain, result);
    const drop = () => {
      this.migrations.delete(req.domain);
    };
    const forget = () => virshEnded.then(drop, drop);
    void result.then(forget, forget);
    return result;
  }

  private async runMigration(req: { domain: string; destinationUri: string; destinationHost: string }, started: (virsh: Promise<unknown>) => void): Promise<DomainJob> {
    if (!req.destinationUri || !req.destinationHost) throw new InvalidArgumentError("migration needs a destination libvirt URI and host");
    const d = await this.virsh.info(req.domain);
    if (!d) throw this.virsh.notFound(req.domain);
    if (d.state !== "running" && d.state !== "paused") {
      throw new FailedPreconditionError(`domain ${req.domain} is ${d.state}; only a running domain can be live-migrated`);
    }
    const t0 = Date.now();
    const dest = this.peer(req.destinationUri);
    this.log.info({ domain: req.domain, to: req.destinationUri }, "live migration started");
    // `virsh migrate` returns after libvirt's Confirm step, which stops the source QEMU:
    // SIGTERM, then a check of the pid every 200 ms, so at least 200 ms after the guest
    // already runs on the destination. The outcome is settled before that, when the
    // destination resumes the guest (its Finish step); that event ends the wait here.
    let resumed: () => void = () => undefined;
    const resumedThere = new Promise<"resumed">((r) => (resumed = () => r("resumed")));
    const watcher = this.watchResumed(dest, req.domain, () => resumed());
    const migrating = this.virsh.migrate(req.domain, req.destinationUri, req.destinationHost, d.persistent, MIGRATE_TIMEOUT_MS);
    started(migrating);
    const fail = (err: unknown) => {
      this.log.warn({ domain: req.domain, to: req.destinationUri, err: errorMessage(err) }, "live migration failed");
      return new StowageError(`live migration of ${req.domain} failed: ${errorMessage(err)}`, { cause: err });
    };
    const exited = migrating.then(() => "exited" as const);
    let job: DomainJob | undefined;
    let early = false;
    try {
      const first = await Promise.race([exited, resumedThere]);
      // The destination keeps the completed job's statistics (downtime); an incoming job
      // completed there is libvirt's word that the migration succeeded. The guest resumes
      // a little before libvirt records that (longer on a busy host): ask until virsh ends.
      if (first === "resumed") job = await this.completedIncomingBefore(dest, req.domain, exited);
      early = job !== undefined;
      if (!early) {
        await migrating;
        job = await this.completedIncoming(dest, req.domain);
      }
    } catch (err) {
      throw fail(err);
    } finally {
      watcher.stop();
    }
    if (early) {
      // Returned before virsh: its end (the source QEMU stopped) is only logged.
      migrating.then(
        () => this.log.debug({ domain: req.domain, wallMs: Date.now() - t0 }, "source side of the migration cleaned up"),
        (err) => this.log.warn({ domain: req.domain, to: req.destinationUri, err: errorMessage(err) }, "libvirt reported an error after the domain moved to the destination"),
      );
    }
    const wallMs = Date.now() - t0;
    this.log.info({ domain: req.domain, to: req.destinationUri, wallMs, downtimeMs: job?.downtimeMs }, "live migration completed");
    return job ?? { ...jobToProto({ type: "Completed", operation: "Outgoing migration", elapsedMs: wallMs, memoryTotalBytes: 0, memoryProcessedBytes: 0, memoryRemainingBytes: 0, downtimeMs: 0 }), active: false, result: "completed" };
  }

  /** Calls `onResumed` when `dest` resumes `domain` after an incoming migration, until stop(). */
  private watchResumed(dest: Virsh, domain: string, onResumed: () => void): { stop(): void } {
    let stopped = false;
    let current: Watcher | undefined;
    const start = () => {
      if (stopped) return;
      const since = Date.now();
      current = dest.watchLifecycle((e) => {
        if (e.domain === domain && e.event === "Resumed" && e.detail === "Migrated") onResumed();
      }, WATCH_SLICE_S);
      // An unreachable destination fails the migration itself; the watcher only saves time.
      current.exited.then(
        () => (Date.now() - since >= (WATCH_SLICE_S * 1000) / 2 ? start() : undefined),
        (err) => this.log.debug({ domain, err: errorMessage(err) }, "destination event watcher failed"),
      );
    };
    start();
    return {
      stop: () => {
        stopped = true;
        current?.stop();
      },
    };
  }

  /** The destination's completed incoming job, asked for every 50 ms until `ended` settles (then undefined). */
  private async completedIncomingBefore(dest: Virsh, domain: string, ended: Promise<unknown>): Promise<DomainJob | undefined> {
    let over = false;
    const end = ended.then(
      () => (over = true),
      () => (over = true),
    );
    while (!over) {
      const job = await this.completedIncoming(dest, domain);
      if (job) return job;
      await Promise.race([end, sleep(50)]);
    }
    return undefined;
  }

  /** The destination's completed incoming-migration job, if it has one. */
  private async completedIncoming(dest: Virsh, domain: string): Promise<DomainJob | undefined> {
    const j = await dest.jobInfo(domain, true).catch(() => undefined);
    if (!j || j.type !== "Completed" || !/incoming/i.test(j.operation)) return undefined;
    return { ...jobToProto(j), active: false, result: "completed" };
  }
}
