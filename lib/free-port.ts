// A TCP port free on `host` right now (the kernel picks it); a program started
// next listens on it. Another process could take it in between: callers fail
// clearly then, and a retry picks another.
import { createServer } from "node:net";

export async function freePort(host: string): Promise<number> {
  const srv = createServer();
  await new Promise<void>((ok, fail) => srv.once("error", fail).listen(0, host, () => ok()));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((ok) => srv.close(() => ok()));
  return port;
}
