import { mkdtempSync, rmSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type Arena, arenaOf, releaseArena, retainSlice } from "./arena.js";
import { adoptAccepted, arenaOnRead, ArenaReader } from "./arena-reader.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe("arenaOnRead", () => {
  it("hands out consecutive reads next to each other in one arena, and a fresh arena when the tail is short", () => {
    const chunks: Buffer[] = [];
    const r = arenaOnRead((c) => chunks.push(c));
    for (let i = 0; i < 3; i++) {
      const buf = r.buffer();
      Buffer.from(buf.buffer, buf.byteOffset, 1000).fill(i);
      r.callback(1000, buf);
    }
    expect(chunks.map((c) => c.length)).toEqual([1000, 1000, 1000]);
    expect(chunks[1]!.buffer).toBe(chunks[0]!.buffer);
    expect(chunks[1]!.byteOffset).toBe(chunks[0]!.byteOffset + 1000);
    expect(chunks[2]![0]).toBe(2);
    const first = r.buffer();
    r.callback(first.length - 1000, first); // leave less than the minimum tail
    expect(r.buffer().buffer).not.toBe(first.buffer);
  });
});

/** Drives a reader the way net does: buffer() once at the start and again after every read's callback. */
class FakeNet {
  private next: Uint8Array;
  constructor(readonly r: ArenaReader) {
    this.next = r.buffer();
  }
  read(n: number, fill: number): void {
    const buf = this.next;
    buf.fill(fill, 0, n);
    this.r.callback(n, buf);
    this.next = this.r.buffer();
  }
  get room(): number {
    return this.next.length;
  }
}

describe("ArenaReader recycling", () => {
  it("rewinds to the start of its arena only when no slice of it is referenced", () => {
    const chunks: Buffer[] = [];
    let held: Arena | undefined;
    // Like a connection that queues the first chunk for a write: referenced inside the callback.
    const r = new ArenaReader((c) => chunks.push(c) === 1 && (held = retainSlice(c)));
    r.startRecycling();
    const net = new FakeNet(r);
    net.read(100, 1);
    const kept = chunks[0]!;
    net.read(100, 2);
    net.read(100, 3);
    // Every read went past the referenced slice; it was never overwritten.
    expect(kept.every((b) => b === 1)).toBe(true);
    expect(chunks[1]!.byteOffset).toBe(kept.byteOffset + 100);
    expect(chunks[2]!.byteOffset).toBe(kept.byteOffset + 200);
    releaseArena(held!);
    net.read(100, 4);
    // Nothing referenced: the next read reuses the same memory from the start.
    net.read(100, 5);
    expect(chunks[4]!.buffer).toBe(kept.buffer);
    expect(chunks[4]!.byteOffset).toBe(kept.byteOffset);
  });

  it("moves on to another arena, and a referenced one is reused only after its last release", () => {
    const chunks: Buffer[] = [];
    const r = new ArenaReader((c) => chunks.push(c) === 1 && retainSlice(c));
    r.startRecycling();
    const net = new FakeNet(r);
    net.read(64, 9);
    const first = arenaOf(chunks[0]!)!;
    net.read(net.room - 1000, 8); // leaves less than the minimum tail: the next read needs a new arena
    net.read(10, 7);
    expect(arenaOf(chunks[2]!)).not.toBe(first);
    expect(first.refs).toBe(1); // only our reference is left: the reader let go
    expect(chunks[0]!.every((b) => b === 9)).toBe(true);
    // While we hold it, no reader can get it, however many arenas are taken.
    for (let i = 0; i < 20; i++) {
      const o = new ArenaReader(() => undefined);
      o.startRecycling();
      const onet = new FakeNet(o);
      onet.read(10, 0);
      expect(arenaOf(o.buffer())).not.toBe(first);
    }
    expect(chunks[0]!.every((b) => b === 9)).toBe(true);
    releaseArena(first);
    expect(first.refs).toBe(0);
  });

  it("never reuses the arenas it filled before recycling started", () => {
    const chunks: Buffer[] = [];
    const r = new ArenaReader((c) => chunks.push(c));
    const net = new FakeNet(r);
    net.read(50, 5); // handshake bytes, kept by code that takes no references
    r.startRecycling();
    net.read(50, 6); // net registered the old buffer before the switch: this read lands there too
    for (let i = 0; i < 10; i++) net.read(1000, 7);
    expect(chunks[0]!.every((b) => b === 5)).toBe(true);
    expect(chunks[1]!.every((b) => b === 6)).toBe(true);
    expect(arenaOf(chunks[2]!)).not.toBe(arenaOf(chunks[0]!));
    expect(arenaOf(chunks[0]!)!.refs).toBe(1); // the reader's reference, never dropped
  });
});

describe("adoptAccepted", () => {
  it("reads an accepted socket into arenas and lets its server close", async () => {
    const dir = mkdtempSync(join(tmpdir(), "arena-test-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, "s.sock");
    const chunks: Buffer[] = [];
    let adopted: Socket | undefined;
    const server = createServer({ pauseOnConnect: true }, (s) => {
      adopted = adoptAccepted(s, (c) => chunks.push(c));
      adopted.on("error", () => undefined);
    });
    await new Promise<void>((r) => server.listen(path, r));
    const client = connect(path);
    cleanups.push(() => client.destroy());
    await new Promise((r) => client.once("connect", r));
    const payload = Buffer.alloc(3 << 20, 7);
    client.write(payload);
    for (let i = 0; i < 200 && chunks.reduce((n, c) => n + c.length, 0) < payload.length; i++) await new Promise((r) => setTimeout(r, 10));
    expect(Buffer.concat(chunks).equals(payload)).toBe(true);
    // Reads larger than net's usual 64 KiB, mostly adjacent to each other.
    expect(Math.max(...chunks.map((c) => c.length))).toBeGreaterThan(64 * 1024);
    const adjacent = chunks.slice(1).filter((c, i) => c.buffer === chunks[i]!.buffer && c.byteOffset === chunks[i]!.byteOffset + chunks[i]!.length);
    expect(adjacent.length).toBeGreaterThan(0);
    // The adopted socket still writes, and the server no longer counts the connection.
    const echoed = new Promise<Buffer>((r) => client.once("data", r));
    adopted!.write("pong");
    expect((await echoed).toString()).toBe("pong");
    await new Promise<void>((r) => server.close(() => r()));
    adopted!.destroy();
  });
});
