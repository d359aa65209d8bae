// Dirty bitmaps and fleecing with a real qemu-storage-daemon: the bitmap of the
// previous backup lists exactly the clusters written since, the fleece reads as
// the image did at the backup's instant while writes go on, and a failed backup's
// bitmap folds back into its base.
import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { dirtyRanges } from "./fleece.js";
import { nbdExtents, STATE_HOLE, STATE_ZERO } from "./nbd-extents.js";
import { QsdSupervisor } from "./supervisor.js";

const MiB = 2 ** 20;
const R = "r-f1ecce000001";
let root: string;
let s: QsdSupervisor;

const io = async (uri: string, ...cmds: string[]) => {
  const readOnly = uri.includes("/fx-") ? ["-r"] : [];
  const r = await execa("qemu-io", ["-f", "raw", ...readOnly, ...cmds.flatMap((c) => ["-c", c]), uri], { reject: false });
  if (r.exitCode !== 0 || /fail|error/i.test(r.stdout)) throw new Error(`qemu-io ${cmds.join("; ")}: ${r.stdout}${r.stderr}`);
};

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "qsd-fleece-"));
  s = new QsdSupervisor({ dataDir: root, nbd: { type: "unix" } });
  await s.ensureRunning([]);
  const path = join(root, `vol.${R}.qcow2`);
  await execa("qemu-img", ["create", "-q", "-f", "qcow2", path, String(16 * MiB)]);
  await s.exports.ensureExport({ replicaId: R, path, format: "qcow2", writable: true });
});

afterEach(async () => {
  await s.stop().catch(() => undefined);
  await rm(root, { recursive: true, force: true });
});

describe("fleecing and backup bitmaps", () => {
  it("reads the image as it was at the instant, with exactly the clusters changed since the base", async () => {
    const live = s.exports.descriptor(R).nbdUri;
    await io(live, "write -P 0x11 0 1M");
    await s.fleece.mark(R, "stow-bk-1", undefined, undefined);
    expect((await s.fleece.bitmaps(R)).map((b) => [b.name, b.recording])).toEqual([["stow-bk-1", true]]);
    await io(live, "write -P 0x22 4M 64k");

    // The next backup's instant: a new bitmap, the base frozen, the fleece started.
    await s.fleece.prepare(R, "b2", root);
    await s.fleece.mark(R, "stow-bk-2", "stow-bk-1", "b2");
    await io(live, "write -P 0x33 4M 64k", "write -P 0x44 8M 4k");
    const uri = await s.fleece.export("b2", "stow-bk-1");
    expect(await dirtyRanges(uri, "stow-bk-1")).toEqual([{ offset: 4 * MiB, length: 64 * 1024 }]);
    // Both contexts in one exchange: the bitmap's, and the allocation, which covers the whole export.
    const { size, extents } = await nbdExtents(uri, ["qemu:dirty-bitmap:stow-bk-1", "base:allocation"]);
    expect(size).toBe(16 * MiB);
    expect(extents.get("qemu:dirty-bitmap:stow-bk-1")!.filter((e) => e.flags & 1)).toEqual([{ offset: 4 * MiB, length: 64 * 1024, flags: 1 }]);
    const alloc = extents.get("base:allocation")!;
    expect(alloc.reduce((n, e) => (expect(e.offset).toBe(n), n + e.length), 0)).toBe(16 * MiB);
    const isData = (at: number) => alloc.some((e) => e.offset <= at && at < e.offset + e.length && !(e.flags & (STATE_HOLE | STATE_ZERO)));
    for (const at of [0, MiB - 1, 4 * MiB, 4 * MiB + 65535]) expect(isData(at)).toBe(true);
    for (const at of [2 * MiB, 12 * MiB]) expect(isData(at)).toBe(false);
    await io(uri, "read -P 0x22 4M 64k", "read -P 0x11 0 1M", "read -P 0 8M 4k");
    await io(live, "read -P 0x33 4M 64k", "read -P 0x44 8M 4k");

    await s.fleece.release("b2", root);
    expect((await readdir(root)).some((f) => f.startsWith("fleece-"))).toBe(false);
    await s.fleece.dropBitmap(R, "stow-bk-1");
    const after = await s.fleece.bitmaps(R);
    expect(after.map((b) => b.name)).toEqual(["stow-bk-2"]);
    // Two 64 KiB clusters written since the instant.
    expect(after[0]!.count).toBe(128 * 1024);
    // Release again: nothing left to do.
    await s.fleece.release("b2", root);
  });

  it("folds a failed backup's bitmap back into its base", async () => {
    const live = s.exports.descriptor(R).nbdUri;
    await s.fleece.mark(R, "stow-bk-1", undefined, undefined);
    await io(live, "write -P 0x55 0 64k");
    await s.fleece.prepare(R, "b2", root);
    await s.fleece.mark(R, "stow-bk-2", "stow-bk-1", "b2");
    await io(live, "write -P 0x66 1M 64k");
    await s.fleece.release("b2", root);
    await s.fleece.undo(R, "stow-bk-2", "stow-bk-1");
    const b = await s.fleece.bitmaps(R);
    expect(b.map((x) => [x.name, x.recording, x.count])).toEqual([["stow-bk-1", true, 128 * 1024]]);
    expect(existsSync(join(root, "fleece-b2.qcow2"))).toBe(false);
  });
});
