import { describe, expect, it } from "vitest";
import {
  ClientFlag,
  decodeInfo,
  decodeOptionReplyHeader,
  decodeServerEntry,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOption,
  encodeRequest,
  Info,
  OPTION_REPLY_HEADER_SIZE,
  Opt,
  readU64,
  Rep,
  TxFlag,
} from "./protocol.js";
import { MAX_OPTION_DATA, ServerHandshake, type ExportDescriptor } from "./server-handshake.js";

const EXP: ExportDescriptor = {
  name: "vol",
  description: "test volume",
  size: 1 << 20,
  txFlags: TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH,
  blockSizes: { minimum: 1, preferred: 4096, maximum: 32 << 20 },
};

function setup() {
  const sent: Buffer[] = [];
  const hs = new ServerHandshake(EXP, (b) => sent.push(b));
  /** Option replies sent so far, parsed. */
  const replies = () =>
    sent.map((b) => ({ ...decodeOptionReplyHeader(b), data: b.subarray(OPTION_REPLY_HEADER_SIZE) }));
  return { hs, sent, replies };
}

const flags = (f = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES) => encodeClientFlags(f);

describe("ServerHandshake", () => {
  it("enters transmission on NBD_OPT_GO and reports the export, its block sizes and what was asked", () => {
    const { hs, replies } = setup();
    const first = encodeRequest({ flags: 0, type: 0, cookieHi: 0, cookieLo: 1, offset: 0, length: 512 });
    const step = hs.feed(Buffer.concat([flags(), encodeOption(Opt.GO, encodeInfoRequest("vol", [Info.NAME, Info.DESCRIPTION])), first]));
    expect(step).toBe("transmission");
    expect(hs.leftover).toEqual(first);
    const r = replies();
    expect(r.every((x) => x.magicOk && x.option === Opt.GO)).toBe(true);
    expect(r.map((x) => x.type)).toEqual([Rep.INFO, Rep.INFO, Rep.INFO, Rep.INFO, Rep.ACK]);
    const infos = r.slice(0, 4).map((x) => decodeInfo(x.data));
    expect(infos).toContainEqual({ type: Info.EXPORT, size: EXP.size, txFlags: EXP.txFlags });
    expect(infos).toContainEqual({ type: Info.BLOCK_SIZE, sizes: EXP.blockSizes });
    expect(infos).toContainEqual({ type: Info.NAME, name: "vol" });
    expect(infos).toContainEqual({ type: Info.DESCRIPTION, description: "test volume" });
  });

  it("treats the empty name as the default export", () => {
    const { hs } = setup();
    expect(hs.feed(Buffer.concat([flags(), encodeOption(Opt.GO, encodeInfoRequest("", []))]))).toBe("transmission");
  });

  it("answers NBD_OPT_INFO without leaving the handshake, and ERR_UNKNOWN for another name", () => {
    const { hs, replies } = setup();
    expect(hs.feed(Buffer.concat([flags(), encodeOption(Opt.INFO, encodeInfoRequest("vol", []))]))).toBe("more");
    expect(replies().at(-1)!.type).toBe(Rep.ACK);
    expect(hs.feed(encodeOption(Opt.GO, encodeInfoRequest("other", [])))).toBe("more");
    expect(replies().at(-1)!.type).toBe(Rep.ERR_UNKNOWN);
    expect(hs.feed(encodeOption(Opt.GO, Buffer.from([0, 0, 0, 9])))).toBe("more");
    expect(replies().at(-1)!.type).toBe(Rep.ERR_INVALID);
  });

  it("lists the one export, and refuses NBD_OPT_LIST with data", () => {
    const { hs, replies } = setup();
    hs.feed(Buffer.concat([flags(), encodeOption(Opt.LIST)]));
    const [server, ack] = replies();
    expect(server!.type).toBe(Rep.SERVER);
    expect(decodeServerEntry(server!.data)).toEqual({ name: "vol", description: "test volume" });
    expect(ack!.type).toBe(Rep.ACK);
    hs.feed(encodeOption(Opt.LIST, Buffer.from("x")));
    expect(replies().at(-1)!.type).toBe(Rep.ERR_INVALID);
  });

  it("answers unknown and unsupported options with NBD_REP_ERR_UNSUP", () => {
    const { hs, replies } = setup();
    hs.feed(flags());
    for (const opt of [Opt.STRUCTURED_REPLY, Opt.STARTTLS, Opt.SET_META_CONTEXT, 4242]) {
      expect(hs.feed(encodeOption(opt, Buffer.from("whatever")))).toBe("more");
      expect(replies().at(-1)).toMatchObject({ option: opt, type: Rep.ERR_UNSUP });
    }
  });

  it("replies to NBD_OPT_EXPORT_NAME with size and flags, padded unless NO_ZEROES", () => {
    for (const [f, len] of [
      [ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES, 10],
      [ClientFlag.FIXED_NEWSTYLE, 134],
    ] as const) {
      const { hs, sent } = setup();
      expect(hs.feed(Buffer.concat([flags(f), encodeOption(Opt.EXPORT_NAME, Buffer.from("vol"))]))).toBe("transmission");
      expect(sent[0]!.length).toBe(len);
      expect(readU64(sent[0]!, 0)).toBe(EXP.size);
    }
  });

  it("closes on NBD_OPT_EXPORT_NAME for an unknown export (the option cannot report errors)", () => {
    const { hs, sent } = setup();
    expect(hs.feed(Buffer.concat([flags(), encodeOption(Opt.EXPORT_NAME, Buffer.from("nope"))]))).toBe("close");
    expect(sent).toEqual([]);
  });

  it("acknowledges NBD_OPT_ABORT and closes", () => {
    const { hs, replies } = setup();
    expect(hs.feed(Buffer.concat([flags(), encodeOption(Opt.ABORT)]))).toBe("close");
    expect(replies()[0]!.type).toBe(Rep.ACK);
  });

  it("closes on unknown client flags, bad option magic, and oversized option data", () => {
    expect(setup().hs.feed(encodeClientFlags(0x80))).toBe("close");
    const a = setup().hs;
    expect(a.feed(Buffer.concat([flags(), Buffer.alloc(16)]))).toBe("close");
    const b = setup().hs;
    const big = encodeOption(Opt.LIST);
    big.writeUInt32BE(MAX_OPTION_DATA + 1, 12);
    expect(b.feed(Buffer.concat([flags(), big]))).toBe("close");
  });

  it("waits for complete options fed one byte at a time", () => {
    const { hs, replies } = setup();
    const bytes = Buffer.concat([flags(), encodeOption(Opt.LIST), encodeOption(Opt.GO, encodeInfoRequest("vol", []))]);
    const steps = [...bytes].map((b) => hs.feed(Buffer.from([b])));
    expect(steps.slice(0, -1).every((s) => s === "more")).toBe(true);
    expect(steps.at(-1)).toBe("transmission");
    expect(replies().filter((r) => r.option === Opt.LIST).map((r) => r.type)).toEqual([Rep.SERVER, Rep.ACK]);
  });

  it("refuses options with NBD_REP_ERR_SHUTDOWN while shutting down", () => {
    const { hs, replies } = setup();
    hs.shuttingDown = true;
    expect(hs.feed(Buffer.concat([flags(), encodeOption(Opt.GO, encodeInfoRequest("vol", []))]))).toBe("more");
    expect(replies()[0]!.type).toBe(Rep.ERR_SHUTDOWN);
  });
});
