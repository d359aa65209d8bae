// The client side of the fixed newstyle handshake: greeting, NBD_OPT_GO for one
// named export (falling back to NBD_OPT_EXPORT_NAME on servers without it),
// NBD_OPT_LIST and NBD_OPT_ABORT. It runs once per connection, so clarity wins
// over speed here; the transmission phase lives in client.ts.
import { NbdProtocolError } from "./errors.js";
import {
  ClientFlag,
  decodeGreeting,
  decodeInfo,
  decodeOptionReplyHeader,
  decodeServerEntry,
  DEFAULT_BLOCK_SIZES,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOption,
  EXPORT_NAME_REPLY_SIZE,
  EXPORT_NAME_REPLY_ZEROES,
  GREETING_SIZE,
  HandshakeFlag,
  Info,
  isRepError,
  OPTION_REPLY_HEADER_SIZE,
  Opt,
  readU64,
  Rep,
  type BlockSizes,
} from "./protocol.js";

/** Option replies longer than this are treated as a broken server. */
const MAX_OPTION_REPLY = 64 * 1024;

export interface ExportInfo {
  name: string;
  size: number;
  /** Transmission flags (TxFlag.*) as the server sent them. */
  txFlags: number;
  /** The server's constraints, or the spec's defaults when it sent none. */
  blockSizes: BlockSizes;
  description?: string;
}

/** Byte-exact reads over a stream of chunks, for the handshake. */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private available = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.available += chunk.length;
    this.wake();
  }

  fail(err: Error): void {
    this.failure ??= err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(err);
  }

  read(n: number): Promise<Buffer> {
    if (this.failure && this.available < n) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  /** Whatever arrived beyond what was read (the start of the next phase). */
  drain(): Buffer {
    const b = Buffer.concat(this.chunks);
    this.chunks = [];
    this.available = 0;
    return b;
  }

  private wake(): void {
    const w = this.waiter;
    if (!w || this.available < w.n) return;
    this.waiter = undefined;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = all.length > w.n ? [all.subarray(w.n)] : [];
    this.available -= w.n;
    w.resolve(all.subarray(0, w.n));
  }
}

export interface HandshakeIO {
  read(n: number): Promise<Buffer>;
  write(b: Buffer): void;
}

/** Reads the server greeting and answers with the client flags. */
export async function exchangeGreeting(io: HandshakeIO): Promise<{ noZeroes: boolean }> {
  const g = decodeGreeting(await io.read(GREETING_SIZE));
  if (g.kind === "oldstyle") throw new NbdProtocolError("server speaks the oldstyle handshake, which is not supported");
  if (g.kind === "invalid") throw new NbdProtocolError("not an NBD server (bad greeting magic)");
  if (!(g.handshakeFlags & HandshakeFlag.FIXED_NEWSTYLE)) throw new NbdProtocolError("server does not support fixed newstyle negotiation");
  const noZeroes = (g.handshakeFlags & HandshakeFlag.NO_ZEROES) !== 0;
  io.write(encodeClientFlags(ClientFlag.FIXED_NEWSTYLE | (noZeroes ? ClientFlag.NO_ZEROES : 0)));
  return { noZeroes };
}

export interface OptionReply {
  type: number;
  data: Buffer;
}

/** Reads one option reply to `option` (header and data), checking magic, option and length. */
export async function readOptionReply(io: HandshakeIO, option: number): Promise<OptionReply> {
  const h = decodeOptionReplyHeader(await io.read(OPTION_REPLY_HEADER_SIZE));
  if (!h.magicOk) throw new NbdProtocolError("bad option reply magic");
  if (h.option !== option) throw new NbdProtocolError(`option reply for option ${h.option}, expected ${option}`);
  if (h.length > MAX_OPTION_REPLY) throw new NbdProtocolError(`option reply of ${h.length} bytes is too long`);
  const data = h.length > 0 ? await io.read(h.length) : Buffer.alloc(0);
  return { type: h.type, data };
}

function refusal(what: string, r: OptionReply): NbdProtocolError {
  const text = r.data.toString("utf8");
  const names = Object.entries(Rep).find(([, v]) => v === r.type)?.[0] ?? `reply ${r.type}`;
  return new NbdProtocolError(`${what}: ${names}${text ? ` (${text})` : ""}`, r.type);
}

/**
 * Asks for `exportName` with NBD_OPT_GO (requesting NBD_INFO_BLOCK_SIZE, so the caller must
 * obey the constraints returned) and enters the transmission phase.
 */
