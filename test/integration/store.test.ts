// The etcd mirror and its fenced, optimistic writes, against a real etcd.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pino } from "pino";
import { ConflictError } from "../../lib/errors.js";
import { keys } from "../../controller/keys.js";
import { LeaderElection } from "../../controller/leader.js";
import { ClusterStore, type Change } from "../../controller/store.js";
import { TestCluster } from "../harness/cluster.js";
import { eventually } from "../harness/processes.js";

let c: TestCluster;
const log = pino({ level: "silent" });

beforeAll(async () => {
  c = await TestCluster.create();
});

afterAll(async () => {
  await c?.stop();
});

describe("ClusterStore", () => {
  it("mirrors writes made by others and reports transitions", async () => {
    const s = new ClusterStore(c.client, log);
    await s.start();
    const seen: Change[] = [];
    s.on("change", (ch) => seen.push(ch));
    await c.client.put(keys.volumeSpec("m1")).value(JSON.stringify({ name: "m1" }));
    await c.client.put(keys.volumeSpec("m1")).value(JSON.stringify({ name: "m1", x: 1 }));
    await c.client.delete().key(keys.volumeSpec("m1"));
    await c.client.put("/elsewhere/key").value("ignored");
    await eventually(async () => seen.length >= 3, 5_000, "three changes");
    expect(seen.map((x) => x.transition)).toEqual(["created", "updated", "deleted"]);
    expect(s.volumeSpec("m1")).toBeUndefined();
    await s.stop();
  });

  it("refuses a write whose condition no longer holds, and applies nothing of it", async () => {
    const s = new ClusterStore(c.client, log);
    await s.start();
    await s.write({ absent: [keys.volumeSpec("cas")], put: [{ key: keys.volumeSpec("cas"), value: { v: 1 } }] });
    const rev = s.volumeSpec("cas")!.modRevision;
    await expect(s.write({ absent: [keys.volumeSpec("cas")], put: [{ key: keys.volumeSpec("cas"), value: { v: 2 } }] })).rejects.toBeInstanceOf(ConflictError);
    await s.write({ unchanged: [[keys.volumeSpec("cas"), rev]], put: [{ key: keys.volumeSpec("cas"), value: { v: 3 } }] });
    await expect(
      s.write({ unchanged: [[keys.volumeSpec("cas"), rev]], put: [{ key: keys.volumeSpec("cas"), value: { v: 4 } }, { key: keys.volumeStatus("cas"), value: {} }] }),
    ).rejects.toBeInstanceOf(ConflictError);
    expect(await c.client.get(keys.volumeSpec("cas")).json()).toEqual({ v: 3 });
    expect(await c.client.get(keys.volumeStatus("cas")).string()).toBeNull();
    await s.stop();
  });

  it("a deposed leader's writes are refused (fencing)", async () => {
    const a = new LeaderElection(c.client, "a:1", 1, log);
    const elected = new Promise<string>((r) => a.once("elected", r));
    a.start();
    const fence = await elected;
    const s = new ClusterStore(c.client, log);
    await s.start();
    s.fenceKey = fence;
    await s.write({ put: [{ key: keys.volumeSpec("fenced"), value: { by: "a" } }] });
    await a.stop(); // resigning deletes the election key
    await expect(s.write({ put: [{ key: keys.volumeSpec("fenced"), value: { by: "stale a" } }] })).rejects.toBeInstanceOf(ConflictError);
    expect(await c.client.get(keys.volumeSpec("fenced")).json()).toEqual({ by: "a" });
    await s.stop();
  });
});
