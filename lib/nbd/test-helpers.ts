// Helpers for tests of the NBD code: a server over a MemoryBackend on a temp
// unix socket, and a raw connection that sends hand-made bytes (requests the
// real client would never send) and reads simple replies back.
import { mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ByteQueue, exchangeGreeting, negotiateGo, type ExportInfo } from "./client-handshake.js";
import { MemoryBackend } from "./memory-backend.js";
import { decodeSimpleReply, encodeRequest, type RequestHeader, type SimpleReply } from "./protocol.js";
import { NbdServer, type NbdServerOptions } from "./server.js";

export interface TestServer {
  server: NbdServer;
  backend: MemoryBackend;
  socketPath: string;
  close(): Promise<void>;
}

export async function startMemoryServer(
  size = 16 << 20,
  opts: Partial<NbdServerOptions> & ConstructorParameters<typeof MemoryBackend>[1] = {},
): Promise<TestServer> {
  const dir = mkdtempSync(join(tmpdir(), "nbd-test-"));
  const socketPath = join(dir, "nbd.sock");
  const backend = new MemoryBackend(size, opts);
  const server = new NbdServer({ name: "vol", description: "memory", backend, ...opts });
  await server.listenUnix(socketPath);
  return {
    server,
    backend,
    socketPath,
    close: async () => {
      await server.shutdown(2_000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A connection driven byte by byte: handshake with the real client code, then raw requests. */
export class RawConnection {
  readonly queue = new ByteQueue();
  closed = false;
  info: ExportInfo | undefined;

  private constructor(readonly socket: Socket) {
    socket.on("data", (d: Buffer) => this.queue.push(d));
    socket.on("error", () => undefined);
    socket.on("close", () => {
      this.closed = true;
      this.queue.fail(new Error("closed"));
    });
  }

  static async open(socketPath: string, exportName = "vol"): Promise<RawConnection> {
    const socket = connect(socketPath);
    await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
    const c = new RawConnection(socket);
    const io = { read: (n: number) => c.queue.read(n), write: (b: Buffer) => void socket.write(b) };
    c.info = await negotiateGo(io, exportName, (await exchangeGreeting(io)).noZeroes);
    return c;
  }

  /** Opens a socket without any handshake. */
  static async bare(socketPath: string): Promise<RawConnection> {
    const socket = connect(socketPath);
    await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
    return new RawConnection(socket);
  }

  send(b: Buffer): void {
    this.socket.write(b);
  }

  request(h: Partial<Omit<RequestHeader, "magic">>, payload?: Buffer): void {
    const header = encodeRequest({ flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0, ...h });
    this.send(payload ? Buffer.concat([header, payload]) : header);
  }

  async reply(): Promise<SimpleReply> {
    return decodeSimpleReply(await this.queue.read(16));
  }

  read(n: number): Promise<Buffer> {
    return this.queue.read(n);
  }

  /** Resolves when the server closed the connection. */
  whenClosed(timeoutMs = 5_000): Promise<boolean> {
    if (this.closed) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.socket.once("close", () => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  destroy(): void {
    this.socket.destroy();
  }
}
