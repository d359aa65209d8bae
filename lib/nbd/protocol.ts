// Constants and pure encoders/decoders of the NBD protocol as Stowage speaks it:
// fixed newstyle handshake (with NBD_OPT_INFO/GO) and simple replies in the
// transmission phase. Values and layouts follow the NBD spec (doc/proto.md of
// NetworkBlockDevice/nbd). Nothing here does I/O; 64-bit fields are read as JS
// numbers, which are exact up to 2^53 and monotonic above, so range checks
// against an export size stay correct.

export const NBDMAGIC = Buffer.from("NBDMAGIC", "latin1");
export const IHAVEOPT = Buffer.from("IHAVEOPT", "latin1");
/** Second magic of the oldstyle handshake, which Stowage does not speak. */
export const CLISERV_MAGIC_HI = 0x00000000;
export const CLISERV_MAGIC_LO = 0x00420281;
/** Magic of every option reply: 0x0003e889045565a9, as two 32-bit words. */
export const OPT_REPLY_MAGIC_HI = 0x0003e889;
export const OPT_REPLY_MAGIC_LO = 0x045565a9;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const GREETING_SIZE = 18; // NBDMAGIC, IHAVEOPT, 16-bit handshake flags
export const OPTION_HEADER_SIZE = 16; // IHAVEOPT, option, length
export const OPTION_REPLY_HEADER_SIZE = 20; // magic, option, reply type, length
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
/** Size of the reply to NBD_OPT_EXPORT_NAME without the 124 zero bytes. */
export const EXPORT_NAME_REPLY_SIZE = 10;
export const EXPORT_NAME_REPLY_ZEROES = 124;

/** Handshake flags (server → client, 16 bits). */
export const HandshakeFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;
/** Client flags (client → server, 32 bits). */
export const ClientFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;
export const KNOWN_CLIENT_FLAGS = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;

/** Transmission flags (16 bits), sent with the export size. */
export const TxFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERR = 0x80000000;
/** Option reply types; errors have bit 31 set. */
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
} as const;

export function isRepError(type: number): boolean {
  return type >= REP_ERR;
}

/** Information types of NBD_REP_INFO (requested in NBD_OPT_INFO/GO). */
export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const Cmd = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;

export const CmdFlag = { FUA: 1 << 0, NO_HOLE: 1 << 1, DF: 1 << 2, REQ_ONE: 1 << 3, FAST_ZERO: 1 << 4 } as const;

/** Error values of the reply's error field (the spec's NBD_E*). */
export const Errno = {
  OK: 0,
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

const ERRNO_NAMES = new Map<number, string>(Object.entries(Errno).map(([k, v]) => [v, k]));

export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

/** Maps a Node/libuv error code (EACCES, EDQUOT…) to the NBD error a server should send. */
export function errnoFromSystem(code: string | undefined): number {
  switch (code) {
    case "EPERM":
    case "EACCES":
    case "EROFS":
      return Errno.EPERM;
    case "ENOSPC":
    case "EDQUOT":
    case "EFBIG":
      return Errno.ENOSPC;
    case "EINVAL":
      return Errno.EINVAL;
    case "ENOMEM":
      return Errno.ENOMEM;
    case "EOVERFLOW":
      return Errno.EOVERFLOW;
    case "ESHUTDOWN":
      return Errno.ESHUTDOWN;
    default:
      return Errno.EIO;
  }
}

/** Size constraints of NBD_INFO_BLOCK_SIZE; the spec's defaults when none are advertised. */
export interface BlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
}
export const DEFAULT_BLOCK_SIZES: Readonly<BlockSizes> = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
/** Payloads up to this size must never be treated as a denial of service (spec, "Size constraints"). */
export const DOS_PAYLOAD_LIMIT = 32 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// 64-bit fields

const TWO32 = 2 ** 32;

export function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32BE(off) * TWO32 + buf.readUInt32BE(off + 4);
}

