// Fault injection for crash tests. STOWAGE_FAULTS is a comma-separated list of
// point names, each optionally narrowed to one object as NAME@OBJECT; reaching
// a listed point kills the process at once with SIGKILL, exactly as a power cut
// or OOM kill would. Unset in production: a no-op.
const armed = new Set((process.env.STOWAGE_FAULTS ?? "").split(",").filter(Boolean));

export function faultPoint(name: string, object = ""): void {
  if (armed.size === 0 || !(armed.has(name) || armed.has(`${name}@${object}`))) return;
  process.stderr.write(`fault point ${name}@${object} reached: killing process\n`);
  process.kill(process.pid, "SIGKILL");
}
