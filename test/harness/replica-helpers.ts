// Helpers for the replica replacement, scaling and drain tests: controllers with
// extra flags (a short grace period, a copy throttle), data written straight into
// a detached volume's replica images, and image comparison.
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { VolumePhase, type Volume } from "../../gen/stowage/v1/types.js";
import type { TestCluster } from "./cluster.js";
import { eventually } from "./processes.js";

/** TestCluster.startController with extra controller flags. */
export function startControllerWith(c: TestCluster, name: string, flags: string[], opts: { faults?: string[]; address?: string } = {}): Promise<string> {
  return c.startController(name, { ...opts, flags });
}

/** The name of the controller process that leads now. */
export async function leaderName(c: TestCluster): Promise<string> {
  const api = await c.leaderApi();
  return [...c.controllers.entries()].find(([, p]) => p.running && p.output.includes(`serving on ${api.address}`))![0];
}

export async function getVolume(c: TestCluster, name: string): Promise<Volume> {
  return (await (await c.leaderApi()).volumes.getVolume({ name })).volume!;
}

/** Healthy, `replicas` replicas, every one in sync (and `extra` holds). */
export async function waitSettled(c: TestCluster, name: string, replicas: number, timeoutMs = 30_000, extra: (v: Volume) => boolean = () => true): Promise<Volume> {
  return eventually(
    async () => {
      const v = await getVolume(c, name);
      const ok = v.phase === VolumePhase.VOLUME_PHASE_HEALTHY && v.replicas.length === replicas && v.replicas.every((r) => !r.outOfSync) && extra(v);
      return ok ? v : undefined;
    },
    timeoutMs,
    `volume ${name} healthy with ${replicas} in-sync replicas`,
  );
}

/** Writes `pattern` at `offsetMiB` into every replica image of a detached volume (the same bytes everywhere). */
export async function writeEverywhere(v: Volume, pattern: number, offsetMiB: number, lengthMiB: number): Promise<void> {
  for (const r of v.replicas) {
    const res = await execa("qemu-io", ["-f", "qcow2", "-c", `write -P ${pattern} ${offsetMiB}M ${lengthMiB}M`, r.path], { reject: false });
    if (res.exitCode !== 0) throw new Error(`qemu-io on ${r.path}: ${res.stderr}`);
  }
}

/** `qemu-img compare` of two qcow2 images: same guest-visible bytes (allocation may differ). */
export async function sameContent(a: string, b: string): Promise<{ same: boolean; output: string }> {
  const r = await execa("qemu-img", ["compare", "-U", "-f", "qcow2", "-F", "qcow2", a, b], { reject: false });
  return { same: r.exitCode === 0, output: `${r.stdout}${r.stderr}` };
}

/** Image files in a node's pool that belong to a volume. */
export function imagesOn(c: TestCluster, node: string, volume: string): string[] {
  const dir = c.poolDir(node);
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.startsWith(`${volume}.`)) : [];
}

/** The volume spec as etcd has it. */
export async function storedSpec(c: TestCluster, volume: string): Promise<{ placement: { id: string; node: string }[]; generation: number; removedReplicas?: { id: string; node: string }[] }> {
  return JSON.parse((await c.client.get(`/stowage/v1/volumes/spec/${volume}`).string())!);
}
