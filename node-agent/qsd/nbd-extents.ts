// Extents of an NBD export as the server describes them through metadata contexts
// (NBD_OPT_SET_META_CONTEXT, NBD_CMD_BLOCK_STATUS with structured replies), read
// in-process on one short connection. What a backup needs from the storage
// daemon's fleece export: "base:allocation" (which ranges hold data: flag 1 hole,
// flag 2 reads as zeros) and "qemu:dirty-bitmap:NAME" (flag 1: changed since the
// bitmap was created). It replaces a `qemu-img map` process per backup (its start
// and its own connection were most of the ~50 ms that took).
import { connect, type Socket } from "node:net";
import { NbdProtocolError } from "../../lib/nbd/errors.js";
import { ByteQueue, exchangeGreeting, negotiateGo, readOptionReply } from "../../lib/nbd/client-handshake.js";
import { Cmd, encodeOption, encodeRequest, isRepError, Opt, Rep, STRUCTURED_REPLY_MAGIC } from "../../lib/nbd/protocol.js";
import { parseNbdUri } from "../../lib/nbd-uri.js";

export interface Extent {
  offset: number;
  length: number;
  flags: number;
}

/** Flags of "base:allocation". */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

/**
 * "qemu:allocation-depth" (an export made with allocation-depth on): the flags of
 * an extent are the depth in the backing chain its data comes from: 0 nowhere
 * (reads as zeros), 1 the exported image itself, 2 its backing file, and so on.
 */
export const ALLOCATION_DEPTH = "qemu:allocation-depth";

/** The export does not offer a metadata context asked for (an export made without it, an older server). */
export class MetaContextMissingError extends NbdProtocolError {
  constructor(readonly context: string) {
    super(`the export offers no metadata context "${context}"`);
  }
}

const REPLY_FLAG_DONE = 1;
const REPLY_TYPE_NONE = 0;
const REPLY_TYPE_BLOCK_STATUS = 5;
const REPLY_TYPE_ERROR = 32769;
const REPLY_TYPE_ERROR_OFFSET = 32770;
const STRUCTURED_HEADER_SIZE = 20;
/** Bytes asked about per request (the length is 32 bits; the server may answer for less). */
const MAX_REQUEST = 2 ** 31;

function metaContextRequest(exportName: string, contexts: string[]): Buffer {
  const parts: Buffer[] = [];
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  const name = Buffer.from(exportName, "utf8");
  parts.push(u32(name.length), name, u32(contexts.length));
  for (const c of contexts) {
    const s = Buffer.from(c, "utf8");
    parts.push(u32(s.length), s);
  }
  return Buffer.concat(parts);
}

/**
 * The extents of each of `contexts` over the whole export at `uri`, in order, each
 * list covering [0, size). Throws if the server does not offer a context.
 */
export async function nbdExtents(uri: string, contexts: string[]): Promise<{ size: number; extents: Map<string, Extent[]> }> {
  const a = parseNbdUri(uri);
  const socket: Socket = a.socketPath ? connect(a.socketPath) : connect(a.port!, a.host!);
  socket.setNoDelay(true);
  const q = new ByteQueue();
  socket.on("data", (d: Buffer) => q.push(d));
  socket.on("error", (err) => q.fail(err));
  socket.on("close", () => q.fail(new NbdProtocolError("connection closed")));
  const io = { read: (n: number) => q.read(n), write: (b: Buffer) => void socket.write(b) };
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    const { noZeroes } = await exchangeGreeting(io);
    io.write(encodeOption(Opt.STRUCTURED_REPLY));
    const sr = await readOptionReply(io, Opt.STRUCTURED_REPLY);
    if (sr.type !== Rep.ACK) throw new NbdProtocolError("the server does not do structured replies (needed for block status)");
    io.write(encodeOption(Opt.SET_META_CONTEXT, metaContextRequest(a.exportName, contexts)));
    const ids = new Map<number, string>();
    for (;;) {
      const r = await readOptionReply(io, Opt.SET_META_CONTEXT);
      if (r.type === Rep.ACK) break;
      if (r.type === Rep.META_CONTEXT) ids.set(r.data.readUInt32BE(0), r.data.subarray(4).toString("utf8"));
      else if (isRepError(r.type)) throw new NbdProtocolError(`the server refused metadata contexts ${contexts.join(", ")}: ${r.data.toString("utf8")}`, r.type);
    }
    for (const c of contexts) if (![...ids.values()].includes(c)) throw new MetaContextMissingError(c);
    const info = await negotiateGo(io, a.exportName, noZeroes);
    const extents = new Map<string, Extent[]>(contexts.map((c) => [c, []]));
    // Per context, how far its extents reach; ask again from the least.
    const reached = new Map<string, number>(contexts.map((c) => [c, 0]));
    let cookie = 1;
    let lastFrom = -1;
    for (;;) {
      const from = Math.min(...reached.values());
      if (from >= info.size) break;
      if (cookie > 1 && from === lastFrom) throw new NbdProtocolError(`block status at ${from}: the server described nothing`);
      lastFrom = from;
      const length = Math.min(MAX_REQUEST, info.size - from);
      io.write(encodeRequest({ flags: 0, type: Cmd.BLOCK_STATUS, cookieHi: 0, cookieLo: cookie++, offset: from, length }));
      for (;;) {
        const h = await q.read(STRUCTURED_HEADER_SIZE);
        if (h.readUInt32BE(0) !== STRUCTURED_REPLY_MAGIC) throw new NbdProtocolError("expected a structured reply to NBD_CMD_BLOCK_STATUS");
        const flags = h.readUInt16BE(4);
        const type = h.readUInt16BE(6);
        const len = h.readUInt32BE(16);
        const payload = len ? await q.read(len) : Buffer.alloc(0);
        if (type === REPLY_TYPE_ERROR || type === REPLY_TYPE_ERROR_OFFSET) {
          const msgLen = payload.readUInt16BE(4);
          throw new NbdProtocolError(`block status at ${from}: error ${payload.readUInt32BE(0)} ${payload.subarray(6, 6 + msgLen).toString("utf8")}`);
        }
        if (type === REPLY_TYPE_BLOCK_STATUS) {
          const context = ids.get(payload.readUInt32BE(0));
          if (context === undefined) throw new NbdProtocolError("block status for a context not asked for");
          // Descriptors from `from` on; keep what lies past what this context already covers.
          const list = extents.get(context)!;
          let r = reached.get(context)!;
          for (let o = 4, at = from; o + 8 <= payload.length && at < info.size; o += 8) {
            const end = Math.min(at + payload.readUInt32BE(o), info.size);
            if (end > r) {
              push(list, Math.max(at, r), end - Math.max(at, r), payload.readUInt32BE(o + 4));
              r = end;
            }
            at = end;
          }
          reached.set(context, r);
        } else if (type !== REPLY_TYPE_NONE) throw new NbdProtocolError(`unexpected structured reply type ${type} to NBD_CMD_BLOCK_STATUS`);
        if (flags & REPLY_FLAG_DONE) break;
      }
    }
    io.write(encodeRequest({ flags: 0, type: Cmd.DISC, cookieHi: 0, cookieLo: cookie, offset: 0, length: 0 }));
    return { size: info.size, extents };
  } finally {
    socket.end();
    socket.destroy();
  }
}

/** Appends an extent, merged with the last one when adjacent with the same flags. */
function push(list: Extent[], offset: number, length: number, flags: number): void {
  const last = list.at(-1);
  if (last && last.flags === flags && last.offset + last.length === offset) last.length += length;
  else list.push({ offset, length, flags });
}
