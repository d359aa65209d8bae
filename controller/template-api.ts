// TemplateService: templates for linked clones (controller/templates.ts does the work).
import type { TemplateServiceService } from "../gen/stowage/v1/controller.js";
import { TemplateState, type Template } from "../gen/stowage/v1/types.js";
import type { RequestHandlers } from "../lib/grpc.js";
import type { TemplateRecord, VolumeSpec } from "./model.js";
import type { ClusterStore } from "./store.js";
import { clonesOf } from "./template-rules.js";
import type { Templates } from "./templates.js";

export interface TemplateApiDeps {
  store: ClusterStore;
  ensureLeader: () => Promise<void>;
  /** The leader's template worker (absent on a follower: ensureLeader refuses first). */
  templates: () => Templates;
}

const STATES: Record<TemplateRecord["state"], TemplateState> = {
  creating: TemplateState.TEMPLATE_STATE_CREATING,
  ready: TemplateState.TEMPLATE_STATE_READY,
  deleting: TemplateState.TEMPLATE_STATE_DELETING,
};

export function templateToApi(t: TemplateRecord, specs: VolumeSpec[]): Template {
  return {
    name: t.name,
    uid: t.uid,
    state: STATES[t.state],
    sizeBytes: t.sizeBytes,
    source: t.source,
    createdAtMs: t.createdAtMs,
    copies: t.copies.map((c) => ({ node: c.node, pool: c.pool, path: c.path, state: c.state, allocatedBytes: c.allocatedBytes, home: Boolean(c.home), message: c.message })),
    clones: clonesOf(t.name, specs).map((s) => s.name).sort(),
    message: t.message,
  };
}

export function templateApi(d: TemplateApiDeps): RequestHandlers<typeof TemplateServiceService> {
  const specs = () => d.store.volumeSpecs().map((e) => e.value);
  return {
    async createTemplate(req) {
      await d.ensureLeader();
      const r = await d.templates().create(req.name, {
        volume: req.volume || undefined,
        snapshot: req.snapshot || undefined,
        nbdUri: req.sourceNbdUri || undefined,
        sizeBytes: req.sourceSizeBytes,
        file: req.sourceFile,
        pool: req.pool || undefined,
      });
      return { template: templateToApi(r.template, specs()), created: r.created };
    },

    async getTemplate(req) {
      await d.ensureLeader();
      return { template: templateToApi(d.templates().get(req.name), specs()) };
    },

    async listTemplates() {
      await d.ensureLeader();
      const all = specs();
      return { templates: d.store.templates().map((e) => templateToApi(e.value, all)).sort((a, b) => a.name.localeCompare(b.name)) };
    },

    async deleteTemplate(req) {
      await d.ensureLeader();
      return { deleted: await d.templates().delete(req.name) };
    },
  };
}
