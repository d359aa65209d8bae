// The one place that creates gRPC servers and client channels. Credentials come
// in as a value so that mutual TLS can be switched on without touching callers.
import * as grpc from "@grpc/grpc-js";
import { readFileSync } from "node:fs";
import { DeadlineError, fromGrpcError, toGrpcError, UnavailableError } from "./errors.js";

/** Transport security for a server or a client. Absent files mean plaintext. */
export interface TransportSecurity {
  /** PEM files; all three set turns on mutual TLS. */
  caFile?: string;
  certFile?: string;
  keyFile?: string;
}

export const INSECURE: TransportSecurity = {};

function tlsFiles(sec: TransportSecurity): [Buffer, Buffer, Buffer] | undefined {
  if (!sec.caFile || !sec.certFile || !sec.keyFile) return undefined;
  return [readFileSync(sec.caFile), readFileSync(sec.certFile), readFileSync(sec.keyFile)];
}

export function serverCredentials(sec: TransportSecurity): grpc.ServerCredentials {
  const files = tlsFiles(sec);
  if (!files) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(files[0], [{ cert_chain: files[1], private_key: files[2] }], true);
}

export function channelCredentials(sec: TransportSecurity): grpc.ChannelCredentials {
  const files = tlsFiles(sec);
  if (!files) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(files[0], files[2], files[1]);
}

/** A method of a ts-proto generated service definition. */
interface MethodDef {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize: (value: any) => Buffer;
  requestDeserialize: (value: Buffer) => any;
  responseSerialize: (value: any) => Buffer;
  responseDeserialize: (value: Buffer) => any;
}
type ServiceDef = Record<string, MethodDef>;

type Req<M extends MethodDef> = ReturnType<M["requestDeserialize"]>;
type Res<M extends MethodDef> = ReturnType<M["responseDeserialize"]>;

export interface CallOptions {
  /** Milliseconds until the call is abandoned (default 30 s). */
  timeoutMs?: number;
}

/** A client whose unary methods return promises and throw StowageError classes. */
export type PromiseClient<D extends ServiceDef> = {
  [K in keyof D]: (request: Req<D[K]>, options?: CallOptions) => Promise<Res<D[K]>>;
};

/** A server implementation: one async function per method. */
/** Handlers that ignore the call object: callable in-process as well as served. */
export type RequestHandlers<D extends ServiceDef> = {
  [K in keyof D]: (request: Req<D[K]>) => Promise<Res<D[K]>>;
};

export type AsyncService<D extends ServiceDef> = {
  [K in keyof D]: (request: Req<D[K]>, call: grpc.ServerUnaryCall<Req<D[K]>, Res<D[K]>>) => Promise<Res<D[K]>>;
};

const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  // Listing tens of thousands of volumes exceeds the 4 MiB default.
  "grpc.max_receive_message_length": 256 * 1024 * 1024,
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 2_000,
};

/** A connection to one address, shared by the typed clients made from it. */
export class Channel {
  readonly client: grpc.Client;

  constructor(
    readonly address: string,
    sec: TransportSecurity,
  ) {
    this.client = new grpc.Client(address, channelCredentials(sec), CHANNEL_OPTIONS);
  }

  service<D extends ServiceDef>(def: D): PromiseClient<D> {
    const out: Record<string, unknown> = {};
    for (const [name, m] of Object.entries(def)) {
      out[name] = (request: unknown, options: CallOptions = {}) =>
        new Promise((resolve, reject) => {
          const deadline = Date.now() + (options.timeoutMs ?? 30_000);
          this.client.makeUnaryRequest(
            m.path,
            m.requestSerialize,
            m.responseDeserialize,
            request,
            new grpc.Metadata(),
            { deadline },
            (err, res) => {
              if (!err) return resolve(res);
              const e = fromGrpcError(err);
              if (e instanceof UnavailableError && !e.message.includes(this.address)) {
                e.message = `${this.address}: ${e.message}`;
              }
              if (e instanceof DeadlineError) e.message = `${this.address}: ${e.message}`;
              reject(e);
            },
          );
        });
    }
    return out as PromiseClient<D>;
  }

  /**
   * Opens a call of a method whose request and response both stream. Its errors
   * are grpc-js's: fromGrpcError() gives the StowageError class. No deadline by
   * default (a stream lasts as long as its transfer).
   */
  duplex<M extends MethodDef>(m: M, options: CallOptions = {}): grpc.ClientDuplexStream<Req<M>, Res<M>> {
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    return this.client.makeBidiStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, new grpc.Metadata(), { deadline });
  }

  close(): void {
    this.client.close();
  }
}

export function createServer(): grpc.Server {
  return new grpc.Server({ "grpc.max_receive_message_length": 64 * 1024 * 1024 });
}

/** Registers an async implementation; thrown errors become typed gRPC errors. */
export function addService<D extends ServiceDef>(server: grpc.Server, def: D, impl: AsyncService<D>): void {
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const name of Object.keys(def)) {
    const fn = impl[name as keyof D];
    handlers[name] = (call: grpc.ServerUnaryCall<any, any>, callback: grpc.sendUnaryData<any>) => {
      fn(call.request, call).then(
        (res) => callback(null, res),
        (err) => callback(toGrpcError(err) as grpc.ServiceError),
      );
    };
  }
  server.addService(def as unknown as grpc.ServiceDefinition, handlers);
}

/** A server implementation of a service whose methods stream both ways. */
export type DuplexService<D extends ServiceDef> = {
  [K in keyof D]: (call: grpc.ServerDuplexStream<Req<D[K]>, Res<D[K]>>) => Promise<void>;
};

/** Registers such a service: the call ends when the handler returns; a thrown error ends it with its typed gRPC status. */
export function addDuplexService<D extends ServiceDef>(server: grpc.Server, def: D, impl: DuplexService<D>): void {
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const name of Object.keys(def)) {
    const fn = impl[name as keyof D];
    handlers[name] = (call: grpc.ServerDuplexStream<any, any>) => {
      fn(call).then(
        () => call.end(),
        (err) => call.emit("error", toGrpcError(err)),
      );
    };
  }
  server.addService(def as unknown as grpc.ServiceDefinition, handlers);
}

/** Binds and starts; returns the bound port (useful with port 0). */
export function listen(server: grpc.Server, address: string, sec: TransportSecurity): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, serverCredentials(sec), (err, port) => (err ? reject(err) : resolve(port)));
  });
}

export function shutdown(server: grpc.Server, graceMs = 2_000): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
