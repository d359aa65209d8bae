// Child process of chunk-crash.test.ts: stores a generated image and reports how
// much of it it has fed to the store, so the parent can SIGKILL it mid-write.
// Configured by environment: CHUNK_STORE, CHUNK_NAME, CHUNK_MIB, CHUNK_SEED
// (STOWAGE_FAULTS arms the store's fault points, lib/faults.ts).
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
await store.write(env("CHUNK_NAME"), source(Number(env("CHUNK_MIB")), Number(env("CHUNK_SEED"))));
process.stdout.write("committed\n");
