// Typed errors of the whole system, and their one mapping to and from gRPC
// status codes. Servers throw these classes; clients get the same classes back.
import { Metadata, status as Status, type ServiceError } from "@grpc/grpc-js";
import { ErrorDetail, type NodeRejection } from "../gen/stowage/v1/types.js";

const DETAIL_KEY = "stowage-error-bin";

export interface ErrorFields {
  hint?: string;
  resource?: string;
  name?: string;
  cause?: unknown;
}

export class StowageError extends Error {
  readonly code: Status = Status.INTERNAL;
  readonly hint: string;
  readonly resource: string;
  readonly resourceName: string;

  constructor(message: string, fields: ErrorFields = {}) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.name = new.target.name;
    this.hint = fields.hint ?? "";
    this.resource = fields.resource ?? "";
    this.resourceName = fields.name ?? "";
  }

  detail(): ErrorDetail {
    return ErrorDetail.fromPartial({
      kind: this.name,
      message: this.message,
      hint: this.hint,
      resource: this.resource,
      name: this.resourceName,
    });
  }
}

export class NotFoundError extends StowageError {
  override readonly code = Status.NOT_FOUND;
  constructor(resource: string, name: string, fields: Omit<ErrorFields, "resource" | "name"> = {}) {
    super(`${resource} "${name}" not found`, {
      hint: `run 'stowctl ${resource} list' to see what exists`,
      ...fields,
      resource,
      name,
    });
  }
}

export class AlreadyExistsError extends StowageError {
  override readonly code = Status.ALREADY_EXISTS;
  constructor(resource: string, name: string, fields: Omit<ErrorFields, "resource" | "name"> = {}) {
    super(`${resource} "${name}" already exists`, {
      hint: `pick another name, or delete the existing ${resource} first`,
      ...fields,
      resource,
      name,
    });
  }
}

export class InvalidArgumentError extends StowageError {
  override readonly code = Status.INVALID_ARGUMENT;
}

export class FailedPreconditionError extends StowageError {
  override readonly code = Status.FAILED_PRECONDITION;
}

/** An optimistic-concurrency write lost a race; retrying usually succeeds. */
export class ConflictError extends StowageError {
  override readonly code = Status.ABORTED;
}

export class InsufficientCapacityError extends StowageError {
  override readonly code = Status.RESOURCE_EXHAUSTED;
  readonly rejections: NodeRejection[];
  readonly neededBytes: number;
  readonly availableBytes: number;

  constructor(
    message: string,
    fields: ErrorFields & { rejections?: NodeRejection[]; neededBytes?: number; availableBytes?: number } = {},
  ) {
    super(message, fields);
    this.rejections = fields.rejections ?? [];
    this.neededBytes = fields.neededBytes ?? 0;
    this.availableBytes = fields.availableBytes ?? 0;
  }

  override detail(): ErrorDetail {
    return {
      ...super.detail(),
      rejections: this.rejections,
      neededBytes: this.neededBytes,
      availableBytes: this.availableBytes,
    };
  }
}

/** This controller instance is not the leader (or there is none yet). */
export class NotLeaderError extends StowageError {
  override readonly code = Status.UNAVAILABLE;
  readonly leader: string;

  constructor(leader: string, fields: ErrorFields = {}) {
    super(leader ? `this controller is not the leader; the leader is ${leader}` : "no controller is leader yet", {
      hint: leader ? `send the request to ${leader}` : "retry in a few seconds",
      ...fields,
    });
    this.leader = leader;
  }

  override detail(): ErrorDetail {
    return { ...super.detail(), leader: this.leader };
  }
}

export class UnavailableError extends StowageError {
  override readonly code = Status.UNAVAILABLE;
}

export class DeadlineError extends StowageError {
  override readonly code = Status.DEADLINE_EXCEEDED;
}

export class InternalError extends StowageError {
  override readonly code = Status.INTERNAL;
}

/** Turns any thrown value into a gRPC error carrying an ErrorDetail. */
export function toGrpcError(err: unknown): Partial<ServiceError> {
  const e = err instanceof StowageError ? err : new InternalError(errorMessage(err), { cause: err });
  const metadata = new Metadata();
  metadata.set(DETAIL_KEY, Buffer.from(ErrorDetail.encode(e.detail()).finish()));
  return { code: e.code, details: e.message, metadata, message: e.message };
}

/** Turns a gRPC error from a call back into the error class the server threw. */
export function fromGrpcError(err: ServiceError): StowageError {
  const raw = err.metadata?.get(DETAIL_KEY)?.[0];
  const d = raw instanceof Buffer ? ErrorDetail.decode(raw) : undefined;
  const message = d?.message || err.details || err.message;
  // Only what the server sent: an absent hint must not blank a class's default hint.
  const fields: ErrorFields = { cause: err };
  if (d?.hint) fields.hint = d.hint;
  if (d?.resource) fields.resource = d.resource;
  if (d?.name) fields.name = d.name;
  switch (d?.kind) {
    case "NotFoundError":
      return Object.assign(new NotFoundError(d.resource, d.name, fields), { message });
    case "AlreadyExistsError":
      return Object.assign(new AlreadyExistsError(d.resource, d.name, fields), { message });
    case "InvalidArgumentError":
      return new InvalidArgumentError(message, fields);
    case "FailedPreconditionError":
      return new FailedPreconditionError(message, fields);
    case "ConflictError":
      return new ConflictError(message, fields);
    case "InsufficientCapacityError":
      return new InsufficientCapacityError(message, {
        ...fields,
        rejections: d.rejections,
        neededBytes: d.neededBytes,
        availableBytes: d.availableBytes,
      });
    case "NotLeaderError":
      return Object.assign(new NotLeaderError(d.leader, fields), { message });
  }
  switch (err.code) {
    case Status.NOT_FOUND:
      return new NotFoundError(d?.resource || "resource", d?.name || "?", fields);
    case Status.INVALID_ARGUMENT:
      return new InvalidArgumentError(message, fields);
    case Status.FAILED_PRECONDITION:
      return new FailedPreconditionError(message, fields);
    case Status.ABORTED:
      return new ConflictError(message, fields);
    case Status.RESOURCE_EXHAUSTED:
      return new InsufficientCapacityError(message, fields);
    case Status.UNAVAILABLE:
      return new UnavailableError(message, { hint: "is the controller running? check the address", ...fields });
    case Status.DEADLINE_EXCEEDED:
      return new DeadlineError(message, fields);
    default:
      return new InternalError(message, fields);
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