export function writeU64(buf: Buffer, off: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO32) >>> 0, off);
  buf.writeUInt32BE(value >>> 0, off + 4);
}

// ---------------------------------------------------------------------------------------
// Handshake

export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.allocUnsafe(GREETING_SIZE);
  NBDMAGIC.copy(b, 0);
  IHAVEOPT.copy(b, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

export type Greeting = { kind: "newstyle"; handshakeFlags: number } | { kind: "oldstyle" } | { kind: "invalid" };

export function decodeGreeting(b: Buffer): Greeting {
  if (!b.subarray(0, 8).equals(NBDMAGIC)) return { kind: "invalid" };
  if (b.subarray(8, 16).equals(IHAVEOPT)) return { kind: "newstyle", handshakeFlags: b.readUInt16BE(16) };
  if (b.readUInt32BE(8) === CLISERV_MAGIC_HI && b.readUInt32BE(12) === CLISERV_MAGIC_LO) return { kind: "oldstyle" };
  return { kind: "invalid" };
}

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** A client option: IHAVEOPT, option, length, data. */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(OPTION_HEADER_SIZE + data.length);
  IHAVEOPT.copy(b, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, OPTION_HEADER_SIZE);
  return b;
}

export interface OptionHeader {
  magicOk: boolean;
  option: number;
  length: number;
}

export function decodeOptionHeader(b: Buffer, off = 0): OptionHeader {
  return {
    magicOk: b.subarray(off, off + 8).equals(IHAVEOPT),
    option: b.readUInt32BE(off + 8),
    length: b.readUInt32BE(off + 12),
  };
}

export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeUInt32BE(OPT_REPLY_MAGIC_HI, 0);
  b.writeUInt32BE(OPT_REPLY_MAGIC_LO, 4);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

export interface OptionReplyHeader {
  magicOk: boolean;
  option: number;
  type: number;
  length: number;
}

export function decodeOptionReplyHeader(b: Buffer, off = 0): OptionReplyHeader {
  return {
    magicOk: b.readUInt32BE(off) === OPT_REPLY_MAGIC_HI && b.readUInt32BE(off + 4) === OPT_REPLY_MAGIC_LO,
    option: b.readUInt32BE(off + 8),
    type: b.readUInt32BE(off + 12),
    length: b.readUInt32BE(off + 16),
  };
}

/** Data of NBD_OPT_INFO and NBD_OPT_GO: name length, name, count, info types. */
export function encodeInfoRequest(name: string, infos: readonly number[]): Buffer {
  const n = Buffer.from(name, "utf8");
  const b = Buffer.allocUnsafe(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

/** Undefined when the lengths inside disagree with the option length (NBD_REP_ERR_INVALID). */
export function decodeInfoRequest(data: Buffer): { name: string; infos: number[] } | undefined {
  if (data.length < 6) return undefined;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) return undefined;
  const count = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * count) return undefined;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { name: data.toString("utf8", 4, 4 + nameLen), infos };
}

