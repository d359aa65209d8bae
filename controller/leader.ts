// Leader election through etcd. Exactly one controller instance leads; the
// others keep a warm mirror of the state and point callers at the leader.
import { EventEmitter } from "node:events";
import type { Campaign, Election, Etcd3 } from "etcd3";
import { errorMessage } from "../lib/errors.js";
import type { Logger } from "../lib/logger.js";
import { keys } from "./keys.js";

export class LeaderElection extends EventEmitter<{ elected: [fenceKey: string]; lost: [] }> {
  private readonly election: Election;
  private campaign?: Campaign;
  private leading = false;
  private stopped = false;
  private cachedLeader = { value: "", at: 0 };

  constructor(
    etcd: Etcd3,
    /** This instance's API address, published as the election value. */
    readonly address: string,
    ttlSec: number,
    private readonly log: Logger,
  ) {
    super();
    this.election = etcd.election(keys.election, ttlSec);
  }

  get isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    if (this.stopped) return;
    const campaign = this.election.campaign(this.address);
    this.campaign = campaign;
    campaign.on("elected", async () => {
      try {
        const fenceKey = await campaign.getCampaignKey();
        this.leading = true;
        this.cachedLeader = { value: this.address, at: Date.now() };
        this.log.info({ fenceKey }, "elected leader");
        this.emit("elected", fenceKey);
      } catch (err) {
        this.log.error({ err: errorMessage(err) }, "could not read the campaign key");
      }
    });
    campaign.on("error", (err) => {
      const wasLeader = this.leading;
      this.leading = false;
      this.log.warn({ err: errorMessage(err), wasLeader }, "campaign failed; campaigning again");
      if (wasLeader) this.emit("lost");
      setTimeout(() => this.start(), 500).unref();
    });
  }

  /** The current leader's address ("" if none), cached briefly. */
  async leader(): Promise<string> {
    if (this.leading) return this.address;
    if (Date.now() - this.cachedLeader.at < 300) return this.cachedLeader.value;
    const value = (await this.election.leader().catch(() => undefined)) ?? "";
    this.cachedLeader = { value, at: Date.now() };
    return value;
  }

  /** Resigns (so a standby takes over at once) and stops campaigning. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.leading = false;
    await this.campaign?.resign().catch(() => undefined);
  }
}
