// Socket reads into large arenas instead of Node's fresh 64 KiB buffer per
// read: a read takes everything the kernel has (a whole socket buffer, not
// 64 KiB), and consecutive reads land next to each other in memory, so a
// forwarded payload that arrived in several reads is still one slice to the
// BatchWriter. Uses net's documented `onread` option; accepted sockets get it
// by re-wrapping their handle (see adoptAccepted).
import { Socket } from "node:net";

const ARENA_SIZE = 4 * 1024 * 1024;
/** A read needs at least this much room, or a new arena starts. */
const MIN_TAIL = 256 * 1024;

export interface OnRead {
  buffer: () => Uint8Array;
  callback: (n: number, buf: Uint8Array) => boolean;
}

/**
 * `onread` options for net.connect/new Socket that deliver each read as a slice of an
 * arena. Slices stay valid as long as they are referenced; arenas are never reused.
 */
export function arenaOnRead(onChunk: (chunk: Buffer) => void): OnRead {
  let arena = Buffer.allocUnsafe(ARENA_SIZE);
  let pos = 0;
  return {
    // Called before every read, after the previous read's callback.
    buffer: () => {
      if (arena.length - pos < MIN_TAIL) {
        arena = Buffer.allocUnsafe(ARENA_SIZE);
        pos = 0;
      }
      return arena.subarray(pos);
    },
    callback: (n, buf) => {
      pos += n;
      onChunk((buf as Buffer).subarray(0, n));
      return true;
    },
  };
}

/**
 * Re-wraps a socket accepted by a net.Server created with `pauseOnConnect: true` so that it
 * reads into arenas, calling `onChunk` for each read (there are no 'data' events). Node's
 * servers cannot pass `onread` to accepted sockets, so this moves the accepted handle into
 * a new Socket, as net does for handles it receives from elsewhere. If that is not possible
 * the original socket is resumed and its 'data' events are forwarded instead.
 */
export function adoptAccepted(accepted: Socket, onChunk: (chunk: Buffer) => void, opts: { writableHighWaterMark?: number } = {}): Socket {
  const s = accepted as Socket & { _handle?: unknown };
  const handle = s._handle;
  if (handle && typeof handle === "object" && "readStart" in handle) {
    try {
      const options = { handle, onread: arenaOnRead(onChunk), readable: true, writable: true, ...opts };
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
  accepted.on("data", onChunk);
  accepted.resume();
  return accepted;
}
