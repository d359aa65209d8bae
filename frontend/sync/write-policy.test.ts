import { describe, expect, it } from "vitest";
import { WritePolicy, type WriteVerdict } from "./write-policy.js";

const results = (entries: [string, boolean][]) => new Map(entries);

describe("WritePolicy", () => {
  it("acks a write every replica took", () => {
    const p = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: true }], 1);
    expect(p.writeTargets()).toEqual(["a", "b"]);
    expect(p.settle(results([["a", true], ["b", true]]))).toEqual({ kind: "ack" });
    expect(p.degraded).toBe(false);
  });

  it("marks a failed replica out-of-sync before the ack, and stops sending it anything", () => {
    const p = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: true }], 1);
    const r = results([["a", true], ["b", false]]);
    expect(p.settle(r)).toEqual({ kind: "mark", replicas: ["b"] });
    expect(p.state("b")).toBe("faulted");
    expect(p.writeTargets()).toEqual(["a"]);
    expect(p.readSources()).toEqual(["a"]);
    p.markConfirmed("b", 2);
    expect(p.finish(r)).toEqual({ kind: "ack" });
    expect(p.generation).toBe(2);
    expect(p.degraded).toBe(true);
  });

  it("fails the write when the mark cannot be recorded, and keeps the replica in-sync", () => {
    const p = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: true }], 1);
    const r = results([["a", true], ["b", false]]);
    p.settle(r);
    p.markRefused("b");
    expect(p.finish(r)).toMatchObject({ kind: "fail" });
    expect(p.state("b")).toBe("in-sync");
  });

  it("never gives up the last in-sync replica: a write it fails fails", () => {
    const p = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: false }], 3);
    expect(p.settle(results([["a", false]]))).toMatchObject({ kind: "fail" });
    expect(p.state("a")).toBe("in-sync");
    const both = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: true }], 1);
    expect(both.settle(results([["a", false], ["b", false]]))).toMatchObject({ kind: "fail" });
    expect([both.state("a"), both.state("b")]).toEqual(["in-sync", "in-sync"]);
  });

  it("resyncs: a reconnected replica gets writes but no reads until it is recorded in-sync", () => {
    const p = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: false }], 4);
    expect(p.writeTargets()).toEqual(["a"]);
    p.reconnected("b");
    expect(p.writeTargets()).toEqual(["a", "b"]);
    expect(p.readSources()).toEqual(["a"]);
    // A resyncing replica that fails a write just falls back: it is recorded out-of-sync already.
    expect(p.settle(results([["a", true], ["b", false]]))).toEqual({ kind: "ack" });
    expect(p.state("b")).toBe("out-of-sync");
    p.reconnected("b");
    p.resynced("b", 5);
    expect(p.readSources()).toEqual(["a", "b"]);
    expect(p.degraded).toBe(false);
  });

  it("refuses impossible transitions", () => {
    const p = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: true }], 1);
    expect(() => p.markConfirmed("a", 2)).toThrow(/not faulted/);
    expect(() => p.reconnected("a")).toThrow(/not out-of-sync/);
    expect(() => p.resynced("a", 2)).toThrow(/not resyncing/);
    expect(() => p.state("zz")).toThrow(/unknown replica/);
    expect(() => new WritePolicy([{ id: "a", inSync: false }], 1)).toThrow(/at least one in-sync/);
  });

  // Every interleaving (up to DEPTH events) of: a write where any subset of its
  // targets fails (each needed mark confirmed or refused), an out-of-sync replica
  // reconnecting, a resyncing replica finishing its copy. A model tracks which
  // replicas hold every acknowledged write; after every step an in-sync replica
  // (a read source, a resync source) must hold them all, and one must exist.
  it("keeps every acknowledged write on every in-sync replica in every interleaving", () => {
    const DEPTH = 5;
    type World = { p: WritePolicy; hasAll: Map<string, boolean>; acks: number };
    const clone = (w: World): World => {
      const p = Object.assign(Object.create(WritePolicy.prototype), w.p) as WritePolicy;
      (p as any).states = new Map((w.p as any).states);
      return { p, hasAll: new Map(w.hasAll), acks: w.acks };
    };
    const check = (w: World, trace: string[]) => {
      const inSync = w.p.ids().filter((id) => w.p.state(id) === "in-sync");
      expect(inSync.length, trace.join(" > ")).toBeGreaterThan(0);
      for (const id of w.p.readSources()) expect(w.hasAll.get(id), `${id} is a read source without every acked write: ${trace.join(" > ")}`).toBe(true);
      for (const id of inSync) expect(w.hasAll.get(id), `${id} is in-sync without every acked write: ${trace.join(" > ")}`).toBe(true);
    };
    let explored = 0;
    let acked = 0;
    const step = (w: World, depth: number, trace: string[]) => {
      check(w, trace);
      explored++;
      if (depth === 0) return;
      const ids = w.p.ids();
      // A write with every failure pattern over its targets.
      const targets = w.p.writeTargets();
      for (let mask = 0; mask < 1 << targets.length; mask++) {
        const r = new Map(targets.map((id, i) => [id, (mask & (1 << i)) === 0]));
        const label = `write(${targets.map((id, i) => (mask & (1 << i) ? `${id}x` : id)).join(",")})`;
        const w1 = clone(w);
        const v = w1.p.settle(r);
        const after = (w2: World, verdict: WriteVerdict, t: string[]) => {
          if (verdict.kind === "ack") {
            acked++;
            w2.acks++;
            for (const id of ids) if (!r.get(id)) w2.hasAll.set(id, false);
          }
          step(w2, depth - 1, t);
        };
        if (v.kind !== "mark") {
          after(w1, v, [...trace, `${label}:${v.kind}`]);
          continue;
        }
        // Each mark confirmed or refused.
        for (let m = 0; m < 1 << v.replicas.length; m++) {
          const w2 = clone(w1);
          v.replicas.forEach((id, i) => (m & (1 << i) ? w2.p.markRefused(id) : w2.p.markConfirmed(id, w2.p.generation + 1)));
          const fin = w2.p.finish(r);
          expect(fin.kind).not.toBe("mark");
          after(w2, fin, [...trace, `${label}:mark(${v.replicas.map((id, i) => (m & (1 << i) ? `${id}-refused` : `${id}-ok`)).join(",")}):${fin.kind}`]);
        }
      }
      for (const id of ids) {
        if (w.p.state(id) === "out-of-sync") {
          const w1 = clone(w);
          w1.p.reconnected(id);
          step(w1, depth - 1, [...trace, `reconnect(${id})`]);
        }
        if (w.p.state(id) === "resyncing") {
          // The copy brings it every write it missed; then it is recorded in-sync.
          const w1 = clone(w);
          w1.hasAll.set(id, true);
          w1.p.resynced(id, w1.p.generation + 1);
          step(w1, depth - 1, [...trace, `resynced(${id})`]);
        }
      }
    };
    const start = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: true }, { id: "c", inSync: false }], 1);
    step({ p: start, hasAll: new Map([["a", true], ["b", true], ["c", false]]), acks: 0 }, DEPTH, []);
    expect(explored).toBeGreaterThan(10_000);
    expect(acked).toBeGreaterThan(1_000);
  });
});
