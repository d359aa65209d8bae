// Pure helpers of reflink deduplication: the filesystem a pool sits on (statfs
// magic numbers), the duperemove command line, and the extent sharing that
// `filefrag -v` reports, turned into the bytes sharing saves.

/** statfs f_type values of the filesystems a pool is likely to sit on. */
const FS_MAGIC: Record<number, string> = {
  0x58465342: "xfs",
  0x9123683e: "btrfs",
  0xef53: "ext4",
  0x01021994: "tmpfs",
  0x6969: "nfs",
  0x794c7630: "overlayfs",
  0x2fc12fc1: "zfs",
  0xca451a4e: "bcachefs",
};

/** Filesystems whose extents can be shared (FIDEDUPERANGE); XFS only when made with reflink=1. */
export const SHARING_FILESYSTEMS = new Set(["xfs", "btrfs", "bcachefs"]);

export function filesystemName(magic: number | bigint): string {
  const n = Number(magic);
  return FS_MAGIC[n] ?? `0x${n.toString(16)}`;
}

/** Why a pool on this filesystem cannot be deduplicated; undefined when it may (XFS still needs reflink=1). */
export function cannotShare(pool: string, fs: string): string | undefined {
  if (SHARING_FILESYSTEMS.has(fs)) return undefined;
  return `pool ${pool} is on ${fs}, which cannot share extents; put it on XFS (mkfs.xfs -m reflink=1) or btrfs`;
}

export interface DuperemoveOptions {
  dir: string;
  hashfile: string;
}

/**
 * The throttled duperemove run: lowest CPU and idle I/O priority, one I/O and one
 * CPU thread, block-level comparison ("partial": VM images share blocks, not whole
 * extents), hashes kept between runs so that unchanged files are not read again.
 */
export function duperemoveCommand(o: DuperemoveOptions): { file: string; args: string[] } {
  return {
    file: "nice",
    args: [
      "-n", "19", "ionice", "-c", "3",
      "duperemove", "-dr", "--dedupe-options=partial", `--hashfile=${o.hashfile}`, "--io-threads=1", "--cpu-threads=1", o.dir,
    ],
  };
}

export interface FileExtent {
  file: string;
  /** Bytes. */
  physicalStart: number;
  length: number;
  shared: boolean;
}

const HEADER = /^File size of (.+) is \d+ \(\d+ blocks? of (\d+) bytes\)/;
const EXTENT = /^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*\d+:\s+(\d+):\s*(?:\d+:)?\s*(.*)$/;

/** The extents in `filefrag -v FILE...` output (block units turned into bytes). */
export function parseFilefrag(out: string): FileExtent[] {
  const extents: FileExtent[] = [];
  let file = "";
  let block = 0;
  for (const line of out.split("\n")) {
    const h = HEADER.exec(line);
    if (h) {
      file = h[1]!;
      block = Number(h[2]);
      continue;
    }
    const e = EXTENT.exec(line);
    if (!e || !file || !block) continue;
    const flags = e[3]!.split(",").map((f) => f.trim());
    extents.push({ file, physicalStart: Number(e[1]) * block, length: Number(e[2]) * block, shared: flags.includes("shared") });
  }
  return extents;
}

/**
 * What extent sharing saves: the shared bytes as the files see them minus the
 * distinct physical bytes behind them (two files sharing 1 MiB save 1 MiB).
 */
export function sharingSavings(extents: FileExtent[]): number {
  const shared = extents.filter((e) => e.shared);
  const logical = shared.reduce((s, e) => s + e.length, 0);
  const ranges = shared.map((e) => [e.physicalStart, e.physicalStart + e.length] as const).sort((a, b) => a[0] - b[0]);
  let physical = 0;
  let curStart = -1;
  let curEnd = -1;
  for (const [s, e] of ranges) {
    if (s > curEnd) {
      if (curEnd > curStart) physical += curEnd - curStart;
      curStart = s;
      curEnd = e;
    } else if (e > curEnd) {
      curEnd = e;
    }
  }
  if (curEnd > curStart) physical += curEnd - curStart;
  return Math.max(0, logical - physical);
}

/** What one line of duperemove's output says about its progress. */
export type DuperemoveProgress =
  | { step: "hashing"; index: number; count: number; file: string }
  | { step: "sharing"; index: number; count: number }
  | undefined;

/**
 * duperemove 0.11 prints "[3/12] (25.00%) csum: FILE" as it starts hashing each file
 * that changed since the hash file was written, then "[0x...] (2/7) Try to dedupe
 * extents with id ..." for each set of identical extents it shares.
 */
export function parseDuperemoveLine(line: string): DuperemoveProgress {
  const h = /^\[(\d+)\/(\d+)\] \([\d.]+%\) csum: (.+)$/.exec(line);
  if (h) return { step: "hashing", index: Number(h[1]), count: Number(h[2]), file: h[3]! };
  const d = /^\[0x[0-9a-f]+\] \((\d+)\/(\d+)\) Try to dedupe/.exec(line);
  if (d) return { step: "sharing", index: Number(d[1]), count: Number(d[2]) };
  return undefined;
}

/**
 * A run's progress after one line of duperemove's output, over the pool's `scannedBytes`.
 * Hashing is most of a run: files unchanged since the hash file are not hashed again,
 * so the bytes done are the share of the files to hash that are hashed; the sharing
 * step after it shows in the phase.
 */
export function duperemoveProgress(line: string, scannedBytes: number): { doneBytes: number; itemsDone: number; itemsTotal: number; phase: string } | undefined {
  const p = parseDuperemoveLine(line);
  if (!p) return undefined;
  if (p.step === "hashing") {
    const name = p.file.split("/").pop();
    return { doneBytes: Math.floor((scannedBytes * (p.index - 1)) / p.count), itemsDone: p.index - 1, itemsTotal: p.count, phase: `hashing file ${p.index} of ${p.count} (${name})` };
  }
  return { doneBytes: scannedBytes, itemsDone: p.index - 1, itemsTotal: p.count, phase: `sharing identical extents ${p.index} of ${p.count}` };
}
