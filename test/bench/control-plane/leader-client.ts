// API calls that follow the leader of a test cluster, as any client would.
import { NotLeaderError, UnavailableError } from "../../../lib/errors.js";
import type { TestCluster } from "../../harness/cluster.js";

type Api = ReturnType<TestCluster["api"]>;

/**
 * API calls against the current leader. Like any client it follows the leader: on
 * NotLeaderError or an unreachable controller it finds the leader again and retries
 * (every call used here is idempotent). The time spent doing so stays in the figures,
 * and the number of times it happened is reported.
 */
export class LeaderClient {
  redirects = 0;
  private api?: Api;
  private resolving?: Promise<Api>;

  constructor(private readonly c: TestCluster) {}

  async call<T>(fn: (api: Api) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const api = this.api ?? (await this.resolve());
      try {
        return await fn(api);
      } catch (err) {
        if (!(err instanceof NotLeaderError || err instanceof UnavailableError) || attempt >= 10) throw err;
        this.redirects++;
        if (this.api === api) this.api = undefined;
      }
    }
  }

  private resolve(): Promise<Api> {
    this.resolving ??= this.c.leaderApi().then(
      (api) => {
        this.resolving = undefined;
        return (this.api = api);
      },
      (err) => {
        this.resolving = undefined;
        throw err;
      },
    );
    return this.resolving;
  }
}
