// Parsers and the disk check of the test guest, on sample text and synthetic disks.
import { describe, expect, it } from "vitest";
import { BLOCK_SIZE, countBoots, decodeRecord, encodeRecord, guestCmdline, parseAcks, parseSerial, recordChecksum, verifyBlocks } from "./guest.js";

const sample = [
  "SeaBIOS (version 1.16.2-debian-1.16.2-1)",
  "Booting from ROM..",
  "BOOT 4f4ce8b0 blocks=8 count=0 disk=/dev/vda mode=direct",
  "ACK 1",
  "ACK 2",
  "[    2.1] random: crng init done",
  "ACK 3",
  "WERR 4 dd: error writing '/dev/vda': Input/output error",
  "ACK 4",
  "ACK 5",
].join("\r\n");

describe("parseSerial", () => {
  it("reads BOOT, ACK and WERR lines and ignores the rest", () => {
    const r = parseSerial(sample + "\r\n");
    expect(r.boots).toHaveLength(1);
    expect(r.last).toMatchObject({ id: "4f4ce8b0", blocks: 8, count: 0, mode: "direct", acks: [1, 2, 3, 4, 5], lastAck: 5, ackGaps: [], ackRegressions: 0 });
    expect(r.last!.writeErrors).toEqual(["WERR 4 dd: error writing '/dev/vda': Input/output error"]);
    expect(r.failures).toEqual([]);
  });

  it("does not trust a line that is still being written", () => {
    // "ACK 5" without its newline could be the start of "ACK 51".
    expect(parseAcks(sample)).toEqual([1, 2, 3, 4]);
    expect(parseAcks(sample + "1\r\n")).toEqual([1, 2, 3, 4, 51]);
  });

  it("splits ACKs by boot and counts reboots", () => {
    const log = sample + "\r\nBOOT 0000beef blocks=8 count=3 disk=/dev/vda mode=fsync\r\nACK 1\r\nACK 2\r\nACK 3\r\nDONE 3\r\n";
    expect(countBoots(log)).toBe(2);
    expect(parseAcks(log)).toEqual([1, 2, 3]);
    const r = parseSerial(log);
    expect(r.boots[0]!.lastAck).toBe(5);
    expect(r.last).toMatchObject({ id: "0000beef", done: 3, mode: "fsync" });
  });

  it("reports garbled ACK lines as gaps, and failures", () => {
    const r = parseSerial("BOOT 00000001 blocks=4 count=0 disk=/dev/vda mode=direct\nACK 1\nAC[ 1.0] x\nK 2\nACK 3\nMODFAIL virtio_blk.ko\nFATAL no disk /dev/vda\n");
    expect(r.last!.acks).toEqual([1, 3]);
    expect(r.last!.ackGaps).toEqual([2]);
    expect(r.failures).toEqual(["MODFAIL virtio_blk.ko", "FATAL no disk /dev/vda"]);
    expect(countBoots("no guest here\n")).toBe(0);
  });

  it("finds a BOOT line behind a kernel message and notices ACK numbers going backwards", () => {
    const r = parseSerial("[    1.0] virtio_blk virtio0: [vda] 131072 512-byte logical blocks BOOT 0000000a blocks=4 count=0 disk=/dev/vda mode=direct\nACK 1\nACK 2\nACK 1\n");
    expect(r.boots).toHaveLength(1);
    expect(r.last).toMatchObject({ id: "0000000a", acks: [1, 2, 1], lastAck: 2, ackRegressions: 1 });
    expect(parseAcks("")).toEqual([]);
  });
});

describe("records", () => {
  it("round-trips and matches the writer's layout", () => {
    const b = encodeRecord({ n: 5, slot: 5, boot: "4f4ce8b0", blocks: 1024 });
    expect(b.length).toBe(BLOCK_SIZE);
    // Bytes produced by the guest (deploy/guest/init.sh) for this record.
    const h = "STOWSEQ 5 5 4f4ce8b0 1024 1335482362";
    expect(b.subarray(0, h.length).toString()).toBe(h);
    expect(b.subarray(3584, 3584 + h.length).toString()).toBe(h);
    expect(b[4095]).toBe(10);
    expect(recordChecksum(5, 5, "4f4ce8b0", 1024)).toBe(1335482362);
    expect(decodeRecord(b)).toEqual({ kind: "record", record: { n: 5, slot: 5, boot: "4f4ce8b0", blocks: 1024 } });
  });

  it("detects empty, torn and corrupt blocks", () => {
    expect(decodeRecord(Buffer.alloc(BLOCK_SIZE))).toEqual({ kind: "empty" });
    const a = encodeRecord({ n: 9, slot: 1, boot: "00000001", blocks: 8 });
    const b = encodeRecord({ n: 1, slot: 1, boot: "00000001", blocks: 8 });
    const torn = Buffer.concat([a.subarray(0, 2048), b.subarray(2048)]);
    expect(decodeRecord(torn)).toMatchObject({ kind: "bad", reason: expect.stringMatching(/torn/) });
    const corrupt = Buffer.from(a);
    corrupt.write("8", "STOWSEQ ".length);
    corrupt.write("8", 3584 + "STOWSEQ ".length);
    expect(decodeRecord(corrupt)).toMatchObject({ kind: "bad", reason: expect.stringMatching(/checksum/) });
    expect(decodeRecord(Buffer.alloc(BLOCK_SIZE, 0x41))).toMatchObject({ kind: "bad" });
  });
});

