// The agent's configuration: a JSON file plus command-line overrides. Parsing
// and validation are pure (parseAgentFlags, parseAgentConfig); loadAgentConfig
// reads the file and creates the data and pool directories.
import { mkdir, readFile } from "node:fs/promises";
import { isAbsolute, normalize } from "node:path";
import { parseArgs } from "node:util";
import { errorMessage, InvalidArgumentError } from "../lib/errors.js";
import type { TransportSecurity } from "../lib/grpc.js";
import { validateName } from "../lib/names.js";
import { parseHostPort } from "./address.js";

export interface PoolConfig {
  name: string;
  type: "dir";
  path: string;
  /** Provisioned bytes may reach capacity * overcommitRatio. */
  overcommitRatio: number;
}

export interface AgentConfig {
  name: string;
  /** Address the gRPC server binds (host:port; port 0 picks a free one). */
  listen: string;
  /** Address the controllers use to reach this agent; defaults to `listen`. */
  advertise: string;
  controllers: string[];
  labels: { zone: string; rack: string };
  dataDir: string;
  pools: PoolConfig[];
  tls: TransportSecurity;
  /** Where volume frontends put their unix sockets: the same path on every node. */
  frontendDir: string;
  /** How this node's qemu-storage-daemon serves replica exports to frontends. */
  nbd: { type: "unix" } | { type: "tcp"; host: string; port: number };
  /** This node's libvirtd, for VM commands; undefined when VM support is off ("libvirt": false). */
  libvirt?: LibvirtConfig;
}

export interface LibvirtConfig {
  /** How the agent connects to its own libvirtd. */
  uri: string;
  /** How other nodes' agents reach it as a live-migration destination. */
  peerUri: string;
  /** Address this node's QEMU listens on for incoming migration streams. */
  migrationHost: string;
}

export const DEFAULT_FRONTEND_DIR = "/run/stowage/volumes";
export const DEFAULT_NBD_PORT = 10809;

/** Command-line flags; every one overrides the matching config file field. */
export interface AgentFlags {
  config?: string;
  name?: string;
  listen?: string;
  advertise?: string;
  controllers?: string;
  zone?: string;
  rack?: string;
  dataDir?: string;
  pool?: string[];
  help?: boolean;
}

export const AGENT_USAGE = `usage: stowage-agent [--config FILE] [flags]

Runs the Stowage node agent: serves the agent API and registers this node with the controllers.

flags (each overrides the config file):
  --config FILE          JSON config file
  --name NAME            node name
  --listen HOST:PORT     address of the agent's gRPC server (port 0: any free port)
  --advertise HOST:PORT  address the controllers use to reach the agent (default: --listen)
  --controllers A,B      controller addresses, comma-separated
  --zone ZONE            failure-domain label
  --rack RACK            failure-domain label
  --data-dir DIR         the agent's own directory (absolute)
  --pool NAME=PATH       a dir pool; repeatable; replaces the path of a pool with that name
  --help                 print this text
`;

const DEFAULT_OVERCOMMIT_RATIO = 1.0;
const CONFIG_KEYS = ["name", "listen", "advertise", "controllers", "labels", "dataDir", "pools", "tls", "frontendDir", "nbd", "libvirt"];
const POOL_KEYS = ["name", "type", "path", "overcommitRatio"];

/** Parses argv (without node and script); unknown flags are an InvalidArgumentError. */
export function parseAgentFlags(argv: string[]): AgentFlags {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: {
        config: { type: "string" },
        name: { type: "string" },
        listen: { type: "string" },
        advertise: { type: "string" },
        controllers: { type: "string" },
        zone: { type: "string" },
        rack: { type: "string" },
        "data-dir": { type: "string" },
        pool: { type: "string", multiple: true },
        help: { type: "boolean", short: "h" },
      },
    });
    if (positionals.length > 0) throw new Error(`unexpected argument "${positionals[0]}"`);
    const { "data-dir": dataDir, ...rest } = values;
    return dataDir === undefined ? rest : { ...rest, dataDir };
  } catch (err) {
    // parseArgs explains unknown options at length; the flag's name is what matters.
    const unknown = /^Unknown option '([^']+)'/.exec(errorMessage(err));
    const message = unknown ? `unknown flag ${unknown[1]}` : errorMessage(err);
    throw new InvalidArgumentError(message, { hint: "run 'stowage-agent --help' for the flags" });
  }
}

function fail(message: string, hint?: string): never {
  throw new InvalidArgumentError(`config: ${message}`, hint ? { hint } : {});
}

function str(value: unknown, field: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string") fail(`"${field}" must be a string`);
  return value;
}

function absolutePath(value: string | undefined, field: string): string {
  if (!value) fail(`"${field}" is required`);
  if (!isAbsolute(value)) fail(`"${field}" must be an absolute path, got "${value}"`);
  return normalize(value).replace(/(.)\/$/, "$1");
}

