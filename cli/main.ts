// The stowctl program: global options, command tree, error reporting and exit codes.
// run() returns the exit code instead of exiting, so tests can drive it in-process.
import { Command, CommanderError, Option } from "commander";
import { DeadlineError, errorMessage, InsufficientCapacityError, StowageError } from "../lib/errors.js";
import { registerClusterCommands } from "./commands/cluster.js";
import { registerEventCommands } from "./commands/event.js";
import { registerJobCommands } from "./commands/job.js";
import { registerNodeCommands } from "./commands/node.js";
import { registerPoolCommands } from "./commands/pool.js";
import { registerBackupCommands } from "./commands/backup.js";
import { registerReplicationCommands } from "./commands/replication.js";
import { registerStoreCommands } from "./commands/store.js";
import { registerSnapshotCommands } from "./commands/snapshot.js";
import { registerTemplateCommands } from "./commands/template.js";
import { registerVmCommands } from "./commands/vm.js";
import { registerVolumeCommands } from "./commands/volume.js";
import { NO_CONTROLLER_HINT } from "./connect.js";
import { DEFAULT_TIMEOUT_SECONDS, processDeps, Session, type CliDeps, type Io } from "./context.js";
import { UsageError } from "./flags.js";
import { examples } from "./help.js";
import { rejectionLines } from "./views.js";

export const EXIT_OK = 0;
/** The controller (or the cluster) said no, or could not be reached. */
export const EXIT_ERROR = 1;
/** The command line was wrong; nothing was sent. */
export const EXIT_USAGE = 2;

const ABOUT = `
Controller address, first found wins:
  1. --controller HOST:PORT[,HOST:PORT...]
  2. $STOWAGE_CONTROLLER (comma-separated list allowed)
  3. the file the local cluster writes: $STOWAGE_CONFIG, else
     \${XDG_CONFIG_HOME:-~/.config}/stowage/cluster.json ({"controllers": ["HOST:PORT", ...]})
  Each call tries the addresses in order and follows a follower's pointer to the leader.
  Without any: ${NO_CONTROLLER_HINT}.

Exit codes: 0 ok, 1 error reported by or about the cluster, 2 wrong command line.
`;

export function buildProgram(session: Session): Command {
  const program = new Command("stowctl")
    .description("Operate a Stowage cluster: nodes, pools and replicated volumes for KVM hosts.")
    .option("--controller <addr>", "controller API address(es): HOST:PORT[,HOST:PORT...]")
    .addOption(
      new Option("-o, --output <format>", "output format: aligned tables, or the API responses as JSON")
        .choices(["table", "json"])
        .default("table"),
    )
    .option("--timeout <seconds>", `give up on each call to a controller after this long (default: ${DEFAULT_TIMEOUT_SECONDS})`)
    .addHelpText("after", ABOUT + examples(["stowctl volume create vm1 --size 10GiB", "stowctl --controller 10.0.0.5:7400 node list -o json"]));
  registerNodeCommands(program, session);
  registerPoolCommands(program, session);
  registerVolumeCommands(program, session);
  registerSnapshotCommands(program, session);
  registerBackupCommands(program, session);
  registerReplicationCommands(program, session);
  registerStoreCommands(program, session);
  registerTemplateCommands(program, session);
  registerVmCommands(program, session);
  registerJobCommands(program, session);
  registerClusterCommands(program, session);
  registerEventCommands(program, session);
  configureTree(program, session.deps.io);
  return program;
}

/** "stowctl volume create" */
function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(" ");
}

function helpPointer(cmd: Command): string {
  return `(run '${commandPath(cmd)} --help' for usage)`;
}

/** Every command: throw instead of exiting, write through io, point to --help after a usage error. */
function configureTree(cmd: Command, io: Io): void {
  cmd
    .exitOverride()
    .configureOutput({ writeOut: (t) => io.out(t), writeErr: (t) => io.err(t) })
    .showHelpAfterError(helpPointer(cmd))
    .configureHelp({ showGlobalOptions: true });
  for (const sub of cmd.commands) configureTree(sub, io);
}

/** Prints an error the way operators should see it (never a stack) and returns the exit code. */
export function reportError(err: unknown, cmd: Command, io: Io): number {
  if (err instanceof CommanderError) {
    // Commander already printed its message (or the help that was asked for).
    return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
  }
  if (err instanceof UsageError) {
    io.err(`error: ${err.message}\n${helpPointer(cmd)}\n`);
    return EXIT_USAGE;
  }
  io.err(`error: ${errorMessage(err)}\n`);
  if (err instanceof InsufficientCapacityError && err.rejections.length > 0) {
    io.err(`rejected nodes:\n${rejectionLines(err.rejections)}`);
  }
  const hint =
    err instanceof StowageError && err.hint
      ? err.hint
      : err instanceof DeadlineError
        ? "the controller did not answer in time; retry, or allow longer with --timeout SECONDS"
        : "";
  if (hint) io.err(`hint: ${hint}\n`);
  return EXIT_ERROR;
}

/** Runs stowctl with the arguments after the program name; resolves to the exit code. */
export async function run(argv: string[], deps: CliDeps = processDeps()): Promise<number> {
  const session = new Session(deps);
  const program = buildProgram(session);
  let current = program;
  program.hook("preAction", (_hooked, action) => {
    current = action;
  });
  try {
    await program.parseAsync(argv, { from: "user" });
    return EXIT_OK;
  } catch (err) {
    return reportError(err, current, deps.io);
  } finally {
    session.close();
  }
}
