// The start-up bundle end to end: the real build step (esbuild, code cache) on a small
// stand-in for dist/cli/main.js, and the real bin/stowctl.js choosing between the bundle
// and the compiled modules. The stand-in's run() says which of the two it was loaded from.
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildBundle } from "./build-bundle.js";

const BIN = fileURLToPath(new URL("../bin/stowctl.js", import.meta.url));

const MAIN = `import { greeting } from "./greeting.js";
export async function run(argv, deps) {
  const from = new Error().stack.split("\\n")[1].includes("/bundle/stowctl.js") ? "bundle" : "modules";
  const out = deps ? deps.io.out : (t) => process.stdout.write(t);
  out(from + " " + greeting + " " + argv.join(" ") + "\\n");
  return argv[0] === "fail" ? 3 : 0;
}
`;

describe("bin/stowctl.js and the bundle of dist/cli/main.js", () => {
  let root: string;
  let dist: string;
  const stowctl = (...args: string[]) => {
    const r = spawnSync(process.execPath, [join(root, "bin", "stowctl.js"), ...args], { encoding: "utf8" });
    return { code: r.status, out: r.stdout, err: r.stderr };
  };
  const greet = (word: string) => writeFileSync(join(dist, "cli", "greeting.js"), `export const greeting = "${word}";\n`);

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), "stowctl-bundle-test-"));
    dist = join(root, "dist");
    mkdirSync(join(root, "bin"));
    copyFileSync(BIN, join(root, "bin", "stowctl.js"));
    writeFileSync(join(root, "package.json"), '{"type": "module"}\n');
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it("says how to build when nothing is built", () => {
    expect(stowctl("a")).toEqual({ code: 1, out: "", err: "stowctl is not built: run 'npm run build' in the repository\n" });
  });

  it("runs the compiled modules while there is no bundle", () => {
    mkdirSync(join(dist, "cli"), { recursive: true });
    writeFileSync(join(dist, "cli", "main.js"), MAIN);
    greet("hello");
    expect(stowctl("a", "b")).toEqual({ code: 0, out: "modules hello a b\n", err: "" });
    expect(stowctl("fail").code).toBe(3);
  });

  it("runs the bundle once built, with the exit code of run()", async () => {
    const summary = await buildBundle(dist);
    expect(summary.files).toBe(2);
    expect(stowctl("a", "b")).toEqual({ code: 0, out: "bundle hello a b\n", err: "" });
    expect(stowctl("fail")).toEqual({ code: 3, out: "bundle hello fail\n", err: "" });
  });

  it("makes a code cache that V8 accepts for the bundle", () => {
    const inputs = JSON.parse(readFileSync(join(dist, "bundle", "stowctl.inputs.json"), "utf8")) as { buildId: string };
    const cache = readFileSync(join(dist, "bundle", "stowctl.cache"));
    expect(cache.subarray(0, 36).toString("latin1")).toBe(inputs.buildId);
    // A plain node, as bin/stowctl.js runs: the test runner's own flags could differ.
    const check = `const fs = require("node:fs"), vm = require("node:vm");
const [file, cacheFile] = process.argv.slice(1);
const s = new vm.Script(fs.readFileSync(file, "utf8"), { filename: file, cachedData: fs.readFileSync(cacheFile).subarray(36) });
process.stdout.write(String(s.cachedDataRejected));`;
    const r = spawnSync(process.execPath, ["-e", check, join(dist, "bundle", "stowctl.js"), join(dist, "bundle", "stowctl.cache")], { encoding: "utf8" });
    expect(r.stdout).toBe("false");
  });

  it("keeps the bundle when tsc rewrites its files unchanged", () => {
    const later = new Date(Date.now() + 60_000);
    utimesSync(join(dist, "cli", "main.js"), later, later);
    utimesSync(join(dist, "cli", "greeting.js"), later, later);
    expect(stowctl("a").out).toBe("bundle hello a\n");
  });

  it("falls back to the compiled modules when one of them changed, and bundles them again on the next build", async () => {
    greet("bye");
    expect(stowctl("a").out).toBe("modules bye a\n");
    await buildBundle(dist);
    expect(stowctl("a").out).toBe("bundle bye a\n");
    greet("hey"); // the same size: only the hash tells
    expect(stowctl("a").out).toBe("modules hey a\n");
  });

  it("does not use a bundle another build's file list does not describe", async () => {
    await buildBundle(dist);
    expect(stowctl("a").out).toBe("bundle hey a\n");
    const file = join(dist, "bundle", "stowctl.inputs.json");
    const inputs = JSON.parse(readFileSync(file, "utf8")) as { buildId: string };
    writeFileSync(file, JSON.stringify({ ...inputs, buildId: "00000000-0000-0000-0000-000000000000" }));
    expect(stowctl("a").out).toBe("modules hey a\n");
  });
});
