import { describe, expect, it } from "vitest";
import { parseReplicaFileName, parseTempFileName } from "./replica-file-name.js";
import {
  isTemplateTempOf,
  linkedCloneArgs,
  TEMPLATE_EXPORT_RE,
  templateExportId,
  templateFileName,
  templateFromNbdArgs,
  templateTempFileName,
  validateTemplateRef,
} from "./template-images.js";

const uid = "0f2c9a4e-1b3d-4c5e-8f70-123456789abc";

describe("template image names", () => {
  it("names a copy by template name and uid, and never like a replica", () => {
    const name = templateFileName({ name: "debian12", uid });
    expect(name).toBe(`debian12.${uid}.qcow2`);
    expect(parseReplicaFileName(name)).toBeUndefined();
    const tmp = templateTempFileName({ name: "debian12", uid }, "abc123");
    expect(isTemplateTempOf({ name: "debian12", uid }, tmp)).toBe(true);
    expect(isTemplateTempOf({ name: "debian1", uid }, tmp)).toBe(false);
    expect(parseTempFileName(tmp)).toBeUndefined();
  });

  it("refuses names and uids that could leave the directory", () => {
    expect(() => validateTemplateRef({ name: "../x", uid })).toThrow(/invalid template name/);
    expect(() => validateTemplateRef({ name: "a/b", uid })).toThrow(/invalid template name/);
    expect(() => validateTemplateRef({ name: "ok", uid: "../../etc" })).toThrow(/invalid template uid/);
    expect(() => templateTempFileName({ name: "ok", uid }, "../x")).toThrow(/invalid temp suffix/);
  });

  it("exports a copy under a t- id that is not a replica id", () => {
    const id = templateExportId(uid);
    expect(id).toBe("t-0f2c9a4e1b3d4c5e8f70123456789abc");
    expect(TEMPLATE_EXPORT_RE.test(id)).toBe(true);
    expect(TEMPLATE_EXPORT_RE.test("r-0123456789ab")).toBe(false);
  });
});

describe("template qemu-img commands", () => {
  it("creates a linked clone with the backing format named (never probed)", () => {
    expect(linkedCloneArgs({ path: "/p/web1.r-0011223344.qcow2", backingPath: `/p/templates/t.${uid}.qcow2`, sizeBytes: 1024 * 1024 })).toEqual([
      "create", "-q", "-f", "qcow2", "-b", `/p/templates/t.${uid}.qcow2`, "-F", "qcow2", "/p/web1.r-0011223344.qcow2", "1048576",
    ]);
    expect(() => linkedCloneArgs({ path: "rel.qcow2", backingPath: "/b", sizeBytes: 1 })).toThrow(/not absolute/);
    expect(() => linkedCloneArgs({ path: "/a", backingPath: "json:{}", sizeBytes: 1 })).toThrow(/not absolute/);
    expect(() => linkedCloneArgs({ path: "/a", backingPath: "/b", sizeBytes: 0 })).toThrow(/invalid image size/);
  });

  it("copies an NBD export into a new qcow2 (holes stay holes), throttled on request", () => {
    expect(templateFromNbdArgs({ sourceUri: "nbd://10.0.0.2:10809/t-1", targetPath: "/p/templates/.t.tmp-1", rateLimitBytes: 0 })).toEqual([
      "convert", "-t", "writeback", "-f", "raw", "-O", "qcow2", "nbd://10.0.0.2:10809/t-1", "/p/templates/.t.tmp-1",
    ]);
    expect(templateFromNbdArgs({ sourceUri: "nbd://h:1/x", targetPath: "/t", rateLimitBytes: 1000 })).toContain("-r");
    expect(() => templateFromNbdArgs({ sourceUri: "/etc/passwd", targetPath: "/t", rateLimitBytes: 0 })).toThrow(/not an NBD URI/);
  });
});
