// Attaching a volume: a frontend process on the node, forwarding NBD to the
// replicas exported by each node's qemu-storage-daemon. Real qemu-io I/O.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AttachmentState, VolumePhase } from "../../gen/stowage/v1/types.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";

const MiB = 2 ** 20;
let c: TestCluster;

async function qemuIo(target: string, cmds: string[], opts: string[] = ["-f", "raw"]) {
  return execa("qemu-io", [...opts, ...cmds.flatMap((x) => ["-c", x]), target], { reject: false });
}

async function volume(name: string) {
  return (await (await c.leaderApi()).volumes.getVolume({ name })).volume!;
}

beforeAll(async () => {
  c = await TestCluster.create();
  await c.startController("c1");
  for (const [i, n] of ["n1", "n2", "n3"].entries()) await c.startAgent(n, `127.0.0.${61 + i}`);
  await c.waitNodesOnline(3);
  const r = await c.stowctl(["volume", "create", "att1", "--size", "256MiB", "--replicas", "2"]);
  expect(r.code, r.stderr).toBe(0);
});

afterAll(async () => {
  await c?.stop();
});

describe("attach", () => {
  let nbdUri = "";
  let node = "";

  it("attaches through stowctl and prints the frontend's NBD URI", async () => {
    node = (await volume("att1")).replicas[0]!.node;
    const r = await c.stowctl(["volume", "attach", "att1", "--node", node, "-o", "json"]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    nbdUri = j.nbdUri;
    expect(nbdUri).toBe(`nbd+unix:///att1?socket=${join(c.agentDirs.get(node)!, "run", "att1.sock")}`);
    expect(j.attachment.state).toBe("attached");
    const got = JSON.parse((await c.stowctl(["volume", "get", "att1", "-o", "json"])).stdout);
    expect(got.volume.attachments).toEqual([expect.objectContaining({ node, state: "attached", nbdUri })]);
  });

  it("writes through the frontend land on every replica", async () => {
    const w = await qemuIo(nbdUri, ["write -P 0x5a 0 1M", "write -P 0xa5 100M 64k", "flush", "read -P 0x5a 0 1M"]);
    expect(w.exitCode, w.stderr + w.stdout).toBe(0);
    expect(w.stdout).not.toMatch(/fail|error/i);
    for (const r of (await volume("att1")).replicas) {
      const check = await qemuIo(r.path, ["read -P 0x5a 0 1M", "read -P 0xa5 100M 64k"], ["-f", "qcow2", "-U", "-r"]);
      expect(check.exitCode, check.stderr).toBe(0);
      expect(check.stdout).not.toMatch(/Pattern verification failed/);
    }
  });

  it("keeps serving I/O while the agent is down, and the restarted agent adopts the data path", async () => {
    const qsdPid = readFileSync(join(c.agentDirs.get(node)!, "qsd", "qsd.pid"), "utf8").trim();
    const ip = JSON.parse(readFileSync(join(c.agentDirs.get(node)!, "agent.json"), "utf8")).listen.split(":")[0];
    await c.agents.get(node)!.kill("SIGKILL");
    const w = await qemuIo(nbdUri, ["write -P 0x33 2M 1M", "read -P 0x33 2M 1M"]);
    expect(w.exitCode, w.stderr).toBe(0);
    expect(w.stdout).not.toMatch(/Pattern verification failed/);
    await c.startAgent(node, ip);
    await eventually(async () => (await volume("att1")).phase === VolumePhase.VOLUME_PHASE_HEALTHY, 20_000, "healthy after agent restart");
    expect(readFileSync(join(c.agentDirs.get(node)!, "qsd", "qsd.pid"), "utf8").trim()).toBe(qsdPid);
    const a = (await volume("att1")).attachments[0]!;
    expect(a.state).toBe(AttachmentState.ATTACHMENT_STATE_ATTACHED);
    const r = await qemuIo(nbdUri, ["read -P 0x33 2M 1M"]);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
  });

  it("prints a libvirt disk element for the volume", async () => {
    const r = await c.stowctl(["volume", "disk-xml", "att1", "--target", "vdb"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("<source protocol='nbd' name='att1'>");
    expect(r.stdout).toContain(`socket='${join(c.agentDirs.get(node)!, "run", "att1.sock")}'`);
    expect(r.stdout).toContain("<target dev='vdb' bus='virtio'/>");
  });

  it("refuses to delete an attached volume, and deletes it after detach", async () => {
    const del = await c.stowctl(["volume", "delete", "att1"]);
    expect(del.code).toBe(1);
    expect(del.stderr).toMatch(/attached to/);
    expect(del.stderr).toMatch(/hint: detach it first/);
    const grow = await c.stowctl(["volume", "resize", "att1", "--size", "512MiB"]);
    expect(grow.code).toBe(1);
    expect(grow.stderr).toMatch(/attached/);
    const other = ["n1", "n2", "n3"].find((n) => n !== node)!;
    const second = await c.stowctl(["volume", "attach", "att1", "--node", other]);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/already attached/);
    const det = await c.stowctl(["volume", "detach", "att1", "--node", node]);
    expect(det.code, det.stderr).toBe(0);
    expect(existsSync(join(c.agentDirs.get(node)!, "run", "att1.sock"))).toBe(false);
    // After the detach the volume is healthy with no replica message (unexporting did not fail).
    const after = await volume("att1");
    expect(after.phase).toBe(VolumePhase.VOLUME_PHASE_HEALTHY);
    expect(after.message).toBe("");
    const paths = (await volume("att1")).replicas.map((r) => r.path);
    const gone = await c.stowctl(["volume", "delete", "att1"]);
    expect(gone.code, gone.stderr).toBe(0);
    for (const p of paths) expect(existsSync(p)).toBe(false);
  });
});
