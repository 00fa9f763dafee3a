// What a storage driver is: only what an object store does. It mirrors the calls every object
// store has (S3, Azure Blob, a directory, memory) and guarantees create-if-absent that is atomic
// and durable, whole reads, stat, listing by prefix in pages, delete and a few metadata fields.
// It knows nothing of WAL names, compression, encryption, checksums or quarantine: the archive's
// policy (storage/archive.ts) owns those, once, over any driver.
import { StorageError, type Compression, type LeftoverOptions, type LeftoverRemoval, type LeftoverScan } from './types.js';

/**
 * The small record the archive keeps with each object. A driver stores and returns it as it can
 * (object metadata; a file's suffix and a record beside it) and never interprets it.
 */
export interface ObjectMeta {
  /** Hex SHA-256 of the object's uncompressed bytes, when recorded. */
  sha256: string | undefined;
  /** How the stored bytes are compressed; undefined where the driver cannot tell. */
  compression: Compression | undefined;
  /** Uncompressed size, when recorded. */
  size: number | undefined;
}

/** The record of a new object: everything known. */
export interface NewMeta {
  sha256: string;
  compression: Compression;
  size: number;
}

/** One stored object as a listing or a stat sees it. */
export interface DriverObject {
  key: string;
  /** Bytes stored. */
  storedSize: number;
  modified: Date;
  /** What was recorded with it; undefined where a listing cannot tell without a request per object. */
  meta: ObjectMeta | undefined;
}

export interface ReadResult {
  key: string;
  body: Buffer;
  /** The caller owns `body`'s memory (nothing else holds it): it may be handed over (util/bulk.ts sha256Owned). */
  owned: boolean;
  storedSize: number;
  modified: Date;
  meta: ObjectMeta;
  /** The file it was read from, for messages (a directory driver), else undefined. */
  file?: string;
}

export interface CreateOptions {
  /** Skip fsyncs (tests and --no-sync only). */
  noSync?: boolean;
  /** The hex SHA-256 of `body`, for drivers that send a transfer checksum (bodyChecksum). */
  bodySha256?: string;
  /**
   * Write the body's pieces with blocking system calls: for a caller with nothing else to do
   * meanwhile (one push), where a trip through the thread pool per piece costs more than the
   * write. Never for a long-running process: a write the kernel throttles would stall its event loop.
   */
  blocking?: boolean;
}

export type CreateResult = { created: true; modified: Date } | { created: false };

export interface ListPageOptions {
  /** Keys the caller has no use for: skipped before any further request or stat for them. */
  accept?: (key: string) => boolean;
}

export interface Driver {
  /** The location as the user gave it, no secret in it. */
  readonly description: string;
  /** Whether create wants `bodySha256` (a transfer checksum); the policy computes it only then. */
  readonly bodyChecksum: boolean;
  /**
   * Whether readStream reads into the caller's buffer (`into`), and fails a read that stalls as
   * read does: the policy's getTo streams an object only from such a driver (a local file).
   */
  readonly readsInto?: boolean;
  /**
   * Whether createStream is done with each piece of the body before it asks for the next (it
   * writes pieces to a file as they come), so that a body may reuse one buffer: the policy's
   * putPieces stores through such a driver only (a local file).
   */
  readonly writesPieces?: boolean;
  /**
   * Store `body` under `key` unless the key holds an object: atomic (nothing readable under the
   * key before the whole object is stored) and durable when it resolves. `{ created: false }`
   * when the key is taken (by an earlier object or a concurrent writer that won).
   */
  create(key: string, body: Buffer, meta: NewMeta, opts?: CreateOptions): Promise<CreateResult>;
  /** The whole object, or undefined when missing. */
  read(key: string): Promise<ReadResult | undefined>;
  stat(key: string): Promise<DriverObject | undefined>;
  /**
   * The objects whose keys start with `prefix` and hold no "/" after the prefix's last one (one
   * level, as a directory), in pages in key order; a missing prefix yields nothing.
   */
  list(prefix: string, opts?: ListPageOptions): AsyncIterable<DriverObject[]>;
  /** Whether list reads every key of the level to find those with the prefix (a directory), rather than asking for the prefix. */
  readonly listScans?: boolean;
  /**
   * create for a body that arrives as a stream, with memory bounded by the driver's part size:
   * `meta` is asked for once the whole body went by (its checksum is known only then). The body
   * is always consumed to its end, also when the key turns out to be taken.
   */
  createStream?(key: string, body: AsyncIterable<Buffer>, meta: () => NewMeta, opts?: CreateOptions): Promise<CreateResult>;
  /**
   * createStream for a body that is the whole of `file`: a file that is complete, durable and
   * never written again. A driver whose objects are files may make the object a second name of
   * that file (a hard link) rather than a copy; `body` is still consumed (the caller takes the
   * checksum from it). Undefined, before anything of `body` was read, where it cannot (another
   * file system, a file others may read or that someone else owns): the caller then stores the
   * bytes.
   */
  createLinked?(key: string, file: string, body: AsyncIterable<Buffer>, meta: () => NewMeta, opts?: CreateOptions): Promise<CreateResult | undefined>;
  /** Whether createLinked can keep the files of directory `dir` (they lie on the driver's file system). */
  linksFrom?(dir: string): Promise<boolean>;
  /**
   * The object as a stream (memory bounded by the driver's reads), or undefined when missing. With
   * `into`, a driver may read into that buffer again and again: each piece is then a view of it,
   * valid only until the next one is asked for (the caller copies what it keeps). With `into` a
   * function, a driver that reads into buffers (readsInto) reads each piece into the one it gives,
   * and uses that buffer for nothing else. `file`: as in ReadResult.
   */
  readStream?(key: string, opts?: { into?: Buffer | (() => Promise<Buffer>) }): Promise<{ object: DriverObject; meta: ObjectMeta; body: AsyncIterable<Buffer>; file?: string } | undefined>;
  /** Remove; a missing key is a no-op. */
  delete(key: string): Promise<void>;
  /**
   * Replace what `key` holds (the one unconditional write, for a stored copy the archive found
   * damaged and kept aside). Absent where stored objects are never replaced (a directory:
   * writes there are atomic, so a damaged file is for the operator): the policy then refuses
   * with the driver's `refusal`.
   */
  overwrite?(key: string, body: Buffer, meta: NewMeta, opts?: CreateOptions): Promise<void>;
  /** For drivers without overwrite: the message refusing to replace the damaged copy under `key`. */
  refusal?(key: string, read: ReadResult, why: string, quarantinedAs: string): string;
  /** What killed writers left behind (temp files, uncompleted uploads), judged by storage/leftovers.ts. */
  scanLeftovers?(opts?: LeftoverOptions): Promise<LeftoverScan>;
  removeLeftovers?(opts?: LeftoverOptions & { dryRun?: boolean }): Promise<LeftoverRemoval>;
  close(): Promise<void>;
}

/**
 * One request of a driver under a deadline: `fn` gets the signal that aborts it after
 * `timeoutMs`; whatever it throws that is not already a StorageError is turned into one by
 * `failure` (told whether the deadline passed).
 */
export async function withDeadline<T>(timeoutMs: number, fn: (abortSignal: AbortSignal) => Promise<T>, failure: (err: unknown, timedOut: boolean) => StorageError): Promise<T> {
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    return await fn(signal);
  } catch (err) {
    if (err instanceof StorageError) throw err;
    throw failure(err, signal.aborted);
  }
}
