// Batches what one event-loop turn writes to a socket into one corked write.
// Buffers that sit next to each other in memory (a forwarded header and its
// payload, or several replies received in one chunk) are merged into a single
// slice first, so forwarding costs one write() per run instead of one per
// message. Nothing is ever copied. Never use stream.pipe() on the data path.
//
// A pushed buffer must not change until it has been written; callers edit
// headers in place before pushing, never after. Slices of receive arenas
// (arena.ts) are referenced from push() until the socket has taken their
// bytes (the write's callback), so their arena cannot be reused meanwhile.
import type { Socket } from "node:net";
import { type Arena, releaseArena, retainSlice } from "./arena.js";

export class BatchWriter {
  private readonly queue: Buffer[] = [];
  /** First buffer of the run being merged, and the run's length so far. */
  private run: Buffer | null = null;
  private runLen = 0;
  private scheduled = false;
  private waitingDrain = false;
  /** Arenas referenced by what was pushed since the last flush (one reference per run). */
  private held: Arena[] = [];
  /** Per flush that held arenas and whose write has not completed, oldest first. */
  private readonly writing: Arena[][] = [];
  /** A write failed: references still held are never released (their arenas go to the GC). */
  private broken = false;
  /** Called with true when the socket buffers more than its high-water mark, and with false once it drained. */
  onCongestion: ((congested: boolean) => void) | undefined;

  constructor(readonly socket: Socket) {}

  /** True from a write() that returned false until the socket's 'drain'. */
  get congested(): boolean {
    return this.waitingDrain;
  }

  push(b: Buffer): void {
    const len = b.length;
    if (len === 0) return;
    const r = this.run;
    if (r !== null) {
      if (r.buffer === b.buffer && r.byteOffset + this.runLen === b.byteOffset) {
        this.runLen += len;
        return;
      }
      this.queue.push(this.runLen === r.length ? r : Buffer.from(r.buffer, r.byteOffset, this.runLen));
    }
    this.run = b;
    this.runLen = len;
    // A merged slice is in the same arena as its run, so one reference per run covers it.
    const a = retainSlice(b);
    if (a !== undefined) this.held.push(a);
    if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(flushWriter, this);
    }
  }

  /** Writes everything pushed so far; runs by itself at the end of the turn. */
  flush(): void {
    this.scheduled = false;
    const r = this.run;
    if (r === null) return;
    this.run = null;
    const last = this.runLen === r.length ? r : Buffer.from(r.buffer, r.byteOffset, this.runLen);
    const q = this.queue;
    const s = this.socket;
    if (s.destroyed || s.writableEnded) {
      q.length = 0;
      this.held = [];
      return;
    }
    // Writes complete in order, so the last write's callback means the whole batch was taken.
    let cb: ((err?: Error | null) => void) | undefined;
    if (this.held.length > 0) {
      this.writing.push(this.held);
      this.held = [];
      cb = this.onWritten;
    }
    let ok: boolean;
    if (q.length === 0) {
      ok = s.write(last, cb);
    } else {
      s.cork();
      for (let i = 0; i < q.length; i++) s.write(q[i]!);
      ok = s.write(last, cb);
      s.uncork();
      q.length = 0;
    }
    if (!ok && !this.waitingDrain) {
      this.waitingDrain = true;
      s.once("drain", this.onDrain);
      this.onCongestion?.(true);
    }
  }

  /** Flushes, then closes the socket once everything queued has been written. */
  end(): void {
    this.flush();
    const s = this.socket;
    if (!s.destroyed && !s.writableEnded) s.end(() => s.destroy());
  }

  /** Arena references held by queued writes (for tests). */
  get heldReferences(): number {
    let n = this.held.length;
    for (const h of this.writing) n += h.length;
    return n;
  }

  private readonly onWritten = (err?: Error | null): void => {
    const done = this.writing.shift();
    if (err || this.broken) {
      // Whether the kernel is done with the buffers is not worth guessing: never reuse them.
      this.broken = true;
      this.writing.length = 0;
      return;
    }
    if (done !== undefined) for (let i = 0; i < done.length; i++) releaseArena(done[i]!);
  };

  private readonly onDrain = (): void => {
    this.waitingDrain = false;
    this.onCongestion?.(false);
  };
}

function flushWriter(w: BatchWriter): void {
  w.flush();
}
