// The contenders of the dedup benchmark, behind one interface: a fresh repository,
// then one backup per image, timed. Stowage's store runs in this process; borg and
// restic are the Debian packages, run with their repositories in a temp dir.
import { mkdirSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { run } from "../../lib/exec.js";
import { ChunkStore, type ChunkerKind } from "../../lib/chunks/index.js";
import type { CorpusImage } from "./dedup-corpus.js";

export interface Contender {
  label: string;
  /** Backs `image` up into the repository; returns Stowage's own stats when it has them. */
  backup(image: CorpusImage): Promise<{ dedupBytes?: number; dataBytes?: number }>;
  /** Bytes of every file in the repository. */
  storedBytes(): number;
}

/** Bytes of the files under `dir`, each file once however many names it has (a chunk pack has one per chunk). */
export function dirBytes(dir: string, seen = new Set<number>()): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) n += dirBytes(p, seen);
    else if (e.isFile()) {
      const st = statSync(p);
      if (seen.has(st.ino)) continue;
      seen.add(st.ino);
      n += st.size;
    }
  }
  return n;
}

export async function stowage(work: string, kind: ChunkerKind): Promise<Contender> {
  const root = join(work, `stowage-${kind}`);
  const store = await ChunkStore.open(root, { chunker: kind });
  return {
    label: `stowage ${kind === "cdc" ? "CDC 16K+~32K" : "fixed 64K"}`,
    async backup(image) {
      const s = await store.write(image.name, image.path);
      return { dedupBytes: s.dedupBytes, dataBytes: s.dataBytes };
    },
    storedBytes: () => dirBytes(root),
  };
}

/** Runs a tool through lib/exec with extra environment and a working directory (via env(1)). */
async function tool(file: string, args: string[], env: Record<string, string>, cwd: string): Promise<void> {
  await run("env", ["-C", cwd, ...Object.entries(env).map(([k, v]) => `${k}=${v}`), file, ...args], { timeoutMs: 60 * 60_000 });
}

export async function borg(work: string): Promise<Contender> {
  const repo = join(work, "borg-repo");
  const env = { BORG_BASE_DIR: join(work, "borg-base"), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: "yes", BORG_RELOCATED_REPO_ACCESS_IS_OK: "yes", BORG_PASSPHRASE: "" };
  await tool("borg", ["init", "--encryption=none", repo], env, work);
  return {
    label: "borg buzhash,14,18,16 zstd",
    async backup(image) {
      const dir = join(image.path, "..");
      await tool("borg", ["create", "--chunker-params", "buzhash,14,18,16,4095", "--compression", "zstd", `${repo}::${image.name}`, `${image.name}.raw`], env, dir);
      return {};
    },
    storedBytes: () => dirBytes(repo),
  };
}

export async function restic(work: string): Promise<Contender> {
  const repo = join(work, "restic-repo");
  mkdirSync(join(work, "restic-cache"), { recursive: true });
  const env = { RESTIC_PASSWORD: "stowage-bench", RESTIC_REPOSITORY: repo, XDG_CACHE_HOME: join(work, "restic-cache") };
  await tool("restic", ["init", "--repository-version", "2"], env, work);
  return {
    label: "restic (zstd auto)",
    async backup(image) {
      await tool("restic", ["backup", "--quiet", "--host", "bench", "--compression", "auto", `${image.name}.raw`], env, join(image.path, ".."));
      return {};
    },
    storedBytes: () => dirBytes(repo),
  };
}