/** A disk as the writer leaves it after writing 1..top (slot = n mod blocks). */
function disk(blocks: number, top: number, boot = "0000abcd", edit?: (slots: Buffer[]) => void): Buffer {
  const slots: Buffer[] = Array.from({ length: blocks }, () => Buffer.alloc(BLOCK_SIZE));
  for (let n = 1; n <= top; n++) slots[n % blocks] = encodeRecord({ n, slot: n % blocks, boot, blocks });
  edit?.(slots);
  return Buffer.concat(slots);
}

describe("verifyBlocks", () => {
  const boot = { lastAck: 0, bootId: "0000abcd", blocks: 8 };

  it("accepts a disk holding exactly what was acked, with or without wrap-around", () => {
    expect(verifyBlocks(disk(8, 5), { ...boot, lastAck: 5 })).toMatchObject({ ok: true, lastOnDisk: 5, unacked: 0 });
    expect(verifyBlocks(disk(8, 21), { ...boot, lastAck: 21 })).toMatchObject({ ok: true, lastOnDisk: 21, unacked: 0 });
    expect(verifyBlocks(disk(8, 0), { ...boot, lastAck: 0 }).ok).toBe(true);
  });

  it("accepts writes that landed but whose ACK was not seen", () => {
    expect(verifyBlocks(disk(8, 23), { ...boot, lastAck: 21 })).toMatchObject({ ok: true, lastOnDisk: 23, unacked: 2 });
  });

  it("accepts a torn in-flight write after the last one on disk", () => {
    const d = disk(8, 21, "0000abcd", (s) => {
      const next = encodeRecord({ n: 22, slot: 6, boot: "0000abcd", blocks: 8 });
      next.copy(s[6]!, 0, 0, 1024); // only the first sectors of write 22 landed
    });
    expect(verifyBlocks(d, { ...boot, lastAck: 21 })).toMatchObject({ ok: true, lastOnDisk: 21 });
  });

  it("rejects a lost acknowledged write", () => {
    const d = disk(8, 21, "0000abcd", (s) => {
      s[3] = encodeRecord({ n: 11, slot: 3, boot: "0000abcd", blocks: 8 }); // 19 reverted to 11
    });
    const r = verifyBlocks(d, { ...boot, lastAck: 21 });
    expect(r.ok).toBe(false);
    expect(r.errors).toEqual([expect.stringContaining("acknowledged write 19 is missing")]);
  });

  it("rejects a disk that ends before the last ACK", () => {
    const r = verifyBlocks(disk(8, 19), { ...boot, lastAck: 21 });
    expect(r.ok).toBe(false);
    expect(r.errors.join("\n")).toMatch(/acknowledged write 20 is missing/);
    expect(r.errors.join("\n")).toMatch(/acknowledged write 21 is missing/);
  });

  it("rejects a gap among unacknowledged writes and a torn record that is not the in-flight one", () => {
    const gap = disk(8, 24, "0000abcd", (s) => {
      s[6] = encodeRecord({ n: 14, slot: 6, boot: "0000abcd", blocks: 8 }); // 22 missing while 24 landed
    });
    expect(verifyBlocks(gap, { ...boot, lastAck: 21 }).errors).toEqual([expect.stringContaining("gap: write 22")]);
    const torn = disk(8, 21, "0000abcd", (s) => {
      s[4]!.fill(0x58, 100, 200); // garbage inside write 20
    });
    expect(verifyBlocks(torn, { ...boot, lastAck: 21 }).errors).toEqual([expect.stringContaining("acknowledged write 20 is missing")]);
  });

  it("rejects a misdirected write and records of another boot", () => {
    const mis = disk(8, 21, "0000abcd", (s) => {
      s[2] = encodeRecord({ n: 19, slot: 3, boot: "0000abcd", blocks: 8 });
    });
    expect(verifyBlocks(mis, { ...boot, lastAck: 21 }).errors.join("\n")).toMatch(/misdirected/);
    const other = disk(8, 21, "0000abcd", (s) => {
      s[5] = encodeRecord({ n: 21, slot: 5, boot: "11111111", blocks: 8 });
    });
    expect(verifyBlocks(other, { ...boot, lastAck: 21 }).errors.join("\n")).toMatch(/acknowledged write 21 is missing: slot 5 is n=21 boot=11111111/);
  });

  it("takes the ACK list of parseAcks and infers the boot from the disk", () => {
    const acks = Array.from({ length: 21 }, (_, i) => i + 1);
    expect(verifyBlocks(disk(8, 21), acks, 8)).toMatchObject({ ok: true, bootId: "0000abcd" });
    expect(verifyBlocks(disk(8, 20), acks, 8).ok).toBe(false);
  });
});

describe("guestCmdline", () => {
  it("builds the writer's parameters", () => {
    expect(guestCmdline({ count: 200, blocks: 256, mode: "direct-fsync", end: "poweroff" })).toBe(
      "console=ttyS0 quiet panic=-1 stowage.count=200 stowage.blocks=256 stowage.mode=direct-fsync stowage.end=poweroff",
    );
  });
});
