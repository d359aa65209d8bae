// The store's directory and the file-system steps everything else is built from.
//
//   STORE              JSON: format, version, default chunker and zstd level
//   chunks/00..ff/ID   chunk files, sharded by the first byte of the id, or links to
//                      packs of several chunks (chunk-file.ts)
//   manifests/NAME     committed manifests (manifest.ts)
//   pending/SESSION    one per write in progress: who, since when (the GC protocol, gc.ts)
//   tmp/               files being written; renamed into place once complete and synced
//   trash/             chunks the GC is deleting; only ever non-empty while a GC runs
//   gc.lock            held by the one running GC
import { mkdir, open, readFile, rename, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { type ChunkerParams, CDC_DEFAULTS } from "./chunker.js";
import { StoreFormatError } from "./errors.js";
import { syncDir, writeFileSynced } from "../file-ops.js";

export const FORMAT = "stowage-chunk-store";

/**
 * 2: chunk names may be links to packs (chunk-file.ts). A version 1 store is
 * upgraded when opened (it reads the same); software that knows only version 1
 * then refuses it instead of misreading packs as corrupt chunks.
 */
export const VERSION = 2;

export interface StoreConfig {
  format: typeof FORMAT;
  version: 1 | 2;
  chunker: ChunkerParams;
  zstdLevel: number;
  /**
   * An index: manifests only. Every chunk is presumed present, none is stored or
   * touched (a node that chunks a replica to learn its manifest, then ships another
   * store only the chunks that store lacks: node-agent/backup-ship.ts).
   */
  indexOnly?: true;
}

/**
 * zstd level 2: a full backup is CPU-bound on compression (half of each worker's
 * time); against level 3 it is ~10% faster through the cluster for 0.8% more bytes
 * (README.md "Chunking"). Stores keep the level they were made with.
 */
export const DEFAULT_CONFIG: StoreConfig = { format: FORMAT, version: VERSION, chunker: CDC_DEFAULTS, zstdLevel: 2 };

export class Layout {
  constructor(readonly root: string) {}

  readonly config = () => join(this.root, "STORE");
  readonly chunksDir = () => join(this.root, "chunks");
  readonly shardDir = (shard: string) => join(this.root, "chunks", shard);
  readonly chunk = (idHex: string) => join(this.root, "chunks", idHex.slice(0, 2), idHex);
  readonly manifestsDir = () => join(this.root, "manifests");
  readonly manifest = (name: string) => join(this.root, "manifests", name);
  readonly pendingDir = () => join(this.root, "pending");
  readonly pending = (session: string) => join(this.root, "pending", `${session}.json`);
  readonly tmpDir = () => join(this.root, "tmp");
  readonly tmp = (name: string) => join(this.root, "tmp", name);
  readonly trashDir = () => join(this.root, "trash");
  readonly trash = (idHex: string) => join(this.root, "trash", idHex);
  readonly gcLock = () => join(this.root, "gc.lock");
}

export const SHARDS = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

export async function createLayout(layout: Layout, config: StoreConfig): Promise<void> {
  for (const d of [layout.chunksDir(), layout.manifestsDir(), layout.pendingDir(), layout.tmpDir(), layout.trashDir()]) await mkdir(d, { recursive: true });
  await Promise.all(SHARDS.map((s) => mkdir(layout.shardDir(s), { recursive: true })));
  await atomicWrite(layout.config(), Buffer.from(JSON.stringify(config, null, 2) + "\n"), layout.tmp("STORE"));
}

export async function readConfig(layout: Layout): Promise<StoreConfig> {
  let text: string;
  try {
    text = await readFile(layout.config(), "utf8");
  } catch (err: any) {
    if (err?.code === "ENOENT") throw new StoreFormatError(layout.root, "not a chunk store (no STORE file)");
    throw err;
  }
  const config = JSON.parse(text) as StoreConfig;
  if (config.format !== FORMAT || (config.version !== 1 && config.version !== VERSION)) throw new StoreFormatError(layout.root, `unsupported store format ${config.format} v${config.version}`);
  if (config.version === 1) {
    config.version = VERSION;
    await atomicWrite(layout.config(), Buffer.from(JSON.stringify(config, null, 2) + "\n"), layout.tmp("STORE"));
  }
  return config;
}

export const fsyncDir = syncDir;

/** Writes `data` to `tmp`, syncs it, renames it to `path` and syncs the directory. */
export async function atomicWrite(path: string, data: Uint8Array, tmp: string): Promise<void> {
  await writeFileSynced(tmp, data);
  await rename(tmp, path);
  await fsyncDir(join(path, ".."));
}

/** A write in progress, as recorded in pending/. */
export interface PendingRecord {
  session: string;
  name: string;
  host: string;
  pid: number;
  /** Every chunk this write references was written or touched at or after this time. */
  startedMs: number;
}

export async function writePending(layout: Layout, record: PendingRecord): Promise<void> {
  // No fsync: a pending record only matters while its writer is alive.
  await writeFile(layout.tmp(`${record.session}.pending`), JSON.stringify(record));
  await rename(layout.tmp(`${record.session}.pending`), layout.pending(record.session));
}

/** Whether the writer of `record` may still be running (true when it cannot tell). */
export function writerAlive(record: PendingRecord): boolean {
  if (record.host !== hostname()) return true;
  try {
    process.kill(record.pid, 0);
    return true;
  } catch (err: any) {
    return err?.code === "EPERM";
  }
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,199}$/;
export const validManifestName = (name: string): boolean => NAME_RE.test(name);
