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
//   3. New chunks are written to tmp/ a pack of several at a time (chunk-file.ts),
//      made durable (fsync) and linked into chunks/ under each of their names: a
//      chunk's name in chunks/ always leads to a complete file (chunk-staging.ts).
//   4. After the last chunk: wait for those, write the manifest to tmp/, sync the
//      file system (the links, the manifest's bytes, and the directory entries of
//      chunks found in the store, which another write may have linked a moment
//      ago), link the manifest into manifests/ (which refuses
//      an existing name) and fsync manifests/. So a committed manifest never points
//      at a chunk a crash could lose.
//   5. Remove the pending record. A writer killed before that leaves a record whose
//      process is gone; the GC removes it, its tmp/ files, and the chunks only it
//      referenced.
//
// Chunks arrive with their bytes (addData: hashed and compressed on the event loop,
// as incremental writes do with their few new chunks, and written a pack at a
// time) or already hashed by a worker thread (addHashed, segment-pipeline.ts),
// which then also compresses and writes the new ones into a pack (writingPack()).
import { randomBytes } from "node:crypto";
import { utimesSync } from "node:fs";
import { link, open, rm, stat, unlink, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { AlreadyExistsError, InvalidArgumentError } from "../errors.js";
import { faultPoint } from "../faults.js";
import { ChunkEncoder, encodePack, PACK_PREFIX_BYTES, sha256 } from "./chunk-file.js";
import { ChunkStaging, syncFileSystem } from "./chunk-staging.js";
import type { ChunkerParams } from "./chunker.js";
import { fsyncDir, type Layout, type PendingRecord, validManifestName, writePending } from "./layout.js";
import { ManifestBuilder } from "./manifest.js";

/** Chunks addData() collects into one pack, at most (records, bytes). */
const PACK_RECORDS = 64;
const PACK_BYTES = 4 * 1024 * 1024;

export interface SessionOptions {
  zstdLevel: number;
  /** Chunk files being written at once by addData(). */
  concurrency: number;
  /** An index store (StoreConfig.indexOnly): every chunk counts as present; nothing is stored or touched. */
  indexOnly?: boolean;
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
  private readonly writes = new Set<Promise<void>>();
  private readonly staging: ChunkStaging;
  private encoder: ChunkEncoder | undefined;
  /** New chunks from addData() not yet written: the next pack. */
  private pack: { records: { id: Uint8Array; record: Buffer[] }[]; finals: string[]; prefixes: Set<string>; bytes: number } = { records: [], finals: [], prefixes: new Set(), bytes: 0 };
  private failure: unknown;
  private tmpSeq = 0;
  private committed = false;

  private constructor(
    private readonly layout: Layout,
    readonly name: string,
    private readonly session: string,
    private readonly opts: SessionOptions,
  ) {
    this.staging = new ChunkStaging();
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
    const id = sha256(data);
    const idHex = id.toString("hex");
    if (!this.lookup(id, idHex, data.length)) return;
    this.encoder ??= new ChunkEncoder(this.opts.zstdLevel);
    const record = this.encoder.encode(data);
    const prefix = idHex.slice(0, 2 * PACK_PREFIX_BYTES);
    if (this.pack.prefixes.has(prefix)) this.flushPack(); // ids must differ in their first bytes within a pack
    this.pack.records.push({ id, record });
    this.pack.finals.push(this.layout.chunk(idHex));
    this.pack.prefixes.add(prefix);
    this.pack.bytes += record[0].length + record[1].length;
    if (this.pack.records.length >= PACK_RECORDS || this.pack.bytes >= PACK_BYTES) this.flushPack();
    if (this.writes.size >= this.opts.concurrency) await Promise.race(this.writes);
  }

  /** Writes the chunks addData() collected as one pack. */
  private flushPack(): void {
    const { records, finals } = this.pack;
    if (records.length === 0) return;
    this.pack = { records: [], finals: [], prefixes: new Set(), bytes: 0 };
    this.addPack(encodePack(records), finals);
  }

  /**
   * Stores a pack already encoded (chunk-file.ts) holding the chunks whose paths are
   * `finals` (the caller checked its records: receive-session.ts); commit() waits for it.
   */
  addPack(bytes: Buffer, finals: string[]): void {
    this.counters.storedBytes += bytes.length;
    const tmp = this.packFile();
    this.track(
      (async () => {
        await writeFile(tmp, bytes, { flag: "wx" });
        this.staging.addPack(tmp, finals);
      })(),
    );
  }

  /**
   * Appends a chunk hashed elsewhere (a worker). If the store lacks it, returns the
   * path it must end up at: the caller has it written into a pack (packFile()) and
   * passes the write to writingPack().
   */
  addHashed(id: Uint8Array, length: number): string | undefined {
    const idHex = Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString("hex");
    if (!this.lookup(id, idHex, length)) return undefined;
    return this.layout.chunk(idHex);
  }

  /** A new file name in tmp/ for a pack. */
  packFile(): string {
    return this.layout.tmp(`${this.session}.${this.tmpSeq++}`);
  }

  /** A pack being written elsewhere at `tmp`, holding the chunks named `finals`; `size` resolves once it is complete. commit() waits for it. */
  writingPack(tmp: string, finals: string[], size: Promise<number>): void {
    this.track(
      size.then((bytes) => {
        this.counters.storedBytes += bytes;
        this.staging.addPack(tmp, finals);
      }),
    );
  }

  /** Throws the first failure of a background write, if any. */
  check(): void {
    if (this.failure) throw this.failure;
  }

  /**
   * Appends a chunk a committed base manifest references, without its data: touches
   * it (step 2). False if it is gone (collected after the base was deleted, or
   * quarantined): nothing was appended, and the caller must addData() its bytes.
   */
  reuse(id: Uint8Array, length: number): boolean {
    const idHex = Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString("hex");
    if (!this.known.has(idHex) && !this.opts.indexOnly) {
      if (!touch(this.layout.chunk(idHex))) return false;
      this.known.add(idHex);
    }
    this.builder.addChunk(id, length);
    this.counters.dedupBytes += length;
    return true;
  }

  /** Waits for the chunk writes, makes them durable and commits the manifest (step 4). */
  async commit(chunker: ChunkerParams, labels: Record<string, string>): Promise<void> {
    this.flushPack();
    await Promise.all(this.writes);
    if (this.failure) throw this.failure;
    await this.staging.finish();

    const manifest = this.builder.encode({ name: this.name, createdMs: Date.now(), chunker, labels });
    const tmp = this.layout.tmp(`${this.session}.manifest`);
    const fh = await open(tmp, "wx");
    try {
      await fh.writeFile(manifest);
    } finally {
      await fh.close();
    }
    try {
      await syncFileSystem(this.layout.tmpDir());
      faultPoint("chunks.write.before-manifest", this.name);
      await link(tmp, this.layout.manifest(this.name));
    } catch (err: any) {
      if (err?.code === "EEXIST") throw new AlreadyExistsError("manifest", this.name);
      throw err;
    } finally {
      await unlink(tmp).catch(() => {});
    }
    await fsyncDir(this.layout.manifestsDir());
    this.committed = true;
    faultPoint("chunks.write.after-manifest", this.name);
  }

  /** Ends the session, committed or not: waits for stray writes, removes the pending record (step 5). */
  async close(): Promise<void> {
    await Promise.allSettled(this.writes);
    if (!this.committed) {
      await this.staging.finish().catch(() => undefined);
      await Promise.all(this.staging.leftovers().map((f) => rm(f, { force: true })));
    }
    await rm(this.layout.pending(this.session), { force: true });
  }

  /** Records chunk `id` in the manifest; true if the store lacks it (counted as new: the caller stores it). */
  private lookup(id: Uint8Array, idHex: string, len: number): boolean {
    this.builder.addChunk(id, len);
    if (this.known.has(idHex)) {
      this.counters.dedupBytes += len;
      return false;
    }
    this.known.add(idHex);
    if (this.opts.indexOnly || touch(this.layout.chunk(idHex))) {
      this.counters.dedupBytes += len;
      return false;
    }
    this.counters.newChunks++;
    this.counters.newBytes += len;
    if (this.failure) throw this.failure;
    return true;
  }

  private track(p: Promise<void>): void {
    const q: Promise<void> = p.then(
      () => void this.writes.delete(q),
      (err) => {
        this.writes.delete(q);
        this.failure ??= err;
      },
    );
    this.writes.add(q);
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
