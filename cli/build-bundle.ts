// Build step after tsc (`npm run build`): stowctl as one script plus a V8 code cache.
//
// Importing dist/cli/main.js means resolving, reading and compiling some 140 files (grpc-js,
// the generated API code, commander) before the first request: 115-140 ms of CPU on top of
// Node's own start (~70 ms), on every run. One bundled script, compiled from a code cache made
// here, needs 30-55 ms. bin/stowctl.js loads it when it is current, dist/cli/main.js otherwise.
//
// Written to dist/bundle/:
//   stowctl.js           a CommonJS module body wrapped in a function expression,
//                        `(function (exports, require, module, __filename, __dirname) {...})`,
//                        compiled with vm.Script: Node 20 has a code cache for vm scripts only,
//                        not for ES modules or require(). Its last line is `//stowctl-build ID`.
//   stowctl.cache        ID, then V8's code cache. V8 checks a cache against the source's
//                        length only; the ID ties the cache to this exact text.
//   stowctl.inputs.json  the compiled files (under dist/) the bundle holds, with the mtime, size
//                        and SHA-256 of what was bundled. The bundle is current while each file
//                        has that mtime and size, or at least still hashes the same (tsc rewrites
//                        every file, changed or not).
import { createHash, randomUUID } from "node:crypto";
import { mkdirSync, readFileSync, realpathSync, renameSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Script } from "node:vm";
import { build, type Plugin } from "esbuild";
import type { CliDeps } from "./context.js";
import type { run as runCli } from "./main.js";

/** Where tsc writes: the bundle is made of DIST/cli/main.js and goes to DIST/bundle/. */
const DIST = join(dirname(fileURLToPath(import.meta.url)), "..");

const WRAPPER_HEAD = "(function (exports, require, module, __filename, __dirname) {";
const WRAPPER_TAIL = "\n})";
const BUILD_ID_MARK = "\n//stowctl-build ";
/** Length of a build id (a UUID), in ASCII bytes: bin/stowctl.js reads that many from the cache file. */
const BUILD_ID_BYTES = 36;

/** A compiled file the bundle holds: path relative to dist/; mtime, size and SHA-256 (hex) of what was bundled. */
interface BundleInput {
  path: string;
  mtimeMs: number;
  size: number;
  sha256: string;
}

/** Records exactly the contents esbuild bundles from dist (dependencies under node_modules are not listed). */
function recordInputs(dist: string, inputs: BundleInput[]): Plugin {
  return {
    name: "record-dist-inputs",
    setup(b) {
      b.onLoad({ filter: /\.js$/ }, (args) => {
        if (!args.path.startsWith(dist + sep) || args.path.includes(`${sep}node_modules${sep}`)) return undefined;
        // stat before reading: a write in between leaves a newer mtime, so bin/stowctl.js hashes the file.
        const { mtimeMs } = statSync(args.path);
        const data = readFileSync(args.path);
        const path = relative(dist, args.path).split(sep).join("/");
        inputs.push({ path, mtimeMs, size: data.length, sha256: createHash("sha256").update(data).digest("hex") });
        return { contents: data, loader: "js" };
      });
    },
  };
}

/** The bundled program (the wrapped script text ending in its build id), and the files under dist it holds. */
async function bundle(dist: string, buildId: string): Promise<{ text: string; inputs: BundleInput[] }> {
  const inputs: BundleInput[] = [];
  const entry = join(dist, "cli", "main.js");
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    platform: "node",
    target: "node20",
    format: "cjs",
    write: false,
    logLevel: "warning",
    // grpc-js loads it only for channelz and ORCA, which stowctl never uses.
    external: ["@grpc/proto-loader"],
    // A vm script cannot import(): lazily loaded modules (execa) become lazily
    // initialised parts of the bundle instead.
    supported: { "dynamic-import": false },
    plugins: [recordInputs(dist, inputs)],
  });
  // A warning means code that would run differently bundled (import.meta, for one): stop here.
  if (result.warnings.length > 0) throw new Error(`esbuild warned ${result.warnings.length} time(s) bundling stowctl; see above`);
  if (!inputs.some((i) => i.path === "cli/main.js")) throw new Error(`${entry} is not among the bundle's inputs`);
  inputs.sort((a, b) => a.path.localeCompare(b.path));
  // The head stays on line 1 so that line numbers in stacks match esbuild's output.
  return { text: WRAPPER_HEAD + result.outputFiles[0]!.text + WRAPPER_TAIL + BUILD_ID_MARK + buildId, inputs };
}

/** Compiles and runs the bundle as bin/stowctl.js does, then runs `--help` so the cache covers the start-up path. */
async function codeCache(text: string, file: string): Promise<Buffer> {
  const script = new Script(text, { filename: file });
  const mod: { exports: { run?: typeof runCli } } = { exports: {} };
  script.runInThisContext()(mod.exports, createRequire(file), mod, file, dirname(file));
  const quiet: CliDeps = {
    io: { out: () => undefined, err: () => undefined },
    env: {},
    readFile: () => undefined,
    now: () => 0,
    sleep: async () => undefined,
    security: {},
  };
  const code = await mod.exports.run!(["--help"], quiet);
  if (code !== 0) throw new Error(`the bundled stowctl --help exited with ${code}`);
  return script.createCachedData();
}

/** Whole or not at all: a stowctl starting meanwhile never reads half a file. */
function writeAtomically(path: string, data: string | Buffer): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

export interface BundleSummary {
  /** Compiled files bundled (under dist; their dependencies not counted). */
  files: number;
  bytes: number;
  cacheBytes: number;
}

/** Bundles dist/cli/main.js into dist/bundle/ (stowctl.js, stowctl.cache, stowctl.inputs.json). */
export async function buildBundle(distDir: string): Promise<BundleSummary> {
  const dist = realpathSync(distDir);
  const dir = join(dist, "bundle");
  const file = join(dir, "stowctl.js");
  const buildId = randomUUID();
  if (buildId.length !== BUILD_ID_BYTES) throw new Error(`unexpected build id ${buildId}`);
  const { text, inputs } = await bundle(dist, buildId);
  mkdirSync(dir, { recursive: true });
  const cache = await codeCache(text, file);
  writeAtomically(join(dir, "stowctl.cache"), Buffer.concat([Buffer.from(buildId, "ascii"), cache]));
  writeAtomically(file, text);
  // Written last: without it (or with another build's) bin/stowctl.js does not use the bundle.
  writeAtomically(join(dir, "stowctl.inputs.json"), JSON.stringify({ buildId, files: inputs }));
  return { files: inputs.length, bytes: Buffer.byteLength(text), cacheBytes: cache.length };
}

/** Run as a script (the build step), not imported by a test. */
function isMainScript(): boolean {
  try {
    return import.meta.url === pathToFileURL(realpathSync(process.argv[1] ?? "")).href;
  } catch {
    return false;
  }
}

if (isMainScript()) {
  const s = await buildBundle(DIST);
  const kib = (n: number) => `${Math.round(n / 1024)} KiB`;
  process.stdout.write(`stowctl bundle: ${s.files} compiled files and their dependencies, ${kib(s.bytes)}; code cache ${kib(s.cacheBytes)}\n`);
}
