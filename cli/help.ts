// Shared help text pieces.

/** An "Examples:" block for addHelpText("after", ...). */
export function examples(lines: string[]): string {
  return `\nExamples:\n${lines.map((l) => `  $ ${l}\n`).join("")}`;
}
