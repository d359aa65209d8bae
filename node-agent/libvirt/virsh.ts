// This node's libvirtd, driven through virsh (the binding Stowage would use has
// no migration call; see node-agent/libvirt/README.md). Every call goes through
// lib/exec.ts, with virsh's own error text kept in the thrown error.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { NotFoundError, StowageError } from "../../lib/errors.js";
import { ExecError, run, watchLines, type Watcher } from "../../lib/exec.js";
import { parseDomainDisks, type ParsedDisk } from "../../lib/libvirt-xml.js";

export interface DomainState {
  name: string;
  uuid: string;
  state: string;
  persistent: boolean;
  disks: ParsedDisk[];
}

export interface JobInfo {
  /** "None", "Unbounded", "Completed", "Failed", "Cancelled", ... */
  type: string;
  operation: string;
  elapsedMs: number;
  memoryTotalBytes: number;
  memoryProcessedBytes: number;
  memoryRemainingBytes: number;
  downtimeMs: number;
}

const UNITS: Record<string, number> = { B: 1, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 };

/** The "Key:   value" lines virsh prints (dominfo, domjobinfo), keys trimmed. */
export function virshFields(text: string): Map<string, string> {
  const f = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = /^([^:]+):\s+(.*?)\s*$/.exec(line);
    if (m) f.set(m[1]!.trim(), m[2]!);
  }
  return f;
}

/** "608 ms" -> 608; undefined when the value is not in that form. */
export function virshMs(value: string | undefined): number | undefined {
  const m = /^(\d+)\s*ms$/.exec(value ?? "");
  return m ? Number(m[1]) : undefined;
}

/** "63.953 MiB" -> bytes (not rounded); undefined when the value is not a size. */
export function virshBytes(value: string | undefined): number | undefined {
  const m = /^([\d.]+)\s*(B|KiB|MiB|GiB|TiB)$/.exec(value ?? "");
  return m ? Number(m[1]) * UNITS[m[2]!]! : undefined;
}

/** Parses `virsh domjobinfo` output ("Memory processed: 50.000 MiB", "Time elapsed: 12 ms"). */
export function parseJobInfo(text: string): JobInfo {
  const f = virshFields(text);
  const ms = (k: string) => virshMs(f.get(k)) ?? 0;
  const bytes = (k: string) => Math.round(virshBytes(f.get(k)) ?? 0);
  return {
    type: f.get("Job type") ?? "None",
    operation: f.get("Operation") ?? "",
    elapsedMs: ms("Time elapsed"),
    memoryTotalBytes: bytes("Memory total"),
    memoryProcessedBytes: bytes("Memory processed"),
    memoryRemainingBytes: bytes("Memory remaining"),
    downtimeMs: ms("Total downtime"),
  };
}

/** Fields of `virsh dominfo`. */
export function parseDomInfo(text: string): { uuid: string; state: string; persistent: boolean } {
  const f = virshFields(text);
  return { uuid: f.get("UUID") ?? "", state: f.get("State") ?? "", persistent: f.get("Persistent") === "yes" };
}

export interface LifecycleEvent {
  domain: string;
  /** "Started", "Suspended", "Resumed", "Stopped", ... */
  event: string;
  /** Why: "Migrated", "Booted", "Destroyed", ... */
  detail: string;
}

/** One line of `virsh event --event lifecycle --loop`: "event 'lifecycle' for domain 'web1': Resumed Migrated". */
export function parseLifecycleEvent(line: string): LifecycleEvent | undefined {
  const m = /^event 'lifecycle' for domain '(.+)': (\S+) (\S+)$/.exec(line.trim());
  return m ? { domain: m[1]!, event: m[2]!, detail: m[3]! } : undefined;
}

const NOT_FOUND = /Domain not found|failed to get domain/;

export class Virsh {
  constructor(readonly uri: string) {}

  private async virsh(domain: string, args: string[], timeoutMs = 60_000): Promise<string> {
    try {
      return (await run("virsh", ["-q", "-c", this.uri, ...args], { timeoutMs })).stdout;
    } catch (err) {
      if (err instanceof ExecError) {
        const text = err.stderr.replace(/^error: /gm, "").trim().split("\n").filter(Boolean).join("; ");
        if (NOT_FOUND.test(err.stderr)) throw this.notFound(domain, err);
        throw new StowageError(`libvirt (${this.uri}): ${text || err.message}`, { cause: err });
      }
      throw err;
    }
  }

