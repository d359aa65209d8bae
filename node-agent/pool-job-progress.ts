// How far each running pool job (reflink dedup, recompression) has got, kept by the
// agent while the job runs and read by the controller (GetPoolJobProgress), which
// records it for `stowctl job list`. One entry per pool and kind; gone when the run ends.

export type PoolJobKind = "dedup" | "compress";

export interface PoolJobProgressView {
  running: boolean;
  totalBytes: number;
  doneBytes: number;
  itemsTotal: number;
  itemsDone: number;
  phase: string;
}

const IDLE: PoolJobProgressView = { running: false, totalBytes: 0, doneBytes: 0, itemsTotal: 0, itemsDone: 0, phase: "" };

/** One run's progress; the job updates it, readers get copies. */
export class PoolJobRun {
  private v: PoolJobProgressView;

  constructor(totalBytes: number, itemsTotal: number, phase: string) {
    this.v = { running: true, totalBytes, doneBytes: 0, itemsTotal, itemsDone: 0, phase };
  }

  update(p: Partial<Omit<PoolJobProgressView, "running">>): void {
    this.v = { ...this.v, ...p };
    // Never past the total nor below zero: estimates from tools' output may overshoot.
    this.v.doneBytes = Math.min(this.v.totalBytes, Math.max(0, this.v.doneBytes));
  }

  view(): PoolJobProgressView {
    return { ...this.v };
  }
}

export class PoolJobProgress {
  private readonly runs = new Map<string, PoolJobRun>();

  /** Starts tracking a run; `end` it when the run is over, whatever its outcome. */
  begin(kind: PoolJobKind, pool: string, totalBytes: number, itemsTotal: number, phase: string): PoolJobRun {
    const run = new PoolJobRun(totalBytes, itemsTotal, phase);
    this.runs.set(`${kind}:${pool}`, run);
    return run;
  }

  end(kind: PoolJobKind, pool: string, run: PoolJobRun): void {
    if (this.runs.get(`${kind}:${pool}`) === run) this.runs.delete(`${kind}:${pool}`);
  }

  get(kind: string, pool: string): PoolJobProgressView {
    return this.runs.get(`${kind}:${pool}`)?.view() ?? { ...IDLE };
  }
}
