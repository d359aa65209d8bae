// Worker threads that cut, hash and compress chunks, so that a write uses every
// core (segment-pipeline.ts says how the work is split). Two tasks, both on a
// segment of the image in shared memory (a SharedArrayBuffer: never copied):
//
//   chunk   cut the segment into chunks from its first byte, as chunk-stream.ts
//           would (zero shortcut included), and hash every data chunk: answers
//           the chunks' lengths (negative: all zero) and their ids.
//   store   compress the given byte ranges of a segment and write them as one
//           pack (chunk-file.ts) to a tmp/ file, not synced: the write session
//           has it synced and linked (chunk-staging.ts); answers the pack's size.
//           Without a file, answers the pack's bytes (packFor(): chunks shipped).
//
// One pool per process, shared by concurrent writes; its threads are started when
// first needed and do not keep the process alive while idle. The worker is plain
// JavaScript given as a string (with the source of the functions it shares with
// the event loop), so it runs the same from compiled output and from TypeScript
// sources under a test runner. It cuts with the WebAssembly cdc loop (cdc-wasm.ts).
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { HEADER_BYTES, PACK_ENTRY_BYTES, PACK_HEADER_BYTES, PACK_PREFIX_BYTES } from "./chunk-file.js";
import { CDC_WASM, wasmCutter } from "./cdc-wasm.js";
import { cdcTables, type ChunkerParams } from "./chunker.js";
import { chainChunks } from "./segments.js";

