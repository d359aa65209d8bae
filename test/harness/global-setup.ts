// Integration tests run the compiled processes: build once before them, exactly as
// `npm run build` does (stowctl then runs from its bundle, as it does for operators).
import { execa } from "execa";

export default async function setup(): Promise<void> {
  await execa("npm", ["run", "build"], { cwd: new URL("../../", import.meta.url).pathname, stdio: "inherit" });
}