function object(value: unknown, field: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) fail(`"${field}" must be an object`);
  return value as Record<string, unknown>;
}

function noUnknownKeys(obj: Record<string, unknown>, allowed: string[], where: string): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) fail(`unknown key "${k}" in ${where}`, `known keys: ${allowed.join(", ")}`);
  }
}

function named(kind: string, name: string): string {
  try {
    validateName(kind, name);
  } catch (err) {
    fail(errorMessage(err), (err as InvalidArgumentError).hint);
  }
  return name;
}

function address(text: string, field: string, allowPortZero: boolean): string {
  try {
    parseHostPort(text, { allowPortZero });
  } catch (err) {
    fail(`"${field}": ${errorMessage(err)}`, "use HOST:PORT, for example 127.0.0.11:7500");
  }
  return text;
}

function parsePool(raw: unknown, i: number): PoolConfig {
  const p = object(raw, `pools[${i}]`);
  noUnknownKeys(p, POOL_KEYS, `pools[${i}]`);
  const name = named("pool", str(p["name"], `pools[${i}].name`) ?? "");
  const type = p["type"] ?? "dir";
  if (type !== "dir") fail(`pool "${name}" has type "${String(type)}"; only "dir" is supported`);
  const path = absolutePath(str(p["path"], `pools[${i}].path`), `pools[${i}].path`);
  const ratio = p["overcommitRatio"] ?? DEFAULT_OVERCOMMIT_RATIO;
  if (typeof ratio !== "number" || !Number.isFinite(ratio) || ratio <= 0) {
    fail(`pool "${name}": overcommitRatio must be a number > 0, got ${JSON.stringify(ratio)}`);
  }
  return { name, type: "dir", path, overcommitRatio: ratio };
}

/** Applies --pool NAME=PATH flags: a known name gets the new path, a new name is added. */
function applyPoolFlags(pools: unknown[], flags: string[]): unknown[] {
  const out = pools.map((p) => (typeof p === "object" && p !== null ? { ...p } : p)) as Record<string, unknown>[];
  for (const f of flags) {
    const eq = f.indexOf("=");
    if (eq <= 0) fail(`--pool "${f}" must look like NAME=PATH`);
    const name = f.slice(0, eq);
    const path = f.slice(eq + 1);
    const existing = out.find((p) => p?.["name"] === name);
    if (existing) existing["path"] = path;
    else out.push({ name, type: "dir", path });
  }
  return out;
}

function parseTls(raw: unknown): TransportSecurity {
  if (raw === undefined) return {};
  const t = object(raw, "tls");
  noUnknownKeys(t, ["caFile", "certFile", "keyFile"], "tls");
  const files = ["caFile", "certFile", "keyFile"].map((k) => str(t[k], `tls.${k}`));
  if (files.every((f) => f === undefined)) return {};
  const [caFile, certFile, keyFile] = files.map((f, i) => absolutePath(f, `tls.${["caFile", "certFile", "keyFile"][i]}`));
  return { caFile, certFile, keyFile };
}

const WILDCARD_HOSTS = ["0.0.0.0", "::"];

/**
 * Validates a parsed config file (or undefined when there is none) with flag
 * overrides applied. Pure: touches no files.
 */
