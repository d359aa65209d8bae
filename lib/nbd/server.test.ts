import { randomBytes } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { NbdClient } from "./client.js";
import { Cmd, CmdFlag, Errno, SIMPLE_REPLY_MAGIC } from "./protocol.js";
import { RawConnection, startMemoryServer, type TestServer } from "./test-helpers.js";

const MiB = 1 << 20;
let servers: TestServer[] = [];
let clients: (NbdClient | RawConnection)[] = [];

afterEach(async () => {
  for (const c of clients) c.destroy();
  await Promise.all(servers.map((s) => s.close()));
  servers = [];
  clients = [];
});

async function serve(...args: Parameters<typeof startMemoryServer>) {
  const s = await startMemoryServer(...args);
  servers.push(s);
  return s;
}
async function client(s: TestServer) {
  const c = await NbdClient.connect({ socketPath: s.socketPath, exportName: "vol" });
  clients.push(c);
  return c;
}
async function raw(s: TestServer) {
  const c = await RawConnection.open(s.socketPath);
  clients.push(c);
  return c;
}

describe("NbdServer with the NbdClient", () => {
  it("negotiates size, flags and block sizes", async () => {
    const s = await serve(16 * MiB);
    const c = await client(s);
    expect(c.info.size).toBe(16 * MiB);
    expect(c.info.blockSizes).toEqual({ minimum: 1, preferred: 4096, maximum: 32 * MiB });
    expect(await NbdClient.list({ socketPath: s.socketPath })).toEqual([{ name: "vol", description: "memory" }]);
    expect((await NbdClient.query({ socketPath: s.socketPath, exportName: "vol" })).size).toBe(16 * MiB);
  });

  it("writes and reads back payloads that span many socket chunks", async () => {
    const s = await serve(64 * MiB);
    const c = await client(s);
    const data = randomBytes(9 * MiB + 123);
    await c.write(1000, data, { fua: true });
    expect(s.backend.data.subarray(1000, 1000 + data.length).equals(data)).toBe(true);
    expect((await c.read(1000, data.length)).equals(data)).toBe(true);
  });

  it("keeps a thousand requests in flight and matches every reply to its request", async () => {
    const s = await serve(16 * MiB);
    const c = await client(s);
    const blocks = Array.from({ length: 1000 }, (_, i) => Buffer.alloc(4096, i % 251));
    await Promise.all(blocks.map((b, i) => c.write(i * 4096, b)));
    const back = await Promise.all(blocks.map((_, i) => c.read(i * 4096, 4096)));
    back.forEach((b, i) => expect(b.equals(blocks[i]!)).toBe(true));
  });

  it("flushes, trims and writes zeroes", async () => {
    const s = await serve(MiB);
    const c = await client(s);
    await c.write(0, Buffer.alloc(8192, 7));
    await c.trim(0, 4096);
    await c.writeZeroes(4096, 100, { noHole: true });
    await c.flush();
    expect(s.backend.flushes).toBe(1);
    expect(s.backend.data.subarray(0, 4196).every((b) => b === 0)).toBe(true);
    expect(s.backend.data[4196]).toBe(7);
  });

  it("answers out-of-range requests with the spec's errors and keeps serving", async () => {
    const s = await serve(MiB);
    const r = await raw(s);
    r.request({ type: Cmd.READ, cookieLo: 1, offset: MiB - 10, length: 11 });
    expect(await r.reply()).toMatchObject({ magic: SIMPLE_REPLY_MAGIC, error: Errno.EINVAL, cookieLo: 1 });
    r.request({ type: Cmd.WRITE, cookieLo: 2, offset: MiB, length: 4 }, Buffer.from("abcd"));
    expect(await r.reply()).toMatchObject({ error: Errno.ENOSPC, cookieLo: 2 });
    r.request({ type: Cmd.TRIM, cookieLo: 3, offset: 2 ** 60, length: 1 });
    expect(await r.reply()).toMatchObject({ error: Errno.EINVAL, cookieLo: 3 });
    r.request({ type: Cmd.WRITE_ZEROES, cookieLo: 4, offset: MiB - 1, length: 2 });
    expect(await r.reply()).toMatchObject({ error: Errno.ENOSPC, cookieLo: 4 });
    // The refused write's payload was consumed: the stream is still in step.
    r.request({ type: Cmd.READ, cookieHi: 0xffffffff, cookieLo: 5, offset: 0, length: 8 });
    expect(await r.reply()).toMatchObject({ error: 0, cookieHi: 0xffffffff, cookieLo: 5 });
    expect((await r.read(8)).length).toBe(8);
    expect(s.backend.calls).toBe(1);
  });

  it("refuses unknown commands, unknown flags and flags not valid for the command with EINVAL", async () => {
    const s = await serve(MiB);
    const r = await raw(s);
    const cases = [
      { type: Cmd.CACHE },
      { type: Cmd.BLOCK_STATUS, length: 512 },
      { type: 99 },
      { type: Cmd.READ, flags: CmdFlag.DF, length: 512 },
      { type: Cmd.READ, flags: 0x8000, length: 512 },
      { type: Cmd.TRIM, flags: CmdFlag.NO_HOLE, length: 512 },
      { type: Cmd.FLUSH, flags: CmdFlag.NO_HOLE },
      { type: Cmd.WRITE_ZEROES, flags: CmdFlag.FAST_ZERO, length: 512 },
    ];
    for (const [i, c] of cases.entries()) {
      r.request({ ...c, cookieLo: i });
      expect(await r.reply(), JSON.stringify(c)).toMatchObject({ error: Errno.EINVAL, cookieLo: i });
    }
    r.request({ type: Cmd.READ, flags: CmdFlag.FUA, length: 4 });
    expect((await r.reply()).error).toBe(0);
  });

  it("refuses writes, trims and zeroes on a read-only export with EPERM", async () => {
    const s = await serve(MiB, { readOnly: true });
    const r = await raw(s);
    r.request({ type: Cmd.WRITE, cookieLo: 1, length: 3 }, Buffer.from("abc"));
    expect(await r.reply()).toMatchObject({ error: Errno.EPERM, cookieLo: 1 });
    r.request({ type: Cmd.TRIM, cookieLo: 2, length: 512 });
    expect(await r.reply()).toMatchObject({ error: Errno.EPERM, cookieLo: 2 });
    r.request({ type: Cmd.WRITE_ZEROES, cookieLo: 3, length: 512 });
    expect(await r.reply()).toMatchObject({ error: Errno.EPERM, cookieLo: 3 });
    const c = await client(s);
    await expect(c.write(0, Buffer.alloc(1))).rejects.toMatchObject({ name: "NbdError", errno: Errno.EPERM, code: "EPERM" });
  });

  it("refuses reads over the maximum payload, discards too-big writes it may, and drops writes over 32 MiB", async () => {
    const s = await serve(64 * MiB, { blockSizes: { maximum: MiB } });
    const r = await raw(s);
    expect(r.info!.blockSizes.maximum).toBe(MiB);
    r.request({ type: Cmd.READ, cookieLo: 1, length: MiB + 1 });
    expect(await r.reply()).toMatchObject({ error: Errno.EINVAL, cookieLo: 1 });
    r.request({ type: Cmd.WRITE, cookieLo: 2, length: 2 * MiB }, Buffer.alloc(2 * MiB));
    expect(await r.reply()).toMatchObject({ error: Errno.EINVAL, cookieLo: 2 });
    r.request({ type: Cmd.WRITE, cookieLo: 3, length: 32 * MiB + 1 });
    expect(await r.whenClosed()).toBe(true);
    const c = await client(s);
    expect((await c.read(0, 4)).length).toBe(4);
  });

  it("answers zero-length requests without bothering the backend", async () => {
    const s = await serve(MiB);
    const r = await raw(s);
    for (const type of [Cmd.READ, Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES]) {
      r.request({ type, cookieLo: type, offset: 100 });
      expect(await r.reply()).toMatchObject({ error: 0, cookieLo: type });
    }
    expect(s.backend.calls).toBe(0);
  });

  it("closes the connection on a bad request magic, and serves others meanwhile", async () => {
    const s = await serve(MiB);
    const bad = await raw(s);
    const good = await client(s);
    bad.send(Buffer.alloc(28, 0x55));
    expect(await bad.whenClosed()).toBe(true);
    await good.write(0, Buffer.from("still here"));
    expect((await good.read(0, 10)).toString()).toBe("still here");
  });

  it("on NBD_CMD_DISC, finishes the requests in flight, then closes", async () => {
    const s = await serve(MiB, { delayMs: 50 });
    const r = await raw(s);
    r.request({ type: Cmd.WRITE, cookieLo: 7, length: 4 }, Buffer.from("disc"));
    r.request({ type: Cmd.DISC });
    expect(await r.reply()).toMatchObject({ error: 0, cookieLo: 7 });
    expect(await r.whenClosed()).toBe(true);
    expect(s.backend.data.subarray(0, 4).toString()).toBe("disc");
  });

  it("on shutdown, finishes requests in flight, refuses new ones with ESHUTDOWN, then closes", async () => {
    const s = await serve(MiB, { delayMs: 100 });
    const r = await raw(s);
    r.request({ type: Cmd.WRITE, cookieLo: 1, length: 2 }, Buffer.from("ok"));
    await new Promise((res) => setTimeout(res, 20));
    const stopped = s.server.shutdown(5_000);
    r.request({ type: Cmd.READ, cookieLo: 2, length: 2 });
    const replies = [await r.reply(), await r.reply()];
    expect(replies).toContainEqual(expect.objectContaining({ cookieLo: 1, error: 0 }));
    expect(replies).toContainEqual(expect.objectContaining({ cookieLo: 2, error: Errno.ESHUTDOWN }));
    expect(await r.whenClosed()).toBe(true);
    await stopped;
    expect(s.backend.data.subarray(0, 2).toString()).toBe("ok");
  });

  it("takes a write larger than the in-flight byte limit (never pauses inside a payload)", async () => {
    const s = await serve(16 * MiB, { limits: { maxInFlightBytes: MiB } });
    const c = await client(s);
    const data = randomBytes(4 * MiB);
    await Promise.all([c.write(0, data), c.write(4 * MiB, data)]);
    expect(s.backend.data.subarray(4 * MiB, 8 * MiB).equals(data)).toBe(true);
  });

  it("stops reading at the in-flight limit and still answers everything", async () => {
    const s = await serve(MiB, { delayMs: 5, limits: { maxInFlight: 4 } });
    const c = await client(s);
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => c.write(i * 512, Buffer.alloc(512, i))));
    expect(results.length).toBe(200);
    expect(s.backend.data[199 * 512]).toBe(199);
  });
});
