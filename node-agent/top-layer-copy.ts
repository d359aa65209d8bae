// The rebuild copy of a linked clone's replica: only what the source replica
// holds in its own layer is copied into the target image (a linked clone over
// this node's copy of the same template), so the new replica stays thin.
// `qemu-img convert` from the source's NBD export would write the whole
// flattened view, template included.
//
// The source's export offers "qemu:allocation-depth" (qsd/exports.ts); its
// block status and the target's `qemu-img map` give the ranges to write
// (top-layer-plan.ts). The target is written through a short-lived qemu-nbd
// (cache=none, as the storage daemon opens replicas) that exits when our one
// connection closes, several requests in flight, reads paced to the rate limit.
//
// Safe beside writes to the source (an attached volume's rebuild): every range
// is read after the block status was taken, and the copy starts after the
// frontend began tracking writes; a range the source allocates later is such a
// tracked write, which the frontend copies afterwards.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FailedPreconditionError, InvalidArgumentError } from "../lib/errors.js";
import { run } from "../lib/exec.js";
import { mapLimit } from "../lib/map-limit.js";
import { NbdClient } from "../lib/nbd/client.js";
import { parseNbdUri } from "../lib/nbd-uri.js";
import { readArgv, waitForExit } from "../lib/proc.js";
import { imageMap } from "./qemu-img.js";
import { ALLOCATION_DEPTH, nbdExtents } from "./qsd/nbd-extents.js";
import { planBytes, planTopLayerCopy, toRequests, type CopyRange } from "./top-layer-plan.js";

export const QEMU_NBD = "qemu-nbd";

const MiB = 2 ** 20;
/** Bytes per read/write request (QEMU's NBD server takes up to 32 MiB). */
const DATA_REQUEST = 2 * MiB;
/** Bytes per write-zeroes request (no payload; the length field is 32 bits). */
const ZERO_REQUEST = 1024 * MiB;
const ZEROS = Buffer.alloc(DATA_REQUEST);

export interface TopLayerCopySpec {
  /** NBD URI of an in-sync replica's export (offering "qemu:allocation-depth"). */
  sourceUri: string;
  /** The target qcow2 image: a linked clone over this node's copy of the template, not open elsewhere. */
  targetPath: string;
  /** Bytes per second read from the source; 0 = unlimited. */
  rateLimitBytes: number;
  /** Requests in flight (default 8). */
  inFlight?: number;
}

export interface TopLayerCopyResult {
  /** Bytes read from the source and written (or found to be zeros). */
  dataBytes: number;
  /** Bytes written as zeros without reading. */
  zeroBytes: number;
  /** Bytes of the export. */
  sizeBytes: number;
  ms: number;
}

/**
 * qemu-nbd serving the target image on a unix socket to one client, exiting when
 * that client disconnects (no --persistent): a dead agent leaves no server behind.
 * The backing file opens read-only from the image's header.
 */
export function targetServerArgs(spec: { path: string; socket: string; pidFile: string }): string[] {
  for (const p of [spec.path, spec.socket, spec.pidFile]) if (!p.startsWith("/")) throw new InvalidArgumentError(`path "${p}" is not absolute`);
  return [
    "--fork", `--pid-file=${spec.pidFile}`, `--socket=${spec.socket}`, "--export-name=target",
    "--format=qcow2", "--cache=none", "--aio=native", "--discard=unmap", spec.path,
  ];
}

