// The Stowage test guest: building it (deploy/guest/build-guest.sh), parsing
// what its writer prints on the serial console, and checking a disk it wrote.
//
// The writer (deploy/guest/init.sh) writes record n to 4 KiB slot n mod BLOCKS,
// one write at a time, and prints `ACK n` only after the write returned. So
// after any crash the disk must hold a run of consecutive numbers that ends at
// or after the last ACK (only the one in-flight write may be torn).
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../harness/root.js";
import { execa } from "execa";

export const BLOCK_SIZE = 4096;
export const DEFAULT_BLOCKS = 1024;
export const BUILD_SCRIPT = join(ROOT, "deploy/guest/build-guest.sh");
/** Where buildGuest() caches the kernel and initramfs unless told otherwise. */
export const DEFAULT_GUEST_DIR = process.env.STOWAGE_GUEST_DIR ?? "/var/tmp/stowage-guest";

export interface GuestImages {
  /** The kernel to boot: the uncompressed PVH vmlinux when built (boots ~2x faster under TCG), else vmlinuz. */
  kernel: string;
  /** The Debian bzImage. */
  vmlinuz: string;
  initrd: string;
  kernelVersion: string;
  /** false when this call built them, true when the cache was reused. */
  cached: boolean;
}

/** Builds (or reuses) the guest kernel + initramfs. Needs root the first time when packages are missing. */
export async function buildGuest(outDir = DEFAULT_GUEST_DIR): Promise<GuestImages> {
  const { stdout } = await execa("bash", [BUILD_SCRIPT, outDir], { timeout: 600_000 });
  const kv = Object.fromEntries(
    stdout
      .split("\n")
      .map((l) => l.split("="))
      .filter((p) => p.length === 2)
      .map(([k, v]) => [k!.trim(), v!.trim()]),
  );
  if (!kv.vmlinuz || !kv.initrd) throw new Error(`build-guest.sh printed no paths:\n${stdout}`);
  return { kernel: kv.vmlinux ?? kv.vmlinuz, vmlinuz: kv.vmlinuz, initrd: kv.initrd, kernelVersion: kv.kver ?? "", cached: kv.cached === "1" };
}

export interface GuestOptions {
  /** Writes before the writer stops (0 = forever). */
  count?: number;
  /** 4 KiB slots used on the disk; the disk must be at least blocks*4 KiB. */
  blocks?: number;
  mode?: "direct" | "direct-fsync" | "fsync";
  /** Microseconds between writes. */
  delayUs?: number;
  end?: "idle" | "poweroff";
  /** Guest block device to write (default /dev/vda). */
  device?: string;
  /** Seconds the guest waits for its disk to appear (0 = forever; default 10). */
  diskWaitSec?: number;
  /** Extra kernel parameters. */
  extra?: string;
}

/** The kernel command line for the writer. */
export function guestCmdline(o: GuestOptions = {}): string {
  const p = ["console=ttyS0", "quiet", "panic=-1", `stowage.count=${o.count ?? 0}`, `stowage.blocks=${o.blocks ?? DEFAULT_BLOCKS}`];
  if (o.mode) p.push(`stowage.mode=${o.mode}`);
  if (o.delayUs) p.push(`stowage.delay=${o.delayUs}`);
  if (o.end) p.push(`stowage.end=${o.end}`);
  if (o.device) p.push(`stowage.disk=${o.device}`);
  if (o.diskWaitSec !== undefined) p.push(`stowage.diskwait=${o.diskWaitSec}`);
  if (o.extra) p.push(o.extra);
  return p.join(" ");
}

// ---------------------------------------------------------------- serial log

export interface Boot {
  id: string;
  blocks: number;
  count: number;
  mode: string;
  /** ACK numbers in the order printed. */
  acks: number[];
  lastAck: number;
  /** Numbers missing between printed ACKs (a garbled console line; the writer acks in order). */
  ackGaps: number[];
  /** ACKs not above the previous one: a reboot whose BOOT line was lost. Must be 0. */
  ackRegressions: number;
  done?: number;
  writeErrors: string[];
}

export interface SerialReport {
  boots: Boot[];
  /** The last boot, if any. */
  last?: Boot;
  /** FATAL / MODFAIL lines. */
  failures: string[];
  /** ACK lines seen before any BOOT line (should not happen). */
  orphanAcks: number[];
}

/** Complete lines only: a line still being written when the log was read is not trusted. */
function completeLines(text: string): string[] {
  const end = text.lastIndexOf("\n");
  if (end < 0) return [];
  return text
    .slice(0, end)
    .split("\n")
    .map((l) => l.replace(/\r+$/, "").replace(/^\r+/, ""));
}

