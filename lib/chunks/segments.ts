// Cutting a run of chunks inside one buffer, the way chunk-stream.ts does (the
// zero shortcut included), for the segment pipeline: the workers cut whole
// segments with it, the event loop the few chunks where two segments meet.

/**
 * Cuts chunks of `buf` from `from` on, while a chunk starts before `until`, given
 * its bytes up to `dataEnd` (at least `max` past `until`, or the stream's end).
 * Appends each chunk's length to `out`, negated for an all-zero chunk; returns
 * where the last one ends. `zeroShortcut`: a chunk start followed by `max` zeros
 * is a zero chunk of `max` bytes without rolling the hash (exact only for a
 * chunker that cuts a window of zeros at `max`). Self-contained, with no
 * reference outside itself: the chunk workers run its source text.
 */
export function chainChunks(
  cut: (buf: Buffer, start: number, end: number) => number,
  buf: Buffer,
  from: number,
  until: number,
  dataEnd: number,
  max: number,
  zeroShortcut: boolean,
  zeros: Buffer,
  out: number[],
): number {
  let p = from;
  while (p < until) {
    let len: number;
    let zero: boolean;
    if (buf[p] === 0 && zeroShortcut && dataEnd - p >= max && buf.compare(zeros, 0, max, p, p + max) === 0) {
      len = max;
      zero = true;
    } else {
      len = cut(buf, p, dataEnd);
      zero = buf[p] === 0 && buf.compare(zeros, 0, len, p, p + len) === 0;
    }
    out.push(zero ? -len : len);
    p += len;
  }
  return p;
}
