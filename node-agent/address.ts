// HOST:PORT network addresses as the agent's config and gRPC use them
// ("127.0.0.11:7500", "node1.example:7500", "[::1]:7500").
import { InvalidArgumentError } from "../lib/errors.js";

export interface HostPort {
  /** Without brackets for IPv6. */
  host: string;
  port: number;
}

const HOST_RE = /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/;

export function parseHostPort(text: string, opts: { allowPortZero?: boolean } = {}): HostPort {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*)):(\d{1,5})$/.exec(text);
  const host = m ? (m[1] ?? m[2] ?? "") : "";
  const port = m ? Number(m[3]) : NaN;
  if (!m || (m[2] !== undefined && !HOST_RE.test(m[2]))) {
    throw new InvalidArgumentError(`invalid address "${text}" (want HOST:PORT)`);
  }
  if (port > 65535 || (port === 0 && !opts.allowPortZero)) {
    throw new InvalidArgumentError(`invalid port in address "${text}"`);
  }
  return { host, port };
}

export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The same address with another port (used once a port-0 listener is bound). */
export function withPort(address: string, port: number): string {
  return formatHostPort({ ...parseHostPort(address, { allowPortZero: true }), port });
}
