// Errors of the chunk store, as StowageError classes with the fields a caller needs.
import { StowageError } from "../errors.js";

export class CorruptChunkError extends StowageError {
  constructor(
    readonly id: string,
    readonly reason: string,
  ) {
    super(`chunk ${id} is corrupt: ${reason}`, { hint: "run the store's verify to see which manifests it affects", resource: "chunk", name: id });
  }
}

export class MissingChunkError extends StowageError {
  constructor(
    readonly id: string,
    readonly manifest: string,
  ) {
    super(`chunk ${id} of manifest "${manifest}" is missing`, { hint: "run the store's verify to see everything that is damaged", resource: "chunk", name: id });
  }
}

export class StoreFormatError extends StowageError {
  constructor(
    readonly path: string,
    reason: string,
  ) {
    super(`${path}: ${reason}`, { resource: "chunk-store", name: path });
  }
}
