// The gear table of the content-defined chunker: 256 pseudo-random 32-bit words,
// one per byte value. It is part of the on-disk format: a different table puts
// chunk boundaries elsewhere, and a store then finds nothing shared with what it
// stored before. So it is generated from a fixed seed by a fixed generator
// (splitmix32), never by Math.random(), and its seed is recorded in every manifest.

export const GEAR_SEED = 0x5709a6e1;

/** splitmix32: small, well mixed, and trivial to reproduce in any language. */
function* splitmix32(seed: number): Generator<number> {
  let s = seed >>> 0;
  for (;;) {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad) >>> 0;
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97) >>> 0;
    yield (z ^ (z >>> 15)) >>> 0;
  }
}

export function gearTable(seed = GEAR_SEED): Int32Array {
  const table = new Int32Array(256);
  const rng = splitmix32(seed);
  for (let i = 0; i < 256; i++) table[i] = rng.next().value as number;
  return table;
}
