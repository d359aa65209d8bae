// The dedup benchmark's corpus: Debian 12 root filesystems made with debootstrap,
// each written into a raw ext4 image with `mkfs.ext4 -d` (no mount needed), and an
// "incremental" copy of the first with about 1% of its data blocks rewritten.
// Cached under .cache/dedup-corpus in the repository (it has its own .gitignore):
// roots and images are only rebuilt when missing. Without network, --quick falls
// back to a synthetic root made of this host's own files and says so.
import { createReadStream, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { join, resolve } from "node:path";
import { run } from "../../lib/exec.js";
import { randomBytesSeeded } from "../unit/chunk-fixtures.js";

export interface CorpusImage {
  name: string;
  path: string;
  /** Bytes of the image file. */
  size: number;
  /** Bytes in 4 KiB blocks that are not all zero. */
  dataBytes: number;
  what: string;
}

export interface Corpus {
  dir: string;
  synthetic: boolean;
  images: CorpusImage[];
}

interface RootSpec {
  name: string;
  include: string[];
  what: string;
}

// Each root is a separate debootstrap: separately installed systems, as two VMs are.
const FULL_ROOTS: RootSpec[] = [
  { name: "a", include: [], what: "Debian 12 minbase" },
  { name: "b", include: [], what: "Debian 12 minbase, installed again" },
  { name: "c", include: ["openssh-server", "curl", "python3"], what: "minbase + openssh-server, curl, python3" },
  { name: "d", include: ["nginx-light", "git", "rsync"], what: "minbase + nginx-light, git, rsync" },
];
const MIRROR = process.env.DEBIAN_MIRROR ?? "http://deb.debian.org/debian";
const MiB = 1024 * 1024;

export function corpusDir(): string {
  return resolve(process.env.DEDUP_CORPUS_DIR ?? ".cache/dedup-corpus");
}

export async function buildCorpus(quick: boolean, log: (msg: string) => void): Promise<Corpus> {
  const dir = corpusDir();
  mkdirSync(join(dir, "roots"), { recursive: true });
  mkdirSync(join(dir, "images"), { recursive: true });
  mkdirSync(join(dir, "debs"), { recursive: true });
  if (!existsSync(join(dir, ".gitignore"))) writeFileSync(join(dir, ".gitignore"), "*\n");

  const specs = quick ? FULL_ROOTS.slice(0, 1) : FULL_ROOTS;
  let synthetic = false;
  const roots: { spec: RootSpec; path: string }[] = [];
  for (const spec of specs) {
    try {
      roots.push({ spec, path: await debootstrapRoot(dir, spec, log) });
    } catch (err) {
      if (!quick) throw new Error(`cannot build the corpus (debootstrap ${spec.name} failed; is ${MIRROR} reachable? --quick falls back to a synthetic corpus): ${err instanceof Error ? err.message : String(err)}`);
      log(`debootstrap failed (${err instanceof Error ? err.message.split("\n")[0] : String(err)}): using a SYNTHETIC corpus made of this host's files instead of Debian roots`);
      synthetic = true;
      roots.push({ spec: { name: "synthetic", include: [], what: "synthetic: copies of this host's /usr/bin, /usr/sbin, /usr/lib/x86_64-linux-gnu (no network)" }, path: await syntheticRoot(dir) });
    }
  }

  const images: CorpusImage[] = [];
  for (const r of roots) images.push(await imageOf(dir, r.spec.name, r.path, r.spec.what));
  if (quick) {
    // A second image of the same root with an extra file up front: every later file
    // lands at another block, as in a separately installed system.
    images.push(await imageOf(dir, `${roots[0]!.spec.name}-plus`, roots[0]!.path, `${roots[0]!.spec.name}'s files + a 3 MiB file, mkfs'ed again`, true));
  }
  images.push(await incrementalOf(dir, images[0]!));
  return { dir, synthetic, images };
}

async function debootstrapRoot(dir: string, spec: RootSpec, log: (msg: string) => void): Promise<string> {
  const path = join(dir, "roots", spec.name);
  if (existsSync(`${path}.done`)) return path;
  rmSync(`${path}.partial`, { recursive: true, force: true });
  log(`debootstrap ${spec.name} (${spec.what}) from ${MIRROR}: a minute or more`);
  const args = ["--variant=minbase", `--cache-dir=${join(dir, "debs")}`];
  if (spec.include.length) args.push(`--include=${spec.include.join(",")}`);
  await run("debootstrap", [...args, "bookworm", `${path}.partial`, MIRROR], { timeoutMs: 30 * 60_000 });
  rmSync(path, { recursive: true, force: true });
  renameSync(`${path}.partial`, path);
  writeFileSync(`${path}.done`, "");
  return path;
}

async function syntheticRoot(dir: string): Promise<string> {
  const path = join(dir, "roots", "synthetic");
  if (existsSync(`${path}.done`)) return path;
  rmSync(path, { recursive: true, force: true });
  mkdirSync(join(path, "usr", "lib"), { recursive: true });
  for (const d of ["/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu"]) {
    if (existsSync(d)) await run("cp", ["-a", d, join(path, d)], { timeoutMs: 10 * 60_000 });
  }
  writeFileSync(`${path}.done`, "");
  return path;
}

async function duBytes(path: string): Promise<number> {
  const { stdout } = await run("du", ["-sb", path], { timeoutMs: 10 * 60_000 });
  return Number(stdout.split("\t")[0]);
}

async function imageOf(dir: string, name: string, root: string, what: string, extraFile = false): Promise<CorpusImage> {
  const path = join(dir, "images", `${name}.raw`);
  const meta = `${path}.json`;
  if (existsSync(meta)) return JSON.parse(readFileSync(meta, "utf8")) as CorpusImage;
  const used = await duBytes(root);
  const size = Math.max(1024 * MiB, Math.ceil((used * 1.5 + 256 * MiB) / (64 * MiB)) * 64 * MiB);
  rmSync(path, { force: true });
  let src = root;
  if (extraFile) {
    // mkfs -d copies a directory; a small tree with the extra file and the root's top level bind would need mount, so copy.
    src = join(dir, "roots", `${name}.tree`);
    rmSync(src, { recursive: true, force: true });
    await run("cp", ["-a", root, src], { timeoutMs: 10 * 60_000 });
    writeFileSync(join(src, "0-extra.bin"), randomBytesSeeded(3 * MiB, 42));
  }
  await run("truncate", ["-s", String(size), path]);
  await run("mkfs.ext4", ["-q", "-F", "-d", src, "-E", "root_owner=0:0", path], { timeoutMs: 20 * 60_000 });
  if (extraFile) rmSync(src, { recursive: true, force: true });
  const image: CorpusImage = { name, path, size, dataBytes: await nonZeroBytes(path), what };
  writeFileSync(meta, JSON.stringify(image));
  return image;
}

/** A copy of `base` with about 1% of its data rewritten, 64 KiB at a time, in place. */
async function incrementalOf(dir: string, base: CorpusImage): Promise<CorpusImage> {
  const path = join(dir, "images", `${base.name}-incr.raw`);
  const meta = `${path}.json`;
  if (existsSync(meta)) return JSON.parse(readFileSync(meta, "utf8")) as CorpusImage;
  await run("cp", ["--sparse=always", base.path, path], { timeoutMs: 10 * 60_000 });
  const fh = await open(path, "r+");
  try {
    const extents = Math.ceil((base.dataBytes * 0.01) / (64 * 1024));
    const picks = randomBytesSeeded(extents * 4, 1234);
    const block = Buffer.alloc(64 * 1024);
    let changed = 0;
    for (let i = 0; changed < extents && i < extents * 50; i++) {
      const at = (picks.readUInt32LE((i % extents) * 4) * (i + 1)) % Math.floor(base.size / block.length);
      await fh.read(block, 0, block.length, at * block.length);
      if (!block.some((b) => b !== 0)) continue; // change data, not free space
      randomBytesSeeded(block.length, 5000 + i).copy(block);
      await fh.write(block, 0, block.length, at * block.length);
      changed++;
    }
  } finally {
    await fh.close();
  }
  const image: CorpusImage = { name: `${base.name}-incr`, path, size: statSync(path).size, dataBytes: await nonZeroBytes(path), what: `${base.name} with ~1% of its data rewritten in place (64 KiB extents)` };
  writeFileSync(meta, JSON.stringify(image));
  return image;
}

async function nonZeroBytes(path: string): Promise<number> {
  const zero = Buffer.alloc(4096);
  let n = 0;
  for await (const piece of createReadStream(path, { highWaterMark: 8 * MiB }) as AsyncIterable<Buffer>) {
    for (let o = 0; o < piece.length; o += 4096) {
      const end = Math.min(o + 4096, piece.length);
      if (piece.compare(zero, 0, end - o, o, end) !== 0) n += end - o;
    }
  }
  return n;
}
