// The agent service over real gRPC on 127.0.0.1:0, with real qemu-img behind it.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../lib/errors.js";
import { addService, Channel, createServer, INSECURE, listen, shutdown, type PromiseClient } from "../lib/grpc.js";
import { AgentServiceService } from "../gen/stowage/v1/agent.js";
import { ImageFormat, Preallocation } from "../gen/stowage/v1/types.js";
import { AgentPools } from "./agent-pools.js";
import { createAgentService } from "./agent-service.js";
import { loadAgentConfig } from "./config.js";
import { FrontendManager } from "./frontends.js";
import { QsdSupervisor } from "./qsd/supervisor.js";
import { pino } from "pino";
import { execa } from "execa";

const MiB = 2 ** 20;
let root: string;
let server: Server;
let channel: Channel;
let agent: PromiseClient<typeof AgentServiceService>;
let qsd: QsdSupervisor;
const silent = pino({ level: "silent" });

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "agent-service-"));
  const config = await loadAgentConfig({
    name: "node1",
    listen: "127.0.0.1:0",
    controllers: "127.0.0.1:1",
    dataDir: join(root, "data"),
    pool: [`default=${join(root, "pools/default")}`, `fast=${join(root, "pools/fast")}`],
  });
  qsd = new QsdSupervisor({ dataDir: config.dataDir, nbd: { type: "unix" }, logger: silent });
  await qsd.ensureRunning([]);
  const frontends = new FrontendManager(config.dataDir, join(root, "run"), silent);
  server = createServer();
  addService(server, AgentServiceService, createAgentService(AgentPools.fromConfig(config), qsd, frontends));
  const port = await listen(server, "127.0.0.1:0", INSECURE);
  channel = new Channel(`127.0.0.1:${port}`, INSECURE);
  agent = channel.service(AgentServiceService);
});

afterAll(async () => {
  channel?.close();
  if (server) await shutdown(server);
  await qsd?.stop();
  await rm(root, { recursive: true, force: true });
});

describe("AgentService over gRPC", () => {
  it("ensures a replica with default format (qcow2) and preallocation (off)", async () => {
    const req = { id: "r-00000001", volume: "vol1", pool: "default", sizeBytes: MiB, format: ImageFormat.IMAGE_FORMAT_UNSPECIFIED, preallocation: Preallocation.PREALLOCATION_UNSPECIFIED, exported: false };
    const res = await agent.ensureReplica(req);
    expect(res).toMatchObject({ created: true, resized: false });
    expect(res.replica).toMatchObject({
      id: "r-00000001",
      volume: "vol1",
      pool: "default",
      path: join(root, "pools/default/vol1.r-00000001.qcow2"),
      format: ImageFormat.IMAGE_FORMAT_QCOW2,
      virtualSizeBytes: MiB,
    });
    expect(await agent.ensureReplica(req)).toMatchObject({ created: false, resized: false });
    expect(await agent.ensureReplica({ ...req, sizeBytes: 2 * MiB })).toMatchObject({ created: false, resized: true });
  });

  it("creates raw replicas in another pool", async () => {
    const res = await agent.ensureReplica({
      id: "r-00000002", volume: "vol2", pool: "fast", sizeBytes: MiB,
      format: ImageFormat.IMAGE_FORMAT_RAW, preallocation: Preallocation.PREALLOCATION_FULL, exported: false,
    });
    expect(res.replica?.format).toBe(ImageFormat.IMAGE_FORMAT_RAW);
    expect(res.replica?.allocatedBytes).toBeGreaterThanOrEqual(MiB);
  });

  it("returns the inventory of all pools", async () => {
    const inv = await agent.getInventory({});
    expect(inv.node).toBe("node1");
    expect(inv.pools.map((p) => [p.node, p.name, p.type, p.replicaCount, p.overcommitRatio])).toEqual([
      ["node1", "default", "dir", 1, 1],
      ["node1", "fast", "dir", 1, 1],
    ]);
    for (const p of inv.pools) {
      expect(p.capacityBytes).toBeGreaterThan(0);
      expect(p.availableBytes).toBeLessThanOrEqual(p.capacityBytes);
    }
    expect(inv.pools[1]!.allocatedBytes).toBeGreaterThanOrEqual(MiB);
    expect(inv.replicas.map((r) => [r.id, r.pool, r.virtualSizeBytes])).toEqual([
      ["r-00000001", "default", 2 * MiB],
      ["r-00000002", "fast", MiB],
    ]);
  });

  it("sends typed errors: unknown pool, bad arguments, format clash", async () => {
    const err = await agent.deleteReplica({ id: "r-00000001", pool: "nope" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err).toMatchObject({ resource: "pool", resourceName: "nope", message: 'pool "nope" not found' });

    const base = { id: "r-00000003", volume: "vol3", pool: "default", sizeBytes: MiB, format: ImageFormat.IMAGE_FORMAT_RAW, preallocation: Preallocation.PREALLOCATION_OFF, exported: false };
    await expect(agent.ensureReplica({ ...base, pool: "nope" })).rejects.toBeInstanceOf(NotFoundError);
    await expect(agent.ensureReplica({ ...base, preallocation: Preallocation.PREALLOCATION_METADATA })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(agent.ensureReplica({ ...base, id: "../../etc" })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(agent.ensureReplica({ ...base, id: "r-00000001", volume: "vol1" })).rejects.toBeInstanceOf(FailedPreconditionError);
  });

  it("deletes idempotently", async () => {
    expect(await agent.deleteReplica({ id: "r-00000001", pool: "default" })).toEqual({ deleted: true });
    expect(await agent.deleteReplica({ id: "r-00000001", pool: "default" })).toEqual({ deleted: false });
    expect((await agent.getInventory({})).replicas.map((r) => r.id)).toEqual(["r-00000002"]);
  });

  it("exports a replica over NBD on request and unexports it", async () => {
    const req = { id: "r-0000e001", volume: "exp1", pool: "default", sizeBytes: MiB, format: ImageFormat.IMAGE_FORMAT_QCOW2, preallocation: Preallocation.PREALLOCATION_OFF };
    const res = await agent.ensureReplica({ ...req, exported: true });
    const uri = res.replica!.export!.nbdUri;
    expect(uri).toMatch(/^nbd\+unix:\/\/\/r-0000e001\?socket=/);
    const io = await execa("qemu-io", ["-f", "raw", "-c", "write -P 0x42 0 64k", "-c", "read -P 0x42 0 64k", uri]);
    expect(io.stdout).not.toMatch(/fail/i);
    const inv = await agent.getInventory({});
    expect(inv.replicas.find((r) => r.id === "r-0000e001")!.export!.nbdUri).toBe(uri);
    const off = await agent.ensureReplica({ ...req, sizeBytes: MiB, exported: false });
    expect(off.replica!.export).toBeUndefined();
    expect((await agent.getInventory({})).replicas.find((r) => r.id === "r-0000e001")!.export).toBeUndefined();
    await agent.ensureReplica({ ...req, sizeBytes: MiB, exported: true });
    expect(await agent.deleteReplica({ id: "r-0000e001", pool: "default" })).toEqual({ deleted: true });
  });

  it("answers GetPoolJobProgress: nothing running on an agent without pool jobs; an unknown kind is refused", async () => {
    expect(await agent.getPoolJobProgress({ pool: "default", kind: "compress" })).toMatchObject({ running: false, doneBytes: 0 });
    await expect(agent.getPoolJobProgress({ pool: "default", kind: "defrag" })).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});
