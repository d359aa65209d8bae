// Deterministic test data for the chunk store tests: seeded pseudo-random bytes
// (xorshift32) and images made of data and zero regions.
export function randomBytesSeeded(length: number, seed: number): Buffer {
  const words = new Uint32Array(Math.ceil(length / 4));
  let s = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    words[i] = s;
  }
  return Buffer.from(words.buffer, 0, length);
}

/** Half random (incompressible), half repetitive text, in 4 KiB blocks, with zero regions. */
export function imageBytes(size: number, seed: number, zeroRegions: [number, number][] = []): Buffer {
  const img = randomBytesSeeded(size, seed);
  const text = Buffer.from("the quick brown fox jumps over the lazy dog; ".repeat(100));
  for (let o = 0; o < size; o += 8192) text.copy(img, o, 0, Math.min(4096, size - o));
  for (const [from, to] of zeroRegions) img.fill(0, from, to);
  return img;
}

/** `buf` in pieces of varying odd sizes, as a stream would deliver it. */
export async function* pieces(buf: Buffer, sizes = [1, 4093, 65537, 300_001, 1 << 20]): AsyncGenerator<Buffer> {
  let at = 0;
  for (let i = 0; at < buf.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, buf.length - at);
    yield buf.subarray(at, at + n);
    at += n;
  }
}
