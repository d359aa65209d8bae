import { describe, expect, it } from "vitest";
import { jobToProto } from "./domains.js";
import { parseDomInfo, parseJobInfo } from "./virsh.js";

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
