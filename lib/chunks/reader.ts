// Reading chunk files back: the chunk's own path, or trash/ if an interrupted GC
// left it there (gc.ts moves it back at its next run).
import { readFile } from "node:fs/promises";
import type { Layout } from "./layout.js";

/** The chunk file's bytes, or undefined if it is in neither place. */
export async function readChunkFile(layout: Layout, idHex: string): Promise<Buffer | undefined> {
  for (const path of [layout.chunk(idHex), layout.trash(idHex)]) {
    try {
      return await readFile(path);
    } catch (err: any) {
      if (err?.code !== "ENOENT") throw err;
    }
  }
  return undefined;
}

/**
 * Runs `fn` over `items` with at most `limit` in flight and hands the results to
 * `sink` in the items' order (sink is awaited before the next result).
 */
export async function orderedMap<T, R>(items: Iterable<T>, limit: number, fn: (item: T) => Promise<R>, sink: (result: R, item: T) => Promise<void> | void): Promise<void> {
  const queue: { item: T; result: Promise<R> }[] = [];
  const it = items[Symbol.iterator]();
  let done = false;
  const refill = () => {
    while (!done && queue.length < limit) {
      const n = it.next();
      if (n.done) {
        done = true;
        break;
      }
      const result = fn(n.value);
      result.catch(() => {}); // observed when its turn comes
      queue.push({ item: n.value, result });
    }
  };
  refill();
  while (queue.length) {
    const head = queue.shift()!;
    const r = await head.result;
    refill();
    await sink(r, head.item);
  }
}
