// The supervisor and exports with a real qemu-storage-daemon, real images and
// real NBD clients (qemu-io, nbdinfo). Every daemon started here is killed in afterAll.
import { execa, type ResultPromise } from "execa";
import { readFileSync } from "node:fs";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FailedPreconditionError, UnavailableError } from "../../lib/errors.js";
import { run } from "../../lib/exec.js";
import type { ExportSpec } from "./exports.js";
import { QsdSupervisor, type QsdSupervisorOptions } from "./supervisor.js";

const MiB = 2 ** 20;
const Q = "r-0000aaaa";
const R = "r-0000bbbb";
let root: string;
const pids = new Set<number>();
const supervisors: QsdSupervisor[] = [];

function supervisor(opts: Partial<QsdSupervisorOptions> = {}): QsdSupervisor {
  const s = new QsdSupervisor({ dataDir: root, nbd: { type: "unix" }, ...opts });
  supervisors.push(s);
  return s;
}

function spec(id: string, format: "qcow2" | "raw"): ExportSpec {
  return { replicaId: id, path: join(root, `vol.${id}.${format}`), format, writable: true };
}

async function qemuIo(uri: string, ...cmds: string[]): Promise<string> {
  const { stdout } = await run("qemu-io", ["-f", "raw", ...cmds.flatMap((c) => ["-c", c]), uri], { timeoutMs: 8000 });
  expect(stdout).not.toMatch(/fail|error/i);
  return stdout;
}

async function nbdSize(uri: string): Promise<number> {
  return Number((await run("nbdinfo", ["--size", uri], { timeoutMs: 8000 })).stdout.trim());
}

/** Running, not a zombie waiting for init to reap it. */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const port = (srv.address() as { port: number }).port;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "qsd-"));
  await run("qemu-img", ["create", "-q", "-f", "qcow2", spec(Q, "qcow2").path, String(4 * MiB)]);
  await run("qemu-img", ["create", "-q", "-f", "raw", spec(R, "raw").path, String(4 * MiB)]);
});

afterAll(async () => {
  for (const s of supervisors) await s.detach();
  for (const pid of pids) if (alive(pid)) process.kill(pid, "SIGKILL");
  await rm(root, { recursive: true, force: true });
});

