// Small file operations (pools, the chunk store): idempotent unlink, and fsync of files
// and directories so that a create or delete survives a host crash.
import { lstat, open, unlink } from "node:fs/promises";

export async function unlinkIfExists(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** Writes `data` to `path` (`flag` "wx": only if absent) and fsyncs it before it returns. */
export async function writeFileSynced(path: string, data: Uint8Array, flag = "w"): Promise<void> {
  const fh = await open(path, flag);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function syncFile(path: string): Promise<void> {
  const fh = await open(path, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Makes a rename or unlink in the directory durable. */
export async function syncDir(path: string): Promise<void> {
  await syncFile(path);
}
