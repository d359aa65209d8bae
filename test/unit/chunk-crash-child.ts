// Child process of chunk-crash.test.ts: stores a generated image and reports how
// much of it it has fed to the store, so the parent can SIGKILL it mid-write.
// Configured by environment: CHUNK_STORE, CHUNK_NAME, CHUNK_MIB, CHUNK_SEED, and
// CHUNK_BASE for an incremental write on top of that manifest (the image's 4 MiB
// to 8 MiB and everything past the base count as changed, and 64 KiB at 1 MiB).
// STOWAGE_FAULTS arms the store's fault points, lib/faults.ts.
import { ChunkStore } from "../../lib/chunks/index.js";
import { imageBytes } from "./chunk-fixtures.js";

const MiB = 1 << 20;
const env = (k: string) => process.env[k] ?? "";

async function* source(mib: number, seed: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < mib; i += 4) {
    yield imageBytes(4 * MiB, seed + i);
    process.stdout.write(`fed ${i + 4}\n`);
  }
}

const store = await ChunkStore.open(env("CHUNK_STORE"));
if (env("CHUNK_BASE")) {
  const parts: Buffer[] = [];
  for await (const part of source(Number(env("CHUNK_MIB")), Number(env("CHUNK_SEED")))) parts.push(part);
  const img = Buffer.concat(parts);
  const changed = [
    { offset: MiB, length: 64 * 1024 },
    { offset: 4 * MiB, length: 4 * MiB },
  ];
  await store.writeIncremental(env("CHUNK_NAME"), env("CHUNK_BASE"), { size: img.length, changed, read: async (o, l) => img.subarray(o, o + l) });
} else await store.write(env("CHUNK_NAME"), source(Number(env("CHUNK_MIB")), Number(env("CHUNK_SEED"))));
process.stdout.write("committed\n");
