// The frontend process in front of a real qemu-storage-daemon, checked with
// real NBD clients: qemu-img, qemu-io, nbdinfo and fio.
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { readFile, truncate, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run } from "../lib/exec.js";
import { NbdClient } from "../lib/nbd/client.js";
import { frontendArgv } from "./launch.js";
import { FrontendProcess, bundleFrontend } from "./testing/frontend-process.js";
import { Qsd } from "../test/harness/qsd.js";
import { Replica } from "./replica.js";
import { ReplicaSet } from "./replica-set.js";
import { FakeRecord } from "./testing/fake-record.js";

const MiB = 1 << 20;
const SIZE = 256 * MiB;
const has = (tool: string) => ["/usr/bin", "/usr/local/bin"].some((d) => existsSync(join(d, tool)));

let dir: string;
let image: string;
let qsd: Qsd;
let script: string;
let frontend: FrontendProcess;
let frontSock: string;
const uri = (sock: string) => `nbd+unix:///vol?socket=${sock}`;

async function startFrontend(socket: string, connections = 2): Promise<FrontendProcess> {
  return FrontendProcess.start(script, frontendArgv({ socketPath: socket, exportName: "vol", replicas: [{ socketPath: qsd.socket, exportName: "vol" }], connections }));
}

describe.skipIf(!has("qemu-storage-daemon"))("frontend in front of qemu-storage-daemon", () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "stowage-frontend-"));
    image = join(dir, "vol.raw");
    await writeFile(image, "");
    await truncate(image, SIZE);
    [qsd, script] = await Promise.all([
      Qsd.start({ dir, image, format: "raw", socket: join(dir, "qsd.sock"), exportName: "vol" }),
      bundleFrontend(),
    ]);
    frontSock = join(dir, "front.sock");
    frontend = await startFrontend(frontSock);
  }, 60_000);

  afterAll(async () => {
    await frontend?.stop();
    await qsd?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (script) rmSync(join(script, ".."), { recursive: true, force: true });
  });

  it("serves on a socket that other users can open", async () => {
    expect(frontend.output).toContain(`frontend serving on ${frontSock}`);
    const { stdout } = await run("stat", ["-c", "%a %F", frontSock]);
    expect(stdout.trim()).toBe("666 socket");
  });

  it("shows the export to qemu-img info", async () => {
    const { stdout } = await run("qemu-img", ["info", "--output=json", uri(frontSock)]);
    expect(JSON.parse(stdout)).toMatchObject({ "virtual-size": SIZE, format: "raw" });
  });

  it("lets qemu-io write and read back a pattern", async () => {
    const { stdout } = await run("qemu-io", ["-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M", uri(frontSock)]);
    expect(stdout).toContain("wrote 1048576/1048576 bytes at offset 0");
    expect(stdout).toContain("read 1048576/1048576 bytes at offset 0");
    expect(stdout).not.toMatch(/verification failed/i);
  });

  it.skipIf(!has("nbdinfo"))("answers NBD_OPT_LIST and NBD_OPT_INFO for nbdinfo --list", async () => {
    const { stdout } = await run("nbdinfo", ["--list", `nbd+unix:///?socket=${frontSock}`]);
    expect(stdout).toContain('export="vol"');
    expect(stdout).toMatch(/export-size: 268435456/);
    expect(stdout).toMatch(/block_size_minimum: 1\b/);
    expect(stdout).toMatch(/block_size_preferred: 4096\b/);
    expect(stdout).toMatch(/block_size_maximum: 33554432\b/);
    expect(stdout).toMatch(/can_flush: true/);
    expect(stdout).toMatch(/can_fua: true/);
    expect(stdout).toMatch(/can_trim: true/);
    expect(stdout).toMatch(/can_zero: true/);
  });

  it("puts what is written through it into the image, byte for byte", async () => {
    const c = await NbdClient.connect({ socketPath: frontSock, exportName: "vol" });
    const chunks = Array.from({ length: 64 }, (_, i) => ({ offset: 16 * MiB + i * 197 * 1024, data: randomBytes(4096 + i * 1000) }));
    await Promise.all(chunks.map((x) => c.write(x.offset, x.data)));
    await c.writeZeroes(100 * MiB, 3 * MiB);
    await c.flush();
    await c.close();
    await run("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 200M 5M", uri(frontSock)]);
    const img = await readFile(image);
    for (const x of chunks) expect(img.subarray(x.offset, x.offset + x.data.length).equals(x.data)).toBe(true);
    expect(img.subarray(200 * MiB, 205 * MiB).every((b) => b === 0x5a)).toBe(true);
    const { stdout } = await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, uri(frontSock)]);
    expect(stdout).toContain("Images are identical");
  });

  it.skipIf(!has("fio"))("passes fio's crc32c verify for 4k random writes at queue depth 32", async () => {
    const { stdout } = await run(
      "fio",
      [
        "--name=verify", "--ioengine=nbd", `--uri=${uri(frontSock)}`, "--rw=randwrite", "--bs=4k", "--iodepth=32",
        "--size=256M", "--runtime=5", "--time_based", "--verify=crc32c",
        // Verify every 4096 blocks as they are written: without it the read-back starts only
        // after all 256 MiB are written, which a loaded machine may not reach in 5 s.
        "--verify_backlog=4096", "--verify_state_save=0", "--output-format=json",
      ],
      { timeoutMs: 90_000 },
    );
    const json = JSON.parse(stdout.slice(stdout.indexOf("{")));
    const job = json.jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.total_ios).toBeGreaterThan(1000);
    expect(job.read.total_ios).toBeGreaterThan(1000); // verify reads: what was written came back intact
  }, 120_000);

  it("shrugs off garbage on its socket and keeps serving", async () => {
    for (let i = 0; i < 20; i++) {
      const s = connect(frontSock);
      s.on("error", () => undefined);
      s.on("data", () => undefined);
      await new Promise((r) => s.once("connect", r));
      s.write(randomBytes(1 + (i * 997) % 5000));
      s.end();
    }
    const { stdout } = await run("qemu-io", ["-f", "raw", "-c", "write -P 0x42 8k 4k", "-c", "read -P 0x42 8k 4k", uri(frontSock)]);
    expect(stdout).toContain("read 4096/4096 bytes");
    expect(frontend.running).toBe(true);
  });

  it("stops cleanly on SIGTERM: requests in flight finish, exit 0, socket removed, replica untouched", async () => {
    const sock = join(dir, "second.sock");
    const second = await startFrontend(sock, 3);
    const c = await NbdClient.connect({ socketPath: sock, exportName: "vol" });
    const data = randomBytes(MiB);
    const writes = Array.from({ length: 32 }, (_, i) => c.write(220 * MiB + i * MiB, data).then(() => "ok", (e: Error) => e.name));
    await writes[0]; // the stream is flowing; stop in the middle of it
    await second.stop("SIGTERM");
    expect(second.exitCode).toBe(0);
    expect(existsSync(sock)).toBe(false);
    const outcomes = await Promise.all(writes);
    expect(outcomes.filter((o) => o === "ok").length).toBeGreaterThan(0);
    // The rest were refused (ESHUTDOWN) or never answered (connection closed): nothing hangs.
    expect(new Set(outcomes)).toSatisfy((s: Set<string>) => [...s].every((o) => ["ok", "NbdError", "NbdDisconnectedError"].includes(o)));
    // Every write that was acknowledged is in the image.
    const img = await readFile(image);
    outcomes.forEach((o, i) => {
      if (o === "ok") expect(img.subarray(220 * MiB + i * MiB, 221 * MiB + i * MiB).equals(data)).toBe(true);
    });
    // The replica still serves (the frontend disconnected softly) and so does the first frontend.
    await NbdClient.list({ socketPath: qsd.socket });
    const { stdout } = await run("qemu-io", ["-f", "raw", "-c", "read -P 0x42 8k 4k", uri(frontSock)]);
    expect(stdout).toContain("read 4096/4096 bytes");
  }, 30_000);

  it("rebuilds a new replica with a full copy of only the allocated regions, byte-identical (qemu-img compare)", async () => {
    const [a, b] = await Promise.all(
      ["r-a", "r-b"].map((id) => Qsd.start({ dir, image: join(dir, `${id}.qcow2`), format: "qcow2", sizeMiB: SIZE / MiB, socket: join(dir, `${id}.sock`), exportName: id })),
    );
    const record = new FakeRecord(["r-a"]);
    const maps = mkdtempSync(join(dir, "maps-"));
    const ra = await Replica.open({ spec: a.uri, socketPath: a.socket, exportName: "r-a" }, 2);
    const set = new ReplicaSet([ra], undefined, { recorder: record, generation: 1, stateDir: maps, volume: "vol", refreshMs: 100 });
    try {
      await set.warmUp();
      // 3 MiB of data at three places of a 256 MiB volume, through a client of the set.
      const c = await NbdClient.connect({ socketPath: a.socket, exportName: "r-a" });
      for (const off of [0, 100 * MiB, 200 * MiB + 4096]) await c.write(off, randomBytes(MiB));
      await c.flush();
      await c.close();
      record.add("r-b", b.uri);
      const deadline = Date.now() + 30_000;
      while (record.inSyncMarks.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(record.inSyncMarks).toEqual([{ id: "r-b", kind: "full", bytes: expect.any(Number) }]);
      // Only the allocated regions (qcow2 clusters of 64 KiB): 3 MiB and one partial cluster, not 256 MiB.
      expect(record.inSyncMarks[0]!.bytes).toBeGreaterThanOrEqual(3 * MiB);
      expect(record.inSyncMarks[0]!.bytes).toBeLessThanOrEqual(4 * MiB);
    } finally {
      await set.close();
    }
    await Promise.all([a.stop(), b.stop()]);
    const cmp = await run("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", join(dir, "r-a.qcow2"), join(dir, "r-b.qcow2")]);
    expect(cmp.stdout).toMatch(/Images are identical/);
  });
});
