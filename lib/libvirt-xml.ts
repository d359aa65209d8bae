// The little of libvirt's domain XML Stowage reads and writes: the <disk>
// element that connects a domain to a volume's frontend, and the disks of a
// domain (from `virsh dumpxml`). Parsing is deliberately narrow: <disk>
// elements, their <source>, <host> and <target> children, and attributes.

export interface DiskXmlOptions {
  volume: string;
  socketPath: string;
  target: string;
}

const ENTITIES: Record<string, string> = { amp: "&", lt: "<", gt: ">", apos: "'", quot: '"' };

export function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/'/g, "&apos;").replace(/"/g, "&quot;");
}

function unescapeXml(s: string): string {
  return s.replace(/&(amp|lt|gt|apos|quot|#(\d+)|#x([0-9a-fA-F]+));/g, (_, name: string, dec?: string, hex?: string) =>
    dec ? String.fromCodePoint(Number(dec)) : hex ? String.fromCodePoint(parseInt(hex, 16)) : ENTITIES[name]!,
  );
}

/** The <disk> element for a libvirt domain: raw NBD over the frontend's unix socket, no host cache. */
export function diskXml(o: DiskXmlOptions): string {
  return [
    `<disk type='network' device='disk'>`,
    `  <driver name='qemu' type='raw' cache='none' io='native' discard='unmap'/>`,
    `  <source protocol='nbd' name='${escapeXml(o.volume)}'>`,
    `    <host transport='unix' socket='${escapeXml(o.socketPath)}'/>`,
    `  </source>`,
    `  <target dev='${escapeXml(o.target)}' bus='virtio'/>`,
    `</disk>`,
    ``,
  ].join("\n");
}

export interface ParsedDisk {
  target: string;
  device: string;
  type: string;
  protocol: string;
  exportName: string;
  socketPath: string;
  /** A human-readable source: file, device, socket or host:port. */
  source: string;
}

function attrs(tag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of tag.matchAll(/([A-Za-z_:][\w:.-]*)\s*=\s*(?:'([^']*)'|"([^"]*)")/g)) out[m[1]!] = unescapeXml(m[2] ?? m[3] ?? "");
  return out;
}

/** First start (or empty) tag named `name` inside `xml`, with its attributes. */
function firstTag(xml: string, name: string): Record<string, string> | undefined {
  const m = new RegExp(`<${name}(\\s[^>]*?)?/?>`).exec(xml);
  return m ? attrs(m[1] ?? "") : undefined;
}

/** The disks of a domain XML document, in document order. */
export function parseDomainDisks(xml: string): ParsedDisk[] {
  const disks: ParsedDisk[] = [];
  // <disk .../> (empty) or <disk ...> ... </disk>; disks do not nest.
  for (const m of xml.matchAll(/<disk(\s[^>]*?)?(?:\/>|>([\s\S]*?)<\/disk>)/g)) {
    const a = attrs(m[1] ?? "");
    const body = m[2] ?? "";
    const src = firstTag(body, "source") ?? {};
    const host = firstTag(body, "host") ?? {};
    const target = firstTag(body, "target")?.["dev"] ?? "";
    const socketPath = host["socket"] ?? "";
    const hostPort = host["name"] ? `${host["name"]}${host["port"] ? `:${host["port"]}` : ""}` : "";
    const source =
      src["file"] ?? src["dev"] ?? src["dir"] ?? src["volume"] ?? (socketPath ? `${socketPath} (${src["name"] ?? ""})` : hostPort ? `${hostPort}/${src["name"] ?? ""}` : src["name"] ?? "");
    disks.push({
      target,
      device: a["device"] ?? "disk",
      type: a["type"] ?? "",
      protocol: src["protocol"] ?? "",
      exportName: src["name"] ?? "",
      socketPath,
      source,
    });
  }
  return disks;
}

/** The first vdX name (vda, vdb, ..., vdz, vdaa, ...) no disk uses. */
export function firstFreeTarget(used: string[]): string {
  const taken = new Set(used);
  for (let i = 0; i < 26 * 27; i++) {
    const name = i < 26 ? String.fromCharCode(97 + i) : String.fromCharCode(96 + Math.floor(i / 26)) + String.fromCharCode(97 + (i % 26));
    if (!taken.has(`vd${name}`)) return `vd${name}`;
  }
  throw new Error("no free virtio disk name");
}
