// Receiving an image another node has chunked itself (asynchronous replication:
// node-agent/backup-ship.ts and backup-receive.ts). The sender has the image and
// its manifest; this store answers which of the manifest's chunks it lacks, and the
// sender sends exactly those, compressed, as packs (chunk-file.ts). So what crosses
// the network is the manifest and the chunks this store has never seen.
//
// It is a write session like any other (write-session.ts), in the same order:
//   1. start(): the pending record, then every chunk the manifest references is
//      touched (found: protected from a concurrent GC from now on) or, if absent,
//      counted as missing. The manifest's entries become the session's.
//   2. addPack(): each record is checked before anything is written (its id among
//      the missing ones and in the pack's index, the data's SHA-256 equal to the id,
//      its length the manifest's), then the pack is stored as it came, as a write's
//      own packs are (synced, then linked under each chunk's name).
//   3. commit(): only once every missing chunk came; the manifest is committed as a
//      normal write's, under the same name, so restore, GC and verify see no
//      difference. Anything wrong (a bad record, a chunk never sent, the sender
//      gone) ends with close() before commit: nothing committed, the pending record
//      and tmp/ files removed; the chunks already linked go at the next GC.
import { InvalidArgumentError } from "../errors.js";
import { ChunkDecoder, ID_BYTES, PACK_ENTRY_BYTES, PACK_HEADER_BYTES, PACK_PREFIX_BYTES, packCount, packEntry } from "./chunk-file.js";
import { CorruptChunkError } from "./errors.js";
import type { Layout, StoreConfig } from "./layout.js";
import { Manifest } from "./manifest.js";
import { WriteSession } from "./write-session.js";
import type { WriteStats } from "./writer.js";

/** As a write's (newChunks: the chunks this store lacked, all received; storedBytes: the packs received and stored). */
export interface ReceiveStats extends WriteStats {
  packs: number;
}

interface Wanted {
  length: number;
  /** Its name in chunks/. */
  path: string;
  received: boolean;
}

export class ReceiveSession {
  private readonly decoder = new ChunkDecoder();
  private outstanding: number;
  private packs = 0;
  private closed = false;

  private constructor(
    private readonly session: WriteSession,
    private readonly manifest: Manifest,
    private readonly wanted: Map<string, Wanted>,
    /** The missing ids, 32 bytes each, in the manifest's order. */
    readonly missing: Buffer,
    readonly zstdLevel: number,
    private readonly t0: number,
  ) {
    this.outstanding = wanted.size;
  }

  /** Starts receiving `name`, whose manifest (the encoded file) is `manifestFile`: steps 1 above. close() must follow. */
  static async start(layout: Layout, config: StoreConfig, name: string, manifestFile: Buffer): Promise<ReceiveSession> {
    const t0 = performance.now();
    if (config.indexOnly) throw new InvalidArgumentError("an index store cannot receive chunks");
    const manifest = Manifest.parse(manifestFile, `manifest received for ${name}`);
    if (manifest.header.name !== name) throw new InvalidArgumentError(`the manifest received is "${manifest.header.name}", not "${name}"`);
    const session = await WriteSession.start(layout, name, { zstdLevel: config.zstdLevel, concurrency: 16 });
    try {
      const wanted = new Map<string, Wanted>();
      const ids: Buffer[] = [];
      for (let i = 0; i < manifest.entryCount; i++) {
        const length = manifest.entryLength(i);
        if (manifest.isZeroRun(i)) {
          session.addZero(length);
          continue;
        }
        const id = manifest.entryId(i);
        const path = session.addHashed(id, length); // touches it, or says it is missing
        if (!path) continue;
        wanted.set(id.toString("hex"), { length, path, received: false });
        ids.push(id);
      }
      return new ReceiveSession(session, manifest, wanted, Buffer.concat(ids), config.zstdLevel, t0);
    } catch (err) {
      await session.close();
      throw err;
    }
  }

  /** Chunks still to come. */
  get remaining(): number {
    return this.outstanding;
  }

  /**
   * Checks and stores one pack of missing chunks: `ids` (32 bytes each) are its
   * records' ids in order. Throws CorruptChunkError or InvalidArgumentError (and
   * stores nothing of it) if any record is not a missing chunk's exact bytes.
   */
  async addPack(ids: Buffer, pack: Buffer): Promise<void> {
    this.session.check();
    const n = ids.length / ID_BYTES;
    if (!Number.isInteger(n) || n === 0) throw new InvalidArgumentError(`a pack's ids take ${ids.length} bytes, not a multiple of ${ID_BYTES}`);
    if (packCount(pack) !== n) {
      throw new InvalidArgumentError(`a pack received for ${this.session.name} is not a pack of ${n} records`);
    }
    const indexEnd = PACK_HEADER_BYTES + n * PACK_ENTRY_BYTES;
    if (pack.length < indexEnd) throw new InvalidArgumentError("a pack received is shorter than its index");
    const prefixes = new Set<string>();
    const taken: Wanted[] = [];
    for (let i = 0; i < n; i++) {
      const id = ids.subarray(i * ID_BYTES, (i + 1) * ID_BYTES);
      const idHex = id.toString("hex");
      const w = this.wanted.get(idHex);
      if (!w) throw new InvalidArgumentError(`chunk ${idHex} was not asked for`);
      if (w.received || taken.includes(w)) throw new InvalidArgumentError(`chunk ${idHex} was sent twice`);
      const { prefix, offset, length } = packEntry(pack, i);
      if (!prefix.equals(id.subarray(0, PACK_PREFIX_BYTES))) throw new CorruptChunkError(idHex, "not where the pack's index says");
      if (prefixes.has(prefix.toString("hex"))) throw new CorruptChunkError(idHex, "its pack holds another chunk of the same prefix");
      prefixes.add(prefix.toString("hex"));
      if (offset < indexEnd || offset + length > pack.length) throw new CorruptChunkError(idHex, "its record lies outside the pack");
      // Decoding checks the header, the length it states and the SHA-256 against the id.
      const data = this.decoder.decode(pack.subarray(offset, offset + length), idHex);
      if (data.length !== w.length) throw new CorruptChunkError(idHex, `${data.length} bytes, the manifest says ${w.length}`);
      taken.push(w);
    }
    for (const w of taken) w.received = true;
    this.outstanding -= taken.length;
    this.packs++;
    this.session.addPack(pack, taken.map((w) => w.path));
  }

  /** Commits the manifest once every missing chunk came (step 3). */
  async commit(): Promise<ReceiveStats> {
    if (this.outstanding > 0) throw new InvalidArgumentError(`${this.outstanding} of the ${this.wanted.size} chunks ${this.session.name} lacked never came`);
    const { chunker, labels } = this.manifest.header;
    await this.session.commit(chunker, labels);
    const { builder, counters } = this.session;
    return {
      name: this.session.name,
      logicalBytes: builder.size,
      zeroBytes: builder.zeroBytes,
      dataBytes: builder.size - builder.zeroBytes,
      chunks: builder.chunks,
      ...counters,
      packs: this.packs,
      seconds: (performance.now() - this.t0) / 1000,
    };
  }

  /** Ends the session, committed or not (write-session.ts step 5). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.session.close();
  }
}
