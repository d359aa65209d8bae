// Which controllers to talk to, and a client that finds the leader among them.
import { join } from "node:path";
import { errorMessage, NotLeaderError, StowageError, UnavailableError } from "../lib/errors.js";
import { Channel, type CallOptions, type PromiseClient, type TransportSecurity } from "../lib/grpc.js";
import { splitAddresses, UsageError } from "./flags.js";

export const NO_CONTROLLER_HINT = "start a local cluster with 'npm run cluster:up' or pass --controller HOST:PORT";

export interface AddressSources {
  /** Value of --controller, if given. */
  flag?: string;
  env: Record<string, string | undefined>;
  /** Contents of a file, or undefined when it does not exist. */
  readFile: (path: string) => string | undefined;
  /** Fallback when $HOME is unset. */
  homeDir?: string;
}

export interface ResolvedControllers {
  addresses: string[];
  /** Where they came from, for messages: "--controller", "STOWAGE_CONTROLLER" or a file path. */
  source: string;
}

/** The file `npm run cluster:up` writes: $STOWAGE_CONFIG, else $XDG_CONFIG_HOME or ~/.config + stowage/cluster.json. */
export function clusterFilePath(env: Record<string, string | undefined>, homeDir = ""): string {
  if (env.STOWAGE_CONFIG) return env.STOWAGE_CONFIG;
  const configHome = env.XDG_CONFIG_HOME || join(env.HOME || homeDir, ".config");
  return join(configHome, "stowage", "cluster.json");
}

/** --controller, then $STOWAGE_CONTROLLER, then the local cluster file. */
export function resolveControllers(src: AddressSources): ResolvedControllers {
  if (src.flag !== undefined) {
    const addresses = splitAddresses(src.flag);
    if (addresses.length === 0) throw new UsageError("option '--controller': expected HOST:PORT[,HOST:PORT...]");
    return { addresses, source: "--controller" };
  }
  const fromEnv = splitAddresses(src.env.STOWAGE_CONTROLLER ?? "");
  if (fromEnv.length > 0) return { addresses: fromEnv, source: "STOWAGE_CONTROLLER" };

  const path = clusterFilePath(src.env, src.homeDir);
  const text = src.readFile(path);
  if (text === undefined) {
    throw new StowageError("no controller address: no --controller, no STOWAGE_CONTROLLER and no " + path, {
      hint: NO_CONTROLLER_HINT,
    });
  }
  const addresses = parseClusterFile(path, text);
  if (addresses.length === 0) throw new StowageError(`${path} lists no controllers`, { hint: NO_CONTROLLER_HINT });
  return { addresses, source: path };
}

/** `{"controllers": ["127.0.0.1:7400", ...]}` */
export function parseClusterFile(path: string, text: string): string[] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new StowageError(`cannot parse ${path}: ${errorMessage(err)}`, {
      hint: `fix or remove the file, or pass --controller HOST:PORT`,
    });
  }
  const list = (data as { controllers?: unknown } | null)?.controllers;
  if (!Array.isArray(list) || !list.every((a) => typeof a === "string")) {
    throw new StowageError(`${path}: expected {"controllers": ["HOST:PORT", ...]}`, {
      hint: `fix or remove the file, or pass --controller HOST:PORT`,
    });
  }
  return list.flatMap(splitAddresses);
}

type ServiceDef = Parameters<Channel["service"]>[0];

/** A controller we cannot use right now; another address may answer. */
function isPassOn(err: unknown): boolean {
  return err instanceof UnavailableError || err instanceof NotLeaderError;
}

/**
 * Clients over a list of controller instances. Each call tries the addresses in
 * order: a follower's NotLeaderError naming the leader is followed once, an
 * unreachable instance passes the call to the next address. The address that
 * answered moves to the front, so later calls (polling) go straight to it.
 */
export class Controllers {
  private order: string[];
  private readonly channels = new Map<string, Channel>();

  constructor(
    addresses: string[],
    private readonly security: TransportSecurity,
    private readonly timeoutMs: number,
    /** Where the addresses came from, for the hint when none answers. */
    private readonly source = "--controller",
  ) {
    this.order = [...new Set(addresses)];
  }

  /** The addresses in the order the next call will try them. */
  get addresses(): readonly string[] {
    return this.order;
  }

  service<D extends ServiceDef>(def: D): PromiseClient<D> {
    const out: Record<string, unknown> = {};
    for (const method of Object.keys(def)) {
      out[method] = (request: unknown, options: CallOptions = {}) =>
        this.invoke((ch) => {
          const client = ch.service(def) as unknown as Record<string, (r: unknown, o: CallOptions) => Promise<unknown>>;
          return client[method]!(request, { timeoutMs: this.timeoutMs, ...options });
        });
    }
    return out as PromiseClient<D>;
  }

  close(): void {
    for (const ch of this.channels.values()) ch.close();
    this.channels.clear();
  }

  private async invoke<T>(call: (ch: Channel) => Promise<T>): Promise<T> {
    let last: unknown = new UnavailableError("no controller address", { hint: NO_CONTROLLER_HINT });
    for (const address of [...this.order]) {
      try {
        return await this.callOn(address, call);
      } catch (err) {
        if (!isPassOn(err)) throw err;
        last = err;
        if (!(err instanceof NotLeaderError) || !err.leader || err.leader === address) continue;
      }
      const leader = (last as NotLeaderError).leader;
      try {
        return await this.callOn(leader, call);
      } catch (err) {
        if (!isPassOn(err)) throw err;
        last = err;
      }
    }
    throw last instanceof UnavailableError ? this.unreachable(last) : last;
  }

  /** The last error, said for the whole list and with a hint about where the list came from. */
  private unreachable(last: UnavailableError): UnavailableError {
    const detail = last.message.replace(/\s*Resolution note:\s*$/, "");
    return new UnavailableError(`cannot reach a controller at ${this.order.join(", ")}: ${detail}`, {
      hint: `is the controller running? the addresses came from ${this.source}; ${NO_CONTROLLER_HINT}`,
      cause: last,
    });
  }

  private async callOn<T>(address: string, call: (ch: Channel) => Promise<T>): Promise<T> {
    let ch = this.channels.get(address);
    if (!ch) {
      ch = new Channel(address, this.security);
      this.channels.set(address, ch);
    }
    const result = await call(ch);
    this.order = [address, ...this.order.filter((a) => a !== address)];
    return result;
  }
}