export function parseAgentConfig(json: unknown, flags: AgentFlags = {}): AgentConfig {
  const file = json === undefined ? {} : object(json, "the config file");
  noUnknownKeys(file, CONFIG_KEYS, "the config file");

  const name = named("node", flags.name ?? str(file["name"], "name") ?? "");
  const listen = address(flags.listen ?? str(file["listen"], "listen") ?? fail('"listen" is required'), "listen", true);
  const advertise = address(flags.advertise ?? str(file["advertise"], "advertise") ?? listen, "advertise", true);
  if (WILDCARD_HOSTS.includes(parseHostPort(advertise, { allowPortZero: true }).host)) {
    fail(`cannot advertise the wildcard address "${advertise}" to the controllers`, "set \"advertise\" (or --advertise) to an address the controllers can reach");
  }

  let controllers: string[];
  if (flags.controllers !== undefined) {
    controllers = flags.controllers.split(",").map((s) => s.trim()).filter((s) => s !== "");
  } else {
    const raw = file["controllers"] ?? [];
    if (!Array.isArray(raw)) fail('"controllers" must be a list of HOST:PORT strings');
    controllers = raw.map((c, i) => str(c, `controllers[${i}]`) ?? "");
  }
  if (controllers.length === 0) fail("at least one controller address is required", "set \"controllers\" or --controllers");
  controllers.forEach((c, i) => address(c, `controllers[${i}]`, false));

  const labelsRaw = file["labels"] === undefined ? {} : object(file["labels"], "labels");
  noUnknownKeys(labelsRaw, ["zone", "rack"], "labels");
  const zone = flags.zone ?? str(labelsRaw["zone"], "labels.zone") ?? "";
  const rack = flags.rack ?? str(labelsRaw["rack"], "labels.rack") ?? "";
  if (zone) named("zone", zone);
  if (rack) named("rack", rack);

  const dataDir = absolutePath(flags.dataDir ?? str(file["dataDir"], "dataDir"), "dataDir");

  const poolsRaw = file["pools"] ?? [];
  if (!Array.isArray(poolsRaw)) fail('"pools" must be a list');
  let pools = applyPoolFlags(poolsRaw, flags.pool ?? []).map(parsePool);
  if (pools.length === 0) {
    pools = [{ name: "default", type: "dir", path: `${dataDir}/pools/default`, overcommitRatio: DEFAULT_OVERCOMMIT_RATIO }];
  }
  for (let i = 0; i < pools.length; i++) {
    for (let j = 0; j < i; j++) {
      if (pools[i]!.name === pools[j]!.name) fail(`two pools are named "${pools[i]!.name}"`);
      if (pools[i]!.path === pools[j]!.path) fail(`pools "${pools[j]!.name}" and "${pools[i]!.name}" share the path ${pools[i]!.path}`);
    }
  }

  const frontendDir = absolutePath(str(file["frontendDir"], "frontendDir") ?? DEFAULT_FRONTEND_DIR, "frontendDir");
  const advertiseHost = parseHostPort(advertise, { allowPortZero: true }).host;
  const nbd = parseNbd(file["nbd"], advertiseHost);
  const libvirt = parseLibvirt(file["libvirt"], advertiseHost);
  return { name, listen, advertise, controllers, labels: { zone, rack }, dataDir, pools, tls: parseTls(file["tls"]), frontendDir, nbd, ...(libvirt ? { libvirt } : {}) };
}

/** libvirt: the system daemon by default, reached by other nodes over TCP on the advertised host. */
function parseLibvirt(raw: unknown, advertiseHost: string): LibvirtConfig | undefined {
  if (raw === false) return undefined;
  const host = advertiseHost.includes(":") ? `[${advertiseHost}]` : advertiseHost;
  const l = raw === undefined ? {} : object(raw, "libvirt");
  noUnknownKeys(l, ["uri", "peerUri", "migrationHost"], "libvirt");
  const uri = str(l["uri"], "libvirt.uri") ?? "qemu:///system";
  const peerUri = str(l["peerUri"], "libvirt.peerUri") ?? `qemu+tcp://${host}/system`;
  const migrationHost = str(l["migrationHost"], "libvirt.migrationHost") ?? advertiseHost;
  for (const [k, v] of [["uri", uri], ["peerUri", peerUri]] as const) {
    if (!/^[a-z0-9+]+:\/\/[^\s]*$/.test(v)) fail(`libvirt.${k} must be a libvirt URI such as qemu:///system, got ${JSON.stringify(v)}`);
  }
  if (!migrationHost || /\s|\//.test(migrationHost)) fail(`libvirt.migrationHost must be a host name or address, got ${JSON.stringify(migrationHost)}`);
  return { uri, peerUri, migrationHost };
}

/** Replica exports: TCP on the advertised host by default, so frontends on other nodes reach them. */
function parseNbd(raw: unknown, advertiseHost: string): AgentConfig["nbd"] {
  if (raw === undefined) return { type: "tcp", host: advertiseHost, port: DEFAULT_NBD_PORT };
  const n = object(raw, "nbd");
  noUnknownKeys(n, ["type", "host", "port"], "nbd");
  if (n["type"] === "unix") return { type: "unix" };
  if (n["type"] !== undefined && n["type"] !== "tcp") fail(`nbd.type must be "tcp" or "unix", got ${JSON.stringify(n["type"])}`);
  const host = str(n["host"], "nbd.host") ?? advertiseHost;
  const port = n["port"] ?? DEFAULT_NBD_PORT;
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) fail(`nbd.port must be 1-65535, got ${JSON.stringify(port)}`);
  return { type: "tcp", host, port };
}

/** Reads the config file named by --config (if any), validates, and creates the directories. */
export async function loadAgentConfig(flags: AgentFlags): Promise<AgentConfig> {
  let json: unknown;
  if (flags.config !== undefined) {
    let text: string;
    try {
      text = await readFile(flags.config, "utf8");
    } catch (err) {
      throw new InvalidArgumentError(`cannot read config file ${flags.config}: ${errorMessage(err)}`);
    }
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new InvalidArgumentError(`config file ${flags.config} is not valid JSON: ${errorMessage(err)}`);
    }
  }
  const config = parseAgentConfig(json, flags);
  for (const dir of [config.dataDir, ...config.pools.map((p) => p.path)]) {
    try {
      await mkdir(dir, { recursive: true });
    } catch (err) {
      throw new InvalidArgumentError(`cannot create directory ${dir}: ${errorMessage(err)}`);
    }
  }
  return config;
}
