import { describe, expect, it } from "vitest";
import type { TemplateCopyRecord, TemplateRecord, VolumeSpec } from "./model.js";
import { placeReplicas } from "./placement-edits.js";
import { place, type SchedNode } from "./scheduler.js";
import { checkLinkedClone, copySource, nodesUsing, templateCopyNodes, unusedCopies, type LinkedCloneRequest } from "./template-rules.js";

const GiB = 2 ** 30;

function node(name: string, opts: Partial<SchedNode> = {}): SchedNode {
  const pool = { name: "default", capacityBytes: 100 * GiB, availableBytes: 100 * GiB, provisionedBytes: 0, overcommitRatio: 1 };
  return { name, online: true, cordoned: false, labels: { zone: "", rack: "" }, pools: [pool], replicaCount: 0, ...opts };
}

function copy(node: string, opts: Partial<TemplateCopyRecord> = {}): TemplateCopyRecord {
  return { node, pool: "default", path: `/p/${node}/templates/t.qcow2`, state: "ready", allocatedBytes: 1, sinceMs: 0, message: "", ...opts };
}

function template(copies: TemplateCopyRecord[], opts: Partial<TemplateRecord> = {}): TemplateRecord {
  return { name: "gold", uid: "u", state: "ready", sizeBytes: GiB, source: "volume v", createdAtMs: 0, startedBy: "c1", copies, message: "", ...opts };
}

function volume(name: string, nodes: string[], opts: Partial<VolumeSpec> = {}): VolumeSpec {
  return {
    name,
    uid: name,
    sizeBytes: GiB,
    replicas: nodes.length,
    format: "qcow2",
    preallocation: "off",
    pool: "",
    createdAtMs: 0,
    deleting: false,
    placement: nodes.map((n, i) => ({ id: `r-0000000${i}`, node: n, pool: "default" })),
    template: "gold",
    ...opts,
  };
}

describe("linked-clone requests", () => {
  const ok: LinkedCloneRequest = { name: "web1", sizeBytes: GiB, format: "qcow2", preallocation: "off" };
  const cases: Record<string, { t?: TemplateRecord; req?: Partial<LinkedCloneRequest>; error?: RegExp }> = {
    "accepts a qcow2 volume of the template's size": { t: template([copy("n1")]) },
    "accepts a bigger volume": { t: template([copy("n1")]), req: { sizeBytes: 2 * GiB } },
    "refuses an unknown template": { error: /template "?gold"? not found/ },
    "refuses a template being created": { t: template([], { state: "creating" }), error: /being created/ },
    "refuses a template being deleted": { t: template([], { state: "deleting" }), error: /being deleted/ },
    "refuses raw": { t: template([copy("n1")]), req: { format: "raw" }, error: /qcow2 volume, not raw/ },
    "refuses preallocation": { t: template([copy("n1")]), req: { preallocation: "falloc" }, error: /cannot be preallocated/ },
    "refuses a volume smaller than the template": { t: template([copy("n1")]), req: { sizeBytes: GiB / 2 }, error: /smaller than template gold/ },
  };
  for (const [name, c] of Object.entries(cases)) {
    it(name, () => {
      const run = () => checkLinkedClone("gold", c.t, { ...ok, ...c.req });
      if (c.error) expect(run).toThrow(c.error);
      else expect(run()).toBe(c.t);
    });
  }
});

