import { mkdtempSync, rmSync } from "node:fs";
import { createServer, connect, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { setSendBuffer } from "./socket-buffer.js";

const MiB = 1024 * 1024;

let dir: string;
let server: Server | undefined;
const sockets: Socket[] = [];

afterEach(() => {
  for (const s of sockets.splice(0)) s.destroy();
  server?.close();
  server = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A connected unix socket pair: `a` is the client end, `b` the accepted end (paused: it reads nothing). */
async function pair(): Promise<{ a: Socket; b: Socket }> {
  dir = mkdtempSync(join(tmpdir(), "stowage-sndbuf-"));
  const path = join(dir, "s.sock");
  const accepted = new Promise<Socket>((resolve) => {
    server = createServer({ pauseOnConnect: true }, resolve);
  });
  await new Promise<void>((resolve) => server!.listen(path, resolve));
  const a = connect(path);
  await new Promise<void>((resolve) => a.once("connect", resolve));
  const b = await accepted;
  sockets.push(a, b);
  return { a, b };
}

/** Bytes of a 3 MiB write the kernel took while the peer reads nothing (the rest waits in Node). */
async function takenByKernel(a: Socket): Promise<number> {
  a.write(Buffer.alloc(3 * MiB, 7));
  await new Promise((r) => setTimeout(r, 100));
  return 3 * MiB - a.writableLength;
}

describe("setSendBuffer", () => {
  it("lets the kernel queue a whole 3 MiB write on a unix socket, where the default takes a fraction", async () => {
    const plain = await pair();
    const takenDefault = await takenByKernel(plain.a);
    for (const s of sockets.splice(0)) s.destroy();
    server?.close();

    const raised = await pair();
    expect(await setSendBuffer(raised.a, 4 * MiB)).toBe(true);
    const takenRaised = await takenByKernel(raised.a);
    expect(takenDefault).toBeLessThan(MiB);
    expect(takenRaised).toBe(3 * MiB);
  });

  it("leaves a reading socket reading, and a paused one paused", async () => {
    const { a, b } = await pair();
    const got: Buffer[] = [];
    a.on("data", (d: Buffer) => got.push(d));
    expect(await setSendBuffer(a, 4 * MiB)).toBe(true);
    expect(await setSendBuffer(b, 4 * MiB)).toBe(true);
    expect(b.isPaused()).toBe(true);
    b.write("hello after setsockopt");
    await new Promise((r) => setTimeout(r, 100));
    expect(Buffer.concat(got).toString()).toBe("hello after setsockopt");
  });

  it("refuses nonsense sizes and destroyed sockets without touching them", async () => {
    const { a } = await pair();
    expect(await setSendBuffer(a, 0)).toBe(false);
    expect(await setSendBuffer(a, -1)).toBe(false);
    expect(await setSendBuffer(a, 1.5)).toBe(false);
    a.destroy();
    expect(await setSendBuffer(a, MiB)).toBe(false);
  });
});
