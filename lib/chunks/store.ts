// ChunkStore: the content-addressed, deduplicating, zstd-compressed store of
// volume images in one directory. What each operation guarantees is explained
// where it is implemented: writer.ts and write-session.ts (ingest and commit),
// incremental.ts (a write on top of a base manifest), gc.ts (mark and sweep
// alongside running writes), verify.ts, restore.ts; the format in layout.ts,
// chunk-file.ts and manifest.ts.
import { stat } from "node:fs/promises";
import { type ChunkerKind, chunkerParams } from "./chunker.js";
import type { ImageSource } from "./chunk-stream.js";
import { ChunkWorkers } from "./chunk-workers.js";
import { collectGarbage, type GcOptions, type GcStats } from "./gc.js";
import { type IncrementalStats, type IncrementalWriteOptions, writeIncremental } from "./incremental.js";
import { StoreFormatError } from "./errors.js";
import { createLayout, DEFAULT_CONFIG, Layout, readConfig, type StoreConfig } from "./layout.js";
import type { Manifest } from "./manifest.js";
import { deleteManifest, listManifestNames, readManifest, readManifestFile } from "./manifests.js";
import { ReceiveSession } from "./receive-session.js";
import { restoreImage, type RestoreOptions, type RestoreStats, type RestoreTarget } from "./restore.js";
import { verifyStore, type VerifyOptions, type VerifyReport } from "./verify.js";
import { writeImage, type WriteOptions, type WriteStats } from "./writer.js";

export interface CreateOptions {
  chunker?: ChunkerKind;
  zstdLevel?: number;
  /** Manifests only (StoreConfig.indexOnly): must match what the store was created with. */
  indexOnly?: boolean;
}

export class ChunkStore {
  private constructor(
    private readonly layout: Layout,
    readonly config: StoreConfig,
  ) {}

  get root(): string {
    return this.layout.root;
  }

  /** Opens the store in `dir`, creating it (with `opts`) if the directory has none. */
  static async open(dir: string, opts: CreateOptions = {}): Promise<ChunkStore> {
    const layout = new Layout(dir);
    const present = await stat(layout.config()).then(
      () => true,
      () => false,
    );
    if (!present) {
      const config: StoreConfig = { ...DEFAULT_CONFIG, chunker: chunkerParams(opts.chunker ?? "cdc"), zstdLevel: opts.zstdLevel ?? DEFAULT_CONFIG.zstdLevel };
      if (opts.indexOnly) config.indexOnly = true;
      await createLayout(layout, config);
    }
    const config = await readConfig(layout);
    if (Boolean(config.indexOnly) !== Boolean(opts.indexOnly)) {
      throw new StoreFormatError(dir, config.indexOnly ? "an index of manifests without chunks, not a chunk store" : "a chunk store, not an index");
    }
    return new ChunkStore(layout, config);
  }

  /**
   * Starts the worker threads full writes use (they start with the first write
   * otherwise): a caller about to write can have that overlap its own preparations.
   */
  static warmUp(): void {
    ChunkWorkers.shared();
  }

  /** Stores an image under a new manifest name. */
  write(name: string, source: ImageSource, opts?: WriteOptions): Promise<WriteStats> {
    return writeImage(this.layout, this.config, name, source, opts);
  }

  /**
   * Stores a new image under `name` on top of manifest `base` (its previous version):
   * only `opts.changed` (and the growth past the base's size) is read through
   * `opts.read` and chunked again, the rest is the base's chunks. The result restores
   * to the new image exactly and uses the base's chunker.
   */
  writeIncremental(name: string, base: string, opts: IncrementalWriteOptions): Promise<IncrementalStats> {
    return writeIncremental(this.layout, this.config, name, base, opts);
  }

  restore(name: string, target: RestoreTarget, opts?: RestoreOptions): Promise<RestoreStats> {
    return restoreImage(this.layout, name, target, opts);
  }

  list(): Promise<string[]> {
    return listManifestNames(this.layout);
  }

  manifest(name: string): Promise<Manifest> {
    return readManifest(this.layout, name);
  }

  /** The committed manifest `name` as stored (what receive() takes). */
  manifestFile(name: string): Promise<Buffer> {
    return readManifestFile(this.layout, name);
  }

  /**
   * Starts receiving image `name` from a node that chunked it (receive-session.ts):
   * the session says which chunks this store lacks, takes them as packs, commits.
   */
  receive(name: string, manifestFile: Buffer): Promise<ReceiveSession> {
    return ReceiveSession.start(this.layout, this.config, name, manifestFile);
  }

  delete(name: string): Promise<void> {
    return deleteManifest(this.layout, name);
  }

  gc(opts?: GcOptions): Promise<GcStats> {
    return collectGarbage(this.layout, opts);
  }

  verify(opts?: VerifyOptions): Promise<VerifyReport> {
    return verifyStore(this.layout, opts);
  }

  /** How many committed manifests reference each chunk (computed from the manifests). */
  async refcounts(): Promise<Map<string, number>> {
    const counts = new Map<string, number>();
    for (const name of await this.list()) for (const id of (await this.manifest(name)).chunkIds()) counts.set(id, (counts.get(id) ?? 0) + 1);
    return counts;
  }
}
