// Receive arenas and their lifetimes. Sockets read into large arenas
// (arena-reader.ts); everything that keeps a slice of an arena past the read
// callback that delivered it holds a reference: a request being received or
// in flight, a BatchWriter until the socket has taken the bytes. An arena
// whose count drops to zero goes back to a small pool, and a reader whose
// current arena is referenced by nobody else rewinds to its start, so memory
// is reused while it is still warm in the cache instead of being allocated,
// faulted in and garbage-collected at a gigabyte a second.
//
// Safety rests on one rule: a slice kept without a reference may be
// overwritten. A missing release is harmless (the arena is simply never
// reused and the GC frees it); a missing retain or an extra release is a bug.
// Slices handed to code that does not follow the rule (a client's promise
// API, handshake parsing) pin their arena with a reference never released.

/** Bytes per arena. */
export const ARENA_SIZE = 4 * 1024 * 1024;
/** Free arenas kept for reuse; more are left to the GC. */
const POOL_MAX = 8;

const TAG = Symbol("stowage.nbd.arena");
type Tagged = ArrayBufferLike & { [TAG]?: Arena };

export class Arena {
  /** References: the reader writing into it (while current) plus every holder of a slice. */
  refs = 0;
  readonly buf: Buffer;

  constructor(size = ARENA_SIZE) {
    // allocUnsafe of this size never comes from Node's shared pool: the ArrayBuffer is ours.
    this.buf = Buffer.allocUnsafe(size);
    (this.buf.buffer as Tagged)[TAG] = this;
  }
}

const pool: Arena[] = [];

/** A free arena (the most recently released, likely still in cache), with one reference for the caller. */
export function takeArena(): Arena {
  const a = pool.pop() ?? new Arena();
  a.refs = 1;
  return a;
}

/** The arena `b` is a slice of, if any. */
export function arenaOf(b: Uint8Array): Arena | undefined {
  return (b.buffer as Tagged)[TAG];
}

/** Takes a reference on the arena `b` lives in; returns it (undefined if `b` is not in an arena). */
export function retainSlice(b: Uint8Array): Arena | undefined {
  const a = (b.buffer as Tagged)[TAG];
  if (a !== undefined) a.refs++;
  return a;
}

/** Drops one reference; the last one returns the arena to the pool. */
export function releaseArena(a: Arena): void {
  if (--a.refs === 0 && pool.length < POOL_MAX && a.buf.length === ARENA_SIZE) pool.push(a);
}

/** Free arenas in the pool (for tests). */
export function pooledArenas(): number {
  return pool.length;
}
