// NBD URIs (the form QEMU, qemu-img, nbdinfo and fio accept) to and from the
// address parts: nbd+unix:///EXPORT?socket=PATH and nbd://HOST:PORT/EXPORT.
import { InvalidArgumentError } from "./errors.js";

export interface NbdAddress {
  exportName: string;
  socketPath?: string;
  host?: string;
  port?: number;
}

export function formatNbdUri(a: NbdAddress): string {
  const name = encodeURIComponent(a.exportName);
  if (a.socketPath) return `nbd+unix:///${name}?socket=${a.socketPath}`;
  const host = a.host?.includes(":") ? `[${a.host}]` : a.host;
  return `nbd://${host}:${a.port ?? 10809}/${name}`;
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
  if (u.protocol === "nbd+unix:") {
    const socketPath = u.searchParams.get("socket");
    if (!socketPath || u.host) throw bad();
    return { exportName, socketPath };
  }
  if (u.protocol === "nbd:") {
    if (!u.hostname) throw bad();
    return { exportName, host: u.hostname.replace(/^\[|\]$/g, ""), port: u.port ? Number(u.port) : 10809 };
  }
  throw bad();
}
