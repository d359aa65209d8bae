import { describe, expect, it } from "vitest";
import type { PoolJobProgressRecord } from "./model.js";
import { poolJobHeartbeat, poolJobProgressFields } from "./pool-job-schedule.js";

const progress = (doneBytes: number): PoolJobProgressRecord => ({ totalBytes: 1000, doneBytes, itemsTotal: 4, itemsDone: 1, phase: "image 2 of 4" });

describe("poolJobProgressFields", () => {
  it("gives rate and ETA from the bytes done since the start", () => {
    expect(poolJobProgressFields(0, progress(250), 5_000)).toEqual({ totalBytes: 1000, copiedBytes: 250, bytesPerSec: 50, etaSeconds: 15 });
  });
  it("knows nothing of the rate before the agent said anything", () => {
    expect(poolJobProgressFields(0, undefined, 5_000, 800)).toEqual({ totalBytes: 800, copiedBytes: 0, bytesPerSec: 0, etaSeconds: 0 });
    expect(poolJobProgressFields(0, progress(0), 5_000)).toEqual({ totalBytes: 1000, copiedBytes: 0, bytesPerSec: 0, etaSeconds: 0 });
  });
  it("never shows more done than the total", () => {
    expect(poolJobProgressFields(0, { ...progress(5000) }, 1_000).copiedBytes).toBe(1000);
  });
});

describe("poolJobHeartbeat", () => {
  it("records the agent's progress, keeps the last figures when the agent does not answer, and lands nothing after stop", async () => {
    const answers: Array<PoolJobProgressRecord | Error> = [progress(100), new Error("unavailable"), progress(300)];
    const puts: Array<number | undefined> = [];
    let release: () => void = () => undefined;
    const beat = poolJobHeartbeat(
      10,
      async () => {
        const a = answers.shift() ?? progress(300);
        if (a instanceof Error) throw a;
        return a;
      },
      async (p) => {
        puts.push(p?.doneBytes);
        // The third refresh is slow: stop() must wait for it.
        if (puts.length === 3) await new Promise<void>((r) => (release = r));
      },
    );
    while (puts.length < 3) await new Promise((r) => setTimeout(r, 5));
    const stopped = beat.stop();
    let done = false;
    void stopped.then(() => (done = true));
    await new Promise((r) => setTimeout(r, 30));
    expect(done).toBe(false);
    release();
    await stopped;
    const n = puts.length;
    await new Promise((r) => setTimeout(r, 40));
    expect(puts.length).toBe(n);
    expect(puts.slice(0, 3)).toEqual([100, 100, 300]);
  });
});
