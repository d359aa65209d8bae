// Incremental backups in the storage daemon: persistent dirty bitmaps and
// "fleecing" (measured in lib/chunks/BACKUP-MECHANICS.md).
//
// Bitmaps are named stow-bk-ID: "changes since backup ID". At a backup's instant
// (writes held on the frontend), every in-sync replica adds stow-bk-NEW and
// disables the base's bitmap, in one QMP transaction; on the replica the backup
// reads from, the same transaction starts a `blockdev-backup sync=none` job into
// a temporary qcow2 (the fleece) whose backing is the live image: from then on
// the fleece reads as the image did at that instant, while the VM writes on.
// The fleece is exported read-only with the base's bitmap, so the reader learns
// which regions changed (NBD block status of the bitmap's metadata context,
// nbd-extents.ts) and reads only those.
// Afterwards the fleece goes and the base's bitmap is removed; a failed backup
// merges the new bitmap back into the base's instead, so nothing is forgotten.
//
// A bitmap reaches the image file only when the daemon closes the image cleanly:
// after a crash it is missing or "inconsistent", and the next backup is full.
import { createHash } from "node:crypto";
import { join } from "node:path";
import { FailedPreconditionError, NotFoundError } from "../../lib/errors.js";
import { run } from "../../lib/exec.js";
import type { Logger } from "../../lib/logger.js";
import { unlinkIfExists } from "../../lib/file-ops.js";
import { nodeNames } from "./exports.js";
import { type Extent, nbdExtents } from "./nbd-extents.js";
import type { QmpClient } from "./qmp-client.js";
import { nbdUri, type NbdEndpoint } from "./qsd-args.js";

export const BITMAP_PREFIX = "stow-bk-";
const ID_RE = /^[a-z0-9][a-z0-9._@-]{0,150}$/;

export interface BitmapInfo {
  name: string;
  recording: boolean;
  persistent: boolean;
  inconsistent: boolean;
  count: number;
}

const short = (s: string) => createHash("sha256").update(s).digest("hex").slice(0, 24);
/** QMP names of one fleece (QEMU allows 31 characters). */
export function fleeceNames(id: string): { node: string; job: string; exportId: string; file: string } {
  const h = short(id);
  return { node: `fl-${h}`, job: `fj-${h}`, exportId: `fx-${h}`, file: `fleece-${h}.qcow2` };
}

function checkId(id: string): void {
  if (!ID_RE.test(id)) throw new FailedPreconditionError(`invalid backup id "${id}"`);
}

export interface FleeceDeps {
  qmp: () => QmpClient;
  endpoint: () => NbdEndpoint;
  logger?: Logger;
}

interface NamedNode {
  "node-name"?: string;
  file: string;
  image: { "virtual-size": number };
  "dirty-bitmaps"?: { name: string; recording: boolean; persistent: boolean; inconsistent?: boolean; count: number; busy?: boolean }[];
}

export class Fleece {
  constructor(private readonly d: FleeceDeps) {}

  private async formatNode(replicaId: string): Promise<NamedNode> {
    const nodes = (await this.d.qmp().execute("query-named-block-nodes", { flat: true })) as NamedNode[];
    const fmt = nodes.find((n) => n["node-name"] === nodeNames(replicaId).format);
    if (!fmt) throw new NotFoundError("export", replicaId, { hint: "the replica is not open in this node's storage daemon" });
    return fmt;
  }

  /** The replica's backup bitmaps; inconsistent ones (left by a crash) are removed and not listed. */
  async bitmaps(replicaId: string): Promise<BitmapInfo[]> {
    const fmt = await this.formatNode(replicaId);
    const out: BitmapInfo[] = [];
    for (const b of fmt["dirty-bitmaps"] ?? []) {
      if (!b.name.startsWith(BITMAP_PREFIX)) continue;
      if (b.inconsistent) {
        await this.d.qmp().execute("block-dirty-bitmap-remove", { node: fmt["node-name"]!, name: b.name });
        this.d.logger?.warn({ replica: replicaId, bitmap: b.name }, "inconsistent backup bitmap removed (the storage daemon stopped uncleanly); the next backup is full");
        continue;
      }
      out.push({ name: b.name, recording: b.recording, persistent: b.persistent, inconsistent: false, count: b.count });
    }
    return out;
  }

  /** Makes the fleece image and node (in `dir`, backed by the replica's live node); nothing runs yet. Idempotent. */
  async prepare(replicaId: string, id: string, dir: string): Promise<void> {
    checkId(id);
    const fmt = await this.formatNode(replicaId);
    const n = fleeceNames(id);
    const nodes = (await this.d.qmp().execute("query-named-block-nodes", { flat: true })) as NamedNode[];
    if (nodes.some((x) => x["node-name"] === n.node)) return;
    const path = join(dir, n.file);
    await run("qemu-img", ["create", "-q", "-f", "qcow2", path, String(fmt.image["virtual-size"])]);
    await this.d.qmp().execute("blockdev-add", {
      driver: "qcow2",
      "node-name": n.node,
      file: { driver: "file", filename: path },
      backing: fmt["node-name"],
    });
  }

