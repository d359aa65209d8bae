// EventService: the events the controller recorded (capacity thresholds crossed
// and cleared), newest first.
import type { EventServiceService } from "../gen/stowage/v1/controller.js";
import type { AsyncService } from "../lib/grpc.js";
import { eventToApi } from "./cluster-status.js";
import type { ClusterStore } from "./store.js";

export function eventApi(d: { store: ClusterStore; ensureLeader: () => Promise<void> }): AsyncService<typeof EventServiceService> {
  return {
    async listEvents(req) {
      await d.ensureLeader();
      let events = d.store.events().map((e) => e.value);
      if (req.activeOnly) events = events.filter((e) => !e.resolvedAtMs);
      if (req.object) events = events.filter((e) => e.object === req.object || e.object.startsWith(req.object));
      events.sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
      if (req.limit > 0) events = events.slice(0, req.limit);
      return { events: events.map(eventToApi) };
    },
  };
}
