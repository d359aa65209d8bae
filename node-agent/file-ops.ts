// The pool's file operations live in lib/ (the chunk store uses them too).
export * from "../lib/file-ops.js";