describe("placement of linked clones", () => {
  it("prefers nodes that hold a copy of the template over emptier ones", () => {
    const nodes = [node("n1"), node("n2", { replicaCount: 5 }), node("n3", { replicaCount: 5 })];
    const plain = place({ sizeBytes: GiB, replicas: 2, thin: true }, { nodes });
    expect(plain.ok && plain.placement.map((p) => p.node)).toEqual(["n1", "n2"]);
    const linked = place({ sizeBytes: GiB, replicas: 2, thin: true, preferNodes: ["n2", "n3"] }, { nodes });
    expect(linked.ok && linked.placement.map((p) => p.node)).toEqual(["n2", "n3"]);
  });

  it("fills up with other nodes when fewer hold a copy", () => {
    const nodes = [node("n1"), node("n2"), node("n3", { replicaCount: 3 })];
    const r = place({ sizeBytes: GiB, replicas: 2, thin: true, preferNodes: ["n3"] }, { nodes });
    expect(r.ok && r.placement.map((p) => p.node)).toEqual(["n3", "n1"]);
  });

  it("never trades zone spreading for a copy", () => {
    const nodes = [node("a1", { labels: { zone: "a", rack: "" } }), node("a2", { labels: { zone: "a", rack: "" } }), node("b1", { labels: { zone: "b", rack: "" }, replicaCount: 9 })];
    const r = place({ sizeBytes: GiB, replicas: 2, thin: true, preferNodes: ["a1", "a2"] }, { nodes });
    expect(r.ok && r.placement.map((p) => p.node).sort()).toEqual(["a1", "b1"]);
  });

  it("skips preferred nodes that cannot take a replica", () => {
    const nodes = [node("n1"), node("n2", { cordoned: true }), node("n3", { online: false })];
    const r = place({ sizeBytes: GiB, replicas: 1, thin: true, preferNodes: ["n2", "n3"] }, { nodes });
    expect(r.ok && r.placement.map((p) => p.node)).toEqual(["n1"]);
  });

  it("a rebuilt replica goes to a node with a copy (placeReplicas)", () => {
    const spec = volume("web1", ["n1"]);
    const nodes = [node("n1"), node("n2"), node("n3", { replicaCount: 4 })];
    expect(placeReplicas(spec, 1, { nodes }).placement.map((p) => p.node)).toEqual(["n2"]);
    expect(placeReplicas(spec, 1, { nodes }, [], ["n3"]).placement.map((p) => p.node)).toEqual(["n3"]);
  });

  it("only ready copies count", () => {
    expect(templateCopyNodes(template([copy("n1"), copy("n2", { state: "copying" }), copy("n3", { state: "deleting" })]))).toEqual(["n1"]);
    expect(templateCopyNodes(undefined)).toEqual([]);
  });
});

describe("template copies in use", () => {
  const online = (n: string) => n !== "n9";
  it("counts placed and removed-but-not-deleted replicas of clones only", () => {
    const specs = [
      volume("web1", ["n1", "n2"], { removedReplicas: [{ id: "r-00000009", node: "n3", pool: "default", removedAtMs: 0, reason: "" }] }),
      volume("other", ["n4"], { template: undefined }),
    ];
    expect([...nodesUsing("gold", specs)].sort()).toEqual(["n1", "n2", "n3"]);
  });

  const cases: Record<string, { copies: TemplateCopyRecord[]; specs: VolumeSpec[]; gone: string[]; state?: TemplateRecord["state"] }> = {
    "keeps copies under replicas, removes the others": {
      copies: [copy("n1", { home: true }), copy("n2"), copy("n3")],
      specs: [volume("web1", ["n2"])],
      gone: ["n3"],
    },
    "never removes the home copy": { copies: [copy("n1", { home: true })], specs: [], gone: [] },
    "keeps the last copy on an online node even if it is not home": {
      copies: [copy("n9", { home: true }), copy("n2")],
      specs: [],
      gone: [],
    },
    "removes one of two unused copies when the home one is offline": {
      copies: [copy("n9", { home: true }), copy("n2"), copy("n3")],
      specs: [],
      gone: ["n2"],
    },
    "leaves copies being made or removed to their owner": {
      copies: [copy("n1", { home: true }), copy("n2", { state: "copying" })],
      specs: [],
      gone: [],
    },
    "nothing while the template is not ready": { copies: [copy("n1", { home: true }), copy("n2")], specs: [], gone: [], state: "creating" },
  };
  for (const [name, c] of Object.entries(cases)) {
    it(name, () => {
      const t = template(c.copies, { state: c.state ?? "ready" });
      expect(unusedCopies(t, c.specs, online).map((x) => x.node)).toEqual(c.gone);
    });
  }

  it("copies from the home copy first, from an online node, never from the target", () => {
    const t = template([copy("n2"), copy("n1", { home: true }), copy("n9")]);
    expect(copySource(t, online)?.node).toBe("n1");
    expect(copySource(t, online, "n1")?.node).toBe("n2");
    expect(copySource(template([copy("n9", { home: true })]), online)).toBeUndefined();
  });
});
