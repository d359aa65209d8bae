import { describe, expect, it } from "vitest";
import {
  Cmd,
  CmdFlag,
  decodeGreeting,
  decodeInfo,
  decodeInfoRequest,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeRequestHeader,
  decodeServerEntry,
  decodeSimpleReply,
  encodeClientFlags,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeInfoString,
  encodeOption,
  encodeOptionReply,
  encodeRequest,
  encodeServerEntry,
  Errno,
  errnoFromSystem,
  errnoName,
  HandshakeFlag,
  Info,
  isRepError,
  Opt,
  readU64,
  Rep,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  TxFlag,
  writeSimpleReply,
  writeU64,
} from "./protocol.js";

describe("NBD constants match the spec", () => {
  const cases: Record<string, [number, number]> = {
    "request magic": [REQUEST_MAGIC, 0x25609513],
    "simple reply magic": [SIMPLE_REPLY_MAGIC, 0x67446698],
    "NBD_OPT_GO": [Opt.GO, 7],
    "NBD_OPT_STRUCTURED_REPLY": [Opt.STRUCTURED_REPLY, 8],
    "NBD_REP_ERR_UNSUP": [Rep.ERR_UNSUP, 2 ** 31 + 1],
    "NBD_REP_ERR_UNKNOWN": [Rep.ERR_UNKNOWN, 2 ** 31 + 6],
    "NBD_REP_ERR_SHUTDOWN": [Rep.ERR_SHUTDOWN, 2 ** 31 + 7],
    "NBD_FLAG_SEND_WRITE_ZEROES": [TxFlag.SEND_WRITE_ZEROES, 64],
    "NBD_FLAG_CAN_MULTI_CONN": [TxFlag.CAN_MULTI_CONN, 256],
    "NBD_CMD_WRITE_ZEROES": [Cmd.WRITE_ZEROES, 6],
    "NBD_CMD_FLAG_NO_HOLE": [CmdFlag.NO_HOLE, 2],
    "NBD_EOVERFLOW": [Errno.EOVERFLOW, 75],
    "NBD_ESHUTDOWN": [Errno.ESHUTDOWN, 108],
  };
  for (const [name, [actual, expected]] of Object.entries(cases)) it(name, () => expect(actual).toBe(expected));

  it("tells error replies apart", () => {
    expect(isRepError(Rep.ERR_POLICY)).toBe(true);
    expect(isRepError(Rep.ACK)).toBe(false);
    expect(isRepError(Rep.INFO)).toBe(false);
  });
});

describe("64-bit fields", () => {
  it("round-trips values up to 2^53", () => {
    const b = Buffer.alloc(8);
    for (const v of [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 12345, Number.MAX_SAFE_INTEGER]) {
      writeU64(b, 0, v);
      expect(readU64(b, 0)).toBe(v);
    }
  });

  it("reads values above 2^53 as larger than any export size", () => {
    const b = Buffer.from("ffffffffffffffff", "hex");
    expect(readU64(b, 0)).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
  });
});