  /** The error for a domain this libvirtd does not have. */
  notFound(domain: string, cause?: unknown): NotFoundError {
    return new NotFoundError("domain", domain, { hint: `'virsh -c ${this.uri} list --all' shows the domains of this node`, cause });
  }

  /** State and persistence only (one virsh call); undefined when there is no such domain. */
  async info(name: string): Promise<{ uuid: string; state: string; persistent: boolean } | undefined> {
    try {
      return parseDomInfo(await this.virsh(name, ["dominfo", name]));
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
  }

  /** The domain, or undefined when this libvirtd has none of that name. */
  async domain(name: string): Promise<DomainState | undefined> {
    // One virsh process and connection for both (a GetDomain is on every VM command's
    // path): virsh runs "A; B" in order and exits with B's status.
    if (/^[\w.+-]+$/.test(name)) {
      let out: string;
      try {
        out = await this.virsh(name, [`dominfo ${name}; dumpxml ${name}`]);
      } catch (err) {
        if (err instanceof NotFoundError) return undefined; // gone, or gone in between (migrated away)
        throw err;
      }
      const at = out.indexOf("<domain");
      const info = at > 0 ? parseDomInfo(out.slice(0, at)) : undefined;
      if (info?.state) return { name, ...info, disks: parseDomainDisks(out.slice(at)) };
    }
    const info = await this.info(name);
    if (!info) return undefined;
    try {
      return { name, ...info, disks: parseDomainDisks(await this.virsh(name, ["dumpxml", name])) };
    } catch (err) {
      if (err instanceof NotFoundError) return undefined; // gone in between (migrated away)
      throw err;
    }
  }

  private async withFile<T>(content: string, fn: (file: string) => Promise<T>): Promise<T> {
    const dir = await mkdtemp(join(tmpdir(), "stowage-virsh-"));
    try {
      const file = join(dir, "device.xml");
      await writeFile(file, content);
      return await fn(file);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Hot-plugs a device; a persistent domain also keeps it in its definition. */
  async attachDevice(domain: string, xml: string, persistent: boolean): Promise<void> {
    await this.withFile(xml, (file) => this.virsh(domain, ["attach-device", domain, file, persistent ? "--persistent" : "--live"]));
  }

  /** Asks the guest to release a disk (the guest must acknowledge the unplug). */
  async detachDisk(domain: string, target: string, persistent: boolean): Promise<void> {
    await this.virsh(domain, ["detach-disk", domain, target, persistent ? "--persistent" : "--live"]);
  }

  /**
   * Passes every domain lifecycle event of this daemon to `onEvent` for `seconds` or
   * until stop() (one `virsh event --loop`). virsh ends by itself after `seconds`, even
   * if this process dies; `exited` then resolves.
   */
  watchLifecycle(onEvent: (e: LifecycleEvent) => void, seconds: number): Watcher {
    let timedOut = false;
    const w = watchLines("virsh", ["-q", "-c", this.uri, "event", "--event", "lifecycle", "--loop", "--timeout", String(seconds)], (line) => {
      if (line.trim() === "event loop timed out") timedOut = true;
      const e = parseLifecycleEvent(line);
      if (e) onEvent(e);
    }, { timeoutMs: seconds * 1000 + 10_000 });
    // virsh exits 1 after its timeout: that is the normal end here.
    return { exited: w.exited.catch((err) => (timedOut ? undefined : Promise.reject(err))), stop: w.stop };
  }

  async jobInfo(domain: string, completed = false): Promise<JobInfo> {
    return parseJobInfo(await this.virsh(domain, ["domjobinfo", domain, ...(completed ? ["--completed"] : [])], 10_000));
  }

  /**
   * Live-migrates `domain` to the libvirtd at `destUri`; the destination QEMU
   * listens for the stream on `destHost`. A persistent domain's definition moves along.
   */
  async migrate(domain: string, destUri: string, destHost: string, persistent: boolean, timeoutMs: number): Promise<void> {
    const host = destHost.includes(":") ? `[${destHost}]` : destHost;
    await this.virsh(
      domain,
      [
        "migrate",
        "--live",
        ...(persistent ? ["--persistent", "--undefinesource"] : []),
        domain,
        destUri,
        "--migrateuri",
        `tcp://${host}`,
        "--listen-address",
        destHost,
      ],
      timeoutMs,
    );
  }
}
