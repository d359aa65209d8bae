import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { jobToProto } from "./domains.js";
import { parseDomInfo, parseJobInfo, parseLifecycleEvent, Virsh } from "./virsh.js";

describe("parseJobInfo", () => {
  it("reads a running migration's progress", () => {
    const j = parseJobInfo(
      [
        "Job type:         Unbounded   ",
        "Operation:        Outgoing migration",
        "Time elapsed:     1204         ms",
        "Data processed:   60.102 MiB",
        "Memory processed: 60.102 MiB",
        "Memory remaining: 196.500 MiB",
        "Memory total:     256.009 MiB",
        "Memory bandwidth: 51.200 MiB/s",
      ].join("\n"),
    );
    expect(j).toMatchObject({ type: "Unbounded", operation: "Outgoing migration", elapsedMs: 1204, downtimeMs: 0 });
    expect(j.memoryProcessedBytes).toBe(Math.round(60.102 * 2 ** 20));
    expect(j.memoryRemainingBytes).toBe(Math.round(196.5 * 2 ** 20));
    expect(j.memoryTotalBytes).toBe(Math.round(256.009 * 2 ** 20));
    expect(jobToProto(j)).toMatchObject({ active: true, result: "active" });
  });

  it("reads a completed job's downtime, and no job at all", () => {
    const done = parseJobInfo("Job type:         Completed\nOperation:        Incoming migration\nTime elapsed:     608 ms\nTotal downtime:   33           ms\n");
    expect(done).toMatchObject({ type: "Completed", elapsedMs: 608, downtimeMs: 33 });
    expect(jobToProto(done)).toMatchObject({ active: false, result: "completed", downtimeMs: 33 });
    expect(jobToProto(parseJobInfo("Job type:         None        \n"))).toMatchObject({ active: false, result: "none" });
  });
});

describe("parseDomInfo", () => {
  it("reads uuid, state and persistence", () => {
    const text = "Id:             3\nName:           web1\nUUID:           0b6c4b2e-1f0e-4d5e-9a3b-2c1d0e9f8a7b\nState:          running\nPersistent:     no\nAutostart:      disable\n";
    expect(parseDomInfo(text)).toEqual({ uuid: "0b6c4b2e-1f0e-4d5e-9a3b-2c1d0e9f8a7b", state: "running", persistent: false });
    expect(parseDomInfo("State:          shut off\nPersistent:     yes\n")).toMatchObject({ state: "shut off", persistent: true });
  });
});

describe("parseLifecycleEvent", () => {
  it("reads the domain, event and detail of `virsh event --event lifecycle` lines", () => {
    expect(parseLifecycleEvent("event 'lifecycle' for domain 'web1': Resumed Migrated")).toEqual({ domain: "web1", event: "Resumed", detail: "Migrated" });
    expect(parseLifecycleEvent("event 'lifecycle' for domain 'a-b.c': Started Migrated\n")).toEqual({ domain: "a-b.c", event: "Started", detail: "Migrated" });
    expect(parseLifecycleEvent("event 'job-completed' for domain 'web1':")).toBeUndefined();
    expect(parseLifecycleEvent("\tdowntime: 37")).toBeUndefined();
  });
});

const hasVirsh = (() => {
  try {
    execFileSync("virsh", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

// libvirt's built-in test driver: a real libvirt with one running domain "test", no daemon needed.
describe.skipIf(!hasVirsh)("Virsh against libvirt's test driver", () => {
  const v = new Virsh("test:///default");

  it("reads a domain's state, persistence and disks in one call", async () => {
    const d = await v.domain("test");
    expect(d).toMatchObject({ name: "test", state: "running", persistent: true });
    expect(d!.uuid).toMatch(/^[0-9a-f-]{36}$/);
    expect(d!.disks.map((x) => x.target)).toEqual(["vda"]);
    expect(await v.info("test")).toEqual({ uuid: d!.uuid, state: "running", persistent: true });
  });

  it("watches lifecycle events until its timeout or stop()", async () => {
    const t0 = Date.now();
    await v.watchLifecycle(() => undefined, 1).exited; // virsh exits 1 after its --timeout: a normal end
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    const w = v.watchLifecycle(() => undefined, 30);
    setTimeout(() => w.stop(), 100);
    await w.exited;
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it("returns undefined for a domain it does not have", async () => {
    expect(await v.domain("no-such-domain")).toBeUndefined();
    expect(await v.info("no-such-domain")).toBeUndefined();
  });
});
