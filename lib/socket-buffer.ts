// A larger send buffer for a unix stream socket. On a unix socket the sender's
// SO_SNDBUF bounds how much one write() can queue (net.core.wmem_default, 208 KiB
// on Debian), so a 1 MiB NBD payload crosses in five or more rounds of
// write, wake the reader, wait for room, wake the writer. Measured on the
// frontend's unix hop to a replica (fio 1M sequential writes at queue depth 16
// through a frontend, O_DIRECT images): 0.70-0.75 of the direct export with the
// default, 0.97-1.13 with 4 MiB. TCP sockets tune their own buffers; leave them.
//
// Node has no setsockopt for stream sockets, so a short-lived perl (perl-base is
// Essential on Debian: every host has it) gets the socket as its fd 3 and calls
// setsockopt on it: the option belongs to the kernel socket, which both processes
// share, and perl's copy of the descriptor closes when it exits. SO_SNDBUFFORCE
// (root, as the agent and its frontends run) ignores net.core.wmem_max; without
// root SO_SNDBUF is tried, which the kernel caps at that maximum. This spawns perl
// itself rather than through lib/exec: that would load execa into every frontend
// (about 90 ms of its start, and so of every attach and migration), and the socket
// must be handed over as a stream, not a descriptor number.
import { spawn } from "node:child_process";
import type { Socket } from "node:net";

const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_SNDBUFFORCE = 32;

/** The frontend's default for its unix sockets. */
export const DEFAULT_SEND_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * Sets the send buffer of `socket` to `bytes` (the kernel doubles it for bookkeeping).
 * Resolves true when it was set, false when it could not be (no perl, refused, timed
 * out): the socket then keeps the system default and works as before. Node stops
 * reading a socket lent to a child process; a socket that was reading is resumed here.
 */
export async function setSendBuffer(socket: Socket, bytes: number, timeoutMs = 3_000): Promise<boolean> {
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || socket.destroyed) return false;
  const wasReading = !socket.isPaused() && socket.readableFlowing !== false;
  const script = [
    'open(my $s, "+<&=", 3) or exit 2;',
    `my $v = pack("i", ${bytes});`,
    `setsockopt($s, ${SOL_SOCKET}, ${SO_SNDBUFFORCE}, $v) or setsockopt($s, ${SOL_SOCKET}, ${SO_SNDBUF}, $v) or exit 3;`,
  ].join(" ");
  try {
    return await new Promise<boolean>((resolve) => {
      const child = spawn("perl", ["-e", script], { stdio: ["ignore", "ignore", "ignore", socket] });
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      child.once("error", () => {
        clearTimeout(timer);
        resolve(false);
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        resolve(code === 0);
      });
    });
  } catch {
    return false;
  } finally {
    if (wasReading && !socket.destroyed) socket.resume();
  }
}
