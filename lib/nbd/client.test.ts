import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { NbdClient } from "./client.js";
import { NbdDisconnectedError, NbdError, NbdProtocolError } from "./errors.js";
import {
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeOptionReply,
  Errno,
  HandshakeFlag,
  Opt,
  Rep,
  TxFlag,
  writeSimpleReply,
} from "./protocol.js";
import { ServerHandshake } from "./server-handshake.js";
import { startMemoryServer, type TestServer } from "./test-helpers.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function memory(...args: Parameters<typeof startMemoryServer>): Promise<TestServer> {
  const s = await startMemoryServer(...args);
  cleanups.push(() => s.close());
  return s;
}

/** A scripted server: `onSocket` gets each connection; returns its socket path. */
async function scripted(onSocket: (s: Socket) => void): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "nbd-client-test-"));
  const path = join(dir, "sock");
  const sockets: Socket[] = [];
  const server: Server = createServer((s) => {
    sockets.push(s);
    s.on("error", () => undefined);
    onSocket(s);
  });
  await new Promise<void>((r) => server.listen(path, r));
  cleanups.push(() => {
    for (const s of sockets) s.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return path;
}

/** Handshakes like a real server for export "vol", then hands transmission bytes to `onRequest`. */
function handshakeThen(onRequest: (s: Socket, data: Buffer) => void): (s: Socket) => void {
  return (s) => {
    const exp = { name: "vol", description: "", size: 1 << 20, txFlags: TxFlag.HAS_FLAGS, blockSizes: { minimum: 1, preferred: 4096, maximum: 1 << 20 } };
    const hs = new ServerHandshake(exp, (b) => s.write(b));
    let transmission = false;
    s.write(ServerHandshake.greeting());
    s.on("data", (d: Buffer) => {
      if (transmission) return onRequest(s, d);
      if (hs.feed(d) === "transmission") {
        transmission = true;
        if (hs.leftover.length) onRequest(s, hs.leftover);
      }
    });
  };
}

describe("NbdClient", () => {
  it("checks ranges, alignment and read-only before sending", async () => {
    const s = await memory(1 << 20, { readOnly: true, blockSizes: { minimum: 512 } });
    const c = await NbdClient.connect({ socketPath: s.socketPath, exportName: "vol" });
    cleanups.push(() => c.destroy());
    expect(() => c.read(1 << 20, 512)).toThrow(NbdError);
    expect(() => c.read(0, 100)).toThrow(/aligned/);
    await expect(c.write(0, Buffer.alloc(512))).rejects.toMatchObject({ errno: Errno.EPERM });
    expect(s.backend.calls).toBe(0);
  });

  it("fails requests in flight with NbdDisconnectedError when the server goes away, and says so", async () => {
    const path = await scripted(handshakeThen((s) => s.destroy()));
    const c = await NbdClient.connect({ socketPath: path, exportName: "vol" });
    const closed = new Promise((r) => c.once("close", r));
    await expect(c.read(0, 512)).rejects.toBeInstanceOf(NbdDisconnectedError);
    await closed;
    expect(c.usable).toBe(false);
    await expect(c.read(0, 512)).rejects.toBeInstanceOf(NbdDisconnectedError);
  });

  it("drops the connection on a reply with a cookie it never sent", async () => {
    const path = await scripted(
      handshakeThen((s) => {
        const r = Buffer.alloc(16);
        writeSimpleReply(r, 0, 0, 0x1234, 0x5678);
        s.write(r);
      }),
    );
    const c = await NbdClient.connect({ socketPath: path, exportName: "vol" });
    const closed = new Promise<Error | undefined>((r) => c.once("close", r));
    await expect(c.flush()).rejects.toBeInstanceOf(NbdDisconnectedError);
    expect(await closed).toBeInstanceOf(NbdProtocolError);
  });

  it("passes the server's error value through as NbdError.errno", async () => {
    const path = await scripted(
      handshakeThen((s, d) => {
        const r = Buffer.alloc(16);
        writeSimpleReply(r, 0, Errno.ENOSPC, d.readUInt32BE(8), d.readUInt32BE(12));
        s.write(r);
      }),
    );
    const c = await NbdClient.connect({ socketPath: path, exportName: "vol" });
    cleanups.push(() => c.destroy());
    await expect(c.read(0, 4096)).rejects.toMatchObject({ name: "NbdError", errno: Errno.ENOSPC });
  });

  it("reports a refused export with the server's reply type", async () => {
    const s = await memory();
    await expect(NbdClient.connect({ socketPath: s.socketPath, exportName: "missing" })).rejects.toMatchObject({
      name: "NbdProtocolError",
      reply: Rep.ERR_UNKNOWN,
    });
  });

  it("falls back to NBD_OPT_EXPORT_NAME when the server does not know NBD_OPT_GO", async () => {
    const path = await scripted((s) => {
      s.write(encodeGreeting(HandshakeFlag.FIXED_NEWSTYLE));
      let buf = Buffer.alloc(0);
      s.on("data", (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        while (buf.length >= 4 + 16) {
          const h = decodeOptionHeader(buf, 4);
          if (buf.length < 20 + h.length) return;
          buf = Buffer.concat([buf.subarray(0, 4), buf.subarray(20 + h.length)]);
          if (h.option === Opt.GO) s.write(encodeOptionReply(Opt.GO, Rep.ERR_UNSUP));
          if (h.option === Opt.EXPORT_NAME) s.write(encodeExportNameReply(12345, TxFlag.HAS_FLAGS | TxFlag.READ_ONLY, false));
        }
      });
    });
    const c = await NbdClient.connect({ socketPath: path, exportName: "vol" });
    cleanups.push(() => c.destroy());
    expect(c.info).toMatchObject({ size: 12345, txFlags: TxFlag.HAS_FLAGS | TxFlag.READ_ONLY });
  });

  it("gives up on a server that never finishes the handshake", async () => {
    const path = await scripted(() => undefined);
    await expect(NbdClient.connect({ socketPath: path, exportName: "vol", timeoutMs: 200 })).rejects.toThrow(/timed out/);
  });

  it("refuses servers that are not fixed-newstyle NBD", async () => {
    const path = await scripted((s) => s.write(Buffer.alloc(18)));
    await expect(NbdClient.connect({ socketPath: path, exportName: "vol" })).rejects.toThrow(/not an NBD server/);
  });

  it("works over TCP against a server handed plain accepted sockets", async () => {
    const { MemoryBackend } = await import("./memory-backend.js");
    const { NbdServer } = await import("./server.js");
    const backend = new MemoryBackend(1 << 20);
    const nbd = new NbdServer({ name: "vol", backend });
    const tcp = createServer((s) => nbd.handle(s));
    await new Promise<void>((r) => tcp.listen(0, "127.0.0.1", r));
    cleanups.push(() => new Promise((r) => tcp.close(r)));
    cleanups.push(() => nbd.shutdown(1_000));
    const port = (tcp.address() as { port: number }).port;
    const c = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "vol" });
    cleanups.push(() => c.destroy());
    const data = Buffer.alloc(300_000, 3);
    await c.write(10, data);
    expect((await c.read(10, data.length)).equals(data)).toBe(true);
    await c.close();
  });

  it("closes softly: waits for requests in flight, then NBD_CMD_DISC", async () => {
    const s = await memory(1 << 20, { delayMs: 50 });
    const c = await NbdClient.connect({ socketPath: s.socketPath, exportName: "vol" });
    const write = c.write(0, Buffer.from("last words"));
    await c.close();
    await write;
    expect(s.backend.data.subarray(0, 10).toString()).toBe("last words");
    expect(c.usable).toBe(false);
  });
});
