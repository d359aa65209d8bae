// Per-region ordering between live writes and a resync's copies. A copy of a
// region (read an in-sync replica, write the resyncing one) must not overwrite
// a newer live write there: so it locks the region, which waits for the live
// writes in flight on it to finish and holds new ones back until the copy is
// written. Live writes on other regions are not delayed.
//
// Counting costs a map update per write, so it only runs while a resync does
// (`active`). Writes sent before it started are not counted; `drained()`
// resolves once those finished, and copies wait for that first.

export class RegionLocks {
  private readonly inFlight = new Map<number, number>();
  private readonly locked = new Map<number, (() => void)[]>();
  /** Lock holders waiting for a region's writes in flight to finish. */
  private readonly lockWaiters = new Map<number, () => void>();
  private untracked = 0;
  private drainWaiters: (() => void)[] = [];
  private idleWaiters: (() => void)[] = [];
  private activeCount = 0;

  constructor(readonly regionBytes: number) {
    if (regionBytes <= 0 || (regionBytes & (regionBytes - 1)) !== 0) throw new RangeError(`region size ${regionBytes} must be a power of two`);
  }

  get active(): boolean {
    return this.activeCount > 0;
  }

  /** Starts counting (one call per running resync; `deactivate` ends it). */
  activate(): void {
    this.activeCount++;
  }

  deactivate(): void {
    if (this.activeCount === 0) throw new Error("region locks are not active");
    this.activeCount--;
  }

  private span(offset: number, length: number): [number, number] {
    const first = Math.floor(offset / this.regionBytes);
    return [first, Math.floor((offset + Math.max(length, 1) - 1) / this.regionBytes)];
  }

  /**
   * A live write over offset/length is about to be sent: `send` runs now, or once
   * no region it touches is locked. Returns the token to pass to `leave` when the
   * write completed.
   */
  enter(offset: number, length: number, send: (token: Token) => void): void {
    if (!this.active) return send(this.untrackedWrite());
    const [first, last] = this.span(offset, length);
    for (let r = first; r <= last; r++) {
      const queue = this.locked.get(r);
      if (queue) {
        queue.push(() => this.enter(offset, length, send));
        return;
      }
    }
    for (let r = first; r <= last; r++) this.inFlight.set(r, (this.inFlight.get(r) ?? 0) + 1);
    send({ first, last });
  }

  /**
   * A write sent while no resync runs (check `active` first): counted only so that
   * `drained()` can wait for it. The data path calls this directly, with no closure.
   */
  untrackedWrite(): Token {
    this.untracked++;
    return UNTRACKED;
  }

  /** The write of `token` completed (on every target). */
  leave(token: Token): void {
    if (token === UNTRACKED) {
      if (--this.untracked === 0) for (const run of this.drainWaiters.splice(0)) run();
      if (this.idleWaiters.length > 0) this.wakeIdle();
      return;
    }
    for (let r = token.first; r <= token.last; r++) {
      const n = this.inFlight.get(r)! - 1;
      if (n > 0) {
        this.inFlight.set(r, n);
        continue;
      }
      this.inFlight.delete(r);
      const waiter = this.lockWaiters.get(r);
      if (waiter) {
        this.lockWaiters.delete(r);
        waiter();
      }
    }
    if (this.idleWaiters.length > 0) this.wakeIdle();
  }

  /** Resolves once no write is in flight at all, tracked or not (a snapshot's freeze waits for this). */
  idle(): Promise<void> {
    if (this.untracked === 0 && this.inFlight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private wakeIdle(): void {
    if (this.untracked === 0 && this.inFlight.size === 0) for (const run of this.idleWaiters.splice(0)) run();
  }

  /** Resolves when every write sent before counting started has completed. */
  drained(): Promise<void> {
    if (this.untracked === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Locks a region: new writes on it wait; resolves when those in flight finished. */
  lock(region: number): Promise<void> {
    if (!this.active) throw new Error("lock needs active region locks");
    if (this.locked.has(region)) throw new Error(`region ${region} is locked already`);
    this.locked.set(region, []);
    if (!this.inFlight.has(region)) return Promise.resolve();
    return new Promise((resolve) => this.lockWaiters.set(region, resolve));
  }

  /** Unlocks a region and sends the writes that waited for it. */
  unlock(region: number): void {
    const queue = this.locked.get(region);
    if (!queue) throw new Error(`region ${region} is not locked`);
    this.locked.delete(region);
    for (const run of queue) run();
  }

  /** Regions with writes in flight (for tests). */
  get busyRegions(): number {
    return this.inFlight.size;
  }
}

/** What `leave` needs: the regions counted, or that nothing was. */
export type Token = { first: number; last: number } | "untracked";
const UNTRACKED = "untracked";
