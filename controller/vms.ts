// Where a libvirt domain runs and which of its disks are Stowage volumes. The
// controller keeps no VM records: libvirt on the nodes is the truth, asked
// through each node's agent.
import type { Domain, DomainDisk } from "../gen/stowage/v1/agent.js";
import type { Vm } from "../gen/stowage/v1/types.js";
import { errorMessage, FailedPreconditionError, NotFoundError, StowageError } from "../lib/errors.js";
import { validateDomainName, validateName } from "../lib/names.js";
import type { AgentClients } from "./agents.js";
import type { NodeRegistry } from "./nodes.js";
import type { ClusterStore } from "./store.js";

export interface LocatedDomain {
  node: string;
  domain: Domain;
}

export interface VmDeps {
  store: ClusterStore;
  agents: AgentClients;
  registry: NodeRegistry;
}

const LOOKUP_TIMEOUT_MS = 15_000;

/** A node that can run VM commands now: known, online, with libvirt. */
export function vmNode(d: VmDeps, node: string): { uri: string; migrationHost: string } {
  validateName("node", node);
  const spec = d.store.nodeSpec(node)?.value;
  if (!spec) throw new NotFoundError("node", node);
  if (!d.registry.isOnline(node)) throw new FailedPreconditionError(`node ${node} is offline`, { hint: "see stowctl node list" });
  if (!spec.libvirt) {
    throw new FailedPreconditionError(`node ${node} has no libvirt endpoint`, { hint: `its agent runs with "libvirt": false; enable libvirt in its config and restart the agent` });
  }
  return spec.libvirt;
}

/** The domain on `node`, or wherever it runs when node is empty. */
export async function locateDomain(d: VmDeps, name: string, node?: string): Promise<LocatedDomain> {
  validateDomainName(name);
  if (node) {
    vmNode(d, node);
    const res = await d.agents.for(node).getDomain({ name }, { timeoutMs: LOOKUP_TIMEOUT_MS });
    if (!res.found || !res.domain) throw new NotFoundError("domain", name, { hint: `no domain of that name on node ${node}; 'stowctl vm get ${name}' finds it on any node` });
    return { node, domain: res.domain };
  }
  const candidates = d.store
    .nodeSpecs()
    .map((e) => e.value)
    .filter((n) => n.libvirt && d.registry.isOnline(n.name))
    .map((n) => n.name)
    .sort();
  const unreachable: string[] = [];
  const found: LocatedDomain[] = [];
  await Promise.all(
    candidates.map(async (n) => {
      try {
        const res = await d.agents.for(n).getDomain({ name }, { timeoutMs: LOOKUP_TIMEOUT_MS });
        if (res.found && res.domain) found.push({ node: n, domain: res.domain });
      } catch (err) {
        unreachable.push(`${n} (${errorMessage(err)})`);
      }
    }),
  );
  // While a migration hands over, the destination holds a paused copy: the running one is the VM.
  const running = found.filter((f) => f.domain.state === "running");
  const pick = running.length > 0 ? running : found;
  if (pick.length === 1) return pick[0]!;
  if (pick.length > 1) {
    throw new StowageError(`domain ${name} is ${running.length > 1 ? "running" : "defined"} on several nodes: ${pick.map((f) => f.node).sort().join(", ")}`, {
      hint: "give the node with --node",
    });
  }
  const also = unreachable.length > 0 ? `; nodes that did not answer: ${unreachable.sort().join(", ")}` : "";
  throw new NotFoundError("domain", name, {
    hint: candidates.length === 0 ? "no online node has libvirt; see stowctl node list" : `no node among ${candidates.join(", ")} has it${also}`,
  });
}

/** The Stowage volume behind a disk of a domain on `node`, if it is one. */
export function diskVolume(d: VmDeps, node: string, disk: DomainDisk): string | undefined {
  if (disk.protocol !== "nbd" || !disk.socketPath || !disk.exportName) return undefined;
  const spec = d.store.volumeSpec(disk.exportName)?.value;
  if (!spec) return undefined;
  const frontend = d.store.frontend(disk.exportName, node);
  if (frontend?.socketPath) return frontend.socketPath === disk.socketPath ? spec.name : undefined;
  // Not attached there now: judge by the frontend socket's file name.
  return disk.socketPath.endsWith(`/${spec.name}.sock`) ? spec.name : undefined;
}

export function vmToApi(d: VmDeps, l: LocatedDomain): Vm {
  return {
    name: l.domain.name,
    node: l.node,
    state: l.domain.state,
    disks: l.domain.disks.map((x) => ({ target: x.target, volume: diskVolume(d, l.node, x) ?? "", source: x.source })),
  };
}
