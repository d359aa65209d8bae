// Part 2 of the replication benchmark: how fast a replica is rebuilt, against a plain
// `qemu-img convert` copy of the same data, in the same run, alternating.
//
// The rebuild paths are timed through Stowage's own code, with no rate limit:
//   detached volume  DirPool.copyFrom (node-agent/dir-pool.ts): `qemu-img convert -n` from
//                    the NBD export of an in-sync replica into the existing image, flushed;
//   attached volume  the agent copies and the frontend catches up (controller/attached-
//                    rebuild.ts): a replica set over the source's export (the frontend) is
//                    told by its record that a new replica joined, to be copied by its agent;
//                    once it tracks writes in an empty dirty map (untimed, like making the
//                    image), the clock runs through DirPool.copyFrom, the export of the
//                    copied image by the target daemon (QsdExports, as the agent opens it),
//                    and the frontend's catch-up, until the replica is recorded in-sync;
//   frontend copy    the fallback (frontend/sync/resync.ts): the same replica set told that
//                    a new, exported replica joined, timed until its copy of every allocated
//                    region is flushed and recorded in-sync.
//
// The baseline is made honest, because the naive one is not a copy at all: qemu-img's
// default target cache is `unsafe` (no flush ever), so a plain convert ends with the data
// in the page cache, and reading the source file through the page cache measures RAM.
// A rebuild ends only once the data is durable on the replica's pool, read from and
// written to images opened as the agent opens them (aio=native, cache.direct=on: every
// daemon here runs with AGENT_FILE_OPTIONS, whatever --direct-io says). So every plain copy
// reads the source with O_DIRECT (`-T none`) into a new image in the same pool directory,
// and three variants are printed:
//   naive      no cache options: the source read through the page cache (cached after the
//              first run), the target never flushed; the old baseline, for reference
//   unflushed  `-T none` (default target cache: unsafe): the page-cache figure, for reference
//   flushed    `-T none -t writeback`: through the page cache, fsync'd at the end
//   direct     `-T none -t none`: O_DIRECT writes, flushed at the end
// The headline ratios (target 0.9) are against the durable plain copy: the faster (by
// median) of flushed and direct, so a slow page-cache write-back never flatters a rebuild.
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { run } from "../../lib/exec.js";
import { DirPool } from "../../node-agent/dir-pool.js";
import { QsdExports } from "../../node-agent/qsd/exports.js";
import { Qsd } from "../harness/qsd.js";
import { Replica } from "../../frontend/replica.js";
import { ReplicaSet } from "../../frontend/replica-set.js";
import { FakeRecord } from "../../frontend/testing/fake-record.js";
import { AGENT_FILE_OPTIONS, median, progress, syncDisks, type Cleanups } from "./replication-common.js";

export interface ResyncOptions {
  dir: string;
  reps: number;
  cleanups: Cleanups;
}

export interface CopyFigure {
  /** Median seconds and MB/s of data (the written part of the image). */
  seconds: number;
  mbps: number;
  runs: number[];
}

export interface ResyncResult {
  imageBytes: number;
  dataBytes: number;
  /** Stowage's rebuild path for a detached volume: DirPool.copyFrom from the source's NBD export. */
  stowage: CopyFigure;
  /** Stowage's rebuild path for an attached volume: the agent's copy, the export, the frontend's catch-up, until recorded in-sync. */
  attached: CopyFigure;
  /** Of that, the agent's copy alone (seconds; MB/s of data). */
  attachedCopy: CopyFigure;
  /** Untimed above: from the new replica joining the record until the frontend's tracking map is recorded. */
  trackingSetup: CopyFigure;
  /** The fallback for an attached volume: the frontend's full copy (allocated regions) to a new, exported replica. */
  frontend: CopyFigure;
  /** `qemu-img convert -O qcow2 SOURCE TARGET`: the source through the page cache, the target never flushed. */
  plainNaive: CopyFigure;
  /** `qemu-img convert -T none -O qcow2 SOURCE TARGET`: qemu-img's default target cache (unsafe: never flushed). */
  plain: CopyFigure;
  /** The same with `-t writeback`: through the page cache, flushed at the end. */
  plainFlushed: CopyFigure;
  /** The same with `-t none`: O_DIRECT writes, flushed at the end. */
  plainDirect: CopyFigure;
  /** The rebuild's copy from NBD without its final flush (qemu-img's default target cache): where its time goes. */
  nbdUnflushed: CopyFigure;
  /** `qemu-img compare` of source and rebuilt replica said identical (both paths). */
  verified: boolean;
}

