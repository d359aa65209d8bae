import { pino } from "pino";
import { describe, expect, it } from "vitest";
import type { Watcher } from "../../lib/exec.js";
import { DomainManager } from "./domains.js";
import { Virsh, type JobInfo, type LifecycleEvent } from "./virsh.js";

const NONE: JobInfo = { type: "None", operation: "", elapsedMs: 0, memoryTotalBytes: 0, memoryProcessedBytes: 0, memoryRemainingBytes: 0, downtimeMs: 0 };
const INCOMING: JobInfo = { ...NONE, type: "Completed", operation: "Incoming migration", elapsedMs: 420, downtimeMs: 12 };

/** A libvirtd as the migration code sees it: `virsh migrate` ends when the test says so. */
class FakeHost extends Virsh {
  completed: JobInfo = NONE;
  events: ((e: LifecycleEvent) => void) | undefined;
  watchersStopped = 0;
  finishMigrate: () => void = () => undefined;
  failMigrate: (err: Error) => void = () => undefined;

  override async info() {
    return { uuid: "u1", state: "running", persistent: false };
  }
  override migrate(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.finishMigrate = resolve;
      this.failMigrate = reject;
    });
  }
  override watchLifecycle(onEvent: (e: LifecycleEvent) => void): Watcher {
    this.events = onEvent;
    return { exited: new Promise(() => undefined), stop: () => void this.watchersStopped++ };
  }
  override async jobInfo(_domain: string, completed = false): Promise<JobInfo> {
    return completed ? this.completed : NONE;
  }
}

const tick = () => new Promise((r) => setTimeout(r, 5));

function setup() {
  const src = new FakeHost("qemu+tcp://src/system");
  const dst = new FakeHost("qemu+tcp://dst/system");
  const m = new DomainManager(src, pino({ level: "silent" }), 200, () => dst);
  const req = { domain: "web1", destinationUri: dst.uri, destinationHost: "10.0.0.2" };
  return { src, dst, m, req };
}

describe("DomainManager.migrate", () => {
  it("succeeds once the destination resumed the guest, while virsh still stops the source", async () => {
    const { src, dst, m, req } = setup();
    let settled = false;
    const p = m.migrate(req).finally(() => (settled = true));
    await tick();
    dst.events!({ domain: "other", event: "Resumed", detail: "Migrated" });
    dst.events!({ domain: "web1", event: "Started", detail: "Migrated" });
    await tick();
    expect(settled).toBe(false);
    dst.completed = INCOMING;
    dst.events!({ domain: "web1", event: "Resumed", detail: "Migrated" });
    const job = await p;
    expect(job).toMatchObject({ active: false, result: "completed", downtimeMs: 12, elapsedMs: 420 });
    expect(dst.watchersStopped).toBe(1);
    // virsh has not returned: the domain still counts as migrating here, and a repeated call joins.
    expect((await m.job("web1")).migrating).toBe(true);
    expect(await m.migrate(req)).toBe(job);
    src.finishMigrate();
    await tick();
    expect((await m.job("web1")).migrating).toBe(false);
  });

  it("keeps asking the destination after the resume until libvirt recorded the completed job", async () => {
    const { src, dst, m, req } = setup();
    let settled = false;
    const p = m.migrate(req).finally(() => (settled = true));
    await tick();
    dst.events!({ domain: "web1", event: "Resumed", detail: "Migrated" });
    await new Promise((r) => setTimeout(r, 120));
    expect(settled).toBe(false);
    dst.completed = INCOMING;
    expect(await p).toMatchObject({ downtimeMs: 12 });
    expect((await m.job("web1")).migrating).toBe(true);
    src.finishMigrate();
  });

  it("ends with virsh when the destination shows no completed job", async () => {
    const { src, dst, m, req } = setup();
    const p = m.migrate(req);
    await tick();
    dst.events!({ domain: "web1", event: "Resumed", detail: "Migrated" });
    await tick();
    src.finishMigrate();
    expect(await p).toMatchObject({ active: false, result: "completed", downtimeMs: 0 });
    expect(dst.watchersStopped).toBe(1);
    await tick();
    expect((await m.job("web1")).migrating).toBe(false);
  });

  it("fails with libvirt's error when virsh fails first", async () => {
    const { src, dst, m, req } = setup();
    const p = m.migrate(req);
    await tick();
    src.failMigrate(new Error("operation failed: migration out job: unexpectedly failed"));
    await expect(p).rejects.toThrow(/live migration of web1 failed: .*unexpectedly failed/);
    expect(dst.watchersStopped).toBe(1);
    await tick();
    expect((await m.job("web1")).migrating).toBe(false);
  });
});
