// Argument and return types of the QMP commands Stowage sends to
// qemu-storage-daemon 7.2, written from its `query-qmp-schema`. Only the members
// we use are listed; QMP ignores none of them, so a typo here is a QMP error.
import type { QmpVersion } from "./qmp-protocol.js";

export type AioMode = "threads" | "native" | "io_uring";

export interface BlockdevCacheOptions {
  direct?: boolean;
  "no-flush"?: boolean;
}

interface BlockdevCommon {
  "node-name": string;
  "read-only"?: boolean;
  "auto-read-only"?: boolean;
  discard?: "ignore" | "unmap";
  "detect-zeroes"?: "off" | "on" | "unmap";
  cache?: BlockdevCacheOptions;
}

export interface BlockdevFileOptions extends BlockdevCommon {
  driver: "file";
  filename: string;
  aio?: AioMode;
  locking?: "auto" | "on" | "off";
}

export interface BlockdevFormatOptions extends BlockdevCommon {
  driver: "qcow2" | "raw";
  /** node name of the protocol (file) node */
  file: string;
}

export type BlockdevOptions = BlockdevFileOptions | BlockdevFormatOptions;

export interface BlockExportNbdOptions {
  type: "nbd";
  id: string;
  "node-name": string;
  /** export name clients ask for; defaults to node-name */
  name?: string;
  description?: string;
  writable?: boolean;
  writethrough?: boolean;
  /** Dirty bitmaps of the node offered as "qemu:dirty-bitmap:NAME" metadata contexts. */
  bitmaps?: string[];
  /** Offer the "qemu:allocation-depth" metadata context (which layer of the backing chain holds each range). */
  "allocation-depth"?: boolean;
}

export interface BlockExportInfo {
  id: string;
  type: string;
  "node-name": string;
  "shutting-down": boolean;
}

export interface BlockDeviceImageInfo {
  filename: string;
  format: string;
  "virtual-size": number;
  "actual-size"?: number;
  /** Internal snapshots (qcow2). */
  snapshots?: SnapshotInfo[];
}

export interface SnapshotInfo {
  id: string;
  name: string;
  "date-sec": number;
  "date-nsec": number;
  "vm-state-size": number;
}

export interface BlockDeviceInfo {
  file: string;
  "node-name"?: string;
  ro: boolean;
  drv: string;
  image: BlockDeviceImageInfo;
  cache: { writeback: boolean; direct: boolean; "no-flush": boolean };
}

export type SocketAddress =
  | { type: "unix"; path: string }
  | { type: "inet"; host: string; port: string }
  | { type: "fd"; str: string };

type Empty = Record<string, never>;

/** command name -> [arguments, return value]; `undefined` arguments means the command takes none. */
export interface QmpCommandMap {
  qmp_capabilities: [undefined, Empty];
  "query-version": [undefined, QmpVersion];
  quit: [undefined, Empty];
  "blockdev-add": [BlockdevOptions, Empty];
  "blockdev-del": [{ "node-name": string }, Empty];
  "block-export-add": [BlockExportNbdOptions, Empty];
  "block-export-del": [{ id: string; mode?: "safe" | "hard" }, Empty];
  "query-block-exports": [undefined, BlockExportInfo[]];
  "query-named-block-nodes": [{ flat?: boolean } | undefined, BlockDeviceInfo[]];
  block_resize: [{ "node-name": string; size: number }, Empty];
  "blockdev-snapshot-internal-sync": [{ device: string; name: string }, Empty];
  "blockdev-snapshot-delete-internal-sync": [{ device: string; name: string }, SnapshotInfo];
  "nbd-server-start": [{ addr: SocketAddress; "tls-creds"?: string; "max-connections"?: number }, Empty];
}

export type QmpCommandName = keyof QmpCommandMap;
export type QmpArgs<K extends QmpCommandName> = QmpCommandMap[K][0];
export type QmpReturn<K extends QmpCommandName> = QmpCommandMap[K][1];
/** The arguments parameter: optional when the command may be sent without arguments. */
export type QmpArgsParam<K extends QmpCommandName> = undefined extends QmpArgs<K> ? [args?: QmpArgs<K>] : [args: QmpArgs<K>];