  /**
   * The backup's instant on one replica, in one transaction: add bitmap `next`, disable
   * `base` (when given), and on the reader start the fleece job. Idempotent for `next`.
   */
  async mark(replicaId: string, next: string, base: string | undefined, fleeceId: string | undefined): Promise<void> {
    const fmt = await this.formatNode(replicaId);
    const node = fmt["node-name"]!;
    const have = new Map((fmt["dirty-bitmaps"] ?? []).map((b) => [b.name, b]));
    const actions: { type: string; data: Record<string, unknown> }[] = [];
    if (!have.has(next)) actions.push({ type: "block-dirty-bitmap-add", data: { node, name: next, persistent: true } });
    if (base && have.get(base)?.recording) actions.push({ type: "block-dirty-bitmap-disable", data: { node, name: base } });
    if (fleeceId) {
      const n = fleeceNames(fleeceId);
      const jobs = (await this.d.qmp().execute("query-jobs")) as { id: string }[];
      if (!jobs.some((j) => j.id === n.job)) actions.push({ type: "blockdev-backup", data: { "job-id": n.job, device: node, target: n.node, sync: "none", "auto-dismiss": false } });
    }
    if (actions.length > 0) await this.d.qmp().execute("transaction", { actions });
  }

  /** Exports the fleece read-only, with the base's bitmap when given; returns its URI. Idempotent. */
  async export(fleeceId: string, base: string | undefined): Promise<string> {
    const n = fleeceNames(fleeceId);
    const exports = (await this.d.qmp().execute("query-block-exports")) as { id: string }[];
    if (!exports.some((e) => e.id === n.exportId)) {
      await this.d.qmp().execute("block-export-add", { type: "nbd", id: n.exportId, "node-name": n.node, name: n.exportId, writable: false, ...(base ? { bitmaps: [base] } : {}) });
    }
    return nbdUri(this.d.endpoint(), n.exportId);
  }

  /** Takes the fleece down: export, job, node, file. Idempotent; `dir` is where prepare put the file. */
  async release(fleeceId: string, dir: string): Promise<void> {
    const n = fleeceNames(fleeceId);
    const qmp = this.d.qmp();
    const exports = (await qmp.execute("query-block-exports")) as { id: string }[];
    if (exports.some((e) => e.id === n.exportId)) {
      const gone = qmp.waitForEvent("BLOCK_EXPORT_DELETED", (e) => e.id === n.exportId, { timeoutMs: 10_000 });
      gone.catch(() => undefined);
      await qmp.execute("block-export-del", { id: n.exportId, mode: "hard" });
      await gone;
    }
    const jobs = (await qmp.execute("query-jobs")) as { id: string; status: string }[];
    const job = jobs.find((j) => j.id === n.job);
    if (job) {
      if (job.status !== "concluded") {
        const concluded = qmp.waitForEvent("JOB_STATUS_CHANGE", (e) => e.id === n.job && e.status === "concluded", { timeoutMs: 10_000 });
        concluded.catch(() => undefined);
        await qmp.execute("block-job-cancel", { device: n.job, force: true });
        await concluded;
      }
      await qmp.execute("job-dismiss", { id: n.job });
    }
    const nodes = (await qmp.execute("query-named-block-nodes", { flat: true })) as NamedNode[];
    if (nodes.some((x) => x["node-name"] === n.node)) await qmp.execute("blockdev-del", { "node-name": n.node });
    await unlinkIfExists(join(dir, n.file));
  }

  /** After a good backup: the base's bitmap is no longer needed. */
  async dropBitmap(replicaId: string, name: string): Promise<void> {
    const fmt = await this.formatNode(replicaId);
    if ((fmt["dirty-bitmaps"] ?? []).some((b) => b.name === name)) await this.d.qmp().execute("block-dirty-bitmap-remove", { node: fmt["node-name"]!, name });
  }

  /** After a failed backup: `next`'s changes go back into `base` (re-enabled), and `next` goes. */
  async undo(replicaId: string, next: string, base: string | undefined): Promise<void> {
    const fmt = await this.formatNode(replicaId);
    const node = fmt["node-name"]!;
    const have = new Map((fmt["dirty-bitmaps"] ?? []).map((b) => [b.name, b]));
    const actions: { type: string; data: Record<string, unknown> }[] = [];
    if (base && have.has(base)) {
      if (have.has(next)) actions.push({ type: "block-dirty-bitmap-merge", data: { node, target: base, bitmaps: [next] } });
      if (!have.get(base)!.recording) actions.push({ type: "block-dirty-bitmap-enable", data: { node, name: base } });
    }
    if (have.has(next)) actions.push({ type: "block-dirty-bitmap-remove", data: { node, name: next } });
    if (actions.length > 0) await this.d.qmp().execute("transaction", { actions });
  }
}

/** The NBD metadata context of a dirty bitmap that an export carries. */
export const bitmapContext = (bitmap: string) => `qemu:dirty-bitmap:${bitmap}`;

/** The byte ranges a bitmap marks dirty, read from an export that carries it (NBD block status). */
export async function dirtyRanges(uri: string, bitmap: string): Promise<{ offset: number; length: number }[]> {
  const { extents } = await nbdExtents(uri, [bitmapContext(bitmap)]);
  return dirtyOf(extents.get(bitmapContext(bitmap))!);
}

/** The dirty extents (flag 1) of a dirty-bitmap context, as ranges. */
export function dirtyOf(extents: Extent[]): { offset: number; length: number }[] {
  return extents.filter((e) => e.flags & 1).map(({ offset, length }) => ({ offset, length }));
}
