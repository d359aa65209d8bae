// Reading, listing and deleting committed manifests.
import { readdir, readFile, unlink } from "node:fs/promises";
import { NotFoundError } from "../errors.js";
import { fsyncDir, type Layout, validManifestName } from "./layout.js";
import { Manifest } from "./manifest.js";

export async function listManifestNames(layout: Layout): Promise<string[]> {
  return (await readdir(layout.manifestsDir())).filter(validManifestName).sort();
}

export async function readManifest(layout: Layout, name: string): Promise<Manifest> {
  return Manifest.parse(await readManifestFile(layout, name), layout.manifest(name));
}

/** The manifest's file, unparsed. */
export async function readManifestFile(layout: Layout, name: string): Promise<Buffer> {
  if (!validManifestName(name)) throw new NotFoundError("manifest", name);
  try {
    return await readFile(layout.manifest(name));
  } catch (err: any) {
    if (err?.code === "ENOENT") throw new NotFoundError("manifest", name);
    throw err;
  }
}

/** Removes a manifest; its chunks go at the next GC if nothing else references them. */
export async function deleteManifest(layout: Layout, name: string): Promise<void> {
  try {
    if (!validManifestName(name)) throw Object.assign(new Error(), { code: "ENOENT" });
    await unlink(layout.manifest(name));
  } catch (err: any) {
    if (err?.code === "ENOENT") throw new NotFoundError("manifest", name);
    throw err;
  }
  await fsyncDir(layout.manifestsDir());
}
