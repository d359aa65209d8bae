// The frontend's control socket: how the node's agent asks it to hold writes
// while a snapshot is taken. A unix socket beside the volume's NBD socket
// (VOLUME.ctl, mode 0600: root only), one JSON request per connection, one JSON
// line back:
//   {"op":"freeze","timeoutMs":N} -> {"ok":true,"token":T,"drainMs":D}
//   {"op":"thaw","token":T}       -> {"ok":true,"held":true|false,"heldMs":M}
// A freeze ends by itself after timeoutMs (a controller that died half-way must
// not stop the VM's writes for good); a thaw then answers held=false, and so does
// a thaw with a token of another freeze (or of a frontend that restarted), which
// tells the caller that the snapshot it took is not at one write boundary.
import { chmod, rm } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import type { Logger } from "pino";
import { errorMessage } from "../lib/errors.js";

/** What the control socket needs of the replica set. */
export interface Freezable {
  freeze(): Promise<void>;
  thaw(): void;
}

export const MAX_FREEZE_MS = 60_000;

/** The control socket's path for a volume's NBD socket path (same directory). */
export function controlSocketPath(nbdSocketPath: string): string {
  return nbdSocketPath.replace(/\.sock$/, "") + ".ctl";
}

type Request = { op: "freeze"; timeoutMs: number } | { op: "thaw"; token: number };
export type ControlReply = { ok: true; token?: number; drainMs?: number; held?: boolean; heldMs?: number } | { ok: false; error: string };

export class ControlServer {
  private server: Server | undefined;
  private current: { token: number; since: number; timer: NodeJS.Timeout } | undefined;
  private freezing = false;
  private nextToken = 1 + Math.floor(Math.random() * 1e9);

  constructor(
    private readonly target: Freezable,
    private readonly path: string,
    private readonly log: Logger,
  ) {}

  async listen(): Promise<void> {
    await rm(this.path, { force: true });
    const server = createServer((socket) => this.serve(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.path, () => resolve());
    });
    await chmod(this.path, 0o600);
    this.server = server;
  }

  private serve(socket: Socket): void {
    let buf = "";
    socket.setEncoding("utf8");
    socket.on("error", () => undefined);
    socket.on("data", (chunk: string) => {
      buf += chunk;
      if (buf.length > 4096) return void socket.destroy();
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      socket.removeAllListeners("data");
      void this.handle(buf.slice(0, nl)).then((reply) => socket.end(JSON.stringify(reply) + "\n"));
    });
  }

  private async handle(line: string): Promise<ControlReply> {
    let req: Request;
    try {
      req = JSON.parse(line) as Request;
    } catch {
      return { ok: false, error: "the request is not JSON" };
    }
    if (req.op === "freeze") return this.freeze(req.timeoutMs);
    if (req.op === "thaw") return this.thaw(req.token);
    return { ok: false, error: `unknown op ${JSON.stringify((req as { op?: unknown }).op)}` };
  }

  private async freeze(timeoutMs: number): Promise<ControlReply> {
    if (!Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > MAX_FREEZE_MS) {
      return { ok: false, error: `timeoutMs must be 1 to ${MAX_FREEZE_MS}` };
    }
    if (this.current || this.freezing) return { ok: false, error: "writes are held already (another snapshot is being taken)" };
    this.freezing = true;
    const t0 = performance.now();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      this.release("the freeze timed out", t0);
    }, timeoutMs);
    try {
      await this.target.freeze();
    } catch (err) {
      clearTimeout(timer);
      this.freezing = false;
      this.target.thaw();
      return { ok: false, error: errorMessage(err) };
    }
    this.freezing = false;
    const drainMs = Math.round(performance.now() - t0);
    if (timedOut) return { ok: false, error: `writes in flight did not finish within ${timeoutMs} ms` };
    const token = this.nextToken++;
    this.current = { token, since: t0, timer };
    this.log.info({ token, drainMs, timeoutMs }, "writes held for a snapshot");
    return { ok: true, token, drainMs };
  }

  private thaw(token: number): ControlReply {
    const c = this.current;
    if (!c || c.token !== token) return { ok: true, held: false };
    clearTimeout(c.timer);
    const heldMs = Math.round(performance.now() - c.since);
    this.release("thawed", c.since);
    return { ok: true, held: true, heldMs };
  }

  private release(why: string, since: number): void {
    this.current = undefined;
    this.target.thaw();
    const heldMs = Math.round(performance.now() - since);
    if (why === "thawed") this.log.info({ heldMs }, "held writes released");
    else this.log.warn({ heldMs }, `held writes released: ${why}`);
  }

  /** Releases held writes and closes the socket. */
  async close(): Promise<void> {
    if (this.current) {
      clearTimeout(this.current.timer);
      this.release("the frontend stops", this.current.since);
    }
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    await rm(this.path, { force: true });
  }
}

/** Sends one request to a frontend's control socket (used by the agent). */
export function controlRequest(path: string, req: Request, timeoutMs: number): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    let buf = "";
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`the frontend's control socket did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    s.setEncoding("utf8");
    s.on("connect", () => s.write(JSON.stringify(req) + "\n"));
    s.on("data", (c: string) => (buf += c));
    s.on("error", (err: Error) => {
      clearTimeout(timer);
      reject(err);
    });
    s.on("end", () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(buf) as ControlReply);
      } catch {
        reject(new Error(`the frontend's control socket answered ${JSON.stringify(buf.slice(0, 200))}`));
      }
    });
  });
}
