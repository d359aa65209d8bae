// Validation of names that become etcd keys and file names on hosts.
import { InvalidArgumentError } from "./errors.js";

const NAME_RE = /^[a-z0-9]([a-z0-9-_.]{0,61}[a-z0-9])?$/;

/** Throws unless `name` is safe as a key segment and a file name. */
export function validateName(kind: string, name: string): void {
  if (!name) {
    throw new InvalidArgumentError(`${kind} name is empty`, { hint: `give the ${kind} a name` });
  }
  if (name.includes("/") || name.includes("..") || !NAME_RE.test(name)) {
    throw new InvalidArgumentError(`invalid ${kind} name "${name}"`, {
      hint: "use 1-63 lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit, with no '/' or '..'",
      resource: kind,
      name,
    });
  }
}

const DOMAIN_RE = /^[A-Za-z0-9]([A-Za-z0-9_.+-]{0,126}[A-Za-z0-9])?$/;

/** Throws unless `name` is a libvirt domain name Stowage can use as a key segment. */
export function validateDomainName(name: string): void {
  if (!name) throw new InvalidArgumentError("domain name is empty", { hint: "give the libvirt domain's name (virsh list)" });
  if (name.includes("..") || !DOMAIN_RE.test(name)) {
    throw new InvalidArgumentError(`invalid domain name "${name}"`, {
      hint: "use 1-128 letters, digits, '-', '_', '.' or '+', starting and ending with a letter or digit, with no '/' or '..'",
      resource: "domain",
      name,
    });
  }
}
