// The one QMP client: a connection to a QEMU monitor over a unix socket.
// Negotiates capabilities, runs commands concurrently (replies are matched by
// id), emits asynchronous events, and applies a timeout to every wait.
import { EventEmitter } from "node:events";
import { createConnection, type Socket } from "node:net";
import { errorMessage } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import type { QmpArgsParam, QmpCommandName, QmpReturn } from "./qmp-commands.js";
import {
  encodeQmpCommand,
  parseQmpMessage,
  QmpDisconnectedError,
  QmpError,
  QmpLineSplitter,
  QmpTimeoutError,
  type QmpEvent,
  type QmpGreeting,
  type QmpMessage,
} from "./qmp-protocol.js";

export interface QmpConnectOptions {
  /** Path of the monitor's unix socket. */
  path: string;
  /** Connect, greeting and capabilities negotiation together (default 5000 ms). */
  connectTimeoutMs?: number;
  /** Default timeout of one command (default 30000 ms). */
  commandTimeoutMs?: number;
  logger?: Logger;
}

export interface QmpClientEvents {
  /** Every asynchronous QMP event, e.g. BLOCK_EXPORT_DELETED or BLOCK_JOB_COMPLETED. */
  event: [QmpEvent];
  /** The connection is gone; `reason` is set unless close() was called. */
  close: [reason: Error | undefined];
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient extends EventEmitter<QmpClientEvents> {
  private readonly pending = new Map<string, Pending>();
  private readonly splitter = new QmpLineSplitter();
  private seq = 0;
  private closeReason: Error | undefined;
  private isClosed = false;
  private onGreeting: ((g: QmpGreeting) => void) | undefined;
  greeting!: QmpGreeting;

  private constructor(
    private readonly socket: Socket,
    private readonly opts: QmpConnectOptions,
  ) {
    super();
    socket.on("data", (chunk: Buffer) => this.receive(chunk));
    socket.on("error", (err) => (this.closeReason ??= new QmpDisconnectedError(`QMP ${opts.path}: ${err.message}`, { cause: err })));
    socket.on("close", () => this.onSocketClose());
  }

  /** Connects, reads the greeting and leaves capabilities negotiation mode. */
  static async connect(opts: QmpConnectOptions): Promise<QmpClient> {
    const timeoutMs = opts.connectTimeoutMs ?? 5000;
    const socket = createConnection(opts.path);
    await new Promise<void>((resolve, reject) => {
      const fail = (err: NodeJS.ErrnoException): void => {
        socket.destroy();
        reject(new QmpDisconnectedError(`cannot connect to QMP socket ${opts.path}: ${err.code ?? err.message}`, { cause: err }));
      };
      socket.once("error", fail);
      socket.once("connect", () => {
        socket.off("error", fail);
        resolve();
      });
    });
    const client = new QmpClient(socket, opts);
    try {
      client.greeting = await client.waitGreeting(timeoutMs);
      await client.execute("qmp_capabilities", undefined, { timeoutMs });
      return client;
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Runs one command; resolves with its `return` value, or rejects with QmpError (or a connection error). */
  execute<K extends QmpCommandName>(command: K, ...args: [...QmpArgsParam<K>, opts?: { timeoutMs?: number }]): Promise<QmpReturn<K>>;
  execute(command: string, args?: Record<string, unknown>, opts?: { timeoutMs?: number }): Promise<unknown>;
  execute(command: string, args?: object, opts: { timeoutMs?: number } = {}): Promise<unknown> {
    if (this.isClosed) return Promise.reject(this.disconnected(command));
    const id = `c${++this.seq}`;
    const timeoutMs = opts.timeoutMs ?? this.opts.commandTimeoutMs ?? 30_000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpTimeoutError(command, timeoutMs));
      }, timeoutMs);
      this.pending.set(id, { command, resolve, reject, timer });
      this.opts.logger?.debug({ qmp: command, id, args }, "QMP command");
      this.socket.write(encodeQmpCommand(id, command, args as Record<string, unknown> | undefined));
    });
  }

  /**
   * Resolves with the next event named `name` for which `match` holds. Call it
   * before the command that causes the event, so the event cannot slip past.
   */
  waitForEvent(
    name: string,
    match: (data: Record<string, unknown>) => boolean = () => true,
    opts: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<QmpEvent> {
    if (this.isClosed) return Promise.reject(this.disconnected(`event ${name}`));
    const timeoutMs = opts.timeoutMs ?? this.opts.commandTimeoutMs ?? 30_000;
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off("event", onEvent);
        this.off("close", onClose);
        opts.signal?.removeEventListener("abort", onAbort);
      };
      const onEvent = (ev: QmpEvent): void => {
        if (ev.event !== name || !match(ev.data)) return;
        done();
        resolve(ev);
      };
      const onClose = (): void => {
        done();
        reject(this.disconnected(`event ${name}`));
      };
      const onAbort = (): void => {
        done();
        reject(opts.signal?.reason);
      };
      const timer = setTimeout(() => {
        done();
        reject(new QmpTimeoutError(`event ${name}`, timeoutMs));
      }, timeoutMs);
      this.on("event", onEvent);
      this.on("close", onClose);
      opts.signal?.addEventListener("abort", onAbort);
    });
  }

  /** Closes the connection (the QEMU process keeps running); pending commands are rejected. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    const gone = new Promise<void>((resolve) => this.socket.once("close", () => resolve()));
    this.socket.end();
    const timer = setTimeout(() => this.socket.destroy(), 1000);
    await gone;
    clearTimeout(timer);
  }

  private waitGreeting(timeoutMs: number): Promise<QmpGreeting> {
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.onGreeting = undefined;
        this.off("close", onClose);
      };
      const onClose = (): void => {
        done();
        reject(this.disconnected("the greeting"));
      };
      const timer = setTimeout(() => {
        done();
        // QEMU serves one client per monitor socket; others wait silently in the listen backlog.
        reject(new QmpTimeoutError(`the greeting on ${this.opts.path}`, timeoutMs, "is another client (another agent) connected to this QMP socket?"));
      }, timeoutMs);
      this.on("close", onClose);
      this.onGreeting = (g) => {
        done();
        resolve(g);
      };
    });
  }

  private receive(chunk: Buffer): void {
    let messages: QmpMessage[];
    try {
      messages = this.splitter.push(chunk).map(parseQmpMessage);
    } catch (err) {
      // A stream we cannot parse cannot be resynchronised: drop the connection.
      this.closeReason = err as Error;
      this.socket.destroy();
      return;
    }
    for (const m of messages) this.dispatch(m);
  }

  private dispatch(m: QmpMessage): void {
    switch (m.kind) {
      case "greeting":
        this.onGreeting?.(m.greeting);
        return;
      case "event":
        this.opts.logger?.debug({ qmpEvent: m.event.event, data: m.event.data }, "QMP event");
        this.emit("event", m.event);
        return;
      case "return":
      case "error": {
        const p = typeof m.id === "string" ? this.pending.get(m.id) : undefined;
        if (!p) {
          // A reply to a command that timed out, or (no id) to a line QEMU could not parse.
          this.opts.logger?.warn({ id: m.id, kind: m.kind, desc: m.kind === "error" ? m.desc : undefined }, "QMP reply without a waiting command");
          return;
        }
        this.pending.delete(m.id as string);
        clearTimeout(p.timer);
        if (m.kind === "return") p.resolve(m.value);
        else p.reject(new QmpError(p.command, m.errorClass, m.desc));
      }
    }
  }

  private onSocketClose(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(this.disconnected(p.command));
      this.pending.delete(id);
    }
    this.emit("close", this.closeReason);
  }

  private disconnected(what: string): QmpDisconnectedError {
    const why = this.closeReason ? `: ${errorMessage(this.closeReason)}` : "";
    return new QmpDisconnectedError(`QMP connection ${this.opts.path} closed before ${what} was answered${why}`, {
      cause: this.closeReason,
      hint: "is qemu-storage-daemon still running?",
    });
  }
}
