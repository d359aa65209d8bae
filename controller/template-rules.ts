// The pure rules of templates and linked clones: what a linked-clone request
// must satisfy, which nodes placement should prefer, which copies of a template
// are still needed. No I/O and no clock, so they are unit-tested as tables.
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../lib/errors.js";
import { formatSize } from "../lib/sizes.js";
import type { TemplateCopyRecord, TemplateRecord, VolumeSpec } from "./model.js";

/** What a create request asks for, as far as a linked clone cares. */
export interface LinkedCloneRequest {
  name: string;
  sizeBytes: number;
  format: VolumeSpec["format"];
  preallocation: VolumeSpec["preallocation"];
}

/** Throws a clear error unless a volume like `req` can be a linked clone of `t` (the record of `template`). */
export function checkLinkedClone(template: string, t: TemplateRecord | undefined, req: LinkedCloneRequest): TemplateRecord {
  if (!t) throw new NotFoundError("template", template, { hint: "stowctl template list" });
  if (t.state !== "ready") throw new FailedPreconditionError(`template ${template} is ${t.state === "creating" ? "being created" : "being deleted"}`, { hint: "retry once stowctl template get shows it ready" });
  if (req.format !== "qcow2") {
    throw new InvalidArgumentError(`a linked clone of template ${template} is a qcow2 volume, not ${req.format}`, {
      hint: "leave out --format (or use --format qcow2); for a raw copy, create a template-less volume and copy the data in",
    });
  }
  if (req.preallocation !== "off") {
    throw new InvalidArgumentError(`a linked clone cannot be preallocated (--preallocation ${req.preallocation}): qcow2 refuses preallocation over a backing file`, {
      hint: "leave out --preallocation",
    });
  }
  if (req.sizeBytes < t.sizeBytes) {
    throw new InvalidArgumentError(`volume ${req.name} of ${formatSize(req.sizeBytes)} is smaller than template ${template} (${formatSize(t.sizeBytes)})`, {
      hint: `leave out --size to get the template's size, or give at least ${t.sizeBytes} bytes`,
    });
  }
  return t;
}

/** Nodes holding a ready copy of the template: placement prefers them (nothing to copy). */
export function templateCopyNodes(t: TemplateRecord | undefined): string[] {
  return (t?.copies ?? []).filter((c) => c.state === "ready").map((c) => c.node);
}

/** Volumes that are linked clones of the template (being deleted or not). */
export function clonesOf(template: string, specs: VolumeSpec[]): VolumeSpec[] {
  return specs.filter((s) => s.template === template);
}

/** Nodes where some clone of the template has a replica image (placed, or removed but not yet deleted). */
export function nodesUsing(template: string, specs: VolumeSpec[]): Set<string> {
  const out = new Set<string>();
  for (const s of clonesOf(template, specs)) for (const p of [...s.placement, ...(s.removedReplicas ?? [])]) out.add(p.node);
  return out;
}

/**
 * Copies that can go: ready, not the home copy, no replica of a clone on their
 * node, and only while another ready copy stays on an online node (a template
 * never loses its last reachable copy to a sweep).
 */
export function unusedCopies(t: TemplateRecord, specs: VolumeSpec[], online: (node: string) => boolean): TemplateCopyRecord[] {
  if (t.state !== "ready") return [];
  const used = nodesUsing(t.name, specs);
  const ready = t.copies.filter((c) => c.state === "ready");
  const out: TemplateCopyRecord[] = [];
  for (const c of ready) {
    if (c.home || used.has(c.node)) continue;
    const othersLeft = ready.filter((o) => o !== c && !out.includes(o) && online(o.node));
    if (othersLeft.length > 0) out.push(c);
  }
  return out;
}

/** The copy to copy from: a ready copy on an online node, the home copy first. */
export function copySource(t: TemplateRecord, online: (node: string) => boolean, not?: string): TemplateCopyRecord | undefined {
  return t.copies
    .filter((c) => c.state === "ready" && c.node !== not && online(c.node))
    .sort((a, b) => Number(Boolean(b.home)) - Number(Boolean(a.home)))[0];
}
