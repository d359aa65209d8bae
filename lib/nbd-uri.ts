// NBD URIs (the libnbd form QEMU, qemu-img, nbdinfo and fio accept) to and from
// the address parts: nbd+unix:///EXPORT?socket=PATH and nbd://HOST:PORT/EXPORT,
// with "nbds" instead of "nbd" when the server requires TLS.
import { InvalidArgumentError } from "./errors.js";

export interface NbdAddress {
  exportName: string;
  socketPath?: string;
  host?: string;
  port?: number;
  tls?: boolean;
}

export function formatNbdUri(a: NbdAddress): string {
  const name = encodeURIComponent(a.exportName);
  const scheme = a.tls ? "nbds" : "nbd";
  if (a.socketPath) return `${scheme}+unix:///${name}?socket=${encodeURIComponent(a.socketPath).replaceAll("%2F", "/")}`;
  const host = a.host?.includes(":") ? `[${a.host}]` : a.host;
  return `${scheme}://${host}:${a.port ?? 10809}/${name}`;
}

export function parseNbdUri(uri: string): NbdAddress {
  const bad = () => new InvalidArgumentError(`invalid NBD URI "${uri}"`, { hint: "use nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT" });
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw bad();
  }
  const exportName = decodeURIComponent(u.pathname.replace(/^\//, ""));
  if (!exportName) throw bad();
  const tls = u.protocol.startsWith("nbds");
  const extra = tls ? { tls } : {};
  if (u.protocol === "nbd+unix:" || u.protocol === "nbds+unix:") {
    const socketPath = u.searchParams.get("socket");
    if (!socketPath || u.host) throw bad();
    return { exportName, socketPath, ...extra };
  }
  if (u.protocol === "nbd:" || u.protocol === "nbds:") {
    if (!u.hostname) throw bad();
    return { exportName, host: u.hostname.replace(/^\[|\]$/g, ""), port: u.port ? Number(u.port) : 10809, ...extra };
  }
  throw bad();
}
