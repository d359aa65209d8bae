// A de-duplicating work queue of object ids. Events only enqueue ids; the
// handler re-reads everything it needs. An id added while it is being handled
// runs once more afterwards, never twice at the same time.

export type Handler = (id: string) => Promise<number | void>;

export class WorkQueue {
  private readonly pending = new Set<string>();
  private readonly order: string[] = [];
  private readonly active = new Set<string>();
  private readonly dirty = new Set<string>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private running = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly handler: Handler,
    private readonly concurrency: number,
    private readonly onError: (id: string, err: unknown) => void,
  ) {}

  start(): void {
    this.running = true;
    this.pump();
  }

  stop(): void {
    this.running = false;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.pending.clear();
    this.order.length = 0;
  }

  add(id: string): void {
    if (this.active.has(id)) {
      this.dirty.add(id);
      return;
    }
    if (this.pending.has(id)) return;
    this.pending.add(id);
    this.order.push(id);
    this.pump();
  }

  /** Adds the id after a delay (the earliest requested delay wins). */
  addAfter(id: string, ms: number): void {
    if (this.timers.has(id) || !this.running) return;
    this.timers.set(
      id,
      setTimeout(() => {
        this.timers.delete(id);
        this.add(id);
      }, ms),
    );
  }

  get size(): number {
    return this.pending.size + this.active.size;
  }

  private pump(): void {
    while (this.running && this.active.size < this.concurrency && this.order.length > 0) {
      const id = this.order.shift()!;
      this.pending.delete(id);
      this.active.add(id);
      void this.runOne(id);
    }
    if (this.size === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  private async runOne(id: string): Promise<void> {
    try {
      const again = await this.handler(id);
      if (typeof again === "number") this.addAfter(id, again);
    } catch (err) {
      this.onError(id, err);
      this.addAfter(id, 1_000);
    } finally {
      this.active.delete(id);
      if (this.dirty.delete(id)) this.add(id);
      this.pump();
    }
  }
}
