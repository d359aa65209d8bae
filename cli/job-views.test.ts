import { describe, expect, it } from "vitest";
import { JobState, ReplicaState, VolumePhase, type Job, type Volume } from "../gen/stowage/v1/types.js";
import { drainDetail, formatEta, jobLine, jobPercent, jobsTable, replicaCopyLines, volumeProgressLine } from "./job-views.js";

const MiB = 2 ** 20;
const job: Job = {
  volume: "vm1", replicaId: "r-2", kind: "full", node: "n3", runner: "n3", state: JobState.JOB_STATE_RUNNING, message: "copying from r-1 on n1",
  totalBytes: 100 * MiB, copiedBytes: 45 * MiB, bytesPerSec: 10 * MiB, startedAtMs: 1, updatedAtMs: 2, etaSeconds: 6,
};

describe("job views", () => {
  const etas: Record<string, [number, string]> = {
    "unknown": [0, "-"],
    "seconds": [42, "42s"],
    "minutes and seconds": [65, "1m05s"],
    "hours and minutes": [2 * 3600 + 3 * 60 + 9, "2h03m"],
  };
  for (const [name, [s, text]] of Object.entries(etas)) it(`ETA: ${name}`, () => expect(formatEta(s)).toBe(text));

  const lines: Record<string, [Job, string]> = {
    "a running copy: percent, rate, ETA": [job, "copying (full) 45% of 100MiB, 10MiB/s, ETA 6s"],
    "a running copy without a rate yet": [{ ...job, copiedBytes: 0, bytesPerSec: 0, etaSeconds: 0 }, "copying (full) 0% of 100MiB"],
    "a waiting one says why": [{ ...job, state: JobState.JOB_STATE_WAITING, message: "node n3 offline", totalBytes: 0 }, "waiting: node n3 offline"],
    "a queued one": [{ ...job, state: JobState.JOB_STATE_QUEUED, message: "the controller copies it next" }, "queued: the controller copies it next"],
  };
  for (const [name, [j, text]] of Object.entries(lines)) it(`line: ${name}`, () => expect(jobLine(j)).toBe(text));

  it("percent is capped and unknown without a size", () => {
    expect(jobPercent({ ...job, copiedBytes: 200 * MiB })).toBe("100%");
    expect(jobPercent({ ...job, totalBytes: 0 })).toBe("-");
  });

  it("job table with the paused-rebuilds line first", () => {
    expect(jobsTable([job], "2 of 3 nodes offline: automatic rebuilds paused")).toBe(
      "2 of 3 nodes offline: automatic rebuilds paused\n" +
        "VOLUME   REPLICA   KIND   TARGET   STATE     PROGRESS        RATE      ETA   MESSAGE\n" +
        "vm1      r-2       full   n3       running   45% of 100MiB   10MiB/s   6s    copying from r-1 on n1\n",
    );
    expect(jobsTable([])).toBe("no jobs: every replica is in sync\n");
  });

  const replica = (id: string, node: string, extra: Partial<Volume["replicas"][number]> = {}): Volume["replicas"][number] => ({
    id, node, pool: "p", path: "", state: ReplicaState.REPLICA_STATE_HEALTHY, virtualSizeBytes: 0, allocatedBytes: 0, message: "",
    outOfSync: false, outOfSyncSinceMs: 0, unreachableSinceMs: 0, ...extra,
  });
  const volume: Volume = {
    spec: { name: "vm1", sizeBytes: 100 * MiB, replicas: 2, format: 1, preallocation: 1, pool: "" },
    phase: VolumePhase.VOLUME_PHASE_DEGRADED, message: "", createdAtMs: 0, uid: "u", attachments: [], generation: 3,
    replicas: [
      replica("r-1", "n1", { lastResync: { atMs: Date.UTC(2026, 0, 2, 3, 4, 5), kind: "full", bytes: 100 * MiB, durationMs: 1500 } }),
      replica("r-2", "n3", { outOfSync: true, job }),
    ],
  };

  it("a volume's copies and the one-line progress while waiting", () => {
    expect(replicaCopyLines(volume)).toBe(
      "copies:\n  r-1 on n1: last resync full 100MiB in 1.5s at 2026-01-02T03:04:05.000Z\n  r-2 on n3: copying (full) 45% of 100MiB, 10MiB/s, ETA 6s\n",
    );
    expect(volumeProgressLine(volume)).toBe("vm1: 1/2 replicas in sync; r-2 on n3 copying (full) 45% of 100MiB, 10MiB/s, ETA 6s");
  });

  it("a drain in node get", () => {
    expect(
      drainDetail({
        sinceMs: Date.UTC(2026, 0, 2),
        replicasLeft: 1,
        replicas: [{ volume: "vm1", replicaId: "r-1", message: "replacement r-2 on n3 is being brought in sync", job }],
      }),
    ).toBe(
      "Draining since 2026-01-02T00:00:00.000Z: 1 replica left\n" +
        "  vm1 r-1: replacement r-2 on n3 is being brought in sync; copying (full) 45% of 100MiB, 10MiB/s, ETA 6s\n",
    );
  });
});