/** Spends a byte budget of `rate` per second (0: none). */
class Pacer {
  private readonly t0 = Date.now();
  private spent = 0;
  constructor(private readonly rate: number) {}
  async take(bytes: number): Promise<void> {
    if (this.rate <= 0) return;
    const due = this.t0 + (this.spent / this.rate) * 1000;
    this.spent += bytes;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
}

/** Writes `requests` into `dst`, data read from `src`, `inFlight` at a time; stops at the first failure (mapLimit). */
async function writeAll(requests: CopyRange[], src: NbdClient | undefined, dst: NbdClient, inFlight: number, pacer: Pacer): Promise<void> {
  await mapLimit(requests, inFlight, async (r) => {
    if (r.kind === "zero") return dst.writeZeroes(r.offset, r.length);
    await pacer.take(r.length);
    const buf = await src!.read(r.offset, r.length);
    // Zeros the guest wrote as data stay zeros on the target, unallocated in data.
    if (buf.equals(ZEROS.subarray(0, buf.length))) await dst.writeZeroes(r.offset, r.length);
    else await dst.write(r.offset, buf);
  });
}

/** Stops a qemu-nbd we started that is still running (an error path): only if its argv names our socket. */
async function stopServer(pidFile: string, socket: string): Promise<void> {
  const pid = Number((await readFile(pidFile, "utf8").catch(() => "")).trim());
  if (!Number.isSafeInteger(pid) || pid <= 0) return;
  const argv = await readArgv(pid);
  if (!argv?.some((a) => a.includes(socket))) return;
  process.kill(pid, "SIGTERM");
  if (!(await waitForExit(pid, 5_000))) process.kill(pid, "SIGKILL");
}

/**
 * Copies the source replica's own layer into the target linked clone. Throws
 * MetaContextMissingError (qsd/nbd-extents.ts) before writing anything when the
 * source export offers no allocation depth: the caller copies the flattened way.
 */
export async function copyTopLayer(spec: TopLayerCopySpec): Promise<TopLayerCopyResult> {
  if (!Number.isSafeInteger(spec.rateLimitBytes) || spec.rateLimitBytes < 0) throw new InvalidArgumentError(`invalid rate limit ${spec.rateLimitBytes}`);
  const t0 = Date.now();
  const { size, extents } = await nbdExtents(spec.sourceUri, ["base:allocation", ALLOCATION_DEPTH]);
  const target = await imageMap(spec.targetPath, "qcow2");
  const targetSize = target.reduce((n, e) => Math.max(n, e.start + e.length), 0);
  if (targetSize < size) {
    throw new FailedPreconditionError(`the target image ${spec.targetPath} (${targetSize} bytes) is smaller than the source (${size} bytes)`, { hint: "grow the replica first" });
  }
  const plan = planTopLayerCopy({ size, depth: extents.get(ALLOCATION_DEPTH)!, allocation: extents.get("base:allocation")!, target });
  const { data, zero } = planBytes(plan);
  const result = { dataBytes: data, zeroBytes: zero, sizeBytes: size };
  if (plan.length === 0) return { ...result, ms: Date.now() - t0 };

  const dir = await mkdtemp(join(tmpdir(), "stowage-copy-"));
  const socket = join(dir, "target.sock");
  const pidFile = join(dir, "qemu-nbd.pid");
  let src: NbdClient | undefined;
  let dst: NbdClient | undefined;
  try {
    await run(QEMU_NBD, targetServerArgs({ path: spec.targetPath, socket, pidFile }), { timeoutMs: 60_000 });
    const pid = Number((await readFile(pidFile, "utf8")).trim());
    dst = await NbdClient.connect({ socketPath: socket, exportName: "target" });
    if (data > 0) {
      const a = parseNbdUri(spec.sourceUri);
      src = await NbdClient.connect({ socketPath: a.socketPath, host: a.host, port: a.port, exportName: a.exportName });
    }
    await writeAll(toRequests(plan, DATA_REQUEST, ZERO_REQUEST), src, dst, spec.inFlight ?? 8, new Pacer(spec.rateLimitBytes));
    await dst.flush();
    await dst.close();
    dst = undefined;
    // The server exits with its last client: wait, so the image is unlocked when we return.
    if (!(await waitForExit(pid, 30_000))) throw new Error(`qemu-nbd ${pid} serving ${spec.targetPath} did not exit after the copy`);
  } finally {
    dst?.destroy();
    await src?.close().catch(() => undefined);
    await stopServer(pidFile, socket).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
  return { ...result, ms: Date.now() - t0 };
}
