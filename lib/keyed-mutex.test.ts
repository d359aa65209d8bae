import { describe, expect, it } from "vitest";
import { KeyedMutex } from "./keyed-mutex.js";
import { mapLimit } from "./map-limit.js";

const tick = () => new Promise((r) => setTimeout(r, 1));

describe("KeyedMutex", () => {
  it("runs work for one key one at a time, in order, and other keys in parallel", async () => {
    const m = new KeyedMutex();
    const events: string[] = [];
    const job = (key: string, name: string) =>
      m.run(key, async () => {
        events.push(`start ${name}`);
        await tick();
        events.push(`end ${name}`);
        return name;
      });
    const results = await Promise.all([job("a", "a1"), job("a", "a2"), job("b", "b1")]);
    expect(results).toEqual(["a1", "a2", "b1"]);
    expect(events.indexOf("end a1")).toBeLessThan(events.indexOf("start a2"));
    expect(events.indexOf("start b1")).toBeLessThan(events.indexOf("end a1"));
    expect(m.size).toBe(0);
  });

  it("releases the key when the work throws", async () => {
    const m = new KeyedMutex();
    await expect(m.run("a", async () => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    expect(await m.run("a", async () => 1)).toBe(1);
    expect(m.size).toBe(0);
  });
});

describe("mapLimit", () => {
  it("keeps order and the limit", async () => {
    let running = 0;
    let peak = 0;
    const out = await mapLimit([1, 2, 3, 4, 5, 6], 2, async (x) => {
      peak = Math.max(peak, ++running);
      await tick();
      running--;
      return x * 10;
    });
    expect(out).toEqual([10, 20, 30, 40, 50, 60]);
    expect(peak).toBe(2);
    expect(await mapLimit([], 4, async (x) => x)).toEqual([]);
  });

  it("starts nothing after a failure and throws it once the items in flight settled", async () => {
    const started: number[] = [];
    let inFlight = 0;
    const run = mapLimit([1, 2, 3, 4, 5, 6], 2, async (x) => {
      started.push(x);
      inFlight++;
      await tick();
      await tick();
      inFlight--;
      if (x === 2) throw new Error("item 2 failed");
      return x;
    });
    await expect(run).rejects.toThrow("item 2 failed");
    expect(inFlight).toBe(0);
    expect(started).toEqual([1, 2, 3]);
  });
});
