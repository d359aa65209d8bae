// The agent's version: the "version" of the repository's package.json, found
// from both the source tree (node-agent/) and the build (dist/node-agent/).
import { readFileSync } from "node:fs";

const FALLBACK_VERSION = "0.1.0";

export function agentVersion(): string {
  for (const rel of ["../package.json", "../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8"));
      if (pkg?.name === "stowage" && typeof pkg.version === "string") return pkg.version;
    } catch {
      // not at this level; try the next
    }
  }
  return FALLBACK_VERSION;
}
