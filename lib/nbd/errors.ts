// Errors of the NBD data path. They deliberately do not extend StowageError:
// that class carries a gRPC status in `code` and pulls gRPC into the frontend
// process, which only speaks NBD. The NBD error value is `errno` (Errno.*).
import { errnoName, Errno } from "./protocol.js";

/** A command failed: the server replied with a nonzero error, or the connection went away. */
export class NbdError extends Error {
  constructor(
    readonly errno: number,
    message = `NBD request failed: ${errnoName(errno)}`,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }

  /** The error's name as Node names system errors ("EINVAL", "ENOSPC"…). */
  get code(): string {
    return errnoName(this.errno);
  }
}

/** The connection closed (or was closed) while requests were in flight or being sent. */
export class NbdDisconnectedError extends NbdError {
  constructor(message = "NBD connection closed", options?: { cause?: unknown }) {
    super(Errno.EIO, message, options);
  }
}

/** The peer broke the protocol, or refused the handshake (then `reply` is its option reply type). */
export class NbdProtocolError extends Error {
  constructor(
    message: string,
    readonly reply?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}
