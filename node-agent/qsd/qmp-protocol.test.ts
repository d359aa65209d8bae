// The QMP wire format, pure: framing, message classification, error classes.
import { status as Status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { encodeQmpCommand, parseQmpMessage, QmpError, QmpLineSplitter, QmpProtocolError } from "./qmp-protocol.js";

// Captured from qemu-storage-daemon 7.2.
const GREETING = '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}';
const ERROR = '{"id": "c3", "error": {"class": "GenericError", "desc": "Export \'nope\' is not found"}}';
const EVENT = '{"timestamp": {"seconds": 1700000000, "microseconds": 12345}, "event": "BLOCK_EXPORT_DELETED", "data": {"id": "r-0000aaaa"}}';

describe("QmpLineSplitter", () => {
  it("splits CRLF-terminated messages and keeps a partial line for the next chunk", () => {
    const s = new QmpLineSplitter();
    expect(s.push(Buffer.from('{"return": {}, "id": "c1"}\r\n{"ret'))).toEqual(['{"return": {}, "id": "c1"}']);
    expect(s.push(Buffer.from('urn": 1, "id": "c2"}\r\n\r\n'))).toEqual(['{"return": 1, "id": "c2"}']);
  });

  it("keeps a UTF-8 sequence split across chunks intact", () => {
    const s = new QmpLineSplitter();
    const bytes = Buffer.from('{"return": "päth", "id": "c1"}\n');
    const cut = bytes.indexOf(0xa4); // second byte of "ä"
    expect(s.push(bytes.subarray(0, cut))).toEqual([]);
    expect(s.push(bytes.subarray(cut))).toEqual(['{"return": "päth", "id": "c1"}']);
  });
});

describe("parseQmpMessage", () => {
  it("reads the greeting", () => {
    const m = parseQmpMessage(GREETING);
    expect(m).toEqual({
      kind: "greeting",
      greeting: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: "Debian 1:7.2+dfsg-7+deb12u18+b3" }, capabilities: ["oob"] },
    });
  });

  it("reads replies, including falsy return values", () => {
    expect(parseQmpMessage('{"return": {}, "id": "c1"}')).toEqual({ kind: "return", id: "c1", value: {} });
    expect(parseQmpMessage('{"return": [], "id": "c2"}')).toEqual({ kind: "return", id: "c2", value: [] });
    expect(parseQmpMessage('{"return": 0, "id": "c2"}')).toEqual({ kind: "return", id: "c2", value: 0 });
  });

  it("reads errors with their class", () => {
    expect(parseQmpMessage(ERROR)).toEqual({ kind: "error", id: "c3", errorClass: "GenericError", desc: "Export 'nope' is not found" });
  });

  it("reads events with data and timestamp", () => {
    expect(parseQmpMessage(EVENT)).toEqual({
      kind: "event",
      event: { event: "BLOCK_EXPORT_DELETED", data: { id: "r-0000aaaa" }, timestamp: { seconds: 1700000000, microseconds: 12345 } },
    });
    expect(parseQmpMessage('{"event": "SHUTDOWN", "timestamp": {"seconds": 1, "microseconds": 2}}')).toMatchObject({ event: { data: {} } });
  });

  it("rejects what is not QMP", () => {
    expect(() => parseQmpMessage("not json")).toThrow(QmpProtocolError);
    expect(() => parseQmpMessage("[1,2]")).toThrow(QmpProtocolError);
    expect(() => parseQmpMessage('{"hello": 1}')).toThrow(/unknown message/);
  });
});

describe("encodeQmpCommand", () => {
  it("puts the id in every command and arguments only when given", () => {
    expect(encodeQmpCommand("c1", "query-block-exports")).toBe('{"execute":"query-block-exports","id":"c1"}\n');
    expect(JSON.parse(encodeQmpCommand("c2", "blockdev-del", { "node-name": "x" }))).toEqual({
      execute: "blockdev-del",
      arguments: { "node-name": "x" },
      id: "c2",
    });
  });
});

describe("QmpError", () => {
  it("maps QMP error classes to status codes", () => {
    const e = new QmpError("block-export-del", "GenericError", "Export 'x' is not found");
    expect(e).toMatchObject({ errorClass: "GenericError", desc: "Export 'x' is not found", command: "block-export-del", code: Status.INTERNAL });
    expect(e.message).toBe("QMP block-export-del failed: Export 'x' is not found (GenericError)");
    expect(new QmpError("x", "CommandNotFound", "").code).toBe(Status.UNIMPLEMENTED);
    expect(new QmpError("x", "DeviceNotFound", "").code).toBe(Status.NOT_FOUND);
    expect(new QmpError("x", "SomethingNew", "").code).toBe(Status.INTERNAL);
  });
});
