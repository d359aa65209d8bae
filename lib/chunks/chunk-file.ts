// One chunk on disk: chunks/<first two hex digits of its id>/<id>, a 12-byte header
// and the payload.
//
//   bytes 0-3   "SCK1"
//   byte  4     codec: 0 stored as is, 1 zstd
//   bytes 5-7   zero
//   bytes 8-11  length of the chunk's data, little endian
//   bytes 12-   payload
//
// The id is the SHA-256 of the uncompressed data, so a chunk file checks itself:
// decode it, hash it, compare with its name.
//
// A pack (store version 2) holds the records above of several chunks in one file,
// and each of its chunks' names in chunks/ is a hard link to it: a write of many
// new chunks creates one inode per pack instead of one per chunk (creating files
// was most of a full backup's time, see README.md "On disk").
//
//   bytes 0-3   "SCP1"
//   bytes 4-7   number of records N, little endian
//   N x 16      index: the first 8 bytes of the chunk's id, the record's offset
//               in the file and its length (u32 LE each)
//   records     as above: "SCK1" header and payload, one after the other
//
// A reader finds its record by the id's prefix and checks the whole id when it
// decodes it, as for a chunk file of its own. A pack's space is freed when its last
// name goes (gc.ts).
import { createHash } from "node:crypto";
import { Compressor, Decompressor } from "zstd-napi";
import { CorruptChunkError } from "./errors.js";

export const ID_BYTES = 32;
export const HEADER_BYTES = 12;
const MAGIC = Buffer.from("SCK1", "latin1");
export const PACK_MAGIC = Buffer.from("SCP1", "latin1");
export const PACK_HEADER_BYTES = 8;
export const PACK_ENTRY_BYTES = 16;
export const PACK_PREFIX_BYTES = 8;
export const CODEC_RAW = 0;
export const CODEC_ZSTD = 1;

export const sha256 = (data: Uint8Array): Buffer => createHash("sha256").update(data).digest();

/** Shard directory name of an id (hex). */
export const shardOf = (idHex: string): string => idHex.slice(0, 2);

export const isIdHex = (s: string): boolean => s.length === ID_BYTES * 2 && /^[0-9a-f]+$/.test(s);

export function encodeHeader(length: number, zstd: boolean): Buffer {
  const header = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(header, 0);
  header[4] = zstd ? CODEC_ZSTD : CODEC_RAW;
  header.writeUInt32LE(length, 8);
  return header;
}

/** A pack's bytes (see above), given each chunk's id and record (header and payload). */
export function encodePack(records: { id: Uint8Array; record: Buffer[] }[]): Buffer {
  const head = Buffer.alloc(PACK_HEADER_BYTES + PACK_ENTRY_BYTES * records.length);
  PACK_MAGIC.copy(head, 0);
  head.writeUInt32LE(records.length, 4);
  const parts: Buffer[] = [head];
  let offset = head.length;
  records.forEach((r, i) => {
    const at = PACK_HEADER_BYTES + PACK_ENTRY_BYTES * i;
    const length = r.record.reduce((n, b) => n + b.length, 0);
    head.set(r.id.subarray(0, PACK_PREFIX_BYTES), at);
    head.writeUInt32LE(offset, at + PACK_PREFIX_BYTES);
    head.writeUInt32LE(length, at + PACK_PREFIX_BYTES + 4);
    parts.push(...r.record);
    offset += length;
  });
  return Buffer.concat(parts, offset);
}

/** The record count in a pack's first bytes, or undefined if `head` does not start a pack (a chunk file of its own). */
export function packCount(head: Buffer): number | undefined {
  if (head.length < PACK_HEADER_BYTES || !head.subarray(0, 4).equals(PACK_MAGIC)) return undefined;
  return head.readUInt32LE(4);
}

/** Entry `i` of a pack's index (`index` holds the pack's first bytes, the index included). */
export function packEntry(index: Buffer, i: number): { prefix: Buffer; offset: number; length: number } {
  const at = PACK_HEADER_BYTES + PACK_ENTRY_BYTES * i;
  return { prefix: index.subarray(at, at + PACK_PREFIX_BYTES), offset: index.readUInt32LE(at + PACK_PREFIX_BYTES), length: index.readUInt32LE(at + PACK_PREFIX_BYTES + 4) };
}

/** Compresses chunks with one reused zstd context. */
export class ChunkEncoder {
  private readonly zstd = new Compressor();

  constructor(readonly level: number) {
    this.zstd.setParameters({ compressionLevel: level, checksumFlag: false, contentSizeFlag: true });
  }

  /** Header and payload of a chunk file; the payload is stored as is if zstd does not shrink it. */
  encode(data: Uint8Array): [Buffer, Buffer] {
    const packed = this.zstd.compress(data);
    if (packed.length < data.length) return [encodeHeader(data.length, true), packed];
    return [encodeHeader(data.length, false), Buffer.from(data)];
  }
}

export class ChunkDecoder {
  private readonly zstd = new Decompressor();

  /** The chunk's data, checked against `idHex`; throws CorruptChunkError. */
  decode(file: Buffer, idHex: string): Buffer {
    if (file.length < HEADER_BYTES || !file.subarray(0, 4).equals(MAGIC)) throw new CorruptChunkError(idHex, "bad header");
    const length = file.readUInt32LE(8);
    const payload = file.subarray(HEADER_BYTES);
    let data: Buffer;
    if (file[4] === CODEC_RAW) data = payload;
    else if (file[4] === CODEC_ZSTD) {
      try {
        data = this.zstd.decompress(payload);
      } catch (err) {
        throw new CorruptChunkError(idHex, `zstd: ${err instanceof Error ? err.message : String(err)}`);
      }
    } else throw new CorruptChunkError(idHex, `unknown codec ${file[4]}`);
    if (data.length !== length) throw new CorruptChunkError(idHex, `length ${data.length}, header says ${length}`);
    if (sha256(data).toString("hex") !== idHex) throw new CorruptChunkError(idHex, "content does not match its id");
    return data;
  }
}
