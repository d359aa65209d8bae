#!/usr/bin/env node
// The stowctl command. The CLI itself is TypeScript compiled to dist/ (cli/main.ts).
import { existsSync } from "node:fs";

const entry = new URL("../dist/cli/main.js", import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write("stowctl is not built: run 'npm run build' in the repository\n");
  process.exit(1);
}
const { run } = await import(entry.href);
const code = await run(process.argv.slice(2));
// Let piped output drain before exiting.
process.stdout.write("", () => process.exit(code));
