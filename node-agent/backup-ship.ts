// Asynchronous replication, the sending side: a copy of a replica is chunked on the
// node that serves its fleece (here), and only the chunks the target node's store
// lacks cross the network.
//
//   1. Chunk the local export into an index store (DATA_DIR/backups/index: manifests
//      only, no chunk stored or looked up; lib/chunks "index stores"): from the
//      previous copy's manifest and the export's dirty bitmap when the index still
//      has that manifest, else a full local pass (local NBD reads are cheap).
//   2. Open BackupTransferService.ReceiveBackup on the target's agent, send the
//      manifest; the target touches what it has and answers with the ids it lacks.
//   3. Read exactly those chunks from the export, compress them (the target store's
//      zstd level, on the chunk workers) and send them as packs; the target checks
//      and stores each, then commits the manifest under the same name as a backup
//      written there would have (node-agent/backup-receive.ts).
//   4. Drop the index's older manifests of the volume: the newest is the next base.
// Every step can be repeated: an index manifest already there (an earlier attempt of
// the same copy, same fleece) is reused, one missing means a full local pass, and a
// stream broken at any point commits nothing on the target.
import { stat } from "node:fs/promises";
import { join } from "node:path";
import type { ClientDuplexStream, ServiceError } from "@grpc/grpc-js";
import { BackupTransferServiceService, type ReceiveBackupRequest, type ReceiveBackupResponse } from "../gen/stowage/v1/agent.js";
import { ChunkStore, sendMissing } from "../lib/chunks/index.js";
import { fromGrpcError, InvalidArgumentError } from "../lib/errors.js";
import { faultPoint } from "../lib/faults.js";
import { Channel, type TransportSecurity } from "../lib/grpc.js";
import type { Logger } from "../lib/logger.js";
import { NbdClient } from "../lib/nbd/client.js";
import { parseNbdUri } from "../lib/nbd-uri.js";
import { KeyedMutex } from "../lib/keyed-mutex.js";
import { writeFromExport } from "./backups.js";

/** An index manifest of a volume not copied for this long goes (replications run at least weekly). */
const INDEX_KEEP_MS = 8 * 86_400_000;
/** Bytes of the manifest per message. */
const MANIFEST_PART = 1024 * 1024;

export interface ShipRequest {
  name: string;
  sourceUri: string;
  incremental?: { base: string; bitmap: string };
  targetAddress: string;
}

export interface ShipStats {
  logicalBytes: number;
  dataBytes: number;
  newChunks: number;
  newBytes: number;
  storedBytes: number;
  readBytes: number;
  shippedBytes: number;
  incremental: boolean;
  ms: number;
}

export interface ShipperOptions {
  dataDir: string;
  /** The node's own transport security: its client to other agents uses it too. */
  security: TransportSecurity;
  logger: Logger;
}

export class BackupShipper {
  private indexP: Promise<ChunkStore> | undefined;
  private readonly mutex = new KeyedMutex();
  private readonly channels = new Map<string, Channel>();

  constructor(private readonly o: ShipperOptions) {}

  private index(): Promise<ChunkStore> {
    this.indexP ??= ChunkStore.open(join(this.o.dataDir, "backups", "index"), { indexOnly: true });
    this.indexP.catch(() => (this.indexP = undefined));
    return this.indexP;
  }

  private channel(address: string): Channel {
    let ch = this.channels.get(address);
    if (!ch) this.channels.set(address, (ch = new Channel(address, this.o.security)));
    return ch;
  }

  ship(req: ShipRequest): Promise<ShipStats> {
    if (!/^[a-z0-9][a-z0-9._-]{0,100}@[a-z0-9][a-z0-9._-]{0,48}$/.test(req.name)) throw new InvalidArgumentError(`invalid backup name "${req.name}"`);
    if (!req.targetAddress) throw new InvalidArgumentError("the request names no target agent");
    return this.mutex.run(req.name, () => this.shipNow(req));
  }

