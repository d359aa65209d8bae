// The QMP wire format, pure: newline-framed JSON messages (greeting, command
// replies, events), the encoding of a command, and the typed errors of a QMP
// conversation. The socket handling lives in qmp-client.ts.
import { StringDecoder } from "node:string_decoder";
import { status as Status } from "@grpc/grpc-js";
import { DeadlineError, StowageError, UnavailableError } from "../../lib/errors.js";

export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export interface QmpGreeting {
  version: QmpVersion;
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export type QmpMessage =
  | { kind: "greeting"; greeting: QmpGreeting }
  | { kind: "return"; id: unknown; value: unknown }
  | { kind: "error"; id: unknown; errorClass: string; desc: string }
  | { kind: "event"; event: QmpEvent };

/** QMP error classes (qapi/error.json) and the status each maps to. */
const ERROR_CLASS_CODES: Record<string, Status> = {
  GenericError: Status.INTERNAL,
  CommandNotFound: Status.UNIMPLEMENTED,
  DeviceNotActive: Status.FAILED_PRECONDITION,
  DeviceNotFound: Status.NOT_FOUND,
  KVMMissingCap: Status.FAILED_PRECONDITION,
};

/** A command QEMU answered with an error. `errorClass` is QMP's class, `desc` its text. */
export class QmpError extends StowageError {
  override readonly code: Status;

  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP ${command} failed: ${desc} (${errorClass})`);
    this.code = ERROR_CLASS_CODES[errorClass] ?? Status.INTERNAL;
  }
}

/** The QMP connection is gone or could not be made; nothing more will be answered on it. */
export class QmpDisconnectedError extends UnavailableError {}

/** No answer in time. For a command, QEMU may still carry it out; its late reply is dropped. */
export class QmpTimeoutError extends DeadlineError {
  constructor(
    readonly what: string,
    readonly timeoutMs: number,
    hint?: string,
  ) {
    super(`QMP: no answer to ${what} within ${timeoutMs} ms`, hint ? { hint } : {});
  }
}

/** The peer sent something that is not QMP; the connection cannot be trusted any more. */
export class QmpProtocolError extends StowageError {}

/** Splits a byte stream into lines; keeps partial lines and split UTF-8 sequences for the next chunk. */
export class QmpLineSplitter {
  private readonly decoder = new StringDecoder("utf8");
  private rest = "";

  push(chunk: Buffer | string): string[] {
    const text = this.rest + (typeof chunk === "string" ? chunk : this.decoder.write(chunk));
    const lines = text.split("\n");
    this.rest = lines.pop() ?? "";
    return lines.map((l) => l.replace(/\r$/, "")).filter((l) => l.trim() !== "");
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Classifies one line from a QMP server; throws QmpProtocolError for anything else. */
export function parseQmpMessage(line: string): QmpMessage {
  let msg: unknown;
  try {
    msg = JSON.parse(line);
  } catch {
    throw new QmpProtocolError(`QMP: not JSON: ${line.slice(0, 200)}`);
  }
  if (!isObject(msg)) throw new QmpProtocolError(`QMP: not an object: ${line.slice(0, 200)}`);
  if (isObject(msg.QMP)) {
    const q = msg.QMP;
    if (!isObject(q.version)) throw new QmpProtocolError("QMP: greeting without version");
    return {
      kind: "greeting",
      greeting: { version: q.version as unknown as QmpVersion, capabilities: Array.isArray(q.capabilities) ? q.capabilities.map(String) : [] },
    };
  }
  if ("return" in msg) return { kind: "return", id: msg.id, value: msg.return };
  if (isObject(msg.error)) {
    return { kind: "error", id: msg.id, errorClass: String(msg.error.class ?? "GenericError"), desc: String(msg.error.desc ?? "") };
  }
  if (typeof msg.event === "string") {
    const ts = isObject(msg.timestamp) ? msg.timestamp : {};
    return {
      kind: "event",
      event: {
        event: msg.event,
        data: isObject(msg.data) ? msg.data : {},
        timestamp: { seconds: Number(ts.seconds ?? 0), microseconds: Number(ts.microseconds ?? 0) },
      },
    };
  }
  throw new QmpProtocolError(`QMP: unknown message: ${line.slice(0, 200)}`);
}

/** One command as a line; `id` comes back in the reply, so concurrent commands can be told apart. */
export function encodeQmpCommand(id: string, command: string, args?: Record<string, unknown>): string {
  return `${JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id })}\n`;
}
