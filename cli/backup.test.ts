import { describe, expect, it } from "vitest";
import { BackupState, SnapshotState } from "../gen/stowage/v1/types.js";
import { backupsTable, parseBackupRef } from "./commands/backup.js";
import { jsonText } from "./convert.js";
import { UsageError } from "./flags.js";

const backup = {
  volume: "vm1",
  id: "20261127-031500",
  state: BackupState.BACKUP_STATE_READY,
  createdAtMs: Date.UTC(2026, 10, 27, 3, 15, 0),
  node: "n3",
  sizeBytes: 10 * 2 ** 30,
  dataBytes: 3 * 2 ** 30,
  newBytes: 2 ** 20,
  storedBytes: 512 * 1024,
  durationMs: 4200,
  message: "",
  kind: "incremental",
  base: "20261126-031500",
  readBytes: 3 * 2 ** 20,
  shippedBytes: 0,
};

describe("backup commands", () => {
  it("parses VOLUME@ID and refuses anything else before calling the controller", () => {
    expect(parseBackupRef("vm1@20261127-031500")).toEqual({ volume: "vm1", id: "20261127-031500" });
    for (const bad of ["vm1", "@x", "vm1@", "a@b@c"]) expect(() => parseBackupRef(bad), bad).toThrow(UsageError);
  });

  it("lists what each backup added to the store", () => {
    expect(backupsTable([backup])).toMatch(/vm1@20261127-031500\s+ready\s+incremental\s+2026-11-27T03:15:00Z\s+n3\s+10GiB\s+3GiB\s+3MiB\s+1MiB\s+512KiB\s+4.2 s/);
    expect(backupsTable([])).toBe("no backups found\n");
  });

  it("prints backup and snapshot states by their own names in JSON", () => {
    expect(JSON.parse(jsonText({ backup })).backup.state).toBe("ready");
    expect(JSON.parse(jsonText({ kept: [backup], deleted: [] })).kept[0].state).toBe("ready");
    expect(JSON.parse(jsonText({ snapshots: [{ state: SnapshotState.SNAPSHOT_STATE_DELETING }] })).snapshots[0].state).toBe("deleting");
  });
});
