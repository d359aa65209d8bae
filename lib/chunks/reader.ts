// Reading chunk files back: the chunk's own path, or trash/ if an interrupted GC
// left it there (gc.ts moves it back at its next run). A name may be a chunk file
// of its own or a link to a pack of several (chunk-file.ts): either way the answer
// is the chunk's record, a "SCK1" header and its payload, for ChunkDecoder.
import { type FileHandle, open } from "node:fs/promises";
import { PACK_ENTRY_BYTES, PACK_HEADER_BYTES, PACK_PREFIX_BYTES, packCount, packEntry } from "./chunk-file.js";
import { CorruptChunkError } from "./errors.js";
import type { Layout } from "./layout.js";

/** Bytes read first: a small chunk file whole, or a pack's index of up to ~250 records. */
const HEAD_BYTES = 4096;

/**
 * The chunk's record (header and payload), or undefined if it is in neither place.
 * Throws CorruptChunkError when the name is a pack that does not hold the chunk.
 */
export async function readChunkFile(layout: Layout, idHex: string): Promise<Buffer | undefined> {
  for (const path of [layout.chunk(idHex), layout.trash(idHex)]) {
    let fh: FileHandle;
    try {
      fh = await open(path, "r");
    } catch (err: any) {
      if (err?.code === "ENOENT") continue;
      throw err;
    }
    try {
      return await readRecord(fh, idHex);
    } finally {
      await fh.close();
    }
  }
  return undefined;
}

async function readAt(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

async function readRecord(fh: FileHandle, idHex: string): Promise<Buffer> {
  const head = await readAt(fh, 0, HEAD_BYTES);
  const count = packCount(head);
  if (count === undefined) {
    // A chunk file of its own: all of it.
    if (head.length < HEAD_BYTES) return head;
    const { size } = await fh.stat();
    return Buffer.concat([head, await readAt(fh, HEAD_BYTES, Math.max(0, size - HEAD_BYTES))]);
  }
  const indexEnd = PACK_HEADER_BYTES + count * PACK_ENTRY_BYTES;
  const index = indexEnd <= head.length ? head : await readAt(fh, 0, indexEnd);
  if (index.length < indexEnd) throw new CorruptChunkError(idHex, "pack index cut short");
  const prefix = Buffer.from(idHex.slice(0, 2 * PACK_PREFIX_BYTES), "hex");
  for (let i = 0; i < count; i++) {
    const e = packEntry(index, i);
    if (e.prefix.equals(prefix)) return readAt(fh, e.offset, e.length); // a short read fails the decoder's checks
  }
  throw new CorruptChunkError(idHex, "not in its pack's index");
}

/**
 * Runs `fn` over `items` with at most `limit` in flight and hands the results to
 * `sink` in the items' order (sink is awaited before the next result).
 */
export async function orderedMap<T, R>(items: Iterable<T>, limit: number, fn: (item: T) => Promise<R>, sink: (result: R, item: T) => Promise<void> | void): Promise<void> {
  const queue: { item: T; result: Promise<R> }[] = [];
  const it = items[Symbol.iterator]();
  let done = false;
  const refill = () => {
    while (!done && queue.length < limit) {
      const n = it.next();
      if (n.done) {
        done = true;
        break;
      }
      const result = fn(n.value);
      result.catch(() => {}); // observed when its turn comes
      queue.push({ item: n.value, result });
    }
  };
  refill();
  while (queue.length) {
    const head = queue.shift()!;
    const r = await head.result;
    refill();
    await sink(r, head.item);
  }
}
