import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { describe, expect, it } from "vitest";
import { takeArena } from "./arena.js";
import { BatchWriter } from "./batch-writer.js";

/** Records what a socket would be asked to do. */
class FakeSocket extends EventEmitter {
  writes: Buffer[] = [];
  corks = 0;
  destroyed = false;
  writableEnded = false;
  accept = true;
  cork(): void {
    this.corks++;
  }
  uncork(): void {}
  /** Write callbacks not yet called: the socket still owns those bytes. */
  callbacks: ((err?: Error | null) => void)[] = [];
  write(b: Buffer, cb?: (err?: Error | null) => void): boolean {
    this.writes.push(b);
    if (cb) this.callbacks.push(cb);
    return this.accept;
  }
  end(cb?: () => void): void {
    this.writableEnded = true;
    cb?.();
  }
  destroy(): void {
    this.destroyed = true;
  }
}

const tick = () => new Promise((r) => process.nextTick(r));

function setup() {
  const s = new FakeSocket();
  return { s, w: new BatchWriter(s as unknown as Socket) };
}

describe("BatchWriter", () => {
  it("merges slices that sit next to each other in memory into one write", async () => {
    const { s, w } = setup();
    const chunk = Buffer.from("headerPAYLOADheader2PAYLOAD2");
    w.push(chunk.subarray(0, 6));
    w.push(chunk.subarray(6, 13));
    w.push(chunk.subarray(13, 20));
    w.push(chunk.subarray(20));
    expect(s.writes).toEqual([]);
    await tick();
    expect(s.writes.map(String)).toEqual(["headerPAYLOADheader2PAYLOAD2"]);
    expect(s.writes[0]!.buffer).toBe(chunk.buffer);
    expect(s.corks).toBe(0);
  });

  it("keeps separate buffers apart and sends them in one corked batch per turn", async () => {
    const { s, w } = setup();
    const a = Buffer.from("aaaa");
    const b = Buffer.from("bbbb");
    const chunk = Buffer.from("0123456789");
    w.push(a);
    w.push(chunk.subarray(0, 3));
    w.push(chunk.subarray(5, 7)); // a gap: not adjacent
    w.push(b);
    await tick();
    expect(s.writes.map(String)).toEqual(["aaaa", "012", "56", "bbbb"]);
    expect(s.corks).toBe(1);
    w.push(Buffer.from("next"));
    await tick();
    expect(s.writes.map(String).slice(4)).toEqual(["next"]);
  });

  it("never merges across a gap even within one ArrayBuffer", async () => {
    const { s, w } = setup();
    const chunk = Buffer.from("abcdef");
    w.push(chunk.subarray(2, 4));
    w.push(chunk.subarray(0, 2)); // adjacent in memory but before, not after
    await tick();
    expect(s.writes.map(String)).toEqual(["cd", "ab"]);
  });

  it("reports congestion when write() refuses, and relief on drain", async () => {
    const { s, w } = setup();
    const seen: boolean[] = [];
    w.onCongestion = (c) => seen.push(c);
    s.accept = false;
    w.push(Buffer.from("x"));
    await tick();
    expect(w.congested).toBe(true);
    w.push(Buffer.from("y"));
    await tick();
    expect(seen).toEqual([true]);
    s.emit("drain");
    expect(w.congested).toBe(false);
    expect(seen).toEqual([true, false]);
  });

  it("drops what is queued for a destroyed socket, and ends after flushing", async () => {
    const { s, w } = setup();
    w.push(Buffer.from("late"));
    s.destroyed = true;
    await tick();
    expect(s.writes).toEqual([]);
    s.destroyed = false;
    w.push(Buffer.from("last"));
    w.end();
    expect(s.writes.map(String)).toEqual(["last"]);
    expect(s.writableEnded).toBe(true);
    expect(s.destroyed).toBe(true);
  });

  it("references arena slices until the socket has taken them, one reference per merged run", async () => {
    const { s, w } = setup();
    const a = takeArena(); // refs 1: the reader's
    const b = takeArena();
    w.push(a.buf.subarray(0, 16));
    w.push(a.buf.subarray(16, 1000)); // merged with the previous slice
    w.push(Buffer.from("own memory"));
    w.push(b.buf.subarray(100, 200));
    expect(a.refs).toBe(2);
    expect(b.refs).toBe(2);
    await tick();
    expect(s.writes.length).toBe(3);
    // Written but not yet taken by the kernel (the write is queued in the socket).
    expect(a.refs).toBe(2);
    expect(b.refs).toBe(2);
    w.push(a.buf.subarray(2000, 3000));
    await tick();
    expect(a.refs).toBe(3);
    expect(s.callbacks.length).toBe(2); // one per batch, on its last write
    s.callbacks.shift()!();
    expect(a.refs).toBe(2);
    expect(b.refs).toBe(1);
    s.callbacks.shift()!(null);
    expect(a.refs).toBe(1);
    expect(w.heldReferences).toBe(0);
  });

  it("keeps the references of a failed write for good: the arena is never reused", async () => {
    const { s, w } = setup();
    const a = takeArena();
    w.push(a.buf.subarray(0, 16));
    await tick();
    w.push(a.buf.subarray(16, 32).fill(0)); // not adjacent to a flushed batch: a new run
    await tick();
    s.callbacks.shift()!(new Error("EPIPE"));
    s.callbacks.shift()!(new Error("EPIPE"));
    expect(a.refs).toBe(3);
  });

  it("takes no callback when nothing pushed lives in an arena", async () => {
    const { s, w } = setup();
    w.push(Buffer.from("plain"));
    await tick();
    expect(s.writes.length).toBe(1);
    expect(s.callbacks.length).toBe(0);
  });
});
