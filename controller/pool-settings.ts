// SetPool: the operator's overcommit ratio and thresholds for one pool, recorded
// in the node's spec (etcd) with a revision check. Checked before anything is
// written: bad values and a ratio below what is provisioned (unless forced) are
// refused with what to do, and change nothing.
import type { SetPoolRequest, SetPoolResponse } from "../gen/stowage/v1/controller.js";
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../lib/errors.js";
import { validateName } from "../lib/names.js";
import { effectivePool, mergeSettings, ratioTooLow } from "./capacity.js";
import type { ClusterView } from "./cluster-view.js";
import { applyDedupPolicy } from "./dedup-policy.js";
import { applyCompressPolicy } from "./compress-policy.js";
import { keys } from "./keys.js";
import type { NodeSpec } from "./model.js";
import type { ClusterStore } from "./store.js";

export async function setPool(store: ClusterStore, view: ClusterView, req: SetPoolRequest): Promise<SetPoolResponse> {
  validateName("node", req.node);
  const entry = store.nodeSpec(req.node);
  if (!entry) throw new NotFoundError("node", req.node);
  const ref = `${req.node}/${req.name}`;
  const record = view.poolRecords(req.node).find((p) => p.name === req.name);
  if (!record) {
    throw new NotFoundError("pool", ref, { hint: `run 'stowctl pool list --node ${req.node}' to see its pools` });
  }
  const nothing =
    req.overcommitRatio === undefined &&
    req.warningPercent === undefined &&
    req.criticalPercent === undefined &&
    !req.resetOvercommit &&
    !req.resetThresholds &&
    req.dedup === undefined &&
    req.quietHours === undefined &&
    req.compress === undefined &&
    req.coldAfter === undefined;
  if (nothing) {
    throw new InvalidArgumentError(`nothing to change for pool ${ref}`, { hint: "give --overcommit RATIO, --warning PERCENT, --critical PERCENT, --dedup daily|off, --compress daily|off, --cold-after 7d or --quiet-hours HH:MM-HH:MM" });
  }
  const spec = entry.value;
  const current = spec.poolSettings?.[req.name];
  const merged = mergeSettings(current, {
    overcommitRatio: req.overcommitRatio,
    warningPercent: req.warningPercent,
    criticalPercent: req.criticalPercent,
    resetOvercommit: req.resetOvercommit,
    resetThresholds: req.resetThresholds,
  });
  if (!merged.ok) throw new InvalidArgumentError(`pool ${ref}: ${merged.message}`, { hint: `${merged.hint}; nothing was changed` });
  applyDedupPolicy(ref, merged.settings, req);
  applyCompressPolicy(ref, merged.settings, req);

  const provisioned = view.usage().pools.get(ref)?.provisionedBytes ?? 0;
  const next = effectivePool(record, merged.settings);
  if (!req.force && next.overcommitRatio < record.overcommitRatio) {
    const low = ratioTooLow(ref, record.capacityBytes, next.overcommitRatio, provisioned);
    if (low) throw new FailedPreconditionError(low.message, { hint: low.hint, resource: "pool", name: ref });
  }
  const unchanged = JSON.stringify(current ?? {}) === JSON.stringify(merged.settings);
  if (!unchanged) {
    const settings = { ...spec.poolSettings };
    if (Object.keys(merged.settings).length === 0) delete settings[req.name];
    else settings[req.name] = merged.settings;
    const { poolSettings: _, ...rest } = spec;
    const value: NodeSpec = Object.keys(settings).length > 0 ? { ...rest, poolSettings: settings } : rest;
    await store.write({ unchanged: [[keys.nodeSpec(req.node), entry.modRevision]], put: [{ key: keys.nodeSpec(req.node), value }] });
  }
  const pool = view.pools(req.node).find((p) => p.name === req.name);
  if (!pool) throw new FailedPreconditionError(`pool ${ref} went away meanwhile`, { hint: "check 'stowctl pool list'" });
  return { pool, changed: !unchanged };
}