export async function negotiateGo(io: HandshakeIO, exportName: string, noZeroes: boolean): Promise<ExportInfo> {
  io.write(encodeOption(Opt.GO, encodeInfoRequest(exportName, [Info.BLOCK_SIZE, Info.DESCRIPTION])));
  let size: number | undefined;
  let txFlags = 0;
  let blockSizes: BlockSizes = { ...DEFAULT_BLOCK_SIZES };
  let description: string | undefined;
  for (;;) {
    const r = await readOptionReply(io, Opt.GO);
    if (r.type === Rep.INFO) {
      const info = decodeInfo(r.data);
      if (info.type === "invalid") throw new NbdProtocolError("malformed NBD_REP_INFO");
      if (info.type === Info.EXPORT) ({ size, txFlags } = info);
      else if (info.type === Info.BLOCK_SIZE) blockSizes = info.sizes;
      else if (info.type === Info.DESCRIPTION) description = info.description;
      continue;
    }
    if (r.type === Rep.ACK) {
      if (size === undefined) throw new NbdProtocolError("server accepted NBD_OPT_GO without NBD_INFO_EXPORT");
      return { name: exportName, size, txFlags, blockSizes, description };
    }
    if (r.type === Rep.ERR_UNSUP) return exportNameFallback(io, exportName, noZeroes);
    if (isRepError(r.type)) throw refusal(`server refused export "${exportName}"`, r);
    throw new NbdProtocolError(`unexpected reply ${r.type} to NBD_OPT_GO`);
  }
}

async function exportNameFallback(io: HandshakeIO, exportName: string, noZeroes: boolean): Promise<ExportInfo> {
  io.write(encodeOption(Opt.EXPORT_NAME, Buffer.from(exportName, "utf8")));
  const b = await io.read(EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : EXPORT_NAME_REPLY_ZEROES));
  return { name: exportName, size: readU64(b, 0), txFlags: b.readUInt16BE(8), blockSizes: { ...DEFAULT_BLOCK_SIZES } };
}

/** NBD_OPT_LIST: the names (and descriptions) of the server's exports. */
export async function listExports(io: HandshakeIO): Promise<{ name: string; description: string }[]> {
  io.write(encodeOption(Opt.LIST));
  const out: { name: string; description: string }[] = [];
  for (;;) {
    const r = await readOptionReply(io, Opt.LIST);
    if (r.type === Rep.ACK) return out;
    if (r.type === Rep.SERVER) {
      const e = decodeServerEntry(r.data);
      if (!e) throw new NbdProtocolError("malformed NBD_REP_SERVER");
      out.push(e);
      continue;
    }
    if (isRepError(r.type)) throw refusal("server refused NBD_OPT_LIST", r);
    throw new NbdProtocolError(`unexpected reply ${r.type} to NBD_OPT_LIST`);
  }
}

/** NBD_OPT_INFO: what NBD_OPT_GO would return, without entering transmission. */
export async function queryInfo(io: HandshakeIO, exportName: string): Promise<ExportInfo> {
  io.write(encodeOption(Opt.INFO, encodeInfoRequest(exportName, [Info.BLOCK_SIZE, Info.NAME, Info.DESCRIPTION])));
  let size: number | undefined;
  let txFlags = 0;
  let name = exportName;
  let blockSizes: BlockSizes = { ...DEFAULT_BLOCK_SIZES };
  let description: string | undefined;
  for (;;) {
    const r = await readOptionReply(io, Opt.INFO);
    if (r.type === Rep.INFO) {
      const info = decodeInfo(r.data);
      if (info.type === Info.EXPORT) ({ size, txFlags } = info);
      else if (info.type === Info.BLOCK_SIZE) blockSizes = info.sizes;
      else if (info.type === Info.NAME) name = info.name;
      else if (info.type === Info.DESCRIPTION) description = info.description;
      continue;
    }
    if (r.type === Rep.ACK && size !== undefined) return { name, size, txFlags, blockSizes, description };
    if (isRepError(r.type)) throw refusal(`server refused NBD_OPT_INFO for "${exportName}"`, r);
    throw new NbdProtocolError(`unexpected reply ${r.type} to NBD_OPT_INFO`);
  }
}

/** NBD_OPT_ABORT: a soft disconnect during the handshake. The reply is optional per spec. */
export async function abortHandshake(io: HandshakeIO): Promise<void> {
  io.write(encodeOption(Opt.ABORT));
  await readOptionReply(io, Opt.ABORT).catch(() => undefined);
}
