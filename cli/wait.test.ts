import { describe, expect, it } from "vitest";
import { VolumePhase, type Volume } from "../gen/stowage/v1/types.js";
import { DeadlineError, NotFoundError, UnavailableError } from "../lib/errors.js";
import { createProgress, pollUntil, progressPrinter, replicasProgress, resizeProgress } from "./wait.js";

function fakeClock() {
  let t = 0;
  return { now: () => t, sleep: async (ms: number) => void (t += ms) };
}

const timeout = () => new DeadlineError("still busy");

describe("pollUntil", () => {
  it("returns the first value and polls every 100 ms", async () => {
    const clock = fakeClock();
    let calls = 0;
    const v = await pollUntil(async () => (++calls === 4 ? "done" : undefined), { timeoutMs: 1000, onTimeout: timeout, ...clock });
    expect(v).toBe("done");
    expect(clock.now()).toBe(300);
  });

  it("throws the timeout error when time runs out", async () => {
    const clock = fakeClock();
    await expect(pollUntil(async () => undefined, { timeoutMs: 250, onTimeout: timeout, ...clock })).rejects.toThrow("still busy");
    expect(clock.now()).toBe(250);
  });

  it("rides out an unreachable controller but stops on other errors", async () => {
    const clock = fakeClock();
    let calls = 0;
    const step = async () => {
      if (++calls < 3) throw new UnavailableError("leader moving");
      return "ok";
    };
    await expect(pollUntil(step, { timeoutMs: 1000, onTimeout: timeout, ...clock })).resolves.toBe("ok");
    const fail = async () => {
      throw new NotFoundError("volume", "x");
    };
    await expect(pollUntil(fail, { timeoutMs: 1000, onTimeout: timeout, ...clock })).rejects.toBeInstanceOf(NotFoundError);
  });
});

function vol(phase: VolumePhase, sizes: number[]): Volume {
  return {
    phase,
    replicas: sizes.map((s, i) => ({ id: `r${i}`, node: "n", pool: "p", path: "", state: 2, virtualSizeBytes: s, allocatedBytes: 0, message: "", outOfSync: false, outOfSyncSinceMs: 0, unreachableSinceMs: 0 })),
    message: "",
    createdAtMs: 0,
    attachments: [],
    uid: "",
    generation: 1,
  };
}

describe("progress", () => {
  it("create is done when healthy, failed when failed", () => {
    expect(createProgress(vol(VolumePhase.VOLUME_PHASE_CREATING, []))).toBe("pending");
    expect(createProgress(vol(VolumePhase.VOLUME_PHASE_HEALTHY, [1]))).toBe("done");
    expect(createProgress(vol(VolumePhase.VOLUME_PHASE_FAILED, []))).toBe("failed");
  });

  it("resize is done when healthy and every replica has grown", () => {
    expect(resizeProgress(vol(VolumePhase.VOLUME_PHASE_HEALTHY, [20, 10]), 20)).toBe("pending");
    expect(resizeProgress(vol(VolumePhase.VOLUME_PHASE_RESIZING, [20, 20]), 20)).toBe("pending");
    expect(resizeProgress(vol(VolumePhase.VOLUME_PHASE_HEALTHY, [20, 21]), 20)).toBe("done");
    expect(resizeProgress(vol(VolumePhase.VOLUME_PHASE_HEALTHY, []), 20)).toBe("pending");
    expect(resizeProgress(vol(VolumePhase.VOLUME_PHASE_FAILED, [20]), 20)).toBe("failed");
  });
});

describe("replica changes", () => {
  const cases: Record<string, [Volume, number, string]> = {
    "done: healthy, as many replicas as asked, all in sync": [vol(VolumePhase.VOLUME_PHASE_HEALTHY, [1, 1, 1]), 3, "done"],
    "pending: a new replica is still out of sync": [
      { ...vol(VolumePhase.VOLUME_PHASE_DEGRADED, [1, 1, 1]), replicas: vol(VolumePhase.VOLUME_PHASE_DEGRADED, [1, 1, 1]).replicas.map((r, i) => ({ ...r, outOfSync: i === 2 })) },
      3,
      "pending",
    ],
    "pending: healthy but a removed replica has not left yet": [vol(VolumePhase.VOLUME_PHASE_HEALTHY, [1, 1, 1]), 2, "pending"],
    "failed: the volume failed": [vol(VolumePhase.VOLUME_PHASE_FAILED, [1]), 1, "failed"],
  };
  for (const [name, [v, n, want]] of Object.entries(cases)) {
    it(name, () => expect(replicasProgress(v, n)).toBe(want));
  }

  it("progress lines: printed when they change, a moving percentage at most every 2 s", () => {
    let t = 0;
    const said: string[] = [];
    const say = progressPrinter((l) => said.push(l), () => t);
    say("vm1: 1/2 in sync; copying 10%");
    say("vm1: 1/2 in sync; copying 10%");
    t = 500;
    say("vm1: 1/2 in sync; copying 20%");
    t = 2_100;
    say("vm1: 1/2 in sync; copying 60%");
    t = 2_200;
    say("vm1: 2/2 in sync; removing r-1");
    expect(said).toEqual(["vm1: 1/2 in sync; copying 10%", "vm1: 1/2 in sync; copying 60%", "vm1: 2/2 in sync; removing r-1"]);
  });
});