export function parseSerial(serialLog: string): SerialReport {
  const r: SerialReport = { boots: [], failures: [], orphanAcks: [] };
  for (const line of completeLines(serialLog)) {
    let m: RegExpMatchArray | null;
    // (not anchored at the start: a kernel message may have been printed in front of it)
    if ((m = line.match(/BOOT ([0-9a-f]{8}) blocks=(\d+) count=(\d+) disk=\S+ mode=(\S+)$/))) {
      r.last = { id: m[1]!, blocks: Number(m[2]), count: Number(m[3]), mode: m[4]!, acks: [], lastAck: 0, ackGaps: [], ackRegressions: 0, writeErrors: [] };
      r.boots.push(r.last);
    } else if ((m = line.match(/^ACK (\d+)$/))) {
      const n = Number(m[1]);
      if (!r.last) {
        r.orphanAcks.push(n);
        continue;
      }
      const b = r.last;
      if (n <= b.lastAck) b.ackRegressions++;
      for (let k = b.lastAck + 1; k < n; k++) b.ackGaps.push(k);
      b.acks.push(n);
      if (n > b.lastAck) b.lastAck = n;
    } else if ((m = line.match(/^DONE (\d+)$/))) {
      if (r.last) r.last.done = Number(m[1]);
    } else if ((m = line.match(/^WERR (\d+)(.*)$/))) {
      r.last?.writeErrors.push(line);
    } else if (/^(FATAL|MODFAIL) /.test(line)) {
      r.failures.push(line);
    }
  }
  return r;
}

/** ACK numbers of the last boot, in order. */
export function parseAcks(serialLog: string): number[] {
  return parseSerial(serialLog).last?.acks ?? [];
}

/** How many times the guest booted (BOOT lines). */
export function countBoots(serialLog: string): number {
  return parseSerial(serialLog).boots.length;
}

// ---------------------------------------------------------------- records

export interface GuestRecord {
  n: number;
  slot: number;
  boot: string;
  blocks: number;
}

export function recordChecksum(n: number, slot: number, boot: string, blocks: number): number {
  const v = BigInt(n) * 1000003n + BigInt(slot) * 8191n + BigInt(parseInt(boot, 16)) + BigInt(blocks);
  return Number(v % 4294967291n);
}

/** Encodes a record exactly as the guest's writer does (for tests and fakes). */
export function encodeRecord(r: GuestRecord): Buffer {
  const h = `STOWSEQ ${r.n} ${r.slot} ${r.boot} ${r.blocks} ${recordChecksum(r.n, r.slot, r.boot, r.blocks)}`;
  return Buffer.from(h.padEnd(3584) + h.padEnd(511) + "\n", "latin1");
}

export type SlotState = { kind: "empty" } | { kind: "record"; record: GuestRecord } | { kind: "bad"; reason: string };

/** Decodes one 4 KiB block. */
export function decodeRecord(block: Buffer): SlotState {
  if (block.length !== BLOCK_SIZE) return { kind: "bad", reason: `block of ${block.length} bytes` };
  if (block.every((b) => b === 0)) return { kind: "empty" };
  const head = block.subarray(0, 3584).toString("latin1").trimEnd();
  const tail = block.subarray(3584, 4095).toString("latin1").trimEnd();
  const m = head.match(/^STOWSEQ (\d+) (\d+) ([0-9a-f]{8}) (\d+) (\d+)$/);
  if (!m) return { kind: "bad", reason: `no record header (${JSON.stringify(head.slice(0, 40))})` };
  if (tail !== head || block[4095] !== 0x0a) return { kind: "bad", reason: `torn record: head ${JSON.stringify(head)} tail ${JSON.stringify(tail.slice(0, 80))}` };
  const record = { n: Number(m[1]), slot: Number(m[2]), boot: m[3]!, blocks: Number(m[4]) };
  if (Number(m[5]) !== recordChecksum(record.n, record.slot, record.boot, record.blocks)) return { kind: "bad", reason: `bad checksum in ${JSON.stringify(head)}` };
  return { kind: "record", record };
}

// ---------------------------------------------------------------- verification

/** What was acknowledged: ACK numbers (any order), or the last ACK with its boot. */
export type Acked = number[] | { lastAck: number; bootId?: string; blocks?: number } | Boot;

export interface VerifyReport {
  ok: boolean;
  errors: string[];
  lastAck: number;
  /** Highest number of the consecutive run on disk (>= lastAck when ok). */
  lastOnDisk: number;
  /** Writes on disk that were never acknowledged (lastOnDisk - lastAck). */
  unacked: number;
  blocks: number;
  bootId?: string;
}

function normalizeAcked(acked: Acked): { lastAck: number; bootId?: string; blocks?: number } {
  if (Array.isArray(acked)) return { lastAck: acked.reduce((a, b) => Math.max(a, b), 0) };
  if ("id" in acked) return { lastAck: acked.lastAck, bootId: acked.id, blocks: acked.blocks };
  return acked;
}

/**
 * Checks a disk's first `blocks` slots (raw bytes) against what was acked:
 * every acked number still expected on disk (the latest one per slot, for the
 * last `blocks` ACKs) is there, and the disk holds one run of consecutive
 * numbers ending at or after the last ACK (no gap, no lost or misdirected write).
 */
