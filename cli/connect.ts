// Which controllers to talk to, and a client that finds the leader among them.
import { join } from "node:path";
import { Controllers } from "../lib/controllers.js";
import { errorMessage, StowageError } from "../lib/errors.js";
import type { TransportSecurity } from "../lib/grpc.js";
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

/** stowctl's controllers: the shared leader-following client, with hints about where the addresses came from. */
export function cliControllers(addresses: string[], security: TransportSecurity, timeoutMs: number, source = "--controller"): Controllers {
  return new Controllers(addresses, {
    security,
    timeoutMs,
    noAddressHint: NO_CONTROLLER_HINT,
    unreachableHint: `is the controller running? the addresses came from ${source}; ${NO_CONTROLLER_HINT}`,
  });
}
