// QmpClient against a fake QMP server on a unix socket: handshake, id
// correlation, errors, events, framing, timeouts and disconnects.
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { QmpClient } from "./qmp-client.js";
import { QmpDisconnectedError, QmpError, QmpTimeoutError, type QmpEvent } from "./qmp-protocol.js";

const GREETING = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}\r\n';

interface Command {
  execute: string;
  arguments?: Record<string, unknown>;
  id: string;
}

/** A QMP server that greets, accepts qmp_capabilities, and hands every other command to `onCommand`. */
class FakeQmp {
  server!: Server;
  conn!: Socket;
  received: Command[] = [];
  onCommand: (c: Command, conn: Socket) => void = (c, conn) => reply(conn, c.id, {});
  greet = true;

  async listen(path: string): Promise<void> {
    this.server = createServer((conn) => {
      this.conn = conn;
      if (this.greet) conn.write(GREETING);
      let buf = "";
      conn.on("data", (d) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const c = JSON.parse(buf.slice(0, nl)) as Command;
          buf = buf.slice(nl + 1);
          this.received.push(c);
          if (c.execute === "qmp_capabilities") reply(conn, c.id, {});
          else this.onCommand(c, conn);
        }
      });
      conn.on("error", () => {});
    });
    await new Promise<void>((resolve) => this.server.listen(path, resolve));
  }

  close(): Promise<void> {
    this.conn?.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

function reply(conn: Socket, id: string, value: unknown): void {
  conn.write(`${JSON.stringify({ return: value, id })}\r\n`);
}

let dir: string;
let sock: string;
let fake: FakeQmp;
let client: QmpClient | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "qmp-client-"));
  sock = join(dir, "qmp.sock");
  fake = new FakeQmp();
  await fake.listen(sock);
});

afterEach(async () => {
  await client?.close();
  client = undefined;
  await fake.close();
  await rm(dir, { recursive: true, force: true });
});

describe("QmpClient", () => {
  it("reads the greeting and negotiates capabilities before any command", async () => {
    client = await QmpClient.connect({ path: sock });
    expect(client.greeting.version.qemu).toEqual({ major: 7, minor: 2, micro: 0 });
    expect(fake.received.map((c) => c.execute)).toEqual(["qmp_capabilities"]);
  });

  it("matches concurrent replies to their commands by id, whatever the order", async () => {
    const held: Command[] = [];
    fake.onCommand = (c, conn) => {
      held.push(c);
      if (held.length === 3) for (const h of held.reverse()) reply(conn, h.id, { echo: h.arguments?.n });
    };
    client = await QmpClient.connect({ path: sock });
    const results = await Promise.all([1, 2, 3].map((n) => client!.execute("echo", { n })));
    expect(results).toEqual([{ echo: 1 }, { echo: 2 }, { echo: 3 }]);
    expect(new Set(fake.received.map((c) => c.id)).size).toBe(4);
  });

  it("turns a QMP error into QmpError with its class and description", async () => {
    fake.onCommand = (c, conn) => conn.write(`${JSON.stringify({ id: c.id, error: { class: "GenericError", desc: "Export 'x' is not found" } })}\n`);
    client = await QmpClient.connect({ path: sock });
    const err = await client.execute("block-export-del", { id: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpError);
    expect(err).toMatchObject({ command: "block-export-del", errorClass: "GenericError", desc: "Export 'x' is not found" });
  });

  it("copes with replies split across chunks and several messages in one chunk", async () => {
    fake.onCommand = (c, conn) => {
      const line = `${JSON.stringify({ return: { name: "ünïcode" }, id: c.id })}\r\n`;
      const bytes = Buffer.from(`{"event": "JOB_STATUS_CHANGE", "data": {"id": "j1", "status": "running"}, "timestamp": {"seconds": 1, "microseconds": 0}}\r\n${line}`);
      conn.write(bytes.subarray(0, 150));
      setTimeout(() => conn.write(bytes.subarray(150)), 20);
    };
    client = await QmpClient.connect({ path: sock });
    const events: QmpEvent[] = [];
    client.on("event", (e) => events.push(e));
    expect(await client.execute("query-something")).toEqual({ name: "ünïcode" });
    expect(events.map((e) => [e.event, e.data.status])).toEqual([["JOB_STATUS_CHANGE", "running"]]);
  });

  it("waits for a matching event", async () => {
    fake.onCommand = (c, conn) => {
      reply(conn, c.id, {});
      const ev = (id: string) => `{"event": "BLOCK_EXPORT_DELETED", "data": {"id": "${id}"}, "timestamp": {"seconds": 1, "microseconds": 0}}\n`;
      setTimeout(() => conn.write(ev("other") + ev(String(c.arguments?.id))), 10);
    };
    client = await QmpClient.connect({ path: sock });
    const deleted = client.waitForEvent("BLOCK_EXPORT_DELETED", (d) => d.id === "e1", { timeoutMs: 2000 });
    await client.execute("block-export-del", { id: "e1" });
    expect((await deleted).data).toEqual({ id: "e1" });
    await expect(client.waitForEvent("BLOCK_EXPORT_DELETED", () => true, { timeoutMs: 50 })).rejects.toThrow(QmpTimeoutError);
    const abort = new AbortController();
    const aborted = client.waitForEvent("BLOCK_EXPORT_DELETED", () => true, { signal: abort.signal });
    abort.abort(new Error("not needed"));
    await expect(aborted).rejects.toThrow("not needed");
    expect(client.listenerCount("event")).toBe(0);
  });

  it("times a command out, drops its late reply, and keeps working", async () => {
    let first = true;
    fake.onCommand = (c, conn) => {
      if (first) setTimeout(() => reply(conn, c.id, "late"), 100);
      else reply(conn, c.id, "ok");
      first = false;
    };
    client = await QmpClient.connect({ path: sock });
    await expect(client.execute("slow", {}, { timeoutMs: 30 })).rejects.toThrow(QmpTimeoutError);
    await new Promise((r) => setTimeout(r, 150));
    expect(await client.execute("fast")).toBe("ok");
  });

  it("rejects pending commands and event waits when the server goes away", async () => {
    fake.onCommand = () => fake.conn.destroy();
    client = await QmpClient.connect({ path: sock });
    const closed = new Promise<Error | undefined>((resolve) => client!.once("close", resolve));
    const event = client.waitForEvent("BLOCK_EXPORT_DELETED");
    await expect(client.execute("quit")).rejects.toThrow(QmpDisconnectedError);
    await expect(event).rejects.toThrow(QmpDisconnectedError);
    await closed;
    expect(client.closed).toBe(true);
    await expect(client.execute("query-version")).rejects.toThrow(/closed before query-version/);
  });

  it("drops the connection when the server sends something that is not QMP", async () => {
    fake.onCommand = (_c, conn) => conn.write("this is not json\n");
    client = await QmpClient.connect({ path: sock });
    await expect(client.execute("query-version")).rejects.toThrow(/not JSON/);
  });

  it("fails fast without a server, and times out without a greeting", async () => {
    await expect(QmpClient.connect({ path: join(dir, "missing.sock") })).rejects.toThrow(/cannot connect to QMP socket .*ENOENT/);
    fake.greet = false;
    await expect(QmpClient.connect({ path: sock, connectTimeoutMs: 50 })).rejects.toThrow(QmpTimeoutError);
  });

  it("close() rejects what is still pending and is idempotent", async () => {
    fake.onCommand = () => {};
    client = await QmpClient.connect({ path: sock });
    const pending = client.execute("never-answered");
    await client.close();
    await expect(pending).rejects.toThrow(QmpDisconnectedError);
    await client.close();
  });
});
