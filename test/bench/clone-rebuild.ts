// How a rebuilt replica of a linked clone turns out, by the two copy paths of
// DirPool.copyFrom, in the same run, alternating:
//   flattened  `qemu-img convert -n -t none` from the source replica's NBD export
//              (what every rebuild did before; still the path of other images);
//   top layer  node-agent/top-layer-copy.ts: only what the source holds over its
//              template, written through qemu-nbd.
// The source is a linked clone over a template with --template-mib of data, with
// --clone-mib of its own writes (half over the template's data), exported by a
// qemu-storage-daemon over TCP as an agent exports it; each copy goes into a new
// linked clone over a second copy of the template (another node's, in life).
// Printed per path: median seconds and the new image's bytes on disk.
//
//   npm run build && node dist/test/bench/clone-rebuild.js [--reps N] [--template-mib N] [--clone-mib N]
import { copyFile, chmod, mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "../../lib/exec.js";
import { freePort } from "../../lib/free-port.js";
import { DirPool } from "../../node-agent/dir-pool.js";
import { copyImage } from "../../node-agent/qemu-img.js";
import { QsdSupervisor } from "../../node-agent/qsd/supervisor.js";
import { median } from "./replication-common.js";

const MiB = 2 ** 20;

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  if (i < 0) return fallback;
  const v = Number(process.argv[i + 1]);
  if (!Number.isSafeInteger(v) || v <= 0) throw new Error(`${name} takes a positive integer`);
  return v;
}

const REPS = option("--reps", 5);
const TEMPLATE_MIB = option("--template-mib", 200);
const CLONE_MIB = option("--clone-mib", 4);
const SIZE = 1024 * MiB;

async function qemuIo(path: string, cmds: string[]): Promise<void> {
  await run("qemu-io", ["-f", "qcow2", ...cmds.flatMap((c) => ["-c", c]), path], { timeoutMs: 600_000 });
}

async function main(): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), "stowage-bench-clone-rebuild-"));
  const poolDir = join(root, "pool");
  await mkdir(join(poolDir, "templates"), { recursive: true });
  const qsd = new QsdSupervisor({ dataDir: join(root, "qsd"), nbd: { type: "tcp", host: "127.0.0.1", port: await freePort("127.0.0.1") } });
  try {
    const pool = new DirPool({ name: "default", type: "dir", path: poolDir, overcommitRatio: 2 });
    const t1 = join(poolDir, "templates", "copy1.qcow2");
    const t2 = join(poolDir, "templates", "copy2.qcow2");
    await run("qemu-img", ["create", "-q", "-f", "qcow2", t1, String(SIZE)]);
    await qemuIo(t1, [`write -P 0x5a 0 ${TEMPLATE_MIB}M`]);
    await copyFile(t1, t2);
    for (const t of [t1, t2]) await chmod(t, 0o444);
    // The clone's own writes: 256 KiB pieces, every other one over the template's data.
    const source = join(poolDir, "lc.r-bbbb00000001.qcow2");
    await run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", t1, "-F", "qcow2", source, String(SIZE)]);
    const pieces = (CLONE_MIB * MiB) / (256 * 1024);
    const writes = Array.from({ length: pieces }, (_, i) => {
      const inTemplate = i % 2 === 0;
      const span = inTemplate ? TEMPLATE_MIB * MiB : SIZE - TEMPLATE_MIB * MiB;
      const at = (inTemplate ? 0 : TEMPLATE_MIB * MiB) + Math.floor(((i * 7919) % pieces) * (span / pieces) / (256 * 1024)) * 256 * 1024;
      return `write -P ${1 + (i % 200)} ${at} 256k`;
    });
    await qemuIo(source, writes);
    await qsd.ensureRunning([]);
    const uri = (await qsd.exports.ensureExport({ replicaId: "r-bbbb00000001", path: source, format: "qcow2", writable: true })).nbdUri;
    const sourceDisk = (await stat(source)).blocks * 512;

    const figures: Record<"flattened" | "top layer", { ms: number[]; disk: number[] }> = { flattened: { ms: [], disk: [] }, "top layer": { ms: [], disk: [] } };
    for (let rep = 0; rep < REPS; rep++) {
      const order: ("flattened" | "top layer")[] = rep % 2 ? ["top layer", "flattened"] : ["flattened", "top layer"];
      for (const how of order) {
        const id = `r-cccc0000${String(rep).padStart(2, "0")}${how === "flattened" ? "01" : "02"}`;
        const made = await pool.ensureReplica({ id, volume: "lc", sizeBytes: SIZE, format: "qcow2", preallocation: "off", backing: { path: t2 } });
        await run("sync", []);
        const t0 = performance.now();
        if (how === "flattened") await copyImage({ sourceUri: uri, targetPath: made.replica.path, targetFormat: "qcow2", rateLimitBytes: 0 });
        else await pool.copyFrom(id, uri, 0);
        const ms = performance.now() - t0;
        const cmp = await run("qemu-img", ["compare", "-U", "-q", "-f", "qcow2", "-F", "qcow2", source, made.replica.path], { timeoutMs: 600_000 }).then(
          () => true,
          () => false,
        );
        if (!cmp) throw new Error(`${how}: the copy differs from the source`);
        figures[how].ms.push(ms);
        figures[how].disk.push((await stat(made.replica.path)).blocks * 512);
        await pool.deleteReplica(id);
        process.stderr.write(`[clone-rebuild] rep ${rep + 1}/${REPS} ${how}: ${(ms / 1000).toFixed(2)} s\n`);
      }
    }
    console.log(`linked clone of 1 GiB over a template with ${TEMPLATE_MIB} MiB of data, ${CLONE_MIB} MiB of its own writes (source replica ${(sourceDisk / MiB).toFixed(1)} MiB on disk); ${REPS} reps`);
    for (const [how, f] of Object.entries(figures)) {
      console.log(`  ${how.padEnd(10)} median ${(median(f.ms) / 1000).toFixed(2)} s (runs ${f.ms.map((m) => (m / 1000).toFixed(2)).join(", ")}), new image ${(median(f.disk) / MiB).toFixed(1)} MiB on disk`);
    }
  } finally {
    await qsd.stop().catch(() => undefined);
    await rm(root, { recursive: true, force: true });
  }
}

await main();
