import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import {
  AlreadyExistsError,
  ConflictError,
  FailedPreconditionError,
  fromGrpcError,
  InsufficientCapacityError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  NotLeaderError,
  StowageError,
  toGrpcError,
  UnavailableError,
} from "./errors.js";

/** What a client receives for an error a server threw. */
function roundTrip(err: unknown): StowageError {
  const g = toGrpcError(err);
  return fromGrpcError({ ...g, name: "Error", message: g.message!, code: g.code!, details: g.details!, metadata: g.metadata! } as ServiceError);
}

describe("error mapping", () => {
  const cases: Record<string, { err: StowageError; code: status }> = {
    "NotFoundError is NOT_FOUND": { err: new NotFoundError("volume", "v1"), code: status.NOT_FOUND },
    "AlreadyExistsError is ALREADY_EXISTS": { err: new AlreadyExistsError("volume", "v1"), code: status.ALREADY_EXISTS },
    "InvalidArgumentError is INVALID_ARGUMENT": { err: new InvalidArgumentError("bad size", { hint: "use GiB" }), code: status.INVALID_ARGUMENT },
    "FailedPreconditionError is FAILED_PRECONDITION": { err: new FailedPreconditionError("busy"), code: status.FAILED_PRECONDITION },
    "ConflictError is ABORTED": { err: new ConflictError("raced"), code: status.ABORTED },
    "InsufficientCapacityError is RESOURCE_EXHAUSTED": {
      err: new InsufficientCapacityError("full", { rejections: [{ node: "n1", reasons: ["offline"] }], neededBytes: 10, availableBytes: 3 }),
      code: status.RESOURCE_EXHAUSTED,
    },
    "NotLeaderError is UNAVAILABLE": { err: new NotLeaderError("127.0.0.1:7400"), code: status.UNAVAILABLE },
  };
  for (const [name, c] of Object.entries(cases)) {
    it(name, () => {
      expect(toGrpcError(c.err).code).toBe(c.code);
      const back = roundTrip(c.err);
      expect(back).toBeInstanceOf(c.err.constructor);
      expect(back.message).toBe(c.err.message);
      expect(back.hint).toBe(c.err.hint);
    });
  }

  it("keeps typed fields", () => {
    const cap = roundTrip(cases["InsufficientCapacityError is RESOURCE_EXHAUSTED"]!.err) as InsufficientCapacityError;
    expect(cap.rejections).toEqual([{ node: "n1", reasons: ["offline"] }]);
    expect(cap.neededBytes).toBe(10);
    const nl = roundTrip(new NotLeaderError("10.0.0.1:1")) as NotLeaderError;
    expect(nl.leader).toBe("10.0.0.1:1");
    const nf = roundTrip(new NotFoundError("pool", "n1/fast")) as NotFoundError;
    expect(nf.resource).toBe("pool");
    expect(nf.resourceName).toBe("n1/fast");
  });

  it("turns unknown throwables into InternalError", () => {
    expect(roundTrip(new TypeError("oops"))).toBeInstanceOf(InternalError);
    expect(roundTrip("a string").message).toBe("a string");
  });

  it("maps bare gRPC statuses without details by code, keeping default hints", () => {
    const e = fromGrpcError({ code: status.UNAVAILABLE, details: "connect ECONNREFUSED", metadata: new Metadata() } as ServiceError);
    expect(e).toBeInstanceOf(UnavailableError);
    expect(e.hint).toMatch(/controller/);
    expect(fromGrpcError({ code: status.NOT_FOUND, details: "x", metadata: new Metadata() } as ServiceError)).toBeInstanceOf(NotFoundError);
  });
});
