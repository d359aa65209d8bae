// The frontend's control socket against a stand-in replica set.
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { ControlServer, controlRequest, controlSocketPath, type Freezable } from "./control.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

class FakeSet implements Freezable {
  frozen = false;
  thaws = 0;
  drainMs = 0;
  async freeze(): Promise<void> {
    this.frozen = true;
    await new Promise((r) => setTimeout(r, this.drainMs));
  }
  thaw(): void {
    this.frozen = false;
    this.thaws++;
  }
}

async function serve(set: Freezable): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "frontend-ctl-"));
  const path = controlSocketPath(join(dir, "vol.sock"));
  const server = new ControlServer(set, path, pino({ level: "silent" }));
  await server.listen();
  cleanups.push(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return path;
}

describe("ControlServer", () => {
  it("names the socket beside the NBD socket, root only", async () => {
    expect(controlSocketPath("/run/stowage/volumes/vm1.sock")).toBe("/run/stowage/volumes/vm1.ctl");
    const path = await serve(new FakeSet());
    expect(statSync(path).mode & 0o777).toBe(0o600);
  });

  it("freezes once, thaws with the right token only, and says whether writes were held", async () => {
    const set = new FakeSet();
    const path = await serve(set);
    const f = await controlRequest(path, { op: "freeze", timeoutMs: 5_000 }, 2_000);
    expect(f).toMatchObject({ ok: true });
    expect(set.frozen).toBe(true);
    const again = await controlRequest(path, { op: "freeze", timeoutMs: 5_000 }, 2_000);
    expect(again).toMatchObject({ ok: false, error: expect.stringMatching(/held already/) });
    const wrong = await controlRequest(path, { op: "thaw", token: (f as { token: number }).token + 1 }, 2_000);
    expect(wrong).toEqual({ ok: true, held: false });
    expect(set.frozen).toBe(true);
    const right = await controlRequest(path, { op: "thaw", token: (f as { token: number }).token }, 2_000);
    expect(right).toMatchObject({ ok: true, held: true });
    expect(set.frozen).toBe(false);
    // A second thaw of the same freeze: no longer held.
    expect(await controlRequest(path, { op: "thaw", token: (f as { token: number }).token }, 2_000)).toEqual({ ok: true, held: false });
  });

  it("lets writes go by itself after the timeout; the late thaw learns they were not held", async () => {
    const set = new FakeSet();
    const path = await serve(set);
    const f = (await controlRequest(path, { op: "freeze", timeoutMs: 100 }, 2_000)) as { ok: true; token: number };
    await new Promise((r) => setTimeout(r, 200));
    expect(set.frozen).toBe(false);
    expect(await controlRequest(path, { op: "thaw", token: f.token }, 2_000)).toEqual({ ok: true, held: false });
  });

  it("fails a freeze whose writes in flight outlast the timeout, releasing them", async () => {
    const set = new FakeSet();
    set.drainMs = 300;
    const path = await serve(set);
    const f = await controlRequest(path, { op: "freeze", timeoutMs: 100 }, 2_000);
    expect(f).toMatchObject({ ok: false, error: expect.stringMatching(/did not finish within 100 ms/) });
    expect(set.frozen).toBe(false);
  });

  it("refuses malformed requests without changing anything", async () => {
    const set = new FakeSet();
    const path = await serve(set);
    for (const req of [{ op: "freeze", timeoutMs: -1 }, { op: "freeze", timeoutMs: 10 ** 9 }, { op: "melt" }]) {
      const r = await controlRequest(path, req as never, 2_000);
      expect(r.ok, JSON.stringify(req)).toBe(false);
    }
    expect(set.frozen).toBe(false);
    expect(set.thaws).toBe(0);
  });
});
