// The sending side of receive-session.ts: given the image's manifest (from an index
// store, which chunked it without storing anything) and the ids another store
// lacks, reads exactly those chunks from the image (the manifest gives where each
// one is), compresses them on the chunk workers and hands them over as packs
// (chunk-file.ts), in the manifest's order, the receiver storing each as it is.
import { ID_BYTES, PACK_PREFIX_BYTES } from "./chunk-file.js";
import { ChunkWorkers, defaultWorkers } from "./chunk-workers.js";
import type { Manifest } from "./manifest.js";
import { orderedMap } from "./reader.js";

/** Uncompressed bytes and records per pack, at most (a pack is one gRPC message). */
const PACK_BYTES = 4 * 1024 * 1024;
const PACK_RECORDS = 128;
/** Packs being read and compressed at once. */
const IN_FLIGHT = 2 * defaultWorkers() + 2;

export interface MissingPack {
  /** The records' ids, 32 bytes each, in the pack's order. */
  ids: Buffer;
  pack: Buffer;
  /** Uncompressed bytes of its chunks. */
  dataBytes: number;
}

interface Piece {
  id: Buffer;
  offset: number;
  length: number;
}

/** The missing chunks in image order, each once, grouped into packs (ids in a pack differ in their first 8 bytes). */
export function planPacks(manifest: Manifest, missing: Buffer): Piece[][] {
  const want = new Set<string>();
  for (let at = 0; at < missing.length; at += ID_BYTES) want.add(missing.toString("hex", at, at + ID_BYTES));
  const pieces: Piece[] = [];
  let offset = 0;
  for (let i = 0; i < manifest.entryCount && want.size > 0; i++) {
    const length = manifest.entryLength(i);
    if (!manifest.isZeroRun(i)) {
      const id = manifest.entryId(i);
      if (want.delete(id.toString("hex"))) pieces.push({ id, offset, length });
    }
    offset += length;
  }
  if (want.size > 0) throw new Error(`asked for ${want.size} chunks that are not in ${manifest.name}`);
  const packs: Piece[][] = [];
  let cur: Piece[] = [];
  let bytes = 0;
  let prefixes = new Set<string>();
  for (const p of pieces) {
    const prefix = p.id.toString("hex", 0, PACK_PREFIX_BYTES);
    if (cur.length > 0 && (bytes + p.length > PACK_BYTES || cur.length >= PACK_RECORDS || prefixes.has(prefix))) {
      packs.push(cur);
      cur = [];
      bytes = 0;
      prefixes = new Set();
    }
    cur.push(p);
    bytes += p.length;
    prefixes.add(prefix);
  }
  if (cur.length) packs.push(cur);
  return packs;
}

/**
 * Reads the `missing` chunks of the image `manifest` describes through `read`
 * (exactly `length` bytes at `offset`), compresses them at `zstdLevel` and passes
 * them to `send` as packs, in order (send is awaited before the next).
 */
export async function sendMissing(
  manifest: Manifest,
  missing: Buffer,
  read: (offset: number, length: number) => Promise<Uint8Array>,
  zstdLevel: number,
  send: (p: MissingPack) => Promise<void>,
): Promise<void> {
  const pool = ChunkWorkers.shared();
  const workers = pool.size;
  await orderedMap(
    planPacks(manifest, missing),
    IN_FLIGHT,
    async (pieces): Promise<MissingPack> => {
      const dataBytes = pieces.reduce((n, p) => n + p.length, 0);
      const sab = new SharedArrayBuffer(dataBytes);
      const buf = Buffer.from(sab);
      const items: { start: number; length: number }[] = [];
      // One read per run of adjacent chunks.
      const runs: { offset: number; length: number; at: number }[] = [];
      let at = 0;
      for (const p of pieces) {
        items.push({ start: at, length: p.length });
        const last = runs[runs.length - 1];
        if (last && last.offset + last.length === p.offset) last.length += p.length;
        else runs.push({ offset: p.offset, length: p.length, at });
        at += p.length;
      }
      await Promise.all(
        runs.map(async (r) => {
          const data = await read(r.offset, r.length);
          if (data.length !== r.length) throw new Error(`read(${r.offset}, ${r.length}) returned ${data.length} bytes`);
          buf.set(data, r.at);
        }),
      );
      const prefixes = new Uint8Array(PACK_PREFIX_BYTES * pieces.length);
      pieces.forEach((p, i) => prefixes.set(p.id.subarray(0, PACK_PREFIX_BYTES), PACK_PREFIX_BYTES * i));
      const pack = await pool.packFor(sab, items, prefixes, zstdLevel, workers);
      return { ids: Buffer.concat(pieces.map((p) => p.id)), pack, dataBytes };
    },
    (p) => send(p),
  );
}
