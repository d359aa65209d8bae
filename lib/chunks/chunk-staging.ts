// New packs (chunk-file.ts) on their way into chunks/: each is written to tmp/ by a
// worker or the write session without a sync, then fsynced here in the background
// (a couple at a time, while later chunks are cut and compressed), and only then
// linked under each of its chunks' names; its tmp/ name is then removed. So a name in
// chunks/ always leads to a complete, durable file.
//
// A pack holds ~45 chunks (a 4 MiB segment's new ones), so a 1 GiB image is ~60
// fsyncs. Before packs, with a file per chunk, 2,600 fsyncs took ~0.9 s here and one
// syncfs(2) of the store's file system per few thousand files replaced them; with
// packs a syncfs at the end of a full write (~95 MB to write back) took 55-125 ms and
// also flushed whatever else the machine had written, and an incremental write paid
// one more `sync -f` process for its three packs.
//
// finish() waits for the fsyncs and links; the session then syncs the file system
// once before linking its manifest (write-session.ts), so the links are durable too.
import { link, unlink } from "node:fs/promises";
import { run } from "../exec.js";
import { syncFile } from "../file-ops.js";

/** Packs fsynced at once (the rest wait: libuv's four threads also serve the writes' other file operations). */
const SYNCS_IN_FLIGHT = 2;

/** Makes everything written so far to the file system holding `path` durable (syncfs). */
export async function syncFileSystem(path: string): Promise<void> {
  await run("sync", ["-f", path], { timeoutMs: 600_000 });
}

interface Staged {
  tmp: string;
  finals: string[];
}

export class ChunkStaging {
  private readonly queue: Staged[] = [];
  private readonly running = new Set<Promise<void>>();
  private readonly left: string[] = [];
  private failure: unknown;

  /** A pack is completely written at `tmp`; once durable it is linked as each of `finals`. */
  addPack(tmp: string, finals: string[]): void {
    this.queue.push({ tmp, finals });
    this.pump();
  }

  /** Waits until every pack added is durable and linked; throws the first failure. */
  async finish(): Promise<void> {
    while (this.running.size > 0) await Promise.all(this.running);
    if (this.failure) throw this.failure;
  }

  /** Packs still in tmp/ (after a failure): the caller removes them. */
  leftovers(): string[] {
    return [...this.left, ...this.queue.map((s) => s.tmp)];
  }

  private pump(): void {
    while (!this.failure && this.running.size < SYNCS_IN_FLIGHT && this.queue.length > 0) {
      const s = this.queue.shift()!;
      const p: Promise<void> = place(s)
        .catch((err) => {
          this.failure ??= err;
          this.left.push(s.tmp);
        })
        .finally(() => {
          this.running.delete(p);
          this.pump();
        });
      this.running.add(p);
    }
  }
}

/** Makes the pack durable, then links it under its chunks' names. A name already there is a complete copy of the same chunk. */
async function place(s: Staged): Promise<void> {
  await syncFile(s.tmp);
  for (let i = 0; i < s.finals.length; i += 32) {
    await Promise.all(
      s.finals.slice(i, i + 32).map((final) =>
        link(s.tmp, final).catch((err) => {
          if (err?.code !== "EEXIST") throw err;
        }),
      ),
    );
  }
  await unlink(s.tmp);
}
