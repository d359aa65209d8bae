// Throws garbage at an NBD server: random bytes, random option haggling, and
// random-but-structured requests (edge offsets and lengths, bad flags, lying
// payload lengths, dropped connections). The process must not crash, and a
// well-behaved client connecting afterwards must be served correctly.
// The PRNG seed is printed; rerun one with NBD_FUZZ_SEED=<seed>.
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NbdClient } from "./client.js";
import { ClientFlag, Cmd, CmdFlag, encodeClientFlags, encodeInfoRequest, encodeOption, encodeRequest, Info, Opt } from "./protocol.js";
import { RawConnection, startMemoryServer, type TestServer } from "./test-helpers.js";

const MiB = 1 << 20;
const SEED = Number(process.env.NBD_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));

/** mulberry32: small, seedable, good enough to pick cases. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  return { next, int, pick, bytes };
}

const SIZE = 4 * MiB;
const OFFSETS = [0, 1, 511, SIZE - 4096, SIZE - 1, SIZE, SIZE + 1, 2 ** 32, 2 ** 53, 2 ** 63, 2 ** 64 - 1];
const LENGTHS = [0, 1, 512, 4096, 65536, MiB, 32 * MiB, 32 * MiB + 1, 2 ** 31, 2 ** 32 - 1];
const TYPES = [Cmd.READ, Cmd.WRITE, Cmd.DISC, Cmd.FLUSH, Cmd.TRIM, Cmd.CACHE, Cmd.WRITE_ZEROES, Cmd.BLOCK_STATUS, 8, 0xffff];
const FLAGS = [0, CmdFlag.FUA, CmdFlag.NO_HOLE, CmdFlag.DF, CmdFlag.REQ_ONE, CmdFlag.FAST_ZERO, 0xffff];
const OPTIONS = [Opt.EXPORT_NAME, Opt.ABORT, Opt.LIST, Opt.STARTTLS, Opt.INFO, Opt.GO, Opt.STRUCTURED_REPLY, Opt.SET_META_CONTEXT, 0, 0xffffffff];

let s: TestServer;
beforeAll(async () => {
  s = await startMemoryServer(SIZE, { limits: { maxInFlight: 8, maxInFlightBytes: 4 * MiB } });
  process.stderr.write(`nbd fuzz seed ${SEED}\n`);
});
afterAll(() => s.close());

async function blast(bytes: Buffer, linger: number, bare = true): Promise<void> {
  const c = bare ? await RawConnection.bare(s.socketPath) : await RawConnection.open(s.socketPath);
  c.socket.on("data", () => undefined); // keep reading so the server never blocks on us
  c.send(bytes);
  await Promise.race([c.whenClosed(linger), new Promise((r) => setTimeout(r, linger))]);
  c.destroy();
}

function randomOption(r: ReturnType<typeof prng>): Buffer {
  const opt = r.pick(OPTIONS);
  const kind = r.int(4);
  if (kind === 0) return encodeOption(opt, encodeInfoRequest(r.pick(["vol", "", "nope"]), [Info.BLOCK_SIZE, r.int(70000) & 0xffff]));
  if (kind === 1) return encodeOption(opt, r.bytes(r.int(64)));
  const o = encodeOption(opt, r.bytes(r.int(32)));
  if (kind === 2) o.writeUInt32BE(r.pick([0, 1, 6, 65536, 65537, 0xffffffff]), 12); // lie about the length
  return o;
}

function randomRequests(r: ReturnType<typeof prng>, n: number): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const type = r.pick(TYPES);
    const length = r.next() < 0.5 ? r.pick(LENGTHS) : r.int(70000);
    const h = encodeRequest({ flags: r.pick(FLAGS), type, cookieHi: r.int(2 ** 32), cookieLo: r.int(2 ** 32), offset: r.pick(OFFSETS), length });
    if (r.next() < 0.03) h.writeUInt32BE(r.int(2 ** 32), 0); // bad magic
    parts.push(h);
    if (type === Cmd.WRITE) parts.push(r.bytes(r.next() < 0.8 ? Math.min(length, 70000) : r.int(70000)));
    if (r.next() < 0.05) parts.push(r.bytes(r.int(40))); // stray bytes
  }
  return Buffer.concat(parts);
}

describe("NbdServer under fuzzing", () => {
  it("survives random bytes, random options and random requests, then serves a good client", async () => {
    const r = prng(SEED);
    const flags = encodeClientFlags(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES);
    const runs: Promise<void>[] = [];
    // 1. Pure noise, sometimes after valid client flags.
    for (let i = 0; i < 60; i++) {
      const noise = r.bytes(r.int(3000));
      runs.push(blast(r.next() < 0.5 ? Buffer.concat([flags, noise]) : noise, 50));
    }
    // 2. Option haggling with random, truncated and lying options.
    for (let i = 0; i < 60; i++) {
      const opts = Array.from({ length: 1 + r.int(6) }, () => randomOption(r));
      runs.push(blast(Buffer.concat([r.next() < 0.9 ? flags : r.bytes(4), ...opts]), 50));
    }
    await Promise.all(runs.splice(0));
    // 3. Valid handshake, then structured-random requests; some connections just vanish.
    for (let i = 0; i < 40; i++) runs.push(blast(randomRequests(r, 1 + r.int(40)), r.pick([0, 20, 100]), false));
    await Promise.all(runs.splice(0));
    // 4. Requests split at random byte boundaries.
    for (let i = 0; i < 10; i++) {
      const c = await RawConnection.open(s.socketPath);
      c.socket.on("data", () => undefined);
      const bytes = randomRequests(r, 20);
      for (let at = 0; at < bytes.length; ) {
        const n = 1 + r.int(100);
        c.send(bytes.subarray(at, at + n));
        at += n;
      }
      await Promise.race([c.whenClosed(100), new Promise((res) => setTimeout(res, 100))]);
      c.destroy();
    }

    const good = await NbdClient.connect({ socketPath: s.socketPath, exportName: "vol" });
    const data = randomBytes(MiB);
    await good.write(MiB, data, { fua: true });
    await good.flush();
    expect((await good.read(MiB, MiB)).equals(data)).toBe(true);
    await good.close();
    // Every garbage connection is gone.
    for (let i = 0; i < 50 && s.server.connections.size > 0; i++) await new Promise((res) => setTimeout(res, 20));
    expect(s.server.connections.size).toBe(0);
  }, 60_000);
});