/** The durable plain copy the rebuilds are measured against: the faster of flushed and direct. */
export function durablePlain(r: ResyncResult): { label: "flushed" | "direct"; figure: CopyFigure } {
  return r.plainDirect.mbps > r.plainFlushed.mbps ? { label: "direct", figure: r.plainDirect } : { label: "flushed", figure: r.plainFlushed };
}

const IMAGE_BYTES = 1024 * 1024 * 1024;
/** 8 MiB written, 8 MiB left a hole, over the whole image: 512 MiB of data. */
const CHUNK = "8M";
const DATA_BYTES = IMAGE_BYTES / 2;
const REPLICA = { id: "r-0123456789abcdef", volume: "resync" };

function figure(seconds: number[]): CopyFigure {
  const s = median(seconds);
  return { seconds: s, mbps: DATA_BYTES / 1e6 / s, runs: seconds };
}

export async function benchResync(o: ResyncOptions): Promise<ResyncResult> {
  const dir = join(o.dir, "resync");
  const poolDir = join(dir, "pool");
  await mkdir(poolDir, { recursive: true });
  const source = join(dir, "source.qcow2");
  await run("qemu-img", ["create", "-q", "-f", "qcow2", source, String(IMAGE_BYTES)]);
  const fileOptions = AGENT_FILE_OPTIONS;
  const startSource = async () => {
    const qsd = await Qsd.start({ dir, image: source, format: "qcow2", exportName: "source", socket: join(dir, "source.sock"), fileOptions });
    return { qsd, stop: o.cleanups.add("source qemu-storage-daemon", () => qsd.stop()) };
  };

  progress(`writing ${DATA_BYTES / 2 ** 20} MiB of data into the 1 GiB source image (${CHUNK} chunks, ${CHUNK} holes)`);
  {
    const { qsd, stop } = await startSource();
    await run(
      "fio",
      ["--name=fill", "--ioengine=nbd", `--uri=${qsd.uri}`, `--rw=write:${CHUNK}`, `--bs=${CHUNK}`, "--iodepth=4", `--size=${IMAGE_BYTES}`, `--io_size=${DATA_BYTES}`, `--output=${join(dir, "fio.out")}`],
      { timeoutMs: 300_000 },
    );
    // Stopped for the plain copies: the daemon holds the image's write lock.
    await stop();
  }

  const pool = new DirPool({ name: "bench", type: "dir", path: poolDir, overcommitRatio: 4 });
  const target = join(poolDir, "plain.qcow2");
  const stowage: number[] = [];
  const plainNaive: number[] = [];
  const plain: number[] = [];
  const plainFlushed: number[] = [];
  const plainDirect: number[] = [];
  const nbdUnflushed: number[] = [];
  const frontend: number[] = [];
  const attached: number[] = [];
  const attachedCopy: number[] = [];
  const trackingSetup: number[] = [];
  let verified = false;
  let frontendVerified = false;
  let attachedVerified = false;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  /** A fresh replica image filled from the source's export by `copy`, timed; compared with the source when `verify`. */
  const viaNbd = async (into: number[], copy: (uri: string, path: string) => Promise<unknown>, verify = false) => {
    const { replica } = await pool.ensureReplica({ ...REPLICA, sizeBytes: IMAGE_BYTES, format: "qcow2", preallocation: "off" });
    const { qsd, stop } = await startSource();
    try {
      await syncDisks();
      const t = performance.now();
      await copy(qsd.uri, replica.path);
      into.push((performance.now() - t) / 1000);
    } finally {
      await stop();
    }
    if (verify) {
      const compare = ["compare", "-f", "qcow2", "-F", "qcow2", source, replica.path];
      verified = await run("qemu-img", compare, { timeoutMs: 300_000 }).then(() => true, () => false);
    }
    await pool.deleteReplica(REPLICA.id);
  };
  /** A replica set over the source's export, as a frontend has it, with a record it reads every `refreshMs`. */
  const frontendOver = async (qsd: { uri: string; socket: string }, refreshMs: number) => {
    const maps = join(dir, "maps");
    await mkdir(maps, { recursive: true });
    const record = new FakeRecord(["source"]);
    const set = new ReplicaSet([await Replica.open({ spec: qsd.uri, socketPath: qsd.socket, exportName: "source" }, 2)], undefined, {
      recorder: record,
      generation: 1,
      stateDir: maps,
      volume: "bench",
      refreshMs,
    });
    return { record, set };
  };
  /**
   * The attached-volume path: a replica set over the source's export (as a frontend
   * has it), told by its record that a new replica joined; timed from then until the
   * copy is recorded in-sync (the record is read every 20 ms).
   */
  const viaFrontend = async (into: number[], verify = false) => {
    const { replica } = await pool.ensureReplica({ ...REPLICA, sizeBytes: IMAGE_BYTES, format: "qcow2", preallocation: "off" });
    const { qsd, stop } = await startSource();
    const tq = await Qsd.start({ dir, image: replica.path, format: "qcow2", exportName: "target", socket: join(dir, "target.sock"), fileOptions });
    const stopTarget = o.cleanups.add("target qemu-storage-daemon", () => tq.stop());
    const { record, set } = await frontendOver(qsd, 20);
    try {
      await set.warmUp();
      await syncDisks();
      const t = performance.now();
      record.add("target", tq.uri);
      while (record.inSyncMarks.length === 0) await new Promise((r) => setTimeout(r, 5));
      into.push((performance.now() - t) / 1000);
    } finally {
      await set.close();
      await stopTarget();
      await stop();
    }
    if (verify) {
      const compare = ["compare", "-f", "qcow2", "-F", "qcow2", source, replica.path];
      frontendVerified = await run("qemu-img", compare, { timeoutMs: 300_000 }).then(() => true, () => false);
    }
    await pool.deleteReplica(REPLICA.id);
  };
  /**
   * The attached-volume path (controller/attached-rebuild.ts), with the controller's part
   * played by the bench: the replica set (the frontend) reads a record in which a new,
   * unexported replica awaits its agent's copy; once it tracks writes for it, the agent's
   * copy (DirPool.copyFrom), the target daemon's export of the image (QsdExports, a daemon
   * already running, as on an agent's node) and the frontend's catch-up of what was
   * written meanwhile (nothing here), until recorded in-sync (the record is read every 5 ms).
   */
  const viaAgentAndFrontend = async (verify = false) => {
    const { replica } = await pool.ensureReplica({ ...REPLICA, sizeBytes: IMAGE_BYTES, format: "qcow2", preallocation: "off" });
    const { qsd, stop } = await startSource();
    const other = join(dir, "other.qcow2");
    const tq = await Qsd.start({ dir, image: other, format: "qcow2", sizeMiB: 1, exportName: "other", socket: join(dir, "target.sock"), fileOptions });
    const stopTarget = o.cleanups.add("target qemu-storage-daemon", () => tq.stop());
    const qmp = await tq.qmp();
    const exports = new QsdExports({ qmp: () => qmp, endpoint: () => ({ unixSocket: tq.socket }) });
    const { record, set } = await frontendOver(qsd, 5);
    try {
      await set.warmUp();
      const t0 = performance.now();
      record.add(REPLICA.id, "", true);
      while (!record.replicas.find((r) => r.id === REPLICA.id)?.trackingToken) await sleep(1);
      trackingSetup.push((performance.now() - t0) / 1000);
      await syncDisks();
      const t = performance.now();
      await pool.copyFrom(REPLICA.id, qsd.uri, 0);
      attachedCopy.push((performance.now() - t) / 1000);
      const d = await exports.ensureExport({ replicaId: REPLICA.id, path: replica.path, format: "qcow2", writable: true });
      record.copied(REPLICA.id, d.nbdUri);
      while (record.inSyncMarks.length === 0) await sleep(1);
      attached.push((performance.now() - t) / 1000);
      if (set.resyncs[0]?.kind !== "incremental") throw new Error(`the frontend's catch-up was ${set.resyncs[0]?.kind}, not incremental`);
    } finally {
      await set.close();
      await exports.removeExport(REPLICA.id, { force: true }).catch(() => undefined);
      await qmp.close();
      await stopTarget();
      await stop();
      await rm(other, { force: true });
    }
    if (verify) {
      const compare = ["compare", "-f", "qcow2", "-F", "qcow2", source, replica.path];
      attachedVerified = await run("qemu-img", compare, { timeoutMs: 300_000 }).then(() => true, () => false);
    }
    await pool.deleteReplica(REPLICA.id);
  };
  /** `qemu-img convert` of the source file into a new image in the pool directory (`cache`: its -T and -t options). */
  const plainCopy = async (into: number[], cache: string[]) => {
    await syncDisks();
    const t = performance.now();
    await run("qemu-img", ["convert", ...cache, "-f", "qcow2", "-O", "qcow2", source, target], { timeoutMs: 600_000 });
    into.push((performance.now() - t) / 1000);
    await rm(target, { force: true });
  };

  for (let rep = 0; rep < o.reps; rep++) {
    const steps = [
      ["Stowage rebuild (DirPool.copyFrom over NBD)", () => viaNbd(stowage, (uri) => pool.copyFrom(REPLICA.id, uri, 0), rep === 0)],
      ["Stowage rebuild of an attached volume (agent copy, frontend catch-up)", () => viaAgentAndFrontend(rep === 0)],
      ["Stowage rebuild through the frontend (the fallback)", () => viaFrontend(frontend, rep === 0)],
      ["plain qemu-img convert, no cache options", () => plainCopy(plainNaive, [])],
      ["plain qemu-img convert -T none", () => plainCopy(plain, ["-T", "none"])],
      ["plain qemu-img convert -T none -t writeback", () => plainCopy(plainFlushed, ["-T", "none", "-t", "writeback"])],
      ["plain qemu-img convert -T none -t none", () => plainCopy(plainDirect, ["-T", "none", "-t", "none"])],
      [
        "the rebuild's convert from NBD without its flush",
        () => viaNbd(nbdUnflushed, (uri, path) => run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "qcow2", uri, path], { timeoutMs: 600_000 })),
      ],
    ] as const;
    // Alternate the order so page-cache and write-back drift does not favour one side.
    for (const [label, step] of rep % 2 ? [...steps].reverse() : steps) {
      progress(`resync: run ${rep + 1}/${o.reps}, ${label}`);
      await step();
    }
  }
  return {
    imageBytes: IMAGE_BYTES,
    dataBytes: DATA_BYTES,
    stowage: figure(stowage),
    attached: figure(attached),
    attachedCopy: figure(attachedCopy),
    trackingSetup: figure(trackingSetup),
    frontend: figure(frontend),
    plainNaive: figure(plainNaive),
    plain: figure(plain),
    plainFlushed: figure(plainFlushed),
    plainDirect: figure(plainDirect),
    nbdUnflushed: figure(nbdUnflushed),
    verified: verified && frontendVerified && attachedVerified,
  };
}
