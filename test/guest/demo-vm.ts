// The demo VM of the local cluster: the test guest (it writes numbered records
// to its disk and prints "ACK n" for each durable one) as a libvirt domain on
// one node of `npm run cluster:up`. Run through deploy/demo-vm.sh.
//
//   demo-vm start NAME --node NODE   boot it on NODE with no disk; `stowctl vm attach NAME VOL` gives it one
//   demo-vm log NAME                 print its console
//   demo-vm stop NAME                destroy it wherever it runs
import { chmod, mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { execa } from "execa";
import { validateDomainName, validateName } from "../../lib/names.js";
import { errorMessage } from "../../lib/errors.js";
import { ROOT } from "../harness/root.js";
import { buildGuest, parseSerial } from "./guest.js";
import { virsh } from "./libvirt-hosts.js";
import { createGuestDomain } from "./libvirt-guest.js";

const DEMO_DIR = process.env.STOWAGE_DEMO_DIR ?? "/var/tmp/stowage-demo";
const USAGE = `usage: deploy/demo-vm.sh start NAME --node NODE | log NAME | stop NAME

  start   boots the demo guest on NODE (no disk yet: it waits for one; give it one with
          'npx stowctl vm attach NAME VOLUME'), writing one 4 KiB record every 20 ms
  log     prints its console: BOOT once per boot, ACK n after each durable write
  stop    destroys it wherever it runs
`;

async function stowctl(args: string[]): Promise<any> {
  const r = await execa("node", [join(ROOT, "bin/stowctl.js"), ...args, "-o", "json"], { reject: false });
  if (r.exitCode !== 0) throw new Error(String(r.stderr).trim());
  return JSON.parse(String(r.stdout));
}

async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { node: { type: "string" }, help: { type: "boolean", short: "h" } } });
  const [cmd, name] = positionals;
  if (values.help || !cmd || !name) {
    process.stdout.write(USAGE);
    process.exitCode = values.help ? 0 : 2;
    return;
  }
  validateDomainName(name);
  const dir = join(DEMO_DIR, name);
  const serialLog = join(dir, "serial.log");
  if (cmd === "start") {
    if (!values.node) throw new Error("start needs --node NODE (see: npx stowctl node list)");
    validateName("node", values.node);
    const node = (await stowctl(["node", "get", values.node])).node;
    if (!node.libvirtUri) throw new Error(`node ${values.node} has no libvirt (its agent runs with "libvirt": false)`);
    const images = await buildGuest();
    // libvirt's QEMU runs as libvirt-qemu: it must reach the console log.
    await mkdir(dir, { recursive: true, mode: 0o755 });
    await chmod(DEMO_DIR, 0o755);
    await chmod(dir, 0o755);
    await createGuestDomain(node.libvirtUri, { name, images, serialLog, blocks: 1024, delayUs: 20_000, diskWaitSec: 0, memMiB: 192 });
    process.stdout.write(`demo VM ${name} booting on ${values.node}; console: ${serialLog}\nnext: npx stowctl vm attach ${name} VOLUME\n`);
  } else if (cmd === "log") {
    const text = await readFile(serialLog, "utf8").catch(() => {
      throw new Error(`no console log for ${name} at ${serialLog}`);
    });
    const r = parseSerial(text);
    process.stdout.write(text);
    process.stdout.write(`-- ${r.last ? `boot ${r.last.id}: last ACK ${r.last.lastAck}, gaps ${r.last.ackGaps.length}, write errors ${r.last.writeErrors.length}` : "not booted yet"}\n`);
  } else if (cmd === "stop") {
    const vm = (await stowctl(["vm", "get", name])).vm;
    const node = (await stowctl(["node", "get", vm.node])).node;
    await virsh(node.libvirtUri, ["destroy", name]);
    process.stdout.write(`demo VM ${name} stopped on ${vm.node}\n`);
  } else {
    process.stdout.write(USAGE);
    process.exitCode = 2;
  }
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`demo-vm: ${errorMessage(err)}\n`);
  process.exit(1);
});
