import { mkdtempSync, rmSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { adoptAccepted, arenaOnRead } from "./arena-reader.js";

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
