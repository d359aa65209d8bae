// A writer SIGKILLed at any point leaves a consistent store: no manifest that
// points at a missing chunk, nothing verify complains about, and a GC that removes
// what the dead writer left behind.
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ChunkStore } from "../../lib/chunks/index.js";
import { imageBytes, pieces } from "./chunk-fixtures.js";

const MiB = 1 << 20;
const viteNode = join(createRequire(import.meta.url).resolve("vite-node/package.json"), "..", "vite-node.mjs");
const child = join(import.meta.dirname, "chunk-crash-child.ts");

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "chunk-crash-test-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/**
 * Runs the child; kills it with SIGKILL once it has fed `killAtMiB` (if given) and
 * has chunk files in the store's tmp/ (written, not yet synced and renamed).
 */
function runChild(env: Record<string, string>, killAtMiB?: number): Promise<{ output: string; signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    // node itself, not a wrapper: SIGKILL must hit the process that writes.
    const p = spawn(process.execPath, [viteNode, child], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    let killing = false;
    const killWhenWriting = () => {
      if (p.exitCode !== null || p.signalCode !== null) return;
      if (readdirSync(join(env.CHUNK_STORE!, "tmp")).length > 0) p.kill("SIGKILL");
      else setTimeout(killWhenWriting, 2);
    };
    p.stdout.on("data", (d: Buffer) => {
      output += d.toString();
      const fed = [...output.matchAll(/fed (\d+)/g)].map((m) => Number(m[1]));
      if (killAtMiB !== undefined && !killing && fed.length && fed.at(-1)! >= killAtMiB) {
        killing = true;
        killWhenWriting();
      }
    });
    p.stderr.on("data", (d: Buffer) => (output += d.toString()));
    p.on("error", reject);
    p.on("exit", (_code, signal) => resolve({ output, signal }));
  });
}

async function expectConsistent(store: ChunkStore, base: Buffer) {
  const report = await store.verify();
  expect(report.missing).toEqual([]);
  expect(report.corrupt).toEqual([]);
  expect(report.ok).toBe(true);
  await store.restore("base", join(dir, "base.out"));
  const { readFileSync } = await import("node:fs");
  expect(readFileSync(join(dir, "base.out")).equals(base)).toBe(true);
}

describe("chunk store crash safety", () => {
  const base = imageBytes(8 * MiB, 1000); // the child's image starts with the same data

  it.each([
    ["mid-stream", undefined, 24],
    ["before the manifest is linked", "chunks.write.before-manifest", undefined],
  ])("a writer killed %s leaves no manifest and nothing broken; GC cleans up after it", async (_when, fault, killAt) => {
    const storeDir = join(dir, "store");
    const store = await ChunkStore.open(storeDir);
    await store.write("base", pieces(base));
    const r = await runChild({ CHUNK_STORE: storeDir, CHUNK_NAME: "big", CHUNK_MIB: "64", CHUNK_SEED: "1000", STOWAGE_FAULTS: fault ?? "" }, killAt);
    expect(r.signal, r.output).toBe("SIGKILL");
    expect(r.output).not.toContain("committed");

    expect(await store.list()).toEqual(["base"]);
    expect(readdirSync(join(storeDir, "pending"))).toHaveLength(1); // the dead writer's record
    await expectConsistent(store, base);
    const gc = await store.gc({ marginMs: 0 });
    expect(gc.stalePending).toBe(1);
    // What it wrote: chunk files already renamed into place, and those still in tmp/ (synced and renamed in batches).
    expect(gc.removedChunks + gc.removedTmpFiles).toBeGreaterThan(0);
    expect(readdirSync(join(storeDir, "pending"))).toHaveLength(0);
    expect(readdirSync(join(storeDir, "tmp"))).toHaveLength(0);
    expect((await store.verify()).unreferenced).toBe(0);
    await expectConsistent(store, base);
  }, 60_000);

  it("an incremental writer killed before or after linking its manifest leaves no manifest or a complete one", async () => {
    const storeDir = join(dir, "store");
    const store = await ChunkStore.open(storeDir);
    await store.write("base", pieces(base));
    const env = { CHUNK_STORE: storeDir, CHUNK_NAME: "incr", CHUNK_MIB: "16", CHUNK_SEED: "1000", CHUNK_BASE: "base" };
    const before = await runChild({ ...env, STOWAGE_FAULTS: "chunks.write.before-manifest" });
    expect(before.signal, before.output).toBe("SIGKILL");
    expect(await store.list()).toEqual(["base"]);
    await expectConsistent(store, base);
    expect((await store.gc({ marginMs: 0 })).stalePending).toBe(1);
    expect((await store.verify()).unreferenced).toBe(0);

    const after = await runChild({ ...env, STOWAGE_FAULTS: "chunks.write.after-manifest" });
    expect(after.signal, after.output).toBe("SIGKILL");
    expect(await store.list()).toEqual(["base", "incr"]);
    await store.gc({ marginMs: 0 });
    await expectConsistent(store, base);
    const parts: Buffer[] = [];
    for (let i = 0; i < 16; i += 4) parts.push(imageBytes(4 * MiB, 1000 + i));
    await store.restore("incr", join(dir, "incr.out"));
    const { readFileSync } = await import("node:fs");
    expect(readFileSync(join(dir, "incr.out")).equals(Buffer.concat(parts))).toBe(true);
  }, 60_000);

  it("a writer killed right after linking its manifest leaves a complete, restorable image", async () => {
    const storeDir = join(dir, "store");
    const store = await ChunkStore.open(storeDir);
    await store.write("base", pieces(base));
    const r = await runChild({ CHUNK_STORE: storeDir, CHUNK_NAME: "big", CHUNK_MIB: "16", CHUNK_SEED: "1000", STOWAGE_FAULTS: "chunks.write.after-manifest" });
    expect(r.signal, r.output).toBe("SIGKILL");
    expect(await store.list()).toEqual(["base", "big"]);
    await expectConsistent(store, base);
    await store.gc({ marginMs: 0 });
    const parts: Buffer[] = [];
    for (let i = 0; i < 16; i += 4) parts.push(imageBytes(4 * MiB, 1000 + i));
    await store.restore("big", join(dir, "big.out"));
    const { readFileSync } = await import("node:fs");
    expect(readFileSync(join(dir, "big.out")).equals(Buffer.concat(parts))).toBe(true);
  }, 60_000);
});
