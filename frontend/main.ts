#!/usr/bin/env node
// The frontend process: one per attached volume, supervised by the agent but
// never inside the agent's event loop, so restarting the agent does not stop a
// VM's I/O. Prints "frontend serving on PATH" on stdout once clients can
// connect; SIGTERM or SIGINT stop it cleanly (exit 0), a second signal at once.
import { createLogger } from "../lib/logger.js";
import { ArgsError, parseFrontendArgs, USAGE } from "./args.js";
import { Frontend } from "./frontend.js";

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes("-h") || argv.includes("--help")) {
    process.stdout.write(USAGE);
    return;
  }
  let args;
  try {
    args = parseFrontendArgs(argv);
  } catch (err) {
    if (!(err instanceof ArgsError)) throw err;
    process.stderr.write(`${err.message}\n\n${USAGE}`);
    process.exit(2);
  }
  const log = createLogger("frontend", { volume: args.exportName });
  let frontend: Frontend;
  try {
    frontend = await Frontend.start(args, log);
  } catch (err) {
    log.error({ err }, "frontend failed to start");
    process.stderr.write(`frontend failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
  let signals = 0;
  const stop = (signal: NodeJS.Signals) => {
    if (++signals > 1) {
      log.warn({ signal }, "second signal: exiting without a clean stop");
      process.exit(1);
    }
    log.info({ signal }, "stopping");
    frontend.stop().then(
      () => process.exit(0),
      (err) => {
        log.error({ err }, "unclean stop");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  process.stdout.write(`frontend serving on ${args.socketPath}\n`);
}

main().catch((err) => {
  process.stderr.write(`frontend: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
