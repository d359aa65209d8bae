// QmpClient against a real qemu-storage-daemon (started here, without the supervisor).
import { status as Status } from "@grpc/grpc-js";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run } from "../../lib/exec.js";
import { QmpClient } from "./qmp-client.js";
import { QmpError, type QmpEvent } from "./qmp-protocol.js";

let dir: string;
let pid: number | undefined;
let client: QmpClient;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "qmp-qsd-"));
  await run("qemu-img", ["create", "-q", "-f", "raw", join(dir, "disk.raw"), "1M"]);
  await run("qemu-storage-daemon", [
    "--chardev", `socket,id=qmp,path=${join(dir, "qmp.sock")},server=on,wait=off`,
    "--monitor", "chardev=qmp",
    "--nbd-server", `addr.type=unix,addr.path=${join(dir, "nbd.sock")}`,
    "--pidfile", join(dir, "qsd.pid"),
    "--daemonize",
  ]);
  pid = Number(await readFile(join(dir, "qsd.pid"), "utf8"));
  client = await QmpClient.connect({ path: join(dir, "qmp.sock") });
});

afterAll(async () => {
  await client?.close();
  if (pid) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone (the last test quits it)
    }
  }
  await rm(dir, { recursive: true, force: true });
});

describe("QmpClient with a real qemu-storage-daemon", () => {
  it("negotiates and answers typed queries", async () => {
    expect(client.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
    expect(await client.execute("query-version")).toEqual(client.greeting.version);
    expect(await client.execute("query-block-exports")).toEqual([]);
  });

  it("maps QMP errors to QmpError with the QMP class", async () => {
    const generic = await client.execute("blockdev-del", { "node-name": "missing" }).catch((e: unknown) => e);
    expect(generic).toBeInstanceOf(QmpError);
    expect(generic).toMatchObject({ errorClass: "GenericError", code: Status.INTERNAL });
    const unknown = await client.execute("no-such-command").catch((e: unknown) => e);
    expect(unknown).toMatchObject({ errorClass: "CommandNotFound", code: Status.UNIMPLEMENTED });
  });

  it("runs many commands concurrently", async () => {
    const all = await Promise.all(Array.from({ length: 50 }, (_, i) => (i % 2 ? client.execute("query-version") : client.execute("query-block-exports"))));
    expect(all.filter((r) => Array.isArray(r))).toHaveLength(25);
  });

  it("emits BLOCK_EXPORT_DELETED after block-export-del", async () => {
    const events: QmpEvent[] = [];
    client.on("event", (e) => events.push(e));
    await client.execute("blockdev-add", { driver: "file", "node-name": "f0", filename: join(dir, "disk.raw") });
    await client.execute("blockdev-add", { driver: "raw", "node-name": "d0", file: "f0" });
    await client.execute("block-export-add", { type: "nbd", id: "e0", "node-name": "d0", writable: true });
    const deleted = client.waitForEvent("BLOCK_EXPORT_DELETED", (d) => d.id === "e0", { timeoutMs: 5000 });
    await client.execute("block-export-del", { id: "e0" });
    expect((await deleted).data).toEqual({ id: "e0" });
    expect(events.map((e) => e.event)).toContain("BLOCK_EXPORT_DELETED");
  });

  it("reports the close when the daemon quits", async () => {
    const closed = new Promise((resolve) => client.once("close", resolve));
    await client.execute("quit").catch(() => undefined); // the reply may race the close
    await closed;
    expect(client.closed).toBe(true);
  });
});
