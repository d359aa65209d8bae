// A manifest: one stored image, as the ordered list of its pieces. Binary, because
// a large image has hundreds of thousands of entries:
//
//   "STOWMAN1"                    8 bytes
//   header length                 u32 little endian
//   header                        JSON (ManifestHeader)
//   entries                       40 bytes each:
//     length low 32 bits          u32 LE
//     length high bits | flags    u32 LE; bit 31 set: a zero run (no chunk)
//     chunk id                    32 bytes (zero for a zero run)
//   SHA-256 of all of the above   32 bytes: a torn or damaged manifest is detected
//
// The image is the entries' bytes one after the other; adjacent zero runs are merged.
import { createHash } from "node:crypto";
import { ID_BYTES } from "./chunk-file.js";
import type { ChunkerParams } from "./chunker.js";
import { StoreFormatError } from "./errors.js";

const MAGIC = Buffer.from("STOWMAN1", "latin1");
export const ENTRY_BYTES = 8 + ID_BYTES;
const ZERO_FLAG = 0x80000000;
const TWO32 = 2 ** 32;

export interface ManifestHeader {
  version: 1;
  name: string;
  createdMs: number;
  /** Bytes of the image. */
  size: number;
  zeroBytes: number;
  /** Entries that are chunks (references, repeated ones counted each time). */
  chunks: number;
  entries: number;
  chunker: ChunkerParams;
  /** Free-form labels of the caller (volume, backup policy...). */
  labels: Record<string, string>;
}

export interface ManifestEntry {
  /** Byte offset in the image. */
  offset: number;
  length: number;
  /** Hex id, or null for a zero run. */
  id: string | null;
}

/** Collects entries while an image is being stored. */
export class ManifestBuilder {
  private buf = Buffer.allocUnsafe(ENTRY_BYTES * 1024);
  private used = 0;
  private lastZero = false;
  size = 0;
  zeroBytes = 0;
  chunks = 0;

  addChunk(id: Uint8Array, length: number): void {
    const at = this.grow();
    this.buf.writeUInt32LE(length, at);
    this.buf.writeUInt32LE(0, at + 4);
    this.buf.set(id, at + 8);
    this.lastZero = false;
    this.size += length;
    this.chunks++;
  }

  addZero(length: number): void {
    if (this.lastZero) {
      const at = this.used - ENTRY_BYTES;
      const total = this.entryLength(at) + length;
      this.writeZeroLength(at, total);
    } else {
      const at = this.grow();
      this.writeZeroLength(at, length);
      this.buf.fill(0, at + 8, at + ENTRY_BYTES);
      this.lastZero = true;
    }
    this.size += length;
    this.zeroBytes += length;
  }

  get entries(): number {
    return this.used / ENTRY_BYTES;
  }

  encode(fields: Pick<ManifestHeader, "name" | "createdMs" | "chunker" | "labels">): Buffer {
    const header: ManifestHeader = { version: 1, ...fields, size: this.size, zeroBytes: this.zeroBytes, chunks: this.chunks, entries: this.entries };
    const json = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(4);
    len.writeUInt32LE(json.length);
    const body = Buffer.concat([MAGIC, len, json, this.buf.subarray(0, this.used)]);
    return Buffer.concat([body, createHash("sha256").update(body).digest()]);
  }

  private grow(): number {
    if (this.used + ENTRY_BYTES > this.buf.length) {
      const next = Buffer.allocUnsafe(this.buf.length * 2);
      this.buf.copy(next, 0, 0, this.used);
      this.buf = next;
    }
    const at = this.used;
    this.used += ENTRY_BYTES;
    return at;
  }

  private entryLength(at: number): number {
    return this.buf.readUInt32LE(at) + (this.buf.readUInt32LE(at + 4) & ~ZERO_FLAG) * TWO32;
  }

  private writeZeroLength(at: number, length: number): void {
    this.buf.writeUInt32LE(length % TWO32, at);
    this.buf.writeUInt32LE((Math.floor(length / TWO32) | ZERO_FLAG) >>> 0, at + 4);
  }
}

/** A parsed manifest; entries are decoded lazily from the binary table. */
export class Manifest {
  private constructor(
    readonly header: ManifestHeader,
    private readonly table: Buffer,
  ) {}

  static parse(file: Buffer, where: string): Manifest {
    const bad = (reason: string) => new StoreFormatError(where, `not a valid manifest: ${reason}`);
    if (file.length < MAGIC.length + 4 + 32 || !file.subarray(0, MAGIC.length).equals(MAGIC)) throw bad("bad magic");
    const body = file.subarray(0, file.length - 32);
    if (!createHash("sha256").update(body).digest().equals(file.subarray(file.length - 32))) throw bad("checksum mismatch");
    const jsonLen = body.readUInt32LE(MAGIC.length);
    const tableAt = MAGIC.length + 4 + jsonLen;
    const header = JSON.parse(body.subarray(MAGIC.length + 4, tableAt).toString()) as ManifestHeader;
    const table = body.subarray(tableAt);
    if (header.version !== 1 || table.length !== header.entries * ENTRY_BYTES) throw bad("header does not match its entries");
    return new Manifest(header, table);
  }

  get name(): string {
    return this.header.name;
  }

  *entries(): Generator<ManifestEntry> {
    let offset = 0;
    for (let at = 0; at < this.table.length; at += ENTRY_BYTES) {
      const hi = this.table.readUInt32LE(at + 4);
      const length = this.table.readUInt32LE(at) + (hi & ~ZERO_FLAG) * TWO32;
      const id = hi & ZERO_FLAG ? null : this.table.toString("hex", at + 8, at + ENTRY_BYTES);
      yield { offset, length, id };
      offset += length;
    }
  }

  get entryCount(): number {
    return this.table.length / ENTRY_BYTES;
  }

  /** Entry `i` without its offset (for walking a manifest by index, as incremental.ts does). */
  entryLength(i: number): number {
    const at = i * ENTRY_BYTES;
    return this.table.readUInt32LE(at) + (this.table.readUInt32LE(at + 4) & ~ZERO_FLAG) * TWO32;
  }

  isZeroRun(i: number): boolean {
    return (this.table.readUInt32LE(i * ENTRY_BYTES + 4) & ZERO_FLAG) !== 0;
  }

  /** Chunk id of entry `i` (all zeros for a zero run): a view into the manifest, not a copy. */
  entryId(i: number): Buffer {
    const at = i * ENTRY_BYTES;
    return this.table.subarray(at + 8, at + ENTRY_BYTES);
  }

  /** Distinct chunk ids, hex. */
  chunkIds(): Set<string> {
    const ids = new Set<string>();
    for (let at = 0; at < this.table.length; at += ENTRY_BYTES) {
      if (!(this.table.readUInt32LE(at + 4) & ZERO_FLAG)) ids.add(this.table.toString("hex", at + 8, at + ENTRY_BYTES));
    }
    return ids;
  }
}
