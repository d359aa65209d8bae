#!/usr/bin/env node
// The stowctl command. The CLI itself is TypeScript compiled to dist/ (cli/main.ts).
// `npm run build` also bundles it into one script with a V8 code cache
// (cli/build-bundle.ts), which starts in well under half the time that importing
// dist/cli/main.js and its ~140 modules takes. The bundle is used only while the
// compiled files it was made of are unchanged; otherwise (tsc run on its own since,
// with changes) stowctl runs the modules tsc wrote.
import { createHash } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Script } from "node:vm";

const dist = new URL("../dist/", import.meta.url);
const entry = new URL("cli/main.js", dist);
const bundle = fileURLToPath(new URL("bundle/stowctl.js", dist));
/** The cache file starts with the build id, a UUID; the bundle's last line is "//stowctl-build ID". */
const BUILD_ID_BYTES = 36;

/** The bundle's text if it was built from the compiled files as they are now. */
function currentBundle() {
  let inputs;
  try {
    inputs = JSON.parse(readFileSync(new URL("bundle/stowctl.inputs.json", dist), "utf8"));
    for (const f of inputs.files) {
      const file = new URL(f.path, dist);
      const st = statSync(file);
      if (st.size !== f.size) return undefined;
      if (st.mtimeMs === f.mtimeMs) continue;
      // Rewritten since (tsc rewrites every file): current if the contents are the same.
      if (createHash("sha256").update(readFileSync(file)).digest("hex") !== f.sha256) return undefined;
    }
    const text = readFileSync(bundle, "utf8");
    return text.endsWith(`//stowctl-build ${inputs.buildId}`) ? { text, buildId: inputs.buildId } : undefined;
  } catch {
    return undefined; // no bundle, or a file it was made of is gone
  }
}

/** The code cache made for this build, if there is one. */
function cacheFor(buildId) {
  try {
    const data = readFileSync(new URL("bundle/stowctl.cache", dist));
    return data.subarray(0, BUILD_ID_BYTES).toString("latin1") === buildId ? data.subarray(BUILD_ID_BYTES) : undefined;
  } catch {
    return undefined;
  }
}

function loadBundle({ text, buildId }) {
  const script = new Script(text, { filename: bundle, cachedData: cacheFor(buildId) });
  const module = { exports: {} };
  script.runInThisContext()(module.exports, createRequire(bundle), module, bundle, dirname(bundle));
  return module.exports.run;
}

try {
  statSync(entry);
} catch {
  process.stderr.write("stowctl is not built: run 'npm run build' in the repository\n");
  process.exit(1);
}
const current = currentBundle();
const run = current ? loadBundle(current) : (await import(entry.href)).run;
const code = await run(process.argv.slice(2));
// Let piped output drain before exiting.
process.stdout.write("", () => process.exit(code));
