// Pure parts of running qemu-storage-daemon: the state-dir layout, the command
// line the supervisor starts it with, and the reverse: what an already running
// daemon (found through its pidfile) was started with, read from its argv.
import { formatNbdUri } from "../../lib/nbd-uri.js";
import { join } from "node:path";
import { InvalidArgumentError } from "../../lib/errors.js";

export const QSD_BINARY = "qemu-storage-daemon";

/** How the daemon's one NBD server listens (QEMU 7.2 runs at most one per process). */
export type NbdServerConfig =
  | { type: "unix" }
  | {
      type: "tcp";
      host: string;
      /** A fixed port: the daemon cannot tell which port it got for 0. */
      port: number;
      /** Not used yet: a tls-creds-x509 object the server is started with (clients must then use TLS). */
      tls?: TlsCredsConfig;
    };

export interface TlsCredsConfig {
  /** QOM id of the tls-creds-x509 object, e.g. "nbd-tls". */
  id: string;
  /** Directory with ca-cert.pem, server-cert.pem, server-key.pem. */
  dir: string;
}

/** Where the running daemon's NBD server is reached: exactly one of unixSocket / tcp. */
export interface NbdEndpoint {
  unixSocket?: string;
  tcp?: { host: string; port: number };
  /** Set when the server requires TLS (nbds:// URIs). */
  tlsCredsId?: string;
}

export interface QsdPaths {
  stateDir: string;
  qmpSocket: string;
  pidFile: string;
  nbdSocket: string;
}

// sun_path is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH = 107;

export function qsdPaths(dataDir: string): QsdPaths {
  if (!dataDir.startsWith("/")) throw new InvalidArgumentError(`data dir "${dataDir}" is not absolute`);
  const stateDir = join(dataDir, "qsd");
  const paths = { stateDir, qmpSocket: join(stateDir, "qmp.sock"), pidFile: join(stateDir, "qsd.pid"), nbdSocket: join(stateDir, "nbd.sock") };
  for (const p of [paths.qmpSocket, paths.nbdSocket]) {
    if (Buffer.byteLength(p) > MAX_SOCKET_PATH) {
      throw new InvalidArgumentError(`socket path ${p} is longer than ${MAX_SOCKET_PATH} bytes`, { hint: "use a shorter data dir" });
    }
  }
  return paths;
}

/** QEMU option values escape a comma by doubling it. */
function esc(value: string): string {
  return value.replaceAll(",", ",,");
}

export function checkNbdConfig(nbd: NbdServerConfig): void {
  if (nbd.type !== "tcp") return;
  if (!Number.isInteger(nbd.port) || nbd.port <= 0 || nbd.port > 65535) {
    throw new InvalidArgumentError(`invalid NBD port ${nbd.port}`, { hint: "give a fixed TCP port (1-65535)" });
  }
  if (!nbd.host) throw new InvalidArgumentError("NBD host is empty", { hint: "give the address other hosts reach this one on" });
}

export function nbdEndpointOf(nbd: NbdServerConfig, paths: QsdPaths): NbdEndpoint {
  if (nbd.type === "unix") return { unixSocket: paths.nbdSocket };
  return { tcp: { host: nbd.host, port: nbd.port }, ...(nbd.tls ? { tlsCredsId: nbd.tls.id } : {}) };
}

/**
 * Arguments that start a daemonized QSD with a QMP monitor and the NBD server, and
 * nothing exported yet. `listenFd`: a TCP server socket the caller opened (with
 * TCP_NODELAY: QEMU 7.2's NBD server does not set it on the connections it accepts,
 * and Nagle then stalls small replies; accepted sockets inherit it from the listener).
 */
export function qsdArgs(paths: QsdPaths, nbd: NbdServerConfig, listenFd?: number): string[] {
  checkNbdConfig(nbd);
  const args = [
    "--chardev",
    `socket,id=qmp,path=${esc(paths.qmpSocket)},server=on,wait=off`,
    "--monitor",
    "chardev=qmp",
    "--pidfile",
    paths.pidFile,
  ];
  let server: string;
  if (nbd.type === "unix") {
    server = `addr.type=unix,addr.path=${esc(paths.nbdSocket)}`;
  } else {
    server = listenFd === undefined ? `addr.type=inet,addr.host=${esc(nbd.host)},addr.port=${nbd.port}` : `addr.type=fd,addr.str=${listenFd}`;
    if (nbd.tls) {
      // The object must exist before the server that names it.
      args.push("--object", `tls-creds-x509,id=${esc(nbd.tls.id)},dir=${esc(nbd.tls.dir)},endpoint=server,verify-peer=on`);
      server += `,tls-creds=${esc(nbd.tls.id)}`;
    }
  }
  args.push("--nbd-server", server, "--daemonize");
  return args;
}

/** Splits "a=1,b=x,,y" into { a: "1", b: "x,y" }. */
export function parseQemuOpts(value: string): Record<string, string> {
  const out: Record<string, string> = {};
  let part = "";
  const flush = (): void => {
    const eq = part.indexOf("=");
    if (eq > 0) out[part.slice(0, eq)] = part.slice(eq + 1);
    else if (part) out[part] = "";
    part = "";
  };
  for (let i = 0; i < value.length; i++) {
    if (value[i] !== ",") {
      part += value[i];
    } else if (value[i + 1] === ",") {
      part += ",";
      i++;
    } else {
      flush();
    }
  }
  flush();
  return out;
}

export interface RunningQsd {
  qmpSocket?: string;
  nbd?: NbdEndpoint;
}

/** What a running daemon was started with, from its argv (/proc/PID/cmdline); undefined if it is no QSD. */
export function parseQsdArgv(argv: string[]): RunningQsd | undefined {
  if (!argv[0]?.split("/").pop()?.startsWith(QSD_BINARY)) return undefined;
  const out: RunningQsd = {};
  for (let i = 1; i < argv.length - 1; i++) {
    const opts = () => parseQemuOpts(argv[i + 1]!);
    if (argv[i] === "--chardev" && opts().id === "qmp") out.qmpSocket = opts().path;
    if (argv[i] === "--nbd-server") {
      const o = opts();
      // A listening socket handed over (addr.type=fd): its address is the config's.
      if (o["addr.type"] === "fd") continue;
      out.nbd =
        o["addr.type"] === "unix"
          ? { unixSocket: o["addr.path"] }
          : { tcp: { host: o["addr.host"] ?? "", port: Number(o["addr.port"]) } };
      if (o["tls-creds"]) out.nbd.tlsCredsId = o["tls-creds"];
    }
  }
  return out;
}

/** The NBD URI of one export, for qemu-img, qemu-io, nbdinfo and fio (libnbd syntax). */
export function nbdUri(endpoint: NbdEndpoint, exportName: string): string {
  const tls = Boolean(endpoint.tlsCredsId);
  if (endpoint.unixSocket) return formatNbdUri({ exportName, socketPath: endpoint.unixSocket, tls });
  return formatNbdUri({ exportName, host: endpoint.tcp!.host, port: endpoint.tcp!.port, tls });
}
