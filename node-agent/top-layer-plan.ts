// What a rebuild of a linked clone's replica must write, decided purely from
// block status: the source replica's export ("qemu:allocation-depth" and
// "base:allocation") and the target image's own chain (`qemu-img map`). Both
// are linked clones of copies of the same template, so a range the source reads
// from its backing file already reads the same on the target; only what the
// source holds itself is copied, and the target stays thin.
//
// Per range, with d the source's allocation depth:
//   d = 1  the source's own data: copied (zeros as write-zeroes, so they stay
//          zero over the backing file instead of letting it show through);
//   d >= 2 the template's data: skipped, unless the target's own layer holds
//          something there (a replica that missed a revert, a torn write): then
//          the source's content is copied over it;
//   d = 0  nothing anywhere: reads as zeros; zeroed on the target only if its
//          chain holds non-zero data there.
// Anything not described (a list shorter than the export) is copied as data,
// which is always right.
import type { Extent } from "./qsd/nbd-extents.js";
import { STATE_ZERO } from "./qsd/nbd-extents.js";
import type { MapExtent } from "./qemu-img.js";

export type CopyKind = "data" | "zero";

export interface CopyRange {
  offset: number;
  length: number;
  kind: CopyKind;
}

export interface TopLayerInput {
  /** Bytes of the source export. */
  size: number;
  /** "qemu:allocation-depth" of the source: flags = depth. */
  depth: Extent[];
  /** "base:allocation" of the source. */
  allocation: Extent[];
  /** `qemu-img map` of the target image (depth 0 = its own layer). */
  target: MapExtent[];
}

interface Facts {
  depth: number;
  sourceZero: boolean;
  targetOwn: boolean;
  targetNonZero: boolean;
}

/** What to write for one range with these facts; undefined = the target reads the same already. */
export function classify(f: Facts): CopyKind | undefined {
  const copy: CopyKind = f.sourceZero ? "zero" : "data";
  if (f.depth === 1) return copy;
  if (f.depth >= 2) return f.targetOwn ? copy : undefined;
  if (!f.sourceZero) return "data"; // depth 0 yet not reported as zeros: trust the data
  return f.targetNonZero ? "zero" : undefined;
}

/** Walks a sorted list of extents that may leave gaps; `at(p)` gives the one holding p and where it ends. */
class Cursor<T extends { offset: number; length: number }> {
  private i = 0;
  constructor(private readonly list: T[]) {}
  at(p: number): { item?: T; end: number } {
    while (this.i < this.list.length && this.list[this.i]!.offset + this.list[this.i]!.length <= p) this.i++;
    const e = this.list[this.i];
    if (!e) return { end: Infinity };
    if (e.offset > p) return { end: e.offset };
    return { item: e, end: e.offset + e.length };
  }
}

/** The ranges to write, in order, adjacent ranges of one kind merged. */
export function planTopLayerCopy(input: TopLayerInput): CopyRange[] {
  const depth = new Cursor(input.depth);
  const alloc = new Cursor(input.allocation);
  const target = new Cursor(input.target.map((e) => ({ ...e, offset: e.start })));
  const out: CopyRange[] = [];
  for (let p = 0; p < input.size; ) {
    const d = depth.at(p);
    const a = alloc.at(p);
    const t = target.at(p);
    const end = Math.min(input.size, d.end, a.end, t.end);
    const kind = classify({
      depth: d.item ? d.item.flags : 1,
      sourceZero: a.item ? (a.item.flags & STATE_ZERO) !== 0 : false,
      targetOwn: t.item ? t.item.depth === 0 && t.item.present : true,
      targetNonZero: t.item ? t.item.present && !t.item.zero : true,
    });
    if (kind) {
      const last = out.at(-1);
      if (last && last.kind === kind && last.offset + last.length === p) last.length += end - p;
      else out.push({ offset: p, length: end - p, kind });
    }
    p = end;
  }
  return out;
}

/** Splits ranges into requests: data at most `dataBytes`, zeros at most `zeroBytes`. */
export function toRequests(ranges: CopyRange[], dataBytes: number, zeroBytes: number): CopyRange[] {
  const out: CopyRange[] = [];
  for (const r of ranges) {
    const max = r.kind === "data" ? dataBytes : zeroBytes;
    for (let o = r.offset; o < r.offset + r.length; o += max) out.push({ offset: o, length: Math.min(max, r.offset + r.length - o), kind: r.kind });
  }
  return out;
}

/** Bytes of each kind in a plan. */
export function planBytes(ranges: CopyRange[]): { data: number; zero: number } {
  let data = 0;
  let zero = 0;
  for (const r of ranges) (r.kind === "data" ? (data += r.length) : (zero += r.length));
  return { data, zero };
}
