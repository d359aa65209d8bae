// Turns an image (a file path or an async iterable of buffers) into a sequence of
// chunks, reusing one working buffer: no allocation per byte or per read, only a
// view per chunk. All-zero chunks are flagged so the store records them as zero
// runs instead of storing them; a long zero run is recognized with one memcmp
// per `max` bytes instead of rolling the hash over it.
import { open } from "node:fs/promises";
import type { Chunker } from "./chunker.js";

export type ImageSource = string | AsyncIterable<Uint8Array>;

export interface ChunkView {
  /** The chunk's bytes; valid only until the iterator is advanced. */
  data: Buffer;
  /** Byte offset of the chunk in the image. */
  offset: number;
  zero: boolean;
}

const DEFAULT_READ_SIZE = 8 * 1024 * 1024;

type Fill = (buf: Buffer, at: number, len: number) => Promise<number>;

function iterableFill(source: AsyncIterable<Uint8Array>): Fill {
  const it = source[Symbol.asyncIterator]();
  let piece: Uint8Array | undefined;
  let used = 0;
  return async (buf, at, len) => {
    let n = 0;
    while (n < len) {
      if (!piece || used === piece.length) {
        const r = await it.next();
        if (r.done) break;
        piece = r.value;
        used = 0;
        continue;
      }
      const take = Math.min(len - n, piece.length - used);
      buf.set(piece.subarray(used, used + take), at + n);
      used += take;
      n += take;
    }
    return n;
  };
}

export async function* chunkStream(source: ImageSource, chunker: Chunker, readSize = DEFAULT_READ_SIZE): AsyncGenerator<ChunkView> {
  const max = chunker.params.max;
  const zeros = Buffer.alloc(max);
  // The shortcut below is exact only if the chunker cuts a window of zeros at `max`.
  const zeroCut = chunker.cut(zeros, 0, max);
  const buf = Buffer.allocUnsafe(readSize + max);
  let fill: Fill;
  let close = async () => {};
  if (typeof source === "string") {
    const fh = await open(source, "r");
    let filePos = 0;
    fill = async (b, at, len) => {
      let n = 0;
      while (n < len) {
        const { bytesRead } = await fh.read(b, at + n, len - n, filePos);
        if (bytesRead === 0) break;
        n += bytesRead;
        filePos += bytesRead;
      }
      return n;
    };
    close = () => fh.close();
  } else fill = iterableFill(source);

  try {
    let pos = 0;
    let end = 0;
    let offset = 0;
    let eof = false;
    for (;;) {
      if (!eof && end - pos < max) {
        if (pos > 0) {
          buf.copyWithin(0, pos, end);
          end -= pos;
          pos = 0;
        }
        const want = buf.length - end;
        const got = await fill(buf, end, want);
        end += got;
        if (got < want) eof = true;
      }
      if (pos === end) return;
      while (end - pos >= max || (eof && pos < end)) {
        let len: number;
        let zero: boolean;
        if (buf[pos] === 0 && zeroCut === max && end - pos >= max && buf.compare(zeros, 0, max, pos, pos + max) === 0) {
          len = max;
          zero = true;
        } else {
          len = chunker.cut(buf, pos, end);
          zero = buf[pos] === 0 && buf.compare(zeros, 0, len, pos, pos + len) === 0;
        }
        yield { data: buf.subarray(pos, pos + len), offset, zero };
        pos += len;
        offset += len;
      }
    }
  } finally {
    await close();
  }
}
