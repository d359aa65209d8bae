// Registration against fake controllers over real gRPC: leader redirects, dead
// controllers, re-registration, and quiet logs.
import { pino } from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { Pool } from "../gen/stowage/v1/types.js";
import { FakeRegistry } from "../test/unit/agent-fake-registry.js";
import { Registration } from "./registration.js";

const DEAD = "127.0.0.1:1"; // nothing listens on port 1: connection refused

const POOL: Pool = {
  node: "node1", name: "default", type: "dir", path: "/p", capacityBytes: 1000, availableBytes: 600,
  allocatedBytes: 400, provisionedBytes: 0, overcommitRatio: 2, replicaCount: 3, templateBytes: 0,
};

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function registry(): Promise<FakeRegistry> {
  const r = await FakeRegistry.start();
  cleanups.push(() => r.stop());
  return r;
}

function startRegistration(controllers: string[], poolCalls = { n: 0 }) {
  const lines: { level: number; msg: string }[] = [];
  const logger = pino({ level: "debug" }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  const reg = new Registration({
    name: "node1",
    address: "127.0.0.11:7500",
    labels: { zone: "z1", rack: "r1" },
    controllers,
    agentVersion: "0.1.0",
    pools: async () => {
      poolCalls.n++;
      return [{ ...POOL, availableBytes: 600 - poolCalls.n }];
    },
    logger,
    callTimeoutMs: 500,
    retryDelayMs: 50,
  });
  reg.start();
  cleanups.push(() => reg.stop());
  /** Info and warning lines (debug lines are for people chasing a problem). */
  const logged = () => lines.filter((l) => l.level >= 30).map((l) => l.msg);
  return { reg, logged };
}

describe("Registration", () => {
  it("skips a dead controller, follows the leader, registers, then heartbeats with fresh stats", async () => {
    const leader = await registry();
    const follower = await registry();
    follower.leader = leader.address;
    const { reg, logged } = startRegistration([DEAD, follower.address]);

    await vi.waitFor(() => expect(leader.heartbeats.length).toBeGreaterThanOrEqual(5), { timeout: 5000 });
    expect(reg.state).toBe("registered");
    expect(reg.controller).toBe(leader.address);
    expect(reg.heartbeatIntervalMs).toBe(50);
    expect(leader.registers).toHaveLength(1);
    expect(leader.registers[0]).toMatchObject({
      name: "node1",
      address: "127.0.0.11:7500",
      labels: { zone: "z1", rack: "r1" },
      agentVersion: "0.1.0",
      pools: [{ name: "default", type: "dir", overcommitRatio: 2, replicaCount: 3 }],
    });
    const available = leader.heartbeats.map((h) => h.pools[0]!.availableBytes);
    expect(new Set(available).size).toBe(available.length); // a fresh report every time
    expect(follower.registers).toHaveLength(0);
    // Many heartbeats, one line about them.
    expect(logged()).toEqual(["registered with controller"]);
  });

  it("registers again when the controller forgets the node", async () => {
    const leader = await registry();
    const { logged } = startRegistration([leader.address]);
    await vi.waitFor(() => expect(leader.heartbeats.length).toBeGreaterThanOrEqual(2), { timeout: 5000 });
    leader.forget("node1");
    await vi.waitFor(() => expect(leader.registers).toHaveLength(2), { timeout: 5000 });
    const before = leader.heartbeats.length;
    await vi.waitFor(() => expect(leader.heartbeats.length).toBeGreaterThan(before + 1), { timeout: 5000 });
    expect(logged()).toContain("controller asked the node to register again");
  });

  it("moves to the new leader when leadership changes", async () => {
    const a = await registry();
    const b = await registry();
    b.leader = a.address;
    const { reg, logged } = startRegistration([a.address, b.address]);
    await vi.waitFor(() => expect(a.heartbeats.length).toBeGreaterThanOrEqual(2), { timeout: 5000 });

    a.leader = b.address; // b takes over; it has not seen the node, so it asks for a registration
    b.leader = undefined;
    await vi.waitFor(() => expect(b.heartbeats.length).toBeGreaterThanOrEqual(2), { timeout: 5000 });
    expect(reg.controller).toBe(b.address);
    expect(b.registers).toHaveLength(1);
    expect(logged().filter((m) => m === "registered with controller")).toHaveLength(2);
  });

  it("goes down the list when the leader dies, and logs an outage once", async () => {
    const a = await registry();
    const b = await registry();
    b.leader = a.address;
    const { reg, logged } = startRegistration([a.address, b.address]);
    await vi.waitFor(() => expect(a.heartbeats.length).toBeGreaterThanOrEqual(1), { timeout: 5000 });

    await a.stop(); // b still names a as leader: nothing answers
    await vi.waitFor(() => expect(reg.state).toBe("no-leader"), { timeout: 5000 });
    await new Promise((r) => setTimeout(r, 300)); // several retry rounds
    expect(logged().filter((m) => m.includes("retrying"))).toEqual(["no reachable controller leader; retrying"]);

    b.leader = undefined;
    await vi.waitFor(() => expect(b.heartbeats.length).toBeGreaterThanOrEqual(1), { timeout: 5000 });
    expect(reg.state).toBe("registered");
    expect(reg.controller).toBe(b.address);
  });

  it("waits while no controller is leader, and logs an outage of all controllers once", async () => {
    const a = await registry();
    a.leader = ""; // an election is under way
    const { reg, logged } = startRegistration([a.address]);
    await vi.waitFor(() => expect(reg.state).toBe("no-leader"), { timeout: 5000 });
    await new Promise((r) => setTimeout(r, 200));
    a.leader = undefined;
    await vi.waitFor(() => expect(a.heartbeats.length).toBeGreaterThanOrEqual(1), { timeout: 5000 });

    await a.stop();
    await vi.waitFor(() => expect(reg.state).toBe("unreachable"), { timeout: 5000 });
    await new Promise((r) => setTimeout(r, 300));
    expect(logged()).toEqual([
      "no reachable controller leader; retrying",
      "registered with controller",
      "no controller reachable; retrying",
    ]);
  });

  it("stops: no calls after stop()", async () => {
    const leader = await registry();
    const poolCalls = { n: 0 };
    const { reg } = startRegistration([leader.address], poolCalls);
    await vi.waitFor(() => expect(leader.heartbeats.length).toBeGreaterThanOrEqual(1), { timeout: 5000 });
    await reg.stop();
    expect(reg.state).toBe("stopped");
    const n = leader.heartbeats.length;
    await new Promise((r) => setTimeout(r, 200));
    expect(leader.heartbeats.length).toBe(n);
  });
});
