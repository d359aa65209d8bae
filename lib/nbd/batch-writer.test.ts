import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { describe, expect, it } from "vitest";
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
  write(b: Buffer): boolean {
    this.writes.push(b);
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
});
