import { describe, expect, it } from "vitest";
import { NO_SPACE, WritePolicy, type WriteVerdict } from "./write-policy.js";

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

  it("fails with ENOSPC, marking nothing, when every in-sync replica that failed ran out of space", () => {
    const ENOSPC = 28;
    const EIO = 5;
    const one = new WritePolicy([{ id: "a", inSync: true }], 1);
    expect(one.settle(results([["a", false]]), new Map([["a", ENOSPC]]))).toEqual({ kind: "fail", reason: expect.any(String), errno: NO_SPACE });
    expect(one.state("a")).toBe("in-sync");
    const both = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: true }], 1);
    expect(both.settle(results([["a", false], ["b", false]]), new Map([["a", ENOSPC], ["b", ENOSPC]]))).toMatchObject({ kind: "fail", errno: NO_SPACE });
    expect([both.state("a"), both.state("b")]).toEqual(["in-sync", "in-sync"]);
    expect(both.generation).toBe(1);
    // One full, one broken: not a plain "disk full", so EIO (no errno).
    const mixed = both.settle(results([["a", false], ["b", false]]), new Map([["a", ENOSPC], ["b", EIO]]));
    expect(mixed).toMatchObject({ kind: "fail" });
    expect(mixed).not.toHaveProperty("errno");
    // A resyncing replica took it but no in-sync one did: still ENOSPC, and the resyncing one stays.
    const r = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: false }], 3);
    r.reconnected("b");
    expect(r.settle(results([["a", false], ["b", true]]), new Map([["a", ENOSPC]]))).toMatchObject({ kind: "fail", errno: NO_SPACE });
    expect(r.state("b")).toBe("resyncing");
  });

  it("marks only the full replica out-of-sync when another in-sync replica took the write", () => {
    const p = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: true }], 1);
    const r = results([["a", true], ["b", false]]);
    expect(p.settle(r, new Map([["b", 28]]))).toEqual({ kind: "mark", replicas: ["b"] });
    p.markConfirmed("b", 2);
    expect(p.finish(r)).toEqual({ kind: "ack" });
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

  it("acks nothing a faulted replica skipped before its mark is recorded, and fails it when the mark is refused", () => {
    const p = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: true }], 1);
    const first = results([["a", true], ["b", false]]);
    expect(p.settle(first)).toEqual({ kind: "mark", replicas: ["b"] });
    // A second write arrives while b's mark is in flight: it goes to a only, and waits too.
    expect(p.writeTargets()).toEqual(["a"]);
    const second = results([["a", true]]);
    expect(p.settle(second)).toEqual({ kind: "mark", replicas: ["b"] });
    p.markRefused("b");
    expect(p.finish(first)).toMatchObject({ kind: "fail" });
    expect(p.finish(second)).toMatchObject({ kind: "fail" });
  });

  it("adds a new replica as out-of-sync and drops a removed one", () => {
    const p = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: true }], 1);
    p.added("c");
    expect(p.state("c")).toBe("out-of-sync");
    // Recorded in-sync but never written by this frontend: it must be marked before any ack.
    p.added("e", true);
    expect(p.state("e")).toBe("faulted");
    expect(p.settle(results([["a", true], ["b", true]]))).toEqual({ kind: "mark", replicas: ["e"] });
    p.markConfirmed("e", 2);
    p.removed("e");
    expect(p.writeTargets()).toEqual(["a", "b"]);
    expect(() => p.added("c")).toThrow(/known already/);
    p.removed("b");
    expect(p.ids()).toEqual(["a", "c"]);
    expect(() => p.removed("a")).toThrow(/last in-sync/);
  });

  // Every interleaving (up to DEPTH events) of: a write where any subset of its
  // targets fails (parked while marks are pending, so later writes overlap it),
  // each pending mark confirmed or refused (parked writes are then judged again),
  // an out-of-sync replica reconnecting, a resyncing replica finishing its copy,
  // a replica joining and an out-of-sync one leaving. A model tracks which
  // replicas hold every acknowledged write; after every step each in-sync replica
  // (a read source, a resync source) must hold them all, and one must exist.
  it("keeps every acknowledged write on every in-sync replica in every interleaving", () => {
    const DEPTH = 5;
    type Parked = Map<string, boolean>;
    type World = { p: WritePolicy; hasAll: Map<string, boolean>; parked: Parked[]; acks: number };
    const clone = (w: World): World => {
      const p = Object.assign(Object.create(WritePolicy.prototype), w.p) as WritePolicy;
      (p as any).states = new Map((w.p as any).states);
      (p as any).cache = undefined;
      return { p, hasAll: new Map(w.hasAll), parked: [...w.parked], acks: w.acks };
    };
    const check = (w: World, trace: string[]) => {
      const inSync = w.p.ids().filter((id) => w.p.state(id) === "in-sync");
      expect(inSync.length, trace.join(" > ")).toBeGreaterThan(0);
      for (const id of w.p.readSources()) expect(w.hasAll.get(id), `${id} is a read source without every acked write: ${trace.join(" > ")}`).toBe(true);
      for (const id of inSync) expect(w.hasAll.get(id), `${id} is in-sync without every acked write: ${trace.join(" > ")}`).toBe(true);
    };
    let explored = 0;
    let acked = 0;
    const apply = (w: World, r: Parked, v: WriteVerdict): string => {
      if (v.kind === "ack") {
        acked++;
        w.acks++;
        for (const id of w.p.ids()) if (!r.get(id)) w.hasAll.set(id, false);
      } else if (v.kind === "mark") {
        w.parked.push(r);
      }
      return v.kind;
    };
    const step = (w: World, depth: number, trace: string[]) => {
      check(w, trace);
      explored++;
      if (depth === 0) return;
      // A write with every failure pattern over its targets (at most two parked at once).
      const targets = w.p.writeTargets();
      if (w.parked.length < 2) {
        for (let mask = 0; mask < 1 << targets.length; mask++) {
          const r = new Map(targets.map((id, i) => [id, (mask & (1 << i)) === 0]));
          const w1 = clone(w);
          const kind = apply(w1, r, w1.p.settle(r));
          step(w1, depth - 1, [...trace, `write(${targets.map((id, i) => (mask & (1 << i) ? `${id}x` : id)).join(",")}):${kind}`]);
        }
      }
      for (const id of w.p.ids()) {
        const s = w.p.state(id);
        if (s === "faulted") {
          for (const refused of [false, true]) {
            const w1 = clone(w);
            if (refused) w1.p.markRefused(id);
            else w1.p.markConfirmed(id, w1.p.generation + 1);
            const parked = w1.parked.splice(0);
            const kinds = parked.map((r) => apply(w1, r, w1.p.finish(r)));
            step(w1, depth - 1, [...trace, `mark(${id}):${refused ? "refused" : "ok"}[${kinds.join(",")}]`]);
          }
        }
        if (s === "out-of-sync") {
          const w1 = clone(w);
          w1.p.reconnected(id);
          step(w1, depth - 1, [...trace, `reconnect(${id})`]);
          const w2 = clone(w);
          w2.p.removed(id);
          w2.hasAll.delete(id);
          step(w2, depth - 1, [...trace, `removed(${id})`]);
        }
        if (s === "resyncing" && w.parked.length === 0) {
          // The copy brings it every write it missed; then it is recorded in-sync.
          const w1 = clone(w);
          w1.hasAll.set(id, true);
          w1.p.resynced(id, w1.p.generation + 1);
          step(w1, depth - 1, [...trace, `resynced(${id})`]);
        }
      }
      if (!w.p.ids().includes("d")) {
        // A new replica; or, before this frontend acknowledged anything (at its start), one
        // recorded in-sync that it cannot reach: that one holds every acknowledged write.
        for (const recordedInSync of w.acks === 0 ? [false, true] : [false]) {
          const w1 = clone(w);
          w1.p.added("d", recordedInSync);
          w1.hasAll.set("d", recordedInSync);
          step(w1, depth - 1, [...trace, `added(d${recordedInSync ? ",in-sync" : ""})`]);
        }
      }
    };
    const start = new WritePolicy([{ id: "a", inSync: true }, { id: "b", inSync: true }, { id: "c", inSync: false }], 1);
    step({ p: start, hasAll: new Map([["a", true], ["b", true], ["c", false]]), parked: [], acks: 0 }, DEPTH, []);
    expect(explored).toBeGreaterThan(30_000);
    expect(acked).toBeGreaterThan(3_000);
  });
});
