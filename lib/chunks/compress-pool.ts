// zstd compression of chunks on worker threads. Compression is the most expensive
// step of storing new data (about 300 MB/s per core at level 3 on image data,
// against ~650 MB/s for chunking and ~1.2 GB/s for SHA-256), so the event loop
// can chunk and hash while workers compress. With `workers: 0` (the default of
// writes) it compresses inline.
// The worker is plain JavaScript given as a string, so it runs the same from
// compiled output and from TypeScript sources under a test runner.
import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";
import { ChunkEncoder, encodeHeader } from "./chunk-file.js";

const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const { Compressor } = require(workerData.zstdPath);
const z = new Compressor();
z.setParameters({ compressionLevel: workerData.level, checksumFlag: false, contentSizeFlag: true });
parentPort.on("message", ({ seq, data }) => {
  const packed = z.compress(new Uint8Array(data));
  if (packed.length < data.byteLength) {
    const out = new Uint8Array(packed.length);
    out.set(packed);
    parentPort.postMessage({ seq, packed: out.buffer }, [out.buffer]);
  } else parentPort.postMessage({ seq, packed: null });
});
`;

type Done = (parts: [Buffer, Buffer]) => void;

export class CompressPool {
  private readonly workers: Worker[] = [];
  private readonly load: number[] = [];
  private readonly waiting = new Map<number, { done: Done; fail: (err: unknown) => void; raw: Buffer; worker: number }>();
  private readonly inline: ChunkEncoder | undefined;
  private seq = 0;

  constructor(level: number, workers: number) {
    if (workers <= 0) {
      this.inline = new ChunkEncoder(level);
      return;
    }
    const zstdPath = createRequire(import.meta.url).resolve("zstd-napi");
    for (let i = 0; i < workers; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { zstdPath, level } });
      w.on("message", (m: { seq: number; packed: ArrayBuffer | null }) => this.finish(m));
      w.on("error", (err) => {
        for (const [seq, job] of this.waiting) {
          if (job.worker !== i) continue;
          this.waiting.delete(seq);
          job.fail(err);
        }
      });
      this.workers.push(w);
      this.load.push(0);
    }
  }

  /** Header and payload of the chunk file for `data` (copied: the caller may reuse it). */
  encode(data: Uint8Array): Promise<[Buffer, Buffer]> {
    if (this.inline) return Promise.resolve(this.inline.encode(data));
    const raw = Buffer.from(data);
    let worker = 0;
    for (let i = 1; i < this.load.length; i++) if (this.load[i]! < this.load[worker]!) worker = i;
    const seq = this.seq++;
    this.load[worker]!++;
    return new Promise((done, fail) => {
      this.waiting.set(seq, { done, fail, raw, worker });
      // A copy of the bytes goes to the worker; `raw` stays here in case zstd cannot shrink them.
      const copy = new Uint8Array(raw);
      this.workers[worker]!.postMessage({ seq, data: copy.buffer }, [copy.buffer]);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private finish(m: { seq: number; packed: ArrayBuffer | null }): void {
    const job = this.waiting.get(m.seq);
    if (!job) return;
    this.waiting.delete(m.seq);
    this.load[job.worker]!--;
    job.done(m.packed ? [encodeHeader(job.raw.length, true), Buffer.from(m.packed)] : [encodeHeader(job.raw.length, false), job.raw]);
  }
}