describe("QsdSupervisor and QsdExports with a real qemu-storage-daemon", () => {
  let a: QsdSupervisor;
  let pid: number;
  const lost: (Error | undefined)[] = [];

  it("starts one daemon with its sockets and pidfile in ${dataDir}/qsd; start() again is a no-op", async () => {
    a = supervisor();
    const st = await a.start();
    pid = st.pid;
    pids.add(pid);
    expect(st).toMatchObject({ adopted: false, started: true, nbd: { unixSocket: join(root, "qsd/nbd.sock") } });
    expect(Number(await readFile(join(root, "qsd/qsd.pid"), "utf8"))).toBe(pid);
    for (const f of ["qmp.sock", "nbd.sock"]) expect((await stat(join(root, "qsd", f))).isSocket()).toBe(true);
    expect(await a.start()).toMatchObject({ pid, adopted: false, started: false });
  });

  it("exports a qcow2 and a raw image that a real NBD client writes and reads", async () => {
    for (const s of [spec(Q, "qcow2"), spec(R, "raw")]) {
      const d = await a.exports.ensureExport(s);
      expect(d).toEqual({
        replicaId: s.replicaId,
        exportName: s.replicaId,
        unixSocket: join(root, "qsd/nbd.sock"),
        nbdUri: `nbd+unix:///${s.replicaId}?socket=${join(root, "qsd/nbd.sock")}`,
        created: true,
      });
      const out = await qemuIo(d.nbdUri, "write -P 0x5a 0 64k", "read -P 0x5a 0 64k");
      expect(out).toMatch(/wrote 65536\/65536 bytes/);
      expect(out).toMatch(/read 65536\/65536 bytes/);
    }
  });

  it("ensureExport again is a no-op; a different spec for the same replica is refused", async () => {
    expect(await a.exports.ensureExport(spec(Q, "qcow2"))).toMatchObject({ created: false });
    await expect(a.exports.ensureExport({ ...spec(Q, "qcow2"), writable: false })).rejects.toThrow(FailedPreconditionError);
    await expect(a.exports.ensureExport({ ...spec(Q, "qcow2"), path: "/elsewhere.qcow2" })).rejects.toThrow(/already exported with path/);
    const list = await a.exports.listExports();
    expect(list.map((e) => [e.replicaId, e.format, e.path, e.writable, e.virtualSizeBytes, e.shuttingDown])).toEqual([
      [Q, "qcow2", spec(Q, "qcow2").path, true, 4 * MiB, false],
      [R, "raw", spec(R, "raw").path, true, 4 * MiB, false],
    ]);
  });

  it("holds the image lock: qemu-img info works only with -U while exported", async () => {
    await expect(run("qemu-img", ["info", spec(Q, "qcow2").path])).rejects.toThrow(/lock/);
    await run("qemu-img", ["info", "-U", spec(Q, "qcow2").path]);
  });

  it("refuses to adopt while another agent holds the QMP socket", async () => {
    const b = supervisor({ qmpTimeoutMs: 300 });
    await expect(b.start()).rejects.toThrow(UnavailableError);
    expect(alive(pid)).toBe(true);
  });

  it("a new supervisor (an agent restart) adopts the same daemon and its exports; data survives", async () => {
    await a.detach();
    const b = supervisor({ onLost: (reason) => lost.push(reason) });
    expect(await b.start()).toMatchObject({ pid, adopted: true, started: false });
    expect((await b.exports.listExports()).map((e) => e.replicaId)).toEqual([Q, R]);
    expect(await b.exports.ensureExport(spec(R, "raw"))).toMatchObject({ created: false });
    await qemuIo(b.exports.descriptor(Q).nbdUri, "read -P 0x5a 0 64k");
    a = b;
  });

  it("resizeExport grows the size seen through NBD, and never shrinks", async () => {
    for (const id of [Q, R]) {
      const uri = a.exports.descriptor(id).nbdUri;
      expect(await a.exports.resizeExport(id, 8 * MiB)).toEqual({ virtualSizeBytes: 8 * MiB, resized: true });
      expect(await nbdSize(uri)).toBe(8 * MiB);
      expect(await a.exports.resizeExport(id, 2 * MiB)).toEqual({ virtualSizeBytes: 8 * MiB, resized: false });
      await qemuIo(uri, "write -P 0x33 7M 64k", "read -P 0x33 7M 64k", "read -P 0x5a 0 64k");
    }
  });

  it("removeExport and resizeExport refuse while a client is connected unless forced", async () => {
    const client: ResultPromise = execa("qemu-io", ["-f", "raw", "-c", "sleep 5000", a.exports.descriptor(R).nbdUri], { reject: false });
    await new Promise((r) => setTimeout(r, 300));
    await expect(a.exports.removeExport(R)).rejects.toThrow(/still in use/);
    await expect(a.exports.resizeExport(R, 16 * MiB)).rejects.toThrow(FailedPreconditionError);
    expect((await a.exports.listExports()).find((e) => e.replicaId === R)).toMatchObject({ virtualSizeBytes: 8 * MiB, shuttingDown: false });
    expect(await a.exports.removeExport(R, { force: true })).toEqual({ removed: true });
    client.kill("SIGKILL");
    await client;
  });

  it("removeExport makes the export go away and unlocks the image; again it is a no-op", async () => {
    expect(await a.exports.removeExport(Q)).toEqual({ removed: true });
    expect(await a.exports.listExports()).toEqual([]);
    await run("qemu-img", ["info", spec(Q, "qcow2").path]); // no -U: nobody holds the lock
    await expect(nbdSize(a.exports.descriptor(Q).nbdUri)).rejects.toThrow();
    expect(await a.exports.removeExport(Q)).toEqual({ removed: false });
  });

  it("after SIGKILL of the daemon, ensureRunning starts a new one and re-adds the desired exports", async () => {
    await a.exports.ensureExport(spec(Q, "qcow2"));
    process.kill(pid, "SIGKILL");
    await expect.poll(() => lost.length).toBe(1);
    await expect(a.exports.listExports()).rejects.toThrow(UnavailableError);
    const missing = { ...spec("r-0000cccc", "raw"), path: join(root, "missing.raw") };
    const st = await a.ensureRunning([spec(Q, "qcow2"), missing, spec(R, "raw")]);
    expect(st).toMatchObject({ started: true, adopted: false });
    expect(st.failed.map((f) => [f.replicaId, f.error.message])).toEqual([["r-0000cccc", expect.stringMatching(/No such file/)]]);
    expect(st.pid).not.toBe(pid);
    pids.add(st.pid);
    expect(st.exports.map((e) => e.replicaId)).toEqual([Q, R]);
    await qemuIo(st.exports[0]!.nbdUri, "read -P 0x5a 0 64k", "read -P 0x33 7M 64k");
    pid = st.pid;
  });

  it("stop() quits the daemon; a stale pidfile naming another process is not adopted", async () => {
    await a.stop();
    expect(alive(pid)).toBe(false);
    await run("qemu-img", ["info", spec(R, "raw").path]);
    await writeFile(join(root, "qsd/qsd.pid"), `${process.pid}\n`);
    const st = await a.start();
    pids.add(st.pid);
    expect(st).toMatchObject({ started: true });
    expect(st.pid).not.toBe(process.pid);
    await a.stop();
    expect(alive(st.pid)).toBe(false);
  });
});

describe("QSD with a TCP NBD server", () => {
  it("serves exports on host:port", async () => {
    const port = await freePort();
    const s = supervisor({ dataDir: join(root, "tcp"), nbd: { type: "tcp", host: "127.0.0.1", port } });
    const st = await s.start();
    pids.add(st.pid);
    const d = await s.exports.ensureExport(spec(R, "raw"));
    expect(d).toMatchObject({ tcp: { host: "127.0.0.1", port }, nbdUri: `nbd://127.0.0.1:${port}/${R}` });
    expect(d.unixSocket).toBeUndefined();
    await qemuIo(d.nbdUri, "write -P 0x44 0 64k", "read -P 0x44 0 64k");
    await s.detach();
    const again = supervisor({ dataDir: join(root, "tcp"), nbd: { type: "tcp", host: "127.0.0.1", port: port + 1 } });
    // The adopted daemon keeps the server it was started with.
    expect(await again.start()).toMatchObject({ pid: st.pid, adopted: true, nbd: { tcp: { host: "127.0.0.1", port } } });
    expect(again.exports.descriptor(R).nbdUri).toBe(`nbd://127.0.0.1:${port}/${R}`);
    await again.detach();
    // A supervisor that never connected stops the daemon with SIGTERM.
    await supervisor({ dataDir: join(root, "tcp"), nbd: { type: "tcp", host: "127.0.0.1", port } }).stop();
    expect(alive(st.pid)).toBe(false);
  });
});
