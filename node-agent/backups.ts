// Backups on a node: the node's chunk store (lib/chunks, under DATA_DIR/backups)
// and short-lived read-only NBD exports that restores copy from. Every export is
// a `qemu-nbd` process on the agent's address with a pid file named by its id, so
// it can be stopped (and found again after an agent restart) by id alone.
//
// - A backup reads a replica's fleece export (node-agent/qsd/fleece.ts) through
//   an NBD client into the chunk store: a full one every allocated extent (NBD
//   block status, qsd/nbd-extents.ts; holes are neither read nor chunked), an
//   incremental one only the regions the previous backup's dirty bitmap lists.
// - A restore writes the backup into a sparse raw file in the store's scratch
//   folder and exports that; the file goes when the export is stopped.
import { existsSync } from "node:fs";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ChunkStore, type VerifyReport, type WriteStats } from "../lib/chunks/index.js";
import { InvalidArgumentError, NotFoundError } from "../lib/errors.js";
import { run } from "../lib/exec.js";
import { KeyedMutex } from "../lib/keyed-mutex.js";
import type { Logger } from "../lib/logger.js";
import { NbdClient } from "../lib/nbd/client.js";
import { parseNbdUri } from "../lib/nbd-uri.js";
import { waitForExit } from "../lib/proc.js";
import { bitmapContext, dirtyOf } from "./qsd/fleece.js";
import { type Extent as NbdExtent, nbdExtents, STATE_HOLE, STATE_ZERO } from "./qsd/nbd-extents.js";
import { freePort } from "../lib/free-port.js";

const ID_RE = /^[a-z0-9][a-z0-9._@-]{0,150}$/;

function checkId(kind: string, id: string): void {
  if (!ID_RE.test(id)) throw new InvalidArgumentError(`invalid ${kind} "${id}"`);
}

interface Extent {
  start: number;
  length: number;
  data: boolean;
}

/** Allocation extents ("base:allocation"): holes and ranges that read as zeros are not data. */
function allocation(extents: NbdExtent[]): Extent[] {
  return extents.map((e) => ({ start: e.offset, length: e.length, data: !(e.flags & (STATE_HOLE | STATE_ZERO)) }));
}

export type ExportWriteStats = WriteStats & { ms: number; readBytes: number };

/**
 * Reads an NBD export into `store` as `name`: every allocated extent (holes are
 * neither read nor chunked), or, given `base` in that store and the export's
 * `bitmap` of what changed since, only the changed regions. The store may be an
 * index (manifests only: node-agent/backup-ship.ts).
 */
export async function writeFromExport(storeP: Promise<ChunkStore>, name: string, sourceUri: string, incremental: { base: string; bitmap: string } | undefined, logger: Logger): Promise<ExportWriteStats> {
  const t0 = Date.now();
  // While the store opens (made on the first backup) and its worker threads start:
  // what changed (incremental) and what is allocated, in one block-status
  // exchange, and a second connection for the data.
  if (!incremental) ChunkStore.warmUp();
  const contexts = incremental ? [bitmapContext(incremental.bitmap), "base:allocation"] : ["base:allocation"];
  const [st, ext, conn] = await Promise.allSettled([storeP, nbdExtents(sourceUri, contexts), NbdClient.connect({ ...parseNbdUri(sourceUri) })]);
  if (st.status === "rejected" || ext.status === "rejected" || conn.status === "rejected") {
    if (conn.status === "fulfilled") conn.value.destroy();
    throw [st, ext, conn].map((r) => (r.status === "rejected" ? r.reason : undefined)).find((e) => e !== undefined);
  }
  const store = st.value;
  const { extents } = ext.value;
  const client = conn.value;
  const alloc = allocation(extents.get("base:allocation")!);
  const t1 = Date.now();
  try {
    let stats: WriteStats & { readBytes: number };
    // Holes and ranges that read as zeros: never read (and long ones, in a full backup, not even chunked).
    const zeros = alloc.filter((e) => !e.data).map((e) => ({ offset: e.start, length: e.length }));
    if (incremental) {
      const changed = dirtyOf(extents.get(bitmapContext(incremental.bitmap))!);
      stats = await store.writeIncremental(name, incremental.base, { size: client.size, changed, zeros, read: (offset, length) => client.read(offset, length) });
    } else {
      const w = await store.write(name, { size: client.size, zeros, read: (offset, length) => client.read(offset, length) });
      stats = { ...w, readBytes: alloc.reduce((n, e) => n + (e.data ? e.length : 0), 0) };
    }
    const ms = Date.now() - t0;
    logger.info(
      { backup: name, base: incremental?.base, source: sourceUri, index: store.config.indexOnly, dataBytes: stats.dataBytes, readBytes: stats.readBytes, skippedBytes: stats.skippedBytes, newBytes: stats.newBytes, storedBytes: stats.storedBytes, ms, steps: { extents: t1 - t0, write: ms - (t1 - t0) } },
      store.config.indexOnly ? "backup indexed" : "backup written",
    );
    return { ...stats, ms };
  } finally {
    client.destroy();
  }
}

