// JobService: the copies that bring replicas in sync, running and waiting.
import type { JobServiceService } from "../gen/stowage/v1/controller.js";
import type { Job } from "../gen/stowage/v1/types.js";
import { NotFoundError } from "../lib/errors.js";
import type { RequestHandlers } from "../lib/grpc.js";
import { validateName } from "../lib/names.js";
import { volumeJobs } from "./jobs.js";
import type { JobRecord, VolumeSpec } from "./model.js";
import { poolDedupJobs } from "./pool-dedup.js";
import { poolCompressJobs } from "./pool-compress.js";
import type { Brake } from "./replica-plan.js";
import type { ClusterStore } from "./store.js";

export interface JobApiDeps {
  store: ClusterStore;
  ensureLeader: () => Promise<void>;
  /** The rebuild brake as the leader's reconciler judges it. */
  brake: () => Brake | undefined;
}

/** Every job of the given volumes, by volume then replica. */
export function jobsOf(store: ClusterStore, specs: VolumeSpec[], now = Date.now()): Job[] {
  const records = new Map<string, JobRecord>(store.jobs().map((j) => [j.value.replica, j.value]));
  const online = (node: string) => store.nodeStatus(node) !== undefined;
  return specs
    .flatMap((s) => volumeJobs(s, store.volumeStatus(s.name)?.value, records, online, now))
    .sort((a, b) => a.volume.localeCompare(b.volume) || a.replicaId.localeCompare(b.replicaId));
}

export function jobApi(d: JobApiDeps): RequestHandlers<typeof JobServiceService> {
  return {
    async listJobs(req) {
      await d.ensureLeader();
      let specs: VolumeSpec[];
      if (req.volume) {
        validateName("volume", req.volume);
        const e = d.store.volumeSpec(req.volume);
        if (!e) throw new NotFoundError("volume", req.volume);
        specs = [e.value];
      } else {
        specs = d.store.volumeSpecs().map((e) => e.value);
      }
      const poolJobs = req.volume
        ? []
        : [...poolDedupJobs(d.store.poolDedups().map((e) => e.value), Date.now()), ...poolCompressJobs(d.store.poolCompresses().map((e) => e.value), Date.now())];
      return { jobs: [...jobsOf(d.store, specs), ...poolJobs], rebuildsPaused: d.brake()?.message ?? "" };
    },
  };
}
