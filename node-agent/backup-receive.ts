// Asynchronous replication, the receiving side (BackupTransferService.ReceiveBackup,
// served to other node agents): a copy another node chunked (node-agent/backup-ship.ts)
// committed into this node's chunk store, of which only the chunks the store lacks
// are sent (lib/chunks/receive-session.ts checks and stores them). The backup ends
// up exactly as if WriteBackup had written it here, under the same name.
//
// The conversation: start and the manifest in parts -> the missing ids, in parts ->
// packs -> end -> done. Anything else, a bad pack or the sender going away (the
// call cancelled) ends the session without a commit: nothing half-written remains
// but chunks the next GC removes.
import type { ServerDuplexStream } from "@grpc/grpc-js";
import type { BackupTransferServiceService, ReceiveBackupRequest, ReceiveBackupResponse } from "../gen/stowage/v1/agent.js";
import type { ChunkStore } from "../lib/chunks/index.js";
import { InvalidArgumentError, UnavailableError } from "../lib/errors.js";
import type { DuplexService } from "../lib/grpc.js";
import { KeyedMutex } from "../lib/keyed-mutex.js";
import type { Logger } from "../lib/logger.js";

/** Missing ids per message (32 bytes each: 1 MiB). */
const IDS_PER_PART = 32 * 1024;
/** A manifest larger than this is refused (40 bytes per chunk: ~100 TB of 64 KiB chunks). */
const MAX_MANIFEST = 64 * 1024 * 1024 * 1024;

type Call = ServerDuplexStream<ReceiveBackupRequest, ReceiveBackupResponse>;

export function backupTransferService(store: () => Promise<ChunkStore>, logger: Logger): DuplexService<typeof BackupTransferServiceService> {
  const mutex = new KeyedMutex();
  return {
    receiveBackup: async (call: Call) => {
      // A cancelled call (the sender died or gave up) only emits "cancelled": end the reads with an error.
      call.on("cancelled", () => call.destroy(new UnavailableError("the sending node went away")));
      const it = call[Symbol.asyncIterator]() as AsyncIterator<ReceiveBackupRequest>;
      const next = async (): Promise<ReceiveBackupRequest["msg"]> => {
        const r = await it.next();
        if (r.done) throw new UnavailableError("the sending node ended the stream early");
        return r.value.msg;
      };
      const first = await next();
      if (first?.$case !== "start") throw new InvalidArgumentError(`a transfer must begin with start, not ${first?.$case}`);
      const { name, manifestBytes } = first.value;
      if (manifestBytes > MAX_MANIFEST) throw new InvalidArgumentError(`a manifest of ${manifestBytes} bytes is too large`);
      await mutex.run(name, async () => {
        const t0 = Date.now();
        const parts: Buffer[] = [];
        for (let got = 0; got < manifestBytes; ) {
          const m = await next();
          if (m?.$case !== "manifestPart") throw new InvalidArgumentError(`expected the manifest, got ${m?.$case}`);
          parts.push(Buffer.from(m.value));
          got += m.value.length;
          if (got > manifestBytes) throw new InvalidArgumentError("more manifest than announced");
        }
        const session = await (await store()).receive(name, Buffer.concat(parts));
        try {
          const { missing, zstdLevel } = session;
          for (let at = 0; ; at += 32 * IDS_PER_PART) {
            const ids = missing.subarray(at, at + 32 * IDS_PER_PART);
            const last = at + ids.length >= missing.length;
            await write(call, { msg: { $case: "missing", value: { ids, last, zstdLevel } } });
            if (last) break;
          }
          for (;;) {
            const m = await next();
            if (m?.$case === "end") break;
            if (m?.$case !== "pack") throw new InvalidArgumentError(`expected a pack or the end, got ${m?.$case}`);
            await session.addPack(Buffer.from(m.value.ids), Buffer.from(m.value.pack));
          }
          const s = await session.commit();
          logger.info({ backup: name, dataBytes: s.dataBytes, newChunks: s.newChunks, newBytes: s.newBytes, storedBytes: s.storedBytes, packs: s.packs, ms: Date.now() - t0 }, "backup received");
          await write(call, { msg: { $case: "done", value: { logicalBytes: s.logicalBytes, dataBytes: s.dataBytes, newChunks: s.newChunks, newBytes: s.newBytes, storedBytes: s.storedBytes } } });
        } catch (err) {
          logger.warn({ backup: name, err: String(err) }, "receiving a backup failed; nothing committed");
          throw err;
        } finally {
          await session.close();
        }
      });
    },
  };
}

function write(call: Call, msg: ReceiveBackupResponse): Promise<void> {
  if (call.write(msg)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = (err?: unknown) => {
      call.off("drain", drained);
      call.off("close", closed);
      if (err) reject(err);
      else resolve();
    };
    const drained = () => done();
    const closed = () => done(new UnavailableError("the sending node went away"));
    call.on("drain", drained);
    call.on("close", closed);
  });
}