describe("handshake encoding", () => {
  it("greets with NBDMAGIC, IHAVEOPT and the flags", () => {
    const g = encodeGreeting(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES);
    expect(g.toString("hex")).toBe("4e42444d41474943" + "49484156454f5054" + "0003");
    expect(decodeGreeting(g)).toEqual({ kind: "newstyle", handshakeFlags: 3 });
  });

  it("recognises oldstyle and garbage greetings", () => {
    const old = Buffer.concat([Buffer.from("NBDMAGIC"), Buffer.from("0000000000420281", "hex"), Buffer.alloc(2)]);
    expect(decodeGreeting(old).kind).toBe("oldstyle");
    expect(decodeGreeting(Buffer.alloc(18)).kind).toBe("invalid");
  });

  it("encodes client flags as 32 bits", () => {
    expect(encodeClientFlags(3).toString("hex")).toBe("00000003");
  });

  it("round-trips an option header and data", () => {
    const o = encodeOption(Opt.LIST, Buffer.from("ab"));
    expect(o.length).toBe(18);
    expect(decodeOptionHeader(o)).toEqual({ magicOk: true, option: Opt.LIST, length: 2 });
    expect(decodeOptionHeader(Buffer.alloc(16)).magicOk).toBe(false);
  });

  it("round-trips an option reply header", () => {
    const r = encodeOptionReply(Opt.GO, Rep.ERR_UNKNOWN, Buffer.from("no"));
    expect(r.subarray(0, 8).toString("hex")).toBe("0003e889045565a9");
    expect(decodeOptionReplyHeader(r)).toEqual({ magicOk: true, option: Opt.GO, type: Rep.ERR_UNKNOWN, length: 2 });
  });

  it("round-trips NBD_OPT_INFO/GO data and rejects inconsistent lengths", () => {
    const d = encodeInfoRequest("vol-1", [Info.BLOCK_SIZE, Info.NAME]);
    expect(decodeInfoRequest(d)).toEqual({ name: "vol-1", infos: [Info.BLOCK_SIZE, Info.NAME] });
    expect(decodeInfoRequest(d.subarray(0, d.length - 1))).toBeUndefined();
    expect(decodeInfoRequest(Buffer.concat([d, Buffer.alloc(1)]))).toBeUndefined();
    const lying = Buffer.from(d);
    lying.writeUInt32BE(1000, 0);
    expect(decodeInfoRequest(lying)).toBeUndefined();
    expect(decodeInfoRequest(Buffer.alloc(3))).toBeUndefined();
  });

  it("round-trips NBD_REP_SERVER entries", () => {
    expect(decodeServerEntry(encodeServerEntry("vol", "a disk"))).toEqual({ name: "vol", description: "a disk" });
    const bad = Buffer.alloc(4);
    bad.writeUInt32BE(9, 0);
    expect(decodeServerEntry(bad)).toBeUndefined();
  });

  it("round-trips every NBD_REP_INFO type", () => {
    expect(decodeInfo(encodeInfoExport(2 ** 40, TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH))).toEqual({
      type: Info.EXPORT,
      size: 2 ** 40,
      txFlags: 5,
    });
    expect(decodeInfo(encodeInfoString(Info.NAME, "vol"))).toEqual({ type: Info.NAME, name: "vol" });
    expect(decodeInfo(encodeInfoString(Info.DESCRIPTION, "d"))).toEqual({ type: Info.DESCRIPTION, description: "d" });
    const sizes = { minimum: 1, preferred: 4096, maximum: 32 << 20 };
    expect(decodeInfo(encodeInfoBlockSize(sizes))).toEqual({ type: Info.BLOCK_SIZE, sizes });
    expect(decodeInfo(Buffer.from("0063", "hex"))).toEqual({ type: "unknown", code: 99 });
    expect(decodeInfo(Buffer.from("0000", "hex"))).toEqual({ type: "invalid" });
    expect(decodeInfo(Buffer.alloc(1))).toEqual({ type: "invalid" });
  });

  it("pads the NBD_OPT_EXPORT_NAME reply unless NO_ZEROES was negotiated", () => {
    expect(encodeExportNameReply(1024, 1, false).length).toBe(134);
    const r = encodeExportNameReply(1024, 0x2d, true);
    expect(r.length).toBe(10);
    expect(readU64(r, 0)).toBe(1024);
    expect(r.readUInt16BE(8)).toBe(0x2d);
  });
});

describe("transmission encoding", () => {
  it("lays out a request header as the spec says", () => {
    const h = encodeRequest({ flags: CmdFlag.FUA, type: Cmd.WRITE, cookieHi: 0x01020304, cookieLo: 0x05060708, offset: 2 ** 33 + 5, length: 4096 });
    expect(h.toString("hex")).toBe("25609513" + "0001" + "0001" + "0102030405060708" + "0000000200000005" + "00001000");
    expect(decodeRequestHeader(h)).toEqual({
      magic: REQUEST_MAGIC,
      flags: 1,
      type: 1,
      cookieHi: 0x01020304,
      cookieLo: 0x05060708,
      offset: 2 ** 33 + 5,
      length: 4096,
    });
  });

  it("lays out a simple reply", () => {
    const b = Buffer.alloc(16);
    writeSimpleReply(b, 0, Errno.ENOSPC, 0xdeadbeef, 7);
    expect(b.toString("hex")).toBe("67446698" + "0000001c" + "deadbeef00000007");
    expect(decodeSimpleReply(b)).toEqual({ magic: SIMPLE_REPLY_MAGIC, error: 28, cookieHi: 0xdeadbeef, cookieLo: 7 });
  });
});

describe("errors", () => {
  it("names NBD errors", () => {
    expect(errnoName(Errno.EINVAL)).toBe("EINVAL");
    expect(errnoName(999)).toBe("errno 999");
  });

  it("maps system errors as the spec asks", () => {
    expect(errnoFromSystem("EDQUOT")).toBe(Errno.ENOSPC);
    expect(errnoFromSystem("EFBIG")).toBe(Errno.ENOSPC);
    expect(errnoFromSystem("EROFS")).toBe(Errno.EPERM);
    expect(errnoFromSystem("EBADF")).toBe(Errno.EIO);
    expect(errnoFromSystem(undefined)).toBe(Errno.EIO);
  });
});
