// One write in progress: the steps every way of storing an image shares (a full
// write, writer.ts; a write on top of a base manifest, incremental.ts). The order
// of steps is what makes it safe:
//
//   1. A pending record (pending/SESSION) says a write started at startedMs. The GC
//      never deletes a chunk whose mtime is at or after the oldest live writer's
//      start (gc.ts), so everything this write references stays until it commits.
//   2. A chunk already in the store is "touched" (its mtime set to now) instead of
//      merely looked up: the touch both answers "is it there?" and protects it. If
//      the GC removed it a moment before, the touch fails with ENOENT and the chunk
//      is written again. Chunks reused from a base manifest are touched the same
//      way (reuse()): the base may be deleted and collected while this write runs.
//   3. A new chunk is written to tmp/, fsynced, and renamed into chunks/: a chunk
//      file under its final name is always complete.
//   4. After the last chunk: fsync every shard directory this write put or found a
//      chunk in, then write the manifest to tmp/, fsync it, link it into
//      manifests/ (which refuses an existing name) and fsync manifests/. So a
//      committed manifest never points at a chunk a crash could lose. Chunks
//      reused from a base need no directory fsync: the base was committed only
//      after theirs.
//   5. Remove the pending record. A writer killed before that leaves a record whose
//      process is gone; the GC removes it, and the chunks only it referenced.
import { randomBytes } from "node:crypto";
import { utimesSync } from "node:fs";
import { link, open, rename, rm, stat, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { AlreadyExistsError, InvalidArgumentError } from "../errors.js";
import { faultPoint } from "../faults.js";
import { HEADER_BYTES, sha256, shardOf } from "./chunk-file.js";
import type { ChunkerParams } from "./chunker.js";
import { CompressPool } from "./compress-pool.js";
import { fsyncDir, type Layout, type PendingRecord, validManifestName, writePending } from "./layout.js";
import { ManifestBuilder } from "./manifest.js";

export interface SessionOptions {
  zstdLevel: number;
  /** Chunk files being written and synced at once. */
  concurrency: number;
  compressWorkers: number;
}

/** What a session added to the store; the caller adds the rest of its stats. */
export interface SessionCounters {
  newChunks: number;
  newBytes: number;
  storedBytes: number;
  dedupBytes: number;
}

export class WriteSession {
  readonly builder = new ManifestBuilder();
  readonly counters: SessionCounters = { newChunks: 0, newBytes: 0, storedBytes: 0, dedupBytes: 0 };
  /** Chunk ids (hex) this session has written, touched or found written by itself. */
  private readonly known = new Set<string>();
  /** Shard directories to fsync before the manifest. */
  private readonly shards = new Set<string>();
  private readonly writes = new Set<Promise<void>>();
  private readonly encoder: CompressPool;
  private failure: unknown;
  private tmpSeq = 0;

  private constructor(
    private readonly layout: Layout,
    readonly name: string,
    private readonly session: string,
    private readonly opts: SessionOptions,
  ) {
    this.encoder = new CompressPool(opts.zstdLevel, opts.compressWorkers);
  }

  /** Checks the name and records the pending write (step 1); close() must follow. */
  static async start(layout: Layout, name: string, opts: SessionOptions): Promise<WriteSession> {
    if (!validManifestName(name)) throw new InvalidArgumentError(`invalid manifest name "${name}"`, { hint: "use letters, digits and . _ @ : + -, starting with a letter or digit" });
    if (await exists(layout.manifest(name))) throw new AlreadyExistsError("manifest", name);
    const session = `${Date.now().toString(36)}-${process.pid}-${randomBytes(4).toString("hex")}`;
    const record: PendingRecord = { session, name, host: hostname(), pid: process.pid, startedMs: Date.now() };
    await writePending(layout, record);
    return new WriteSession(layout, name, session, opts);
  }

  addZero(length: number): void {
    this.builder.addZero(length);
  }

  /**
   * Appends a chunk of data: hashes it, and stores it unless the store has it.
   * `data` is consumed before the first await, so the caller may reuse its buffer
   * once this returns a promise. Waits while `concurrency` chunk writes are in flight.
   */
  async addData(data: Uint8Array): Promise<void> {
    const len = data.length;
    const id = sha256(data);
    this.builder.addChunk(id, len);
    const idHex = id.toString("hex");
    if (this.known.has(idHex)) {
      this.counters.dedupBytes += len;
      return;
    }
    this.known.add(idHex);
    this.shards.add(shardOf(idHex));
    if (touch(this.layout.chunk(idHex))) {
      this.counters.dedupBytes += len;
      return;
    }
    this.counters.newChunks++;
    this.counters.newBytes += len;
    if (this.failure) throw this.failure;
    const p: Promise<void> = this.writeChunk(idHex, data).then(
      () => void this.writes.delete(p),
      (err) => {
        this.writes.delete(p);
        this.failure ??= err;
      },
    );
    this.writes.add(p);
    if (this.writes.size >= this.opts.concurrency) await Promise.race(this.writes);
  }

  /**
   * Appends a chunk a committed base manifest references, without its data: touches
   * it (step 2). False if it is gone (collected after the base was deleted, or
   * quarantined): nothing was appended, and the caller must addData() its bytes.
   */
  reuse(id: Uint8Array, length: number): boolean {
    const idHex = Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString("hex");
    if (!this.known.has(idHex)) {
      if (!touch(this.layout.chunk(idHex))) return false;
      this.known.add(idHex);
    }
    this.builder.addChunk(id, length);
    this.counters.dedupBytes += length;
    return true;
  }

  /** Waits for the chunk writes, syncs their directories and commits the manifest (step 4). */
  async commit(chunker: ChunkerParams, labels: Record<string, string>): Promise<void> {
    await Promise.all(this.writes);
    if (this.failure) throw this.failure;
    await this.syncShards();
    faultPoint("chunks.write.before-manifest", this.name);

    const manifest = this.builder.encode({ name: this.name, createdMs: Date.now(), chunker, labels });
    const tmp = this.layout.tmp(`${this.session}.manifest`);
    const fh = await open(tmp, "wx");
    try {
      await fh.writeFile(manifest);
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await link(tmp, this.layout.manifest(this.name));
    } catch (err: any) {
      if (err?.code === "EEXIST") throw new AlreadyExistsError("manifest", this.name);
      throw err;
    } finally {
      await unlink(tmp).catch(() => {});
    }
    await fsyncDir(this.layout.manifestsDir());
    faultPoint("chunks.write.after-manifest", this.name);
  }

  /** Ends the session, committed or not: waits for stray writes, removes the pending record (step 5). */
  async close(): Promise<void> {
    await Promise.allSettled(this.writes);
    await this.encoder.close();
    await rm(this.layout.pending(this.session), { force: true });
  }

  /** fsyncs the shard directories, `concurrency` at a time (one at a time, 256 of them took ~0.3 s here). */
  private async syncShards(): Promise<void> {
    const queue = [...this.shards];
    const worker = async () => {
      for (let s = queue.pop(); s !== undefined; s = queue.pop()) await fsyncDir(this.layout.shardDir(s));
    };
    await Promise.all(Array.from({ length: Math.min(this.opts.concurrency, queue.length) }, worker));
  }

  private async writeChunk(idHex: string, data: Uint8Array): Promise<void> {
    const parts = await this.encoder.encode(data);
    this.counters.storedBytes += HEADER_BYTES + parts[1].length;
    const tmp = this.layout.tmp(`${this.session}.${this.tmpSeq++}`);
    const fh = await open(tmp, "wx");
    try {
      await fh.writev(parts);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.layout.chunk(idHex));
  }
}

/** Sets the chunk's mtime to now; false if it does not exist. */
function touch(path: string): boolean {
  const now = Date.now() / 1000;
  try {
    utimesSync(path, now, now);
    return true;
  } catch (err: any) {
    if (err?.code === "ENOENT") return false;
    throw err;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err: any) {
    if (err?.code === "ENOENT") return false;
    throw err;
  }
}
