// Socket reads into large arenas instead of Node's fresh 64 KiB buffer per
// read: a read takes everything the kernel has (a whole socket buffer, not
// 64 KiB), and consecutive reads land next to each other in memory, so a
// forwarded payload that arrived in several reads is still one slice to the
// BatchWriter. Uses net's documented `onread` option; accepted sockets get it
// by re-wrapping their handle (see adoptAccepted).
//
// A reader starts out pinning every arena it fills (handshake code keeps
// slices without references); once its owner follows the reference rule of
// arena.ts it calls startRecycling(), and from then on arenas are reused.
import { Socket } from "node:net";
import { type Arena, releaseArena, takeArena } from "./arena.js";

/** A read needs at least this much room, or a new arena starts. */
const MIN_TAIL = 256 * 1024;

export interface OnRead {
  buffer: () => Uint8Array;
  callback: (n: number, buf: Uint8Array) => boolean;
}

export class ArenaReader implements OnRead {
  private arena: Arena = takeArena();
  private pos = 0;
  private recycling = false;
  private switchPending = false;

  constructor(readonly onChunk: (chunk: Buffer) => void) {}

  /**
   * From the next read on, arenas are reused once nothing references them. Slices delivered
   * so far stay valid for good: their arenas keep the reader's reference forever.
   */
  startRecycling(): void {
    if (!this.recycling) this.switchPending = true;
  }

  // Called by net before every read, after the previous read's callback: the only place
  // the arena or position changes, so the region net reads into is always [pos, end).
  readonly buffer = (): Uint8Array => {
    let a = this.arena;
    if (this.switchPending) {
      this.switchPending = false;
      this.recycling = true;
      a = this.arena = takeArena(); // the old one keeps our reference: pinned
      this.pos = 0;
    } else if (this.recycling && a.refs === 1) {
      this.pos = 0; // nobody else holds a slice: start over in the same (warm) memory
    } else if (a.buf.length - this.pos < MIN_TAIL) {
      if (this.recycling) releaseArena(a);
      a = this.arena = takeArena();
      this.pos = 0;
    }
    return a.buf.subarray(this.pos);
  };

  readonly callback = (n: number, buf: Uint8Array): boolean => {
    this.pos += n;
    this.onChunk((buf as Buffer).subarray(0, n));
    return true;
  };
}

/**
 * `onread` options for net.connect/new Socket that deliver each read as a slice of an
 * arena. Until startRecycling(), slices stay valid as long as they are referenced.
 */
export function arenaOnRead(onChunk: (chunk: Buffer) => void): ArenaReader {
  return new ArenaReader(onChunk);
}

/**
 * Re-wraps a socket accepted by a net.Server created with `pauseOnConnect: true` so that it
 * reads into arenas through `reader` (or a new reader calling `onChunk`); there are no
 * 'data' events. Node's servers cannot pass `onread` to accepted sockets, so this moves the
 * accepted handle into a new Socket, as net does for handles it receives from elsewhere. If
 * that is not possible the original socket is resumed and its 'data' events are forwarded
 * instead (then the reader is never used, and recycling does not apply).
 */
export function adoptAccepted(
  accepted: Socket,
  reader: ArenaReader | ((chunk: Buffer) => void),
  opts: { writableHighWaterMark?: number } = {},
): Socket {
  const r = typeof reader === "function" ? new ArenaReader(reader) : reader;
  const s = accepted as Socket & { _handle?: unknown };
  const handle = s._handle;
  if (handle && typeof handle === "object" && "readStart" in handle) {
    try {
      const options = { handle, onread: r, readable: true, writable: true, ...opts };
      const adopted = new Socket(options as ConstructorParameters<typeof Socket>[0]);
      // The old wrapper must neither read nor close the handle; destroying it without a
      // handle only releases its slot in the server's connection count.
      s._handle = null;
      s.destroy();
      return adopted;
    } catch {
      // fall through
    }
  }
  accepted.on("data", r.onChunk);
  accepted.resume();
  return accepted;
}
