// One pino root logger per process; components take children of it.
import { pino, type Logger } from "pino";

export type { Logger };

export function createLogger(component: string, fields: Record<string, unknown> = {}): Logger {
  return pino({ level: process.env.STOWAGE_LOG_LEVEL ?? "info", base: { component, pid: process.pid, ...fields } });
}
