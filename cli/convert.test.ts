import { describe, expect, it } from "vitest";
import { GetVolumeResponse } from "../gen/stowage/v1/controller.js";
import { ImageFormat, Preallocation, ReplicaState, VolumePhase } from "../gen/stowage/v1/types.js";
import { enumChoices, enumFromLabel, enumLabel, IMAGE_FORMAT, jsonText, PREALLOCATION, toJson, VOLUME_PHASE } from "./convert.js";

describe("enum labels", () => {
  it("strip the prefix and lower-case", () => {
    expect(enumLabel(VOLUME_PHASE, VolumePhase.VOLUME_PHASE_HEALTHY)).toBe("healthy");
    expect(enumLabel(IMAGE_FORMAT, ImageFormat.IMAGE_FORMAT_QCOW2)).toBe("qcow2");
    expect(enumLabel(IMAGE_FORMAT, ImageFormat.UNRECOGNIZED)).toBe("unrecognized");
    expect(enumLabel(VOLUME_PHASE, 42)).toBe("unknown-42");
  });

  it("offer the set values as choices and parse them back", () => {
    expect(enumChoices(IMAGE_FORMAT)).toEqual(["qcow2", "raw"]);
    expect(enumChoices(PREALLOCATION)).toEqual(["off", "metadata", "falloc", "full"]);
    expect(enumFromLabel(PREALLOCATION, "full")).toBe(Preallocation.PREALLOCATION_FULL);
    expect(enumFromLabel(IMAGE_FORMAT, "unspecified")).toBeUndefined();
    expect(enumFromLabel(IMAGE_FORMAT, "vmdk")).toBeUndefined();
  });
});

describe("toJson", () => {
  // Decoded from the wire, as a client sees it: every field present.
  const wire = GetVolumeResponse.decode(
    GetVolumeResponse.encode({
      volume: {
        generation: 3,
        spec: {
          name: "vm1",
          sizeBytes: 10 * 2 ** 30,
          replicas: 2,
          format: ImageFormat.IMAGE_FORMAT_QCOW2,
          preallocation: Preallocation.PREALLOCATION_OFF,
          pool: "",
        },
        phase: VolumePhase.VOLUME_PHASE_HEALTHY,
        replicas: [
          {
            id: "r1",
            node: "host1",
            pool: "default",
            path: "/pools/default/vm1.r1.qcow2",
            state: ReplicaState.REPLICA_STATE_HEALTHY,
            virtualSizeBytes: 10 * 2 ** 30,
            allocatedBytes: 196608,
            message: "",
            outOfSync: false,
            outOfSyncSinceMs: 0,
            unreachableSinceMs: 0,
          },
        ],
        message: "",
        createdAtMs: 1700000000000,
        attachments: [],
        uid: "u-1",
      },
    }).finish(),
  );

  it("turns enums into labels, keeps sizes in bytes and keeps default fields", () => {
    expect(toJson(wire)).toEqual({
      volume: {
        spec: { name: "vm1", sizeBytes: 10737418240, replicas: 2, format: "qcow2", preallocation: "off", pool: "" },
        phase: "healthy",
        replicas: [
          {
            id: "r1",
            node: "host1",
            pool: "default",
            path: "/pools/default/vm1.r1.qcow2",
            state: "healthy",
            virtualSizeBytes: 10737418240,
            allocatedBytes: 196608,
            message: "",
            outOfSync: false,
            outOfSyncSinceMs: 0,
            unreachableSinceMs: 0,
          },
        ],
        message: "",
        createdAtMs: 1700000000000,
        attachments: [],
        uid: "u-1",
        generation: 3,
      },
    });
  });

  it("leaves non-enum numbers and strings alone and drops undefined", () => {
    expect(toJson({ score: 0.5, type: "dir", volume: undefined, nodes: [] })).toEqual({ score: 0.5, type: "dir", nodes: [] });
  });

  it("prints indented JSON with a final newline", () => {
    const text = jsonText({ pools: [] });
    expect(text.endsWith("\n")).toBe(true);
    expect(JSON.parse(text)).toEqual({ pools: [] });
  });
});
