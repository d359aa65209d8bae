// Command line of the frontend process, parsed purely (no process access) so
// it is unit-tested:
//   --socket PATH --export NAME --backend unix:PATH:EXPORT[,tcp:HOST:PORT:EXPORT...] [--connections N]
import { parseArgs } from "node:util";
import { DEFAULT_SEND_BUFFER_BYTES } from "../lib/socket-buffer.js";

export interface ReplicaAddress {
  /** As given on the command line, for logs. */
  spec: string;
  socketPath?: string;
  host?: string;
  port?: number;
  exportName: string;
}

export interface FrontendArgs {
  socketPath: string;
  exportName: string;
  replicas: ReplicaAddress[];
  /** NBD connections per replica. */
  connections: number;
  /** Mode of the listening socket (libvirt's QEMU runs as another user). */
  socketMode: number;
  /** Controller addresses for the in-sync record; empty: a write needs every replica. */
  controllers: string[];
  /** The volume's generation when the frontend was started. */
  generation: number;
  /** Where dirty maps are kept (must survive a frontend restart). */
  stateDir: string | undefined;
  /** The node the frontend runs on (named in resync job records). */
  node: string;
  /** Resync copy limit in MiB/s (0: none). */
  copyRateMiB: number;
  /** A replica connection with requests in flight and no reply for this long is dropped (0: never). */
  stallTimeoutMs: number;
  /** Send buffer of the frontend's unix sockets, clients' and replicas' (0: the system default). */
  sendBufferBytes: number;
}

export const USAGE = `usage: node dist/frontend/main.js --socket PATH --export NAME --backend SPEC[,SPEC...] [--connections N]

  --socket PATH       unix socket to serve NBD on (created with mode 0666)
  --export NAME       export name clients ask for (the empty name works too)
  --backend SPECS     replicas, comma-separated (or repeat the flag):
                        unix:SOCKET_PATH:EXPORT
                        tcp:HOST:PORT:EXPORT      (IPv6 host in brackets: tcp:[::1]:10809:vol)
  --connections N     NBD connections to each replica (default 2, at most 16)
  --socket-mode MODE  octal mode of the socket file (default 0666)
  --controllers A,B   controller addresses: a replica that fails a write is recorded
                      out-of-sync there before the write is acknowledged (without it,
                      a write fails unless every replica took it)
  --generation N      the volume's generation the replica list belongs to (default 1)
  --state-dir DIR     where dirty maps of out-of-sync replicas are kept (needed with
                      --controllers; keep it across restarts)
  --node NAME         the node this frontend runs on (shown in resync jobs)
  --copy-rate-mib N   limit resync copies to N MiB/s (default 0: no limit)
  --stall-timeout S   drop a replica connection that answers nothing for S seconds while
                      requests wait (a frozen or cut-off host; default 8, 0: never)
  --send-buffer-kib N send buffer of the unix sockets to clients and local replicas
                      (default 4096: a 1 MiB request crosses in one write instead of
                      five; 0 keeps the system default)
`;

export class ArgsError extends Error {
  override readonly name = "ArgsError";
}

export function parseReplicaSpec(spec: string): ReplicaAddress {
  const last = spec.lastIndexOf(":");
  const exportName = last >= 0 ? spec.slice(last + 1) : "";
  const rest = last >= 0 ? spec.slice(0, last) : spec;
  if (!exportName) throw new ArgsError(`backend "${spec}" has no export name (…:EXPORT)`);
  if (rest.startsWith("unix:")) {
    const socketPath = rest.slice("unix:".length);
    if (!socketPath) throw new ArgsError(`backend "${spec}" has no socket path`);
    return { spec, socketPath, exportName };
  }
  if (rest.startsWith("tcp:")) {
    const hostPort = rest.slice("tcp:".length);
    const colon = hostPort.lastIndexOf(":");
    const rawHost = colon >= 0 ? hostPort.slice(0, colon) : "";
    const portText = colon >= 0 ? hostPort.slice(colon + 1) : "";
    const port = Number(portText);
    if (!/^\d+$/.test(portText) || port < 1 || port > 65535) throw new ArgsError(`backend "${spec}" has no valid port`);
    const host = rawHost.startsWith("[") && rawHost.endsWith("]") ? rawHost.slice(1, -1) : rawHost;
    if (!host) throw new ArgsError(`backend "${spec}" has no host`);
    return { spec, host, port, exportName };
  }
  throw new ArgsError(`backend "${spec}" must start with unix: or tcp:`);
}

export function parseFrontendArgs(argv: string[]): FrontendArgs {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        socket: { type: "string" },
        export: { type: "string" },
        backend: { type: "string", multiple: true },
        connections: { type: "string" },
        "socket-mode": { type: "string" },
        controllers: { type: "string" },
        generation: { type: "string" },
        "state-dir": { type: "string" },
        node: { type: "string" },
        "copy-rate-mib": { type: "string" },
        "stall-timeout": { type: "string" },
        "send-buffer-kib": { type: "string" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new ArgsError(err instanceof Error ? err.message : String(err));
  }
  if (!values.socket) throw new ArgsError("--socket is required");
  if (values.export === undefined) throw new ArgsError("--export is required");
  const specs = (values.backend ?? []).flatMap((b) => b.split(",")).map((s) => s.trim()).filter(Boolean);
  if (specs.length === 0) throw new ArgsError("--backend is required");
  const connections = values.connections === undefined ? 2 : Number(values.connections);
  if (!Number.isInteger(connections) || connections < 1 || connections > 16) throw new ArgsError("--connections takes an integer from 1 to 16");
  const modeText = values["socket-mode"] ?? "0666";
  if (!/^0?[0-7]{3}$/.test(modeText)) throw new ArgsError("--socket-mode takes an octal mode such as 0660");
  const controllers = (values.controllers ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  const generation = values.generation === undefined ? 1 : Number(values.generation);
  if (!Number.isSafeInteger(generation) || generation < 1) throw new ArgsError("--generation takes a positive integer");
  if (controllers.length > 0 && !values["state-dir"]) throw new ArgsError("--state-dir is required with --controllers");
  const copyRateMiB = values["copy-rate-mib"] === undefined ? 0 : Number(values["copy-rate-mib"]);
  if (!Number.isFinite(copyRateMiB) || copyRateMiB < 0) throw new ArgsError("--copy-rate-mib takes a number of MiB/s, 0 for no limit");
  const stallS = values["stall-timeout"] === undefined ? 8 : Number(values["stall-timeout"]);
  if (!Number.isFinite(stallS) || stallS < 0) throw new ArgsError("--stall-timeout takes a number of seconds, 0 for never");
  const sendBufferKiB = values["send-buffer-kib"] === undefined ? DEFAULT_SEND_BUFFER_BYTES / 1024 : Number(values["send-buffer-kib"]);
  if (!Number.isInteger(sendBufferKiB) || sendBufferKiB < 0 || sendBufferKiB > 65536) throw new ArgsError("--send-buffer-kib takes a whole number of KiB from 0 to 65536");
  return {
    socketPath: values.socket,
    exportName: values.export,
    replicas: specs.map(parseReplicaSpec),
    connections,
    socketMode: parseInt(modeText, 8),
    controllers,
    generation,
    stateDir: values["state-dir"],
    node: values.node ?? "",
    copyRateMiB,
    stallTimeoutMs: Math.round(stallS * 1000),
    sendBufferBytes: sendBufferKiB * 1024,
  };
}
