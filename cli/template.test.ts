import { describe, expect, it } from "vitest";
import { TemplateState } from "../gen/stowage/v1/types.js";
import { parseTemplateSource, templateDetail, templatesTable } from "./commands/template.js";
import { createVolumeRequest } from "./requests.js";

describe("stowctl template", () => {
  it("parses --from as a volume or a snapshot", () => {
    expect(parseTemplateSource("gold")).toEqual({ volume: "gold", snapshot: "" });
    expect(parseTemplateSource("gold@v1")).toEqual({ volume: "gold", snapshot: "v1" });
    for (const bad of ["gold@", "@v1", "a@b@c", "../x", "gold@../x"]) expect(() => parseTemplateSource(bad), bad).toThrow();
  });

  it("volume create --template: a qcow2 linked clone, checked before anything is sent", () => {
    expect(createVolumeRequest("web1", { size: "1GiB", template: "gold" }).spec).toMatchObject({ name: "web1", template: "gold" });
    expect(createVolumeRequest("web1", { size: "1GiB" }).spec!.template).toBeUndefined();
    expect(() => createVolumeRequest("web1", { size: "1GiB", template: "../x" })).toThrow(/invalid template name/);
    expect(() => createVolumeRequest("web1", { size: "1GiB", template: "gold", format: "raw" })).toThrow(/linked clone is a qcow2 volume/);
  });

  it("shows size, copies and clones", () => {
    const t = {
      name: "gold",
      uid: "u1",
      state: TemplateState.TEMPLATE_STATE_READY,
      sizeBytes: 64 * 2 ** 20,
      source: "volume base",
      createdAtMs: 0,
      copies: [
        { node: "n1", pool: "default", path: "/p/templates/gold.u1.qcow2", state: "ready", allocatedBytes: 5 * 2 ** 20, home: true, message: "" },
        { node: "n2", pool: "default", path: "/q/templates/gold.u1.qcow2", state: "ready", allocatedBytes: 5 * 2 ** 20, home: false, message: "" },
      ],
      clones: ["web1", "web2"],
      message: "",
    };
    expect(templatesTable([t])).toMatch(/gold\s+ready\s+64 ?MiB\s+volume base\s+n1,n2\s+10 ?MiB\s+2/);
    const d = templateDetail(t);
    expect(d).toMatch(/clones:\s+web1, web2/);
    expect(d).toMatch(/n1\s+default\s+ready\s+5 ?MiB\s+\/p\/templates\/gold.u1.qcow2\s+home copy/);
    expect(templatesTable([])).toBe("no templates found\n");
  });
});
