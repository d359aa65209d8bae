// The server side of the fixed newstyle handshake for ONE named export, as a
// state machine fed with received bytes: no sockets, so it is tested and
// fuzzed directly. Options: EXPORT_NAME, ABORT, LIST, INFO, GO; everything
// else (STRUCTURED_REPLY, STARTTLS, META_CONTEXT…) gets NBD_REP_ERR_UNSUP.
import {
  decodeInfoRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeServerEntry,
  HandshakeFlag,
  Info,
  KNOWN_CLIENT_FLAGS,
  ClientFlag,
  OPTION_HEADER_SIZE,
  Opt,
  Rep,
  type BlockSizes,
} from "./protocol.js";

/** Option data longer than this is treated as a denial of service: hard disconnect. */
export const MAX_OPTION_DATA = 64 * 1024;

/** What the handshake tells a client about the export. */
export interface ExportDescriptor {
  name: string;
  description: string;
  size: number;
  /** Transmission flags as sent, HAS_FLAGS included. */
  txFlags: number;
  blockSizes: BlockSizes;
}

export type HandshakeStep = "more" | "transmission" | "close";

export class ServerHandshake {
  private buf: Buffer = Buffer.alloc(0);
  private gotClientFlags = false;
  noZeroes = false;
  /** Set while the server shuts down: options are refused with NBD_REP_ERR_SHUTDOWN. */
  shuttingDown = false;
  /** After "transmission": bytes received beyond the final option (the first requests). */
  leftover: Buffer = Buffer.alloc(0);
  /** After "close": why, for the log. */
  closeReason = "";

  constructor(
    private readonly exp: ExportDescriptor,
    private readonly send: (b: Buffer) => void,
  ) {}

  static greeting(): Buffer {
    return encodeGreeting(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES);
  }

  /** Consumes received bytes; replies go out through `send`. */
  feed(chunk: Buffer): HandshakeStep {
    let buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      if (!this.gotClientFlags) {
        if (buf.length < 4) break;
        const flags = buf.readUInt32BE(0);
        buf = buf.subarray(4);
        if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) return this.close(`unknown client flags 0x${flags.toString(16)}`);
        this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
        this.gotClientFlags = true;
        continue;
      }
      if (buf.length < OPTION_HEADER_SIZE) break;
      const h = decodeOptionHeader(buf);
      if (!h.magicOk) return this.close("bad option magic");
      if (h.length > MAX_OPTION_DATA) return this.close(`option ${h.option} carries ${h.length} bytes`);
      if (buf.length < OPTION_HEADER_SIZE + h.length) break;
      const data = buf.subarray(OPTION_HEADER_SIZE, OPTION_HEADER_SIZE + h.length);
      buf = buf.subarray(OPTION_HEADER_SIZE + h.length);
      const step = this.option(h.option, data);
      if (step !== "more") {
        this.leftover = buf;
        this.buf = Buffer.alloc(0);
        return step;
      }
    }
    // Keep only what is still unparsed, in its own small buffer.
    this.buf = buf.length === 0 ? Buffer.alloc(0) : Buffer.from(buf);
    return "more";
  }

  private option(option: number, data: Buffer): HandshakeStep {
    if (option === Opt.ABORT) {
      this.reply(option, Rep.ACK);
      return this.close("client aborted the handshake");
    }
    if (option === Opt.EXPORT_NAME) {
      // No way to report an error here: the spec says to drop the connection.
      if (this.shuttingDown) return this.close("shutting down");
      const name = data.toString("utf8");
      if (!this.matches(name)) return this.close(`NBD_OPT_EXPORT_NAME for unknown export "${name}"`);
      this.send(encodeExportNameReply(this.exp.size, this.exp.txFlags, this.noZeroes));
      return "transmission";
    }
    if (this.shuttingDown) {
      this.reply(option, Rep.ERR_SHUTDOWN, "server is shutting down");
      return "more";
    }
    switch (option) {
      case Opt.LIST:
        if (data.length !== 0) this.reply(option, Rep.ERR_INVALID, "NBD_OPT_LIST takes no data");
        else {
          this.reply(option, Rep.SERVER, encodeServerEntry(this.exp.name, this.exp.description));
          this.reply(option, Rep.ACK);
        }
        return "more";
      case Opt.INFO:
      case Opt.GO:
        return this.infoOrGo(option, data);
      default:
        this.reply(option, Rep.ERR_UNSUP, `option ${option} is not supported`);
        return "more";
    }
  }

  private infoOrGo(option: number, data: Buffer): HandshakeStep {
    const req = decodeInfoRequest(data);
    if (!req) {
      this.reply(option, Rep.ERR_INVALID, "malformed NBD_OPT_INFO/NBD_OPT_GO data");
      return "more";
    }
    if (!this.matches(req.name)) {
      this.reply(option, Rep.ERR_UNKNOWN, `export "${req.name}" does not exist`);
      return "more";
    }
    const e = this.exp;
    this.reply(option, Rep.INFO, encodeInfoExport(e.size, e.txFlags));
    // Sent even when not requested: the spec allows it, and clients ignore what they did not ask for.
    this.reply(option, Rep.INFO, encodeInfoBlockSize(e.blockSizes));
    if (req.infos.includes(Info.NAME)) this.reply(option, Rep.INFO, encodeInfoString(Info.NAME, e.name));
    if (req.infos.includes(Info.DESCRIPTION) && e.description) this.reply(option, Rep.INFO, encodeInfoString(Info.DESCRIPTION, e.description));
    this.reply(option, Rep.ACK);
    return option === Opt.GO ? "transmission" : "more";
  }

  /** The empty name is the default export, which is the only one. */
  private matches(name: string): boolean {
    return name === this.exp.name || name === "";
  }

  private reply(option: number, type: number, data?: Buffer | string): void {
    this.send(encodeOptionReply(option, type, typeof data === "string" ? Buffer.from(data, "utf8") : data));
  }

  private close(reason: string): HandshakeStep {
    this.closeReason = reason;
    this.buf = Buffer.alloc(0);
    return "close";
  }
}