const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { closeSync, openSync, writeSync } = require("node:fs");
const { Compressor } = require(workerData.zstdPath);
${chainChunks.toString()}
${wasmCutter.toString()}
const cutters = new Map();
const compressors = new Map();
const zeroBuffers = new Map();
function header(length, zstd) {
  const h = Buffer.alloc(${HEADER_BYTES});
  h.write("SCK1", 0, "latin1");
  h[4] = zstd ? 1 : 0;
  h.writeUInt32LE(length, 8);
  return h;
}
function compressor(level) {
  let z = compressors.get(level);
  if (!z) {
    z = new Compressor();
    z.setParameters({ compressionLevel: level, checksumFlag: false, contentSizeFlag: true });
    compressors.set(level, z);
  }
  return z;
}
function chunk(m) {
  const c = m.cut;
  const buf = Buffer.from(m.sab, 0, m.dataEnd);
  let zeros = zeroBuffers.get(c.max);
  if (!zeros) zeroBuffers.set(c.max, (zeros = Buffer.alloc(c.max)));
  let cut;
  if (c.kind === "cdc") {
    let cutter = cutters.get(c.key);
    if (!cutter) cutters.set(c.key, (cutter = wasmCutter(workerData.wasm, c.gear, c.maskHard, c.maskEasy, c.min, c.avg, c.max)));
    cutter.begin(buf);
    cut = (b, s, e) => cutter.cut(s, e);
  } else cut = (b, s, e) => Math.min(e - s, c.avg);
  const lengths = [];
  chainChunks(cut, buf, 0, m.until, m.dataEnd, c.max, c.zeroShortcut, zeros, lengths);
  let data = 0;
  for (const n of lengths) if (n > 0) data++;
  const ids = new Uint8Array(32 * data);
  for (let i = 0, at = 0, k = 0; i < lengths.length; i++) {
    const n = lengths[i];
    if (n > 0) ids.set(createHash("sha256").update(buf.subarray(at, at + n)).digest(), 32 * k++);
    at += n < 0 ? -n : n;
  }
  const out = Int32Array.from(lengths);
  parentPort.postMessage({ seq: m.seq, lengths: out.buffer, ids: ids.buffer }, [out.buffer, ids.buffer]);
}
function store(m) {
  // One pack (chunk-file.ts): "SCP1", the record count, the index, then each chunk's record.
  const buf = Buffer.from(m.sab);
  const z = compressor(m.level);
  const n = m.items.length;
  const head = Buffer.alloc(${PACK_HEADER_BYTES} + ${PACK_ENTRY_BYTES} * n);
  head.write("SCP1", 0, "latin1");
  head.writeUInt32LE(n, 4);
  const parts = [head];
  let offset = head.length;
  for (let i = 0; i < n; i++) {
    const { start, length } = m.items[i];
    const raw = buf.subarray(start, start + length);
    const packed = z.compress(raw);
    const zstd = packed.length < raw.length;
    const payload = zstd ? packed : raw;
    const at = ${PACK_HEADER_BYTES} + ${PACK_ENTRY_BYTES} * i;
    head.set(m.prefixes.subarray(${PACK_PREFIX_BYTES} * i, ${PACK_PREFIX_BYTES} * (i + 1)), at);
    head.writeUInt32LE(offset, at + ${PACK_PREFIX_BYTES});
    head.writeUInt32LE(${HEADER_BYTES} + payload.length, at + ${PACK_PREFIX_BYTES} + 4);
    parts.push(header(raw.length, zstd), payload);
    offset += ${HEADER_BYTES} + payload.length;
  }
  const pack = Buffer.concat(parts, offset);
  if (!m.path) {
    // Wanted in memory (a pack shipped to another node's store: node-agent/backup-ship.ts).
    const whole = pack.byteOffset === 0 && pack.byteLength === pack.buffer.byteLength;
    const out = whole ? pack.buffer : new Uint8Array(pack).buffer;
    parentPort.postMessage({ seq: m.seq, size: offset, pack: out }, [out]);
    return;
  }
  const fd = openSync(m.path, "wx");
  try {
    writeSync(fd, pack);
  } finally {
    closeSync(fd);
  }
  parentPort.postMessage({ seq: m.seq, size: offset });
}
parentPort.on("message", (m) => {
  try {
    if (m.op === "chunk") chunk(m);
    else if (m.op === "store") store(m);
  } catch (err) {
    parentPort.postMessage({ seq: m.seq, error: { message: String((err && err.message) || err), code: err && err.code } });
  }
});
`;

/** A chunk worker failed a task (its message and errno code, as the worker saw them). */
export class ChunkWorkerError extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = "ChunkWorkerError";
  }
}

interface Reply {
  seq: number;
  lengths?: ArrayBuffer;
  ids?: ArrayBuffer;
  size?: number;
  pack?: ArrayBuffer;
  error?: { message: string; code?: string };
}

interface Task {
  message: object;
  /** Only workers with a lower index may run it. */
  workers: number;
  done: (r: Reply) => void;
  fail: (err: unknown) => void;
}

/** One thread; `running` holds what it was given and has not answered. */
class PoolWorker {
  readonly running = new Map<number, Task>();
  private w: Worker;

  constructor(
    private readonly zstdPath: string,
    private readonly answered: (w: PoolWorker) => void,
  ) {
    this.w = this.spawn();
  }

  private spawn(): Worker {
    const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { zstdPath: this.zstdPath, wasm: CDC_WASM } });
    w.unref();
    w.on("message", (r: Reply) => {
      const t = this.running.get(r.seq);
      if (!t) return;
      this.running.delete(r.seq);
      if (this.running.size === 0) w.unref();
      if (r.error) t.fail(new ChunkWorkerError(r.error.message, r.error.code));
      else t.done(r);
      this.answered(this);
    });
    const lost = (err: unknown) => {
      // Fail what it was doing, and start a fresh thread for the next tasks.
      if (this.w !== w) return;
      const tasks = [...this.running.values()];
      this.running.clear();
      this.w = this.spawn();
      for (const t of tasks) t.fail(err);
      this.answered(this);
    };
    w.on("error", lost);
    w.on("exit", (code) => lost(new ChunkWorkerError(`chunk worker exited with code ${code}`)));
    return w;
  }

  run(seq: number, t: Task): void {
    this.running.set(seq, t);
    this.w.ref();
    this.w.postMessage({ ...t.message, seq });
  }
}

/** How the workers cut: a chunker's parameters and tables, and whether zero windows may be taken whole. */
export interface CutSpec {
  /** Names the chunker (its workers cache their cutter by it). */
  key: string;
  kind: ChunkerParams["kind"];
  min: number;
  avg: number;
  max: number;
  gear?: Int32Array;
  maskHard?: number;
  maskEasy?: number;
  zeroShortcut: boolean;
}

export function cutSpec(params: ChunkerParams, zeroShortcut: boolean): CutSpec {
  const { kind, min, avg, max, seed, normalization } = params;
  const key = `${kind}/${min}/${avg}/${max}/${seed}/${normalization ?? ""}`;
  return kind === "cdc" ? { key, kind, min, avg, max, ...cdcTables(params), zeroShortcut } : { key, kind, min, avg, max, zeroShortcut };
}

export class ChunkWorkers {
  private static pool: ChunkWorkers | undefined;
  private readonly workers: PoolWorker[] = [];
  /** Tasks no worker has room for: cutting first (the event loop waits for those in order), then storing. */
  private readonly waiting: { chunk: [number, Task][]; store: [number, Task][] } = { chunk: [], store: [] };
  private seq = 0;

  private constructor(count: number) {
    const zstdPath = createRequire(import.meta.url).resolve("zstd-napi");
    for (let i = 0; i < count; i++) this.workers.push(new PoolWorker(zstdPath, () => this.dispatch()));
  }

  /** The process's pool: one thread per core, at most 4. */
  static shared(): ChunkWorkers {
    return (ChunkWorkers.pool ??= new ChunkWorkers(defaultWorkers()));
  }

  get size(): number {
    return this.workers.length;
  }

  /**
   * Cuts `sab`'s chunks that start before `until`, given its bytes up to `dataEnd`
   * (at least `max` past `until`, or the image's end), and hashes the data chunks.
   */
  async chunk(sab: SharedArrayBuffer, until: number, dataEnd: number, cut: CutSpec, workers: number): Promise<{ lengths: Int32Array; ids: Buffer }> {
    const r = await this.submit("chunk", { op: "chunk", sab, until, dataEnd, cut }, workers);
    return { lengths: new Int32Array(r.lengths!), ids: Buffer.from(r.ids!) };
  }

  /** Compresses byte ranges of `sab` into one pack at `path` (`prefixes`: 8 bytes of each chunk's id); resolves to its size. */
  async store(sab: SharedArrayBuffer, items: { start: number; length: number }[], prefixes: Uint8Array, path: string, level: number, workers: number): Promise<number> {
    return (await this.submit("store", { op: "store", sab, items, prefixes, path, level }, workers)).size!;
  }

  /** As store(), but answers the pack's bytes instead of writing a file. */
  async packFor(sab: SharedArrayBuffer, items: { start: number; length: number }[], prefixes: Uint8Array, level: number, workers: number): Promise<Buffer> {
    return Buffer.from((await this.submit("store", { op: "store", sab, items, prefixes, path: "", level }, workers)).pack!);
  }

  private submit(kind: "chunk" | "store", message: object, workers: number): Promise<Reply> {
    return new Promise((done, fail) => {
      this.waiting[kind].push([this.seq++, { message, workers: Math.max(1, workers), done, fail }]);
      this.dispatch();
    });
  }

  /** Gives waiting tasks to workers with room: each runs one task and holds the next, so it never waits for the event loop. */
  private dispatch(): void {
    for (const queue of [this.waiting.chunk, this.waiting.store]) {
      while (queue.length) {
        const [seq, t] = queue[0]!;
        let best: PoolWorker | undefined;
        for (const w of this.workers.slice(0, t.workers)) if (w.running.size < 2 && (!best || w.running.size < best.running.size)) best = w;
        if (!best) break;
        queue.shift();
        best.run(seq, t);
      }
    }
  }
}

export function defaultWorkers(): number {
  return Math.max(1, Math.min(4, availableParallelism()));
}
