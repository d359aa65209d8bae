// A qemu-storage-daemon exporting one image over NBD on a unix socket, for guest tests.
import { chmod, mkdir, stat } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { eventually, Proc } from "../harness/processes.js";
import { Qmp } from "./qmp.js";
import { killOnExit } from "./reaper.js";

export interface QsdOptions {
  /** Directory for the image (unless `image` is given) and the sockets. */
  dir: string;
  /** Image path; created when missing. Default DIR/disk.qcow2 (or .raw). */
  image?: string;
  format?: "qcow2" | "raw";
  sizeMiB?: number;
  exportName?: string;
  /**
   * Let every user connect to the NBD socket (QEMU under libvirt runs as
   * libvirt-qemu). Default true.
   */
  worldConnectable?: boolean;
}

export interface QsdExport {
  image: string;
  format: "qcow2" | "raw";
  exportName: string;
  /** NBD unix socket. */
  socket: string;
  qmpSocket: string;
  /** nbd+unix:///EXPORT?socket=PATH */
  uri: string;
  proc: Proc;
  qmp(): Promise<Qmp>;
  stop(): Promise<void>;
}

export async function startQsd(o: QsdOptions): Promise<QsdExport> {
  const format = o.format ?? "qcow2";
  const exportName = o.exportName ?? "vol0";
  await mkdir(o.dir, { recursive: true });
  const image = o.image ?? join(o.dir, `disk.${format}`);
  if (!existsSync(image)) await execa("qemu-img", ["create", "-q", "-f", format, image, `${o.sizeMiB ?? 64}M`]);
  const socket = join(o.dir, `${exportName}.nbd.sock`);
  const qmpSocket = join(o.dir, `${exportName}.qsd-qmp.sock`);
  const proc = Proc.start("qemu-storage-daemon", "qemu-storage-daemon", [
    "--blockdev", `driver=file,node-name=file0,filename=${image}`,
    "--blockdev", `driver=${format},node-name=disk0,file=file0`,
    "--nbd-server", `addr.type=unix,addr.path=${socket}`,
    "--export", `type=nbd,id=exp0,node-name=disk0,name=${exportName},writable=on`,
    "--chardev", `socket,id=qmp0,path=${qmpSocket},server=on,wait=off`,
    "--monitor", "chardev=qmp0",
  ]);
  killOnExit(proc.child);
  const stop = async () => {
    await proc.kill("SIGTERM");
  };
  try {
    await eventually(async () => {
      if (!proc.running) throw new Error(`qemu-storage-daemon exited:\n${proc.output}`);
      return existsSync(socket) && existsSync(qmpSocket);
    }, 10_000, "qemu-storage-daemon sockets");
    if (o.worldConnectable ?? true) {
      await chmod(socket, 0o777);
      if (((await stat(o.dir)).mode & 0o005) !== 0o005) await chmod(o.dir, 0o755);
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    image,
    format,
    exportName,
    socket,
    qmpSocket,
    uri: `nbd+unix:///${exportName}?socket=${socket}`,
    proc,
    qmp: () => Qmp.connect(qmpSocket),
    stop,
  };
}
