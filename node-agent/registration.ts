// Keeps this node registered with the controller leader: RegisterNode once, then
// Heartbeat with fresh pool stats every interval the controller asked for. Follows
// NotLeaderError to the leader, moves down the controller list when one is down,
// and registers again when the controller no longer knows the node.
import {
  DeadlineError,
  errorMessage,
  NotFoundError,
  NotLeaderError,
  UnavailableError,
} from "../lib/errors.js";
import { Channel, INSECURE, type PromiseClient, type TransportSecurity } from "../lib/grpc.js";
import type { Logger } from "../lib/logger.js";
import { AgentRegistryServiceService } from "../gen/stowage/v1/controller.js";
import type { Pool } from "../gen/stowage/v1/types.js";

export interface RegistrationOptions {
  name: string;
  /** Address the controllers use to reach this agent. */
  address: string;
  labels: { zone: string; rack: string };
  controllers: string[];
  agentVersion: string;
  /** How other nodes reach this node's libvirtd (absent: no VM support). */
  libvirt?: { uri: string; migrationHost: string };
  /** Fresh pool reports; called before every RegisterNode and Heartbeat. */
  pools: () => Promise<Pool[]>;
  logger: Logger;
  security?: TransportSecurity;
  /** Deadline of each call (default 2000 ms). */
  callTimeoutMs?: number;
  /** Pause after every controller failed, or when there is no leader (default 1000 ms). */
  retryDelayMs?: number;
}

export type RegistrationState = "starting" | "registered" | "unreachable" | "no-leader" | "failing" | "stopped";

const DEFAULT_HEARTBEAT_MS = 1000;
/** Leader redirects followed without a pause (guards against two controllers naming each other). */
const MAX_REDIRECTS = 3;

type RegistryClient = PromiseClient<typeof AgentRegistryServiceService>;

/** What went wrong in the attempts since the last success or pause. */
interface Round {
  unreachable: number;
  redirects: number;
  sawFollower: boolean;
  otherError: boolean;
  lastError: unknown;
}

function newRound(): Round {
  return { unreachable: 0, redirects: 0, sawFollower: false, otherError: false, lastError: undefined };
}

export class Registration {
  private readonly channels = new Map<string, Channel>();
  private current: string;
  private listIndex = 0;
  private registered = false;
  private stopped = false;
  private loopDone: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private stateKey = "";
  private _state: RegistrationState = "starting";
  private _heartbeatIntervalMs = DEFAULT_HEARTBEAT_MS;

  constructor(private readonly opts: RegistrationOptions) {
    if (opts.controllers.length === 0) throw new Error("registration needs at least one controller address");
    this.current = opts.controllers[0]!;
  }

  get state(): RegistrationState {
    return this._state;
  }

  /** The controller address the agent talks to now. */
  get controller(): string {
    return this.current;
  }

  get heartbeatIntervalMs(): number {
    return this._heartbeatIntervalMs;
  }

  start(): void {
    if (this.loopDone) return;
    this.loopDone = this.loop();
  }

  /**
   * Registers again at the next turn of the loop: a new registration epoch makes
   * the controller re-apply every replica, export and frontend of this node
   * (used after the storage daemon was lost and restarted empty).
   */
  reregister(): void {
    this.registered = false;
    this.wake?.();
  }