export function verifyBlocks(disk: Buffer, ackedIn: Acked, blocksHint?: number): VerifyReport {
  const acked = normalizeAcked(ackedIn);
  const blocks = blocksHint ?? acked.blocks ?? DEFAULT_BLOCKS;
  const errors: string[] = [];
  const slots: SlotState[] = [];
  for (let s = 0; s < blocks; s++) {
    const off = s * BLOCK_SIZE;
    slots.push(off + BLOCK_SIZE <= disk.length ? decodeRecord(disk.subarray(off, off + BLOCK_SIZE)) : { kind: "bad", reason: "beyond the end of the disk" });
  }
  const rec = (s: number) => {
    const st = slots[s]!;
    return st.kind === "record" ? st.record : undefined;
  };
  const { lastAck } = acked;
  let bootId = acked.bootId;
  if (!bootId && lastAck > 0) bootId = rec(lastAck % blocks)?.boot;
  const mine = (s: number) => {
    const r = rec(s);
    return r && r.boot === bootId ? r : undefined;
  };
  const describe = (s: number) => {
    const st = slots[s]!;
    if (st.kind === "empty") return "empty";
    if (st.kind === "bad") return st.reason;
    return `n=${st.record.n} boot=${st.record.boot}`;
  };

  // Sanity of every record of this boot: in its own slot, same geometry.
  for (let s = 0; s < blocks; s++) {
    const r = mine(s);
    if (!r) continue;
    if (r.slot !== s || r.n % blocks !== s) errors.push(`slot ${s} holds record n=${r.n} for slot ${r.slot} (misdirected write)`);
    if (r.blocks !== blocks) errors.push(`slot ${s} record was written with blocks=${r.blocks}, expected ${blocks}`);
  }

  // Highest number of this boot on disk.
  let top = 0;
  for (let s = 0; s < blocks; s++) top = Math.max(top, mine(s)?.n ?? 0);

  // The write after `top` may have been in flight: its slot may hold a torn record.
  const inflight = (s: number) => s === (top + 1) % blocks && slots[s]!.kind === "bad";

  // 1. Every acknowledged write that must still be visible is there (or was overwritten by a later write to its slot).
  for (let n = Math.max(1, lastAck - blocks + 1); n <= lastAck; n++) {
    const s = n % blocks;
    const r = mine(s);
    if ((r && r.n >= n) || inflight(s)) continue;
    errors.push(`acknowledged write ${n} is missing: slot ${s} is ${describe(s)}`);
  }

  // 2. No gap: the disk holds the consecutive run top-blocks+1 .. top.
  for (let n = Math.max(lastAck + 1, top - blocks + 1); n <= top; n++) {
    const s = n % blocks;
    if (mine(s)?.n === n || inflight(s)) continue;
    errors.push(`gap: write ${n} (not acknowledged) missing although ${top} is on disk: slot ${s} is ${describe(s)}`);
  }

  if (top < lastAck && !errors.length) errors.push(`disk ends at ${top}, but ${lastAck} was acknowledged`);
  return { ok: errors.length === 0, errors: errors.slice(0, 50).concat(errors.length > 50 ? [`... ${errors.length - 50} more`] : []), lastAck, lastOnDisk: top, unacked: Math.max(0, top - lastAck), blocks, bootId };
}

export interface ReadDiskOptions {
  /** Image format: default qcow2/raw probed for files, raw for NBD URIs. */
  format?: string;
  blocks?: number;
}

/** Reads the first `blocks` 4 KiB slots of an image file or NBD URI (qemu-img dd; -U so a file in use can be read). */
export async function readDiskBlocks(source: string, blocks = DEFAULT_BLOCKS, format?: string): Promise<Buffer> {
  const isUri = /^[a-z+]+:\/\//.test(source);
  let fmt = format;
  if (!fmt) {
    if (isUri) fmt = "raw";
    else {
      const { stdout } = await execa("qemu-img", ["info", "-U", "--output=json", source]);
      fmt = (JSON.parse(stdout) as { format: string }).format;
    }
  }
  const dir = await mkdtemp(join(tmpdir(), "stowage-verify-"));
  try {
    const out = join(dir, "head.raw");
    const args = ["dd", ...(isUri ? [] : ["-U"]), "-f", fmt, "-O", "raw", `bs=${BLOCK_SIZE}`, `count=${blocks}`, `if=${source}`, `of=${out}`];
    await execa("qemu-img", args);
    return await readFile(out);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Reads the disk back and verifies every acknowledged write is on it with no gap.
 * `source` is an image path or an NBD URI (nbd+unix:///EXPORT?socket=PATH).
 */
export async function verifyDisk(source: string, acked: Acked, opts: ReadDiskOptions = {}): Promise<VerifyReport> {
  const blocks = opts.blocks ?? normalizeAcked(acked).blocks ?? DEFAULT_BLOCKS;
  return verifyBlocks(await readDiskBlocks(source, blocks, opts.format), acked, blocks);
}
