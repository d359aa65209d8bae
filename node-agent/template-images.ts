// Template images on a node: names, paths and the qemu-img commands that make
// them and the linked clones on top of them. Pure builders plus thin wrappers
// over lib/exec.ts.
//
// A template's copy lives in a pool's `templates/` subdirectory as
// `${name}.${uid}.qcow2`, read-only (0444). The pool's scan only looks at
// regular files directly in the pool directory whose names carry a replica id,
// so a template image is never listed as a replica, nor swept as an orphan.
import { FailedPreconditionError, InvalidArgumentError } from "../lib/errors.js";
import { run } from "../lib/exec.js";
import { validateName } from "../lib/names.js";
import { exists } from "./file-ops.js";
import { QEMU_IMG } from "./qemu-img.js";

export const TEMPLATE_DIR = "templates";

const UID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The export id (and NBD export name) of a template copy: `t-` + its uid's 32 hex digits. */
export const TEMPLATE_EXPORT_RE = /^t-[0-9a-f]{32}$/;

export interface TemplateName {
  name: string;
  uid: string;
}

export function validateTemplateRef(t: TemplateName): void {
  validateName("template", t.name);
  if (!UID_RE.test(t.uid)) throw new InvalidArgumentError(`invalid template uid "${t.uid}"`, { hint: "a template uid is a lowercase UUID" });
}

export function templateFileName(t: TemplateName): string {
  validateTemplateRef(t);
  return `${t.name}.${t.uid}.qcow2`;
}

/** A half-made copy: `.${name}.${uid}.qcow2.tmp-${random}`. */
export function templateTempFileName(t: TemplateName, random: string): string {
  if (!/^[0-9a-f]+$/.test(random)) throw new InvalidArgumentError(`invalid temp suffix "${random}"`);
  return `.${templateFileName(t)}.tmp-${random}`;
}

export function isTemplateTempOf(t: TemplateName, fileName: string): boolean {
  return fileName.startsWith(`.${templateFileName(t)}.tmp-`);
}

export function templateExportId(uid: string): string {
  if (!UID_RE.test(uid)) throw new InvalidArgumentError(`invalid template uid "${uid}"`);
  return `t-${uid.replace(/-/g, "")}`;
}

function checkPath(path: string): void {
  if (!path.startsWith("/")) throw new InvalidArgumentError(`image path "${path}" is not absolute`);
}

/**
 * A linked clone: a thin qcow2 image whose unwritten clusters read from the
 * template copy. `-F qcow2` names the backing format, so it is never probed.
 * No preallocation: qcow2 refuses it together with a backing file.
 */
export function linkedCloneArgs(spec: { path: string; backingPath: string; sizeBytes: number }): string[] {
  checkPath(spec.path);
  checkPath(spec.backingPath);
  if (!Number.isSafeInteger(spec.sizeBytes) || spec.sizeBytes <= 0) throw new InvalidArgumentError(`invalid image size ${spec.sizeBytes}`);
  return ["create", "-q", "-f", "qcow2", "-b", spec.backingPath, "-F", "qcow2", spec.path, String(spec.sizeBytes)];
}

export async function createLinkedClone(spec: { path: string; backingPath: string; sizeBytes: number }): Promise<void> {
  if (!(await exists(spec.backingPath))) {
    throw new FailedPreconditionError(`the template copy ${spec.backingPath} is missing on this node`, { hint: "the controller copies it before it creates a linked clone's replica; retry" });
  }
  await run(QEMU_IMG, linkedCloneArgs(spec), { timeoutMs: 60_000 });
}

/**
 * A new qcow2 image with the content of an NBD export read as raw (another
 * node's template copy, a replica's export, or a file stowctl serves). Zero
 * ranges stay holes; `-t writeback` flushes once at the end.
 */
export function templateFromNbdArgs(spec: { sourceUri: string; targetPath: string; rateLimitBytes: number }): string[] {
  checkPath(spec.targetPath);
  if (!/^nbd(\+unix)?:\/\//.test(spec.sourceUri)) throw new InvalidArgumentError(`template source "${spec.sourceUri}" is not an NBD URI`);
  if (!Number.isSafeInteger(spec.rateLimitBytes) || spec.rateLimitBytes < 0) throw new InvalidArgumentError(`invalid rate limit ${spec.rateLimitBytes}`);
  return [
    "convert", "-t", "writeback", "-f", "raw", "-O", "qcow2",
    ...(spec.rateLimitBytes > 0 ? ["-r", String(spec.rateLimitBytes)] : []),
    spec.sourceUri, spec.targetPath,
  ];
}

export async function templateFromNbd(spec: { sourceUri: string; targetPath: string; rateLimitBytes: number }): Promise<void> {
  await run(QEMU_IMG, templateFromNbdArgs(spec), { timeoutMs: 24 * 3600_000 });
}