  /** Ends the loop (waiting for a call in flight) and closes the channels. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.loopDone;
    for (const ch of this.channels.values()) ch.close();
    this.channels.clear();
    this.setState("stopped", "", "registration stopped");
  }

  /**
   * Calls until a round of attempts fails: every listed controller down, or no
   * reachable leader. Only then does it pause and set a state, so an outage is one
   * state (logged once), however the controllers fail within each round.
   */
  private async loop(): Promise<void> {
    let round = newRound();
    while (!this.stopped) {
      const started = Date.now();
      try {
        await (this.registered ? this.heartbeat() : this.register());
        round = newRound();
        if (this.registered) await this.sleep(this._heartbeatIntervalMs - (Date.now() - started));
        continue;
      } catch (err) {
        if (this.stopped) break;
        round.lastError = err;
        if (err instanceof NotLeaderError) {
          round.sawFollower = true;
          if (err.leader && err.leader !== this.current && round.redirects < MAX_REDIRECTS) {
            round.redirects++;
            this.opts.logger.debug({ from: this.current, to: err.leader }, "following the leader");
            this.current = err.leader;
            continue;
          }
          this.nextController();
        } else if (err instanceof UnavailableError || err instanceof DeadlineError) {
          this.opts.logger.debug({ controller: this.current, err: errorMessage(err) }, "controller did not answer");
          this.nextController();
          if (++round.unreachable < this.opts.controllers.length) continue;
        } else {
          round.otherError = true;
        }
      }
      this.endFailedRound(round);
      round = newRound();
      await this.sleep(this.retryDelayMs);
    }
  }

  private endFailedRound(round: Round): void {
    const err = round.lastError;
    const fields = { controllers: this.opts.controllers, err: errorMessage(err) };
    if (round.otherError) {
      this.setState("failing", (err as Error)?.name ?? "", "registration failed; retrying", { controller: this.current, ...fields });
    } else if (round.sawFollower) {
      this.setState("no-leader", "", "no reachable controller leader; retrying", fields);
    } else {
      this.setState("unreachable", "", "no controller reachable; retrying", fields);
    }
  }

  private async register(): Promise<void> {
    const o = this.opts;
    const res = await this.client().registerNode(
      { name: o.name, address: o.address, labels: o.labels, pools: await o.pools(), agentVersion: o.agentVersion, libvirt: o.libvirt },
      { timeoutMs: this.callTimeoutMs },
    );
    this._heartbeatIntervalMs = res.heartbeatIntervalMs > 0 ? res.heartbeatIntervalMs : DEFAULT_HEARTBEAT_MS;
    this.registered = true;
    this.setState("registered", this.current, "registered with controller", {
      controller: this.current,
      heartbeatIntervalMs: this._heartbeatIntervalMs,
    });
  }

  private async heartbeat(): Promise<void> {
    let reregister: boolean;
    try {
      const pools = await this.opts.pools();
      reregister = (await this.client().heartbeat({ name: this.opts.name, pools }, { timeoutMs: this.callTimeoutMs })).reregister;
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      reregister = true;
    }
    if (reregister) {
      // Not a failure: the controller lost the node (its lease expired); say who we are again.
      this.registered = false;
      this.opts.logger.info({ controller: this.current }, "controller asked the node to register again");
      return;
    }
    this.setState("registered", this.current, "registered with controller", { controller: this.current });
  }

  /** After the current controller failed: the next one of the configured list. */
  private nextController(): void {
    const list = this.opts.controllers;
    // A leader learned from a redirect is not in the list: go back to where the list left off.
    if (list[this.listIndex] === this.current) this.listIndex = (this.listIndex + 1) % list.length;
    this.current = list[this.listIndex]!;
  }

  private client(): RegistryClient {
    let ch = this.channels.get(this.current);
    if (!ch) {
      ch = new Channel(this.current, this.opts.security ?? INSECURE);
      this.channels.set(this.current, ch);
    }
    return ch.service(AgentRegistryServiceService);
  }

  /** Logs only when the state (or its detail, such as the controller) changes. */
  private setState(state: RegistrationState, detail: string, msg: string, fields: Record<string, unknown> = {}): void {
    this._state = state;
    const key = `${state}|${detail}`;
    if (key === this.stateKey) return;
    this.stateKey = key;
    const level = state === "registered" || state === "stopped" ? "info" : "warn";
    this.opts.logger[level](fields, msg);
  }

  private sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, Math.max(0, ms));
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  private get callTimeoutMs(): number {
    return this.opts.callTimeoutMs ?? 2000;
  }

  private get retryDelayMs(): number {
    return this.opts.retryDelayMs ?? 1000;
  }
}
