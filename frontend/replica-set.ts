// The replicas of one volume behind the frontend's NBD server: writes (and
// trims, write-zeroes, flushes) go to every replica, reads to the first
// healthy one (the local replica is listed first). With one replica a request
// is forwarded as received: the header is edited in place (only the cookie
// changes) and the payload slices are passed on, so nothing is copied.
//
// Write policy until replication lands: a write succeeds only if every
// replica took it; a missing replica fails it with EIO rather than letting the
// copies diverge silently. Marking a replica out-of-sync, dirty-region
// tracking and resync belong to the replication work and slot in here.
import type { Logger } from "pino";
import type { NbdBackend, NbdRequest } from "../lib/nbd/backend.js";
import type { NbdCompletion } from "../lib/nbd/client.js";
import { Cmd, DEFAULT_BLOCK_SIZES, Errno, TxFlag, type BlockSizes } from "../lib/nbd/protocol.js";
import { Gather, type Replica } from "./replica.js";

/** Capabilities every replica must have for the frontend to advertise them. */
const SHARED_CAPABILITIES = TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES;

export class ReplicaSet implements NbdBackend {
  readonly size: number;
  readonly txFlags: number;
  readonly blockSizes: BlockSizes;
  /** Called when backend congestion starts (true) and ends (false); pause intake meanwhile. */
  onBusy: ((busy: boolean) => void) | undefined;
  private congestedReplicas = 0;

  constructor(
    readonly replicas: readonly Replica[],
    private readonly log?: Logger,
  ) {
    if (replicas.length === 0) throw new Error("a replica set needs at least one replica");
    const infos = replicas.map((r) => r.info);
    const sizes = new Set(infos.map((i) => i.size));
    if (sizes.size !== 1) {
      throw new Error(`replicas disagree on the volume size: ${replicas.map((r) => `${r.address.spec}=${r.info.size}`).join(", ")}`);
    }
    this.size = infos[0]!.size;
    let caps = SHARED_CAPABILITIES;
    let readOnly = 0;
    for (const i of infos) {
      caps &= i.txFlags;
      readOnly |= i.txFlags & TxFlag.READ_ONLY;
    }
    this.txFlags = caps | readOnly;
    this.blockSizes = {
      minimum: Math.max(DEFAULT_BLOCK_SIZES.minimum, ...infos.map((i) => i.blockSizes.minimum)),
      preferred: Math.max(DEFAULT_BLOCK_SIZES.preferred, ...infos.map((i) => i.blockSizes.preferred)),
      maximum: Math.min(DEFAULT_BLOCK_SIZES.maximum, ...infos.map((i) => i.blockSizes.maximum)),
    };
    for (const r of replicas) {
      r.on("congestion", (on) => {
        const before = this.congestedReplicas;
        this.congestedReplicas += on ? 1 : -1;
        if ((before === 0) !== (this.congestedReplicas === 0)) this.onBusy?.(this.congestedReplicas > 0);
      });
      r.on("unhealthy", () => this.log?.error({ replica: r.address.spec }, "replica has no usable connection left"));
    }
  }

  read(req: NbdRequest): void {
    const rs = this.replicas;
    for (let i = 0; i < rs.length; i++) {
      const c = rs[i]!.pick();
      if (c !== undefined) return c.submit(Cmd.READ, req.flags, req.offset, req.length, undefined, req, req.header);
    }
    req.done(Errno.EIO);
  }

  write(req: NbdRequest): void {
    this.toAll(req, req.data);
  }

  trim(req: NbdRequest): void {
    this.toAll(req, undefined);
  }

  writeZeroes(req: NbdRequest): void {
    this.toAll(req, undefined);
  }

  flush(req: NbdRequest): void {
    const rs = this.replicas;
    if (rs.length === 1) return rs[0]!.flushAll(req.flags, req);
    const g = new Gather(rs.length, req);
    for (const r of rs) r.flushAll(req.flags, g);
  }

  /** Flushes and disconnects every replica. */
  async close(): Promise<void> {
    await Promise.all(this.replicas.map((r) => r.close()));
  }

  private toAll(req: NbdRequest, payload: Buffer[] | undefined): void {
    const rs = this.replicas;
    if (rs.length === 1) {
      const c = rs[0]!.pick();
      if (c === undefined) return req.done(Errno.EIO);
      return c.submit(req.type, req.flags, req.offset, req.length, payload, req, req.header);
    }
    const g: NbdCompletion = new Gather(rs.length, req);
    for (let i = 0; i < rs.length; i++) {
      const c = rs[i]!.pick();
      if (c === undefined) {
        g.nbdDone(Errno.EIO, undefined, undefined);
        continue;
      }
      // The first replica gets the received header edited in place; the others need their own
      // copy, because each connection writes its own cookie into it.
      const header = i === 0 ? req.header : Buffer.from(req.header);
      c.submit(req.type, req.flags, req.offset, req.length, payload, g, header);
    }
  }
}
