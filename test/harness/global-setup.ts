// Integration tests run the compiled processes: build once before them.
import { execa } from "execa";

export default async function setup(): Promise<void> {
  await execa("npx", ["tsc", "-p", "tsconfig.json"], { cwd: new URL("../../", import.meta.url).pathname, stdio: "inherit" });
}
