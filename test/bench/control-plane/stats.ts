// Statistics and rounding for the benchmark's figures.

export const MiB = 2 ** 20;

/** Nearest-rank percentile of an unsorted sample. */
export function pct(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
}
export const median = (v: number[]) => pct(v, 0.5);
export const max = (v: number[]) => (v.length ? Math.max(...v) : NaN);
export const r1 = (n: number) => Math.round(n * 10) / 10;
export const r2 = (n: number) => Math.round(n * 100) / 100;
