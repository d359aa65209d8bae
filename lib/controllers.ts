// A client over a list of controller instances that finds the leader among
// them: used by stowctl and by volume frontends (the in-sync record).
import { NotLeaderError, UnavailableError } from "./errors.js";
import { Channel, type CallOptions, type PromiseClient, type TransportSecurity } from "./grpc.js";

type ServiceDef = Parameters<Channel["service"]>[0];

/** A controller we cannot use right now; another address may answer. */
function isPassOn(err: unknown): boolean {
  return err instanceof UnavailableError || err instanceof NotLeaderError;
}

export interface ControllersOptions {
  security: TransportSecurity;
  /** Deadline of each call unless the call gives its own. */
  timeoutMs: number;
  /** Hint when the list is empty. */
  noAddressHint?: string;
  /** Hint when no address answered. */
  unreachableHint?: string;
}

/**
 * Clients over a list of controller instances. Each call tries the addresses in
 * order: a follower's NotLeaderError naming the leader is followed once, an
 * unreachable instance passes the call to the next address. The address that
 * answered moves to the front, so later calls (polling) go straight to it.
 */
export class Controllers {
  private order: string[];
  private readonly channels = new Map<string, Channel>();

  constructor(
    addresses: string[],
    private readonly o: ControllersOptions,
  ) {
    this.order = [...new Set(addresses)];
  }

  /** The addresses in the order the next call will try them. */
  get addresses(): readonly string[] {
    return this.order;
  }

  service<D extends ServiceDef>(def: D): PromiseClient<D> {
    const out: Record<string, unknown> = {};
    for (const method of Object.keys(def)) {
      out[method] = (request: unknown, options: CallOptions = {}) =>
        this.invoke((ch) => {
          const client = ch.service(def) as unknown as Record<string, (r: unknown, o: CallOptions) => Promise<unknown>>;
          return client[method]!(request, { timeoutMs: this.o.timeoutMs, ...options });
        });
    }
    return out as PromiseClient<D>;
  }

  close(): void {
    for (const ch of this.channels.values()) ch.close();
    this.channels.clear();
  }

  private async invoke<T>(call: (ch: Channel) => Promise<T>): Promise<T> {
    let last: unknown = new UnavailableError("no controller address", { hint: this.o.noAddressHint });
    for (const address of [...this.order]) {
      try {
        return await this.callOn(address, call);
      } catch (err) {
        if (!isPassOn(err)) throw err;
        last = err;
        if (!(err instanceof NotLeaderError) || !err.leader || err.leader === address) continue;
      }
      const leader = (last as NotLeaderError).leader;
      try {
        return await this.callOn(leader, call);
      } catch (err) {
        if (!isPassOn(err)) throw err;
        last = err;
      }
    }
    throw last instanceof UnavailableError ? this.unreachable(last) : last;
  }

  /** The last error, said for the whole list. */
  private unreachable(last: UnavailableError): UnavailableError {
    const detail = last.message.replace(/\s*Resolution note:\s*$/, "");
    return new UnavailableError(`cannot reach a controller at ${this.order.join(", ")}: ${detail}`, {
      hint: this.o.unreachableHint ?? "is a controller running at those addresses?",
      cause: last,
    });
  }

  private async callOn<T>(address: string, call: (ch: Channel) => Promise<T>): Promise<T> {
    let ch = this.channels.get(address);
    if (!ch) {
      ch = new Channel(address, this.o.security);
      this.channels.set(address, ch);
    }
    const result = await call(ch);
    this.order = [address, ...this.order.filter((a) => a !== address)];
    return result;
  }
}
