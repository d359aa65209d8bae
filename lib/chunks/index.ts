// The chunk store library: what other parts of Stowage import.
export { ChunkStore, type CreateOptions } from "./store.js";
export { CDC_DEFAULTS, FIXED_DEFAULTS, chunkerParams, createChunker, type Chunker, type ChunkerKind, type ChunkerParams } from "./chunker.js";
export { chunkStream, type ChunkView, type ImageSource } from "./chunk-stream.js";
export { CorruptChunkError, MissingChunkError, StoreFormatError } from "./errors.js";
export { ShortReadError, type ByteRange, type IncrementalStats, type IncrementalWriteOptions } from "./incremental.js";
export type { GcOptions, GcStats } from "./gc.js";
export type { Manifest, ManifestEntry, ManifestHeader } from "./manifest.js";
export type { RestoreOptions, RestoreStats, RestoreTarget } from "./restore.js";
export type { VerifyOptions, VerifyReport } from "./verify.js";
export type { WriteOptions, WriteStats } from "./writer.js";
export { type MissingPack, sendMissing } from "./missing-packs.js";
export { type ReceiveSession, type ReceiveStats } from "./receive-session.js";