export interface BackupsOptions {
  dataDir: string;
  /** The address other nodes reach this one at (exports listen there). */
  host: string;
  logger: Logger;
}

export class Backups {
  private storeP: Promise<ChunkStore> | undefined;
  private readonly mutex = new KeyedMutex();
  private readonly dir: string;

  constructor(private readonly o: BackupsOptions) {
    this.dir = join(o.dataDir, "backups");
  }

  private get exportsDir(): string {
    return join(this.dir, "exports");
  }

  private store(): Promise<ChunkStore> {
    this.storeP ??= (async () => {
      await mkdir(this.dir, { recursive: true });
      return ChunkStore.open(join(this.dir, "store"));
    })();
    this.storeP.catch(() => (this.storeP = undefined));
    return this.storeP;
  }


  /**
   * Reads an NBD export into the store as backup `name`: all of its allocated data,
   * or, given the previous backup `base` in this store and the export's `bitmap` of
   * what changed since, only the changed regions (the rest is taken from `base`).
   */
  async backupFrom(name: string, sourceUri: string, incremental?: { base: string; bitmap: string }): Promise<ExportWriteStats> {
    checkId("backup name", name);
    return this.mutex.run(name, () => writeFromExport(this.store(), name, sourceUri, incremental, this.o.logger));
  }

  /** The node's chunk store (opened, or made, on first use). */
  chunkStore(): Promise<ChunkStore> {
    return this.store();
  }

  /** Re-reads and re-hashes every chunk; `quarantine` moves damaged ones aside. */
  async verify(quarantine: boolean): Promise<VerifyReport> {
    return (await this.store()).verify({ quarantine });
  }


  /** Writes backup `name` into a sparse raw file and exports it read-only; returns its nbd:// URI. */
  async serveBackup(id: string, name: string): Promise<string> {
    checkId("backup name", name);
    const store = await this.store();
    if (!(await store.list()).includes(name)) throw new NotFoundError("backup", name, { hint: "the node's store has no such backup" });
    await mkdir(this.exportsDir, { recursive: true });
    const file = join(this.exportsDir, `${id}.raw`);
    if (!existsSync(file)) {
      const tmp = `${file}.tmp`;
      await store.restore(name, tmp);
      await rename(tmp, file);
    }
    return this.startExport(id, ["-f", "raw", file]);
  }

  /** Removes backup `name` from the store and collects the chunks no backup uses any more. */
  async deleteBackup(name: string): Promise<boolean> {
    checkId("backup name", name);
    return this.mutex.run(name, async () => {
      const store = await this.store();
      if (!(await store.list()).includes(name)) return false;
      await store.delete(name);
      const gc = await store.gc();
      this.o.logger.info({ backup: name, gc }, "backup deleted");
      return true;
    });
  }

  /** Starts `qemu-nbd` (read-only, several clients) for export `id` unless it runs; returns its URI. */
  private startExport(id: string, args: string[]): Promise<string> {
    checkId("export id", id);
    return this.mutex.run(`export:${id}`, async () => {
      await mkdir(this.exportsDir, { recursive: true });
      const running = await this.running(id);
      if (running) return running.uri;
      const port = await freePort(this.o.host);
      const pidFile = join(this.exportsDir, `${id}.pid`);
      await run("qemu-nbd", ["--read-only", "--persistent", "--shared=8", "--fork", `--pid-file=${pidFile}`, "-x", "data", "-b", this.o.host, "-p", String(port), ...args], { timeoutMs: 30_000 });
      const host = this.o.host.includes(":") ? `[${this.o.host}]` : this.o.host;
      const uri = `nbd://${host}:${port}/data`;
      await writeFile(join(this.exportsDir, `${id}.uri`), uri);
      this.o.logger.info({ export: id, uri }, "read-only export started");
      return uri;
    });
  }

  private async running(id: string): Promise<{ pid: number; uri: string } | undefined> {
    try {
      const pid = Number((await readFile(join(this.exportsDir, `${id}.pid`), "utf8")).trim());
      const uri = (await readFile(join(this.exportsDir, `${id}.uri`), "utf8")).trim();
      process.kill(pid, 0);
      return { pid, uri };
    } catch {
      return undefined;
    }
  }

  /** Stops export `id` and removes what it served from (a restore's file). Idempotent. */
  stopExport(id: string): Promise<boolean> {
    checkId("export id", id);
    return this.mutex.run(`export:${id}`, async () => {
      const r = await this.running(id);
      if (r) {
        process.kill(r.pid, "SIGTERM");
        if (!(await waitForExit(r.pid, 5_000))) process.kill(r.pid, "SIGKILL");
      }
      for (const ext of ["pid", "uri", "raw", "raw.tmp"]) await rm(join(this.exportsDir, `${id}.${ext}`), { force: true });
      return r !== undefined;
    });
  }

}