  private async shipNow(req: ShipRequest): Promise<ShipStats> {
    const t0 = Date.now();
    const log = this.o.logger.child({ backup: req.name, target: req.targetAddress });
    const index = await this.index();
    const have = new Set(await index.list());
    // 1. The manifest, from this node's own reads.
    let readBytes = 0;
    let incremental = false;
    if (!have.has(req.name)) {
      incremental = req.incremental !== undefined && have.has(req.incremental.base);
      const w = await writeFromExport(Promise.resolve(index), req.name, req.sourceUri, incremental ? req.incremental : undefined, log);
      readBytes += w.readBytes;
    }
    const tIndex = Date.now();
    const [manifestFile, manifest, client] = await Promise.all([index.manifestFile(req.name), index.manifest(req.name), NbdClient.connect({ ...parseNbdUri(req.sourceUri) })]);
    const call = this.channel(req.targetAddress).duplex(BackupTransferServiceService.receiveBackup);
    const stream = new Conversation(call);
    try {
      // 2. The manifest out, the missing ids back.
      let shippedBytes = manifestFile.length;
      await stream.send({ msg: { $case: "start", value: { name: req.name, manifestBytes: manifestFile.length } } });
      for (let at = 0; at < manifestFile.length; at += MANIFEST_PART) {
        await stream.send({ msg: { $case: "manifestPart", value: manifestFile.subarray(at, at + MANIFEST_PART) } });
      }
      const parts: Buffer[] = [];
      let zstdLevel = 3;
      for (;;) {
        const r = await stream.receive();
        if (r.msg?.$case !== "missing") throw new Error(`the target answered ${r.msg?.$case ?? "nothing"} instead of the missing chunks`);
        parts.push(Buffer.from(r.msg.value.ids));
        zstdLevel = r.msg.value.zstdLevel || zstdLevel;
        if (r.msg.value.last) break;
      }
      const missing = Buffer.concat(parts);
      const tMissing = Date.now();
      // 3. Exactly those chunks, as packs.
      let packs = 0;
      await sendMissing(manifest, missing, (offset, length) => {
        readBytes += length;
        return client.read(offset, length);
      }, zstdLevel, async (p) => {
        await stream.send({ msg: { $case: "pack", value: { ids: p.ids, pack: p.pack } } });
        shippedBytes += p.ids.length + p.pack.length;
        if (++packs === 2) faultPoint("ship-backup:sent-packs", req.name.slice(0, req.name.indexOf("@")));
      });
      await stream.send({ msg: { $case: "end", value: {} } });
      const r = await stream.receive();
      if (r.msg?.$case !== "done") throw new Error(`the target answered ${r.msg?.$case ?? "nothing"} instead of committing`);
      call.end();
      const done = r.msg.value;
      // 4. The index keeps this copy's manifest only: the next copy's base.
      await this.prune(index, req.name);
      const ms = Date.now() - t0;
      const stats: ShipStats = { logicalBytes: done.logicalBytes, dataBytes: done.dataBytes, newChunks: done.newChunks, newBytes: done.newBytes, storedBytes: done.storedBytes, readBytes, shippedBytes, incremental, ms };
      log.info({ ...stats, missingChunks: missing.length / 32, packs, steps: { index: tIndex - t0, manifest: tMissing - tIndex, chunks: Date.now() - tMissing } }, "backup shipped");
      return stats;
    } catch (err) {
      call.cancel(); // the target commits nothing
      throw stream.failure ?? err;
    } finally {
      client.destroy();
    }
  }

  /**
   * Removes the index's manifests of the same volume older than `name`, those of
   * any volume not refreshed for longer than the longest interval (a volume or a
   * replication deleted: at worst a later copy makes a full local pass), and what
   * dead writers left.
   */
  private async prune(index: ChunkStore, name: string): Promise<void> {
    const volume = name.slice(0, name.indexOf("@") + 1);
    const staleBefore = Date.now() - INDEX_KEEP_MS;
    for (const m of await index.list()) {
      const stale = m.startsWith(volume) ? m < name : await stat(join(index.root, "manifests", m)).then((st) => st.mtimeMs < staleBefore, () => false);
      if (stale) await index.delete(m).catch(() => undefined);
    }
    await index.gc().catch((err) => this.o.logger.warn({ err: String(err) }, "cleaning the backup index failed"));
  }

  close(): void {
    for (const ch of this.channels.values()) ch.close();
    this.channels.clear();
  }
}

/** One ReceiveBackup call, as sends that wait for the transport and receives in order. */
class Conversation {
  private readonly it: AsyncIterator<ReceiveBackupResponse>;
  /** The call's error, as the StowageError class the target threw. */
  failure: Error | undefined;
  private readonly failed: Promise<never>;

  constructor(private readonly call: ClientDuplexStream<ReceiveBackupRequest, ReceiveBackupResponse>) {
    this.it = call[Symbol.asyncIterator]();
    this.failed = new Promise((_, reject) => {
      call.on("error", (err: ServiceError) => {
        this.failure ??= fromGrpcError(err);
        reject(this.failure);
      });
    });
    this.failed.catch(() => undefined);
  }

  async send(msg: ReceiveBackupRequest): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.call.write(msg)) return;
    await Promise.race([new Promise<void>((resolve) => this.call.once("drain", resolve)), this.failed]);
  }

  async receive(): Promise<ReceiveBackupResponse> {
    const r = await Promise.race([this.it.next(), this.failed]);
    if (r.done) throw this.failure ?? new Error("the target ended the stream");
    return r.value;
  }
}