/** Data of NBD_REP_SERVER (a reply to NBD_OPT_LIST). */
export function encodeServerEntry(name: string, description = ""): Buffer {
  const n = Buffer.from(name, "utf8");
  const d = Buffer.from(description, "utf8");
  const b = Buffer.allocUnsafe(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function decodeServerEntry(data: Buffer): { name: string; description: string } | undefined {
  if (data.length < 4) return undefined;
  const len = data.readUInt32BE(0);
  if (len > data.length - 4) return undefined;
  return { name: data.toString("utf8", 4, 4 + len), description: data.toString("utf8", 4 + len) };
}

export function encodeInfoExport(size: number, txFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  writeU64(b, 2, size);
  b.writeUInt16BE(txFlags, 10);
  return b;
}

export function encodeInfoString(type: typeof Info.NAME | typeof Info.DESCRIPTION, text: string): Buffer {
  const t = Buffer.from(text, "utf8");
  const b = Buffer.allocUnsafe(2 + t.length);
  b.writeUInt16BE(type, 0);
  t.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(s: BlockSizes): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(s.minimum, 2);
  b.writeUInt32BE(s.preferred, 6);
  b.writeUInt32BE(s.maximum, 10);
  return b;
}

export type InfoReply =
  | { type: typeof Info.EXPORT; size: number; txFlags: number }
  | { type: typeof Info.NAME; name: string }
  | { type: typeof Info.DESCRIPTION; description: string }
  | { type: typeof Info.BLOCK_SIZE; sizes: BlockSizes }
  | { type: "unknown"; code: number }
  | { type: "invalid" };

export function decodeInfo(data: Buffer): InfoReply {
  if (data.length < 2) return { type: "invalid" };
  const code = data.readUInt16BE(0);
  switch (code) {
    case Info.EXPORT:
      return data.length === 12 ? { type: Info.EXPORT, size: readU64(data, 2), txFlags: data.readUInt16BE(10) } : { type: "invalid" };
    case Info.NAME:
      return { type: Info.NAME, name: data.toString("utf8", 2) };
    case Info.DESCRIPTION:
      return { type: Info.DESCRIPTION, description: data.toString("utf8", 2) };
    case Info.BLOCK_SIZE:
      return data.length === 14
        ? { type: Info.BLOCK_SIZE, sizes: { minimum: data.readUInt32BE(2), preferred: data.readUInt32BE(6), maximum: data.readUInt32BE(10) } }
        : { type: "invalid" };
    default:
      return { type: "unknown", code };
  }
}

/** The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, txFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : EXPORT_NAME_REPLY_ZEROES));
  writeU64(b, 0, size);
  b.writeUInt16BE(txFlags, 8);
  return b;
}

// ---------------------------------------------------------------------------------------
// Transmission. The 64-bit cookie (the spec's "handle") is kept as two 32-bit words so
// the hot path never allocates a BigInt.

export interface RequestHeader {
  magic: number;
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offset: number;
  length: number;
}

export function writeRequestHeader(
  b: Buffer,
  off: number,
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  offset: number,
  length: number,
): void {
  b.writeUInt32BE(REQUEST_MAGIC, off);
  b.writeUInt16BE(flags, off + 4);
  b.writeUInt16BE(type, off + 6);
  b.writeUInt32BE(cookieHi >>> 0, off + 8);
  b.writeUInt32BE(cookieLo >>> 0, off + 12);
  writeU64(b, off + 16, offset);
  b.writeUInt32BE(length >>> 0, off + 24);
}

export function encodeRequest(h: Omit<RequestHeader, "magic">): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  writeRequestHeader(b, 0, h.flags, h.type, h.cookieHi, h.cookieLo, h.offset, h.length);
  return b;
}

export function decodeRequestHeader(b: Buffer, off = 0): RequestHeader {
  return {
    magic: b.readUInt32BE(off),
    flags: b.readUInt16BE(off + 4),
    type: b.readUInt16BE(off + 6),
    cookieHi: b.readUInt32BE(off + 8),
    cookieLo: b.readUInt32BE(off + 12),
    offset: readU64(b, off + 16),
    length: b.readUInt32BE(off + 24),
  };
}

export function writeSimpleReply(b: Buffer, off: number, error: number, cookieHi: number, cookieLo: number): void {
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, off);
  b.writeUInt32BE(error >>> 0, off + 4);
  b.writeUInt32BE(cookieHi >>> 0, off + 8);
  b.writeUInt32BE(cookieLo >>> 0, off + 12);
}

export interface SimpleReply {
  magic: number;
  error: number;
  cookieHi: number;
  cookieLo: number;
}

export function decodeSimpleReply(b: Buffer, off = 0): SimpleReply {
  return { magic: b.readUInt32BE(off), error: b.readUInt32BE(off + 4), cookieHi: b.readUInt32BE(off + 8), cookieLo: b.readUInt32BE(off + 12) };
}
