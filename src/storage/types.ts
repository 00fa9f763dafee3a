// The archive contract every backend (memory, local directory, S3, Azure Blob) implements, as the
// archive's policy (storage/archive.ts) over that backend's driver (storage/drivers/), and one
// shared conformance suite checks on each (test/integration/storage-contract.test.ts). Names are flat WAL file
// names (segments, NNNNNNNN.history, .backup, .partial) plus the reserved "quarantine/" prefix.
//
// Guarantees:
// - put is atomic and durable: nothing is readable under the final name until the whole object
//   is stored (locally: temp file, fsync, link, directory fsync; S3: one PUT with a SHA-256
//   transfer checksum, If-None-Match: * where the store supports it; Azure: one Put Blob with
//   If-None-Match: *).
// - put never overwrites: identical content already stored → { status: 'exists' }; different
//   content → the new copy is kept under quarantine/<name>.<UTC timestamp> and ConflictError is
//   thrown naming both. Two concurrent puts of the same name: at most one 'created'.
//   A stored copy that cannot be kept (common.ts judgeStored decides for every backend): one
//   whose recorded checksum is the SHA-256 of the very bytes being put but that fails it or
//   cannot be decoded (a write cut short on a store without atomic PUTs, or corruption), or an
//   unencrypted copy of those very bytes where only encrypted ones are read (setArchiveEncrypted,
//   or a keyring with requireEncrypted):
//   - S3, Azure and memory keep it under quarantine/ and replace it with the verified copy; the result
//     names the quarantine copy in `replacedDamaged`;
//   - the local store never replaces it: local writes are atomic, so a damaged file is bit rot or
//     tampering, for the operator to look at. ConflictError naming the object, what is wrong and
//     what to do (move the file aside by hand, then archive again); the new copy is quarantined.
//   A copy failing a checksum recorded of other bytes (or with none recorded), or whose
//   encryption header has a format version or algorithm this walstream does not know, is a
//   conflict, never replaced. An encrypted object that does not authenticate with the key of its
//   id is IntegrityError, never replaced (two keys under one id cannot be told from damage).
// - every object records the SHA-256 of its uncompressed bytes and its compression; get and
//   head report them, get verifies the checksum and decompresses (IntegrityError on mismatch,
//   naming the object). Objects without a recorded checksum (written by other tools, e.g.
//   pg_receivewal into a directory) are served unverified with `checksum: undefined`.
// - a missing object is NotFoundError from get, undefined from head, a no-op for delete; every
//   other failure is a different error (StorageError with `transient` telling whether a retry
//   may help). A missing prefix lists as empty.
// - list(prefix) returns the objects whose names start with prefix, in name order, complete
//   (paginating as needed); it never includes temp files or quarantine/ unless asked by prefix.
//   With `limit`, only the first `limit` of them (in name order), reading no more than needed.
// - get of one object costs one request on S3 (no LIST).
// - put keeps no reference to `data` once it settles: the caller may reuse that buffer.
// - leftovers (scanLeftovers, removeLeftovers; storage/leftovers.ts has the rule): what writers
//   killed mid-write leave behind (temporary files, S3 multipart uploads never completed) is
//   never listed, and is removed only once its writer is gone: never while a writer that may still
//   publish it runs. A local store's puts first remove the temp files of writers that are gone.
import type { Compression } from '../sink/segment-file.js';
import type { SegmentDigest } from '../sink/wal-dir.js';

export type { Compression, SegmentDigest };

/** Whether `v` names a compression walstream stores with (the value recorded with each object). */
export function isCompression(v: unknown): v is Compression {
  return v === 'none' || v === 'gzip' || v === 'zstd';
}

export interface ObjectInfo {
  /** Name in the archive (no compression suffix). */
  name: string;
  /** Uncompressed size in bytes when recorded, else the stored size. */
  size: number;
  /** Bytes stored (after compression). */
  storedSize: number;
  /** Hex SHA-256 of the uncompressed bytes, when recorded. */
  checksum: string | undefined;
  /** How the object is stored; undefined only where a listing cannot tell without a request per object (S3 list). */
  compression: Compression | undefined;
  modified: Date;
  /** Id of the key the object is encrypted with (get results; see storage/encryption.ts), absent when stored unencrypted. */
  keyId?: string;
}

export interface PutOptions {
  /** How to store the object (default 'none'). The choice is recorded with the object. */
  compression?: Compression;
  /** Skip the directory fsync / extra durability steps (tests and --no-sync only). */
  noSync?: boolean;
  /**
   * Store the object as is even when the store has encryption keys: the archive's own records
   * that must be readable without a key (the identity record of an archive not recorded as
   * encrypted, the encryption marker; archive/identity.ts).
   */
  unencrypted?: boolean;
  /** The hex SHA-256 of the bytes, when the caller has computed it already (util/bulk.ts sha256Owned). */
  sha256?: string;
}

export interface ListOptions {
  /** At most this many objects: the first in name order (a positive integer). */
  limit?: number;
}

/**
 * What a leftover's writer is known to be (storage/leftovers.ts judgeLeftover): 'live' (running:
 * never removed), 'dead' (gone: removable), 'stale' (cannot be checked, older than the leftover
 * age: removable), 'recent' (cannot be checked, younger: kept for now).
 */
export type LeftoverState = 'live' | 'dead' | 'stale' | 'recent';

/** Something a writer left behind while writing: a temporary file, an S3 multipart upload never completed. */
export interface Leftover {
  /** Where it is, relative to the archive: a file's path (local), an object key under the prefix (S3). */
  name: string;
  kind: 'temp-file' | 'multipart-upload';
  /** Bytes it holds; undefined where the store cannot tell (the parts of an upload it cannot list). */
  bytes: number | undefined;
  /** When it was last written to (an upload: its newest part, else when it was started). */
  modified: Date;
  /** The process that wrote it, when its name records one. */
  writer: { pid: number; host: string } | undefined;
  state: LeftoverState;
  /** A temporary file: its path on this host. */
  path?: string;
  /** An S3 multipart upload: its full key and upload id. */
  upload?: { key: string; id: string };
}

export interface LeftoverOptions {
  /** Leftovers whose writer cannot be checked are removable once last written longer ago than this (default 1 hour). */
  maxAgeMs?: number;
  /** The time ages are measured from (default now). */
  now?: Date;
}

export interface LeftoverScan {
  /** Every leftover found, judged, in name order. */
  leftovers: Leftover[];
  /** Why part of them could not be looked for (e.g. a store that does not list multipart uploads), else undefined. */
  unavailable: string | undefined;
}

export interface LeftoverRemoval extends LeftoverScan {
  /** What was removed (with dryRun: what would be). */
  removed: Leftover[];
  /** Removable leftovers that could not be removed, with why. */
  failed: { leftover: Leftover; error: string }[];
}

export interface PutResult {
  status: 'created' | 'exists';
  info: ObjectInfo;
  /** S3 and memory: set when the name held a copy that could not be kept (see above): where it was kept before being replaced. */
  replacedDamaged?: string;
}

export interface GetResult {
  /** Uncompressed, verified bytes. */
  data: Buffer;
  info: ObjectInfo;
}

export interface GetStreamOptions {
  /** The caller is done with each piece once it asks for the next (see ArchiveStore.getStream). */
  transient?: boolean;
}

/** ArchiveStore.putPieces's options. */
export interface PutPiecesOptions {
  noSync?: boolean;
  file?: string;
  known?: SegmentDigest;
  /** Written with blocking system calls where the driver writes pieces (CreateOptions.blocking). */
  blocking?: boolean;
}

export interface ArchiveStore {
  /** The archive's location as the user gave it, with any secret removed. */
  readonly description: string;
  put(name: string, data: Buffer, opts?: PutOptions): Promise<PutResult>;
  get(name: string): Promise<GetResult>;
  head(name: string): Promise<ObjectInfo | undefined>;
  list(prefix?: string, opts?: ListOptions): Promise<ObjectInfo[]>;
  delete(name: string): Promise<void>;
  /** Release connections and timers. */
  close(): Promise<void>;
  /**
   * Store an object that arrives as a stream, larger than memory if need be (storage/stream.ts):
   * compressed on the fly, encrypted in authenticated chunks with a key, its SHA-256 computed as
   * the bytes go by and recorded. Never overwrites: the same checksum and size already there is
   * 'exists'; other contents are ConflictError (the streamed copy is not kept: its bytes are gone).
   * StorageError on a backend that cannot store streams yet.
   */
  putStream?(name: string, source: AsyncIterable<Buffer>, opts?: PutOptions): Promise<PutResult>;
  /**
   * An object as a stream of its uncompressed bytes: an encrypted one yields each chunk only once
   * it authenticated; the recorded checksum is checked at the end (IntegrityError then, after the
   * bytes went out: a reader that must not act on unverified bytes waits for the end). With
   * `transient`, each piece is valid only until the next one is asked for (the caller copies what
   * it keeps): a plain object stored in a local directory is then read into a few buffers used
   * again and again, its checksum computed on another thread.
   */
  getStream?(name: string, opts?: GetStreamOptions): Promise<{ info: ObjectInfo; stream: AsyncIterable<Buffer> }>;
  /**
   * get, handing the bytes to `write` piece by piece as they are read, each piece valid only until
   * the promise `write` returned settles (it may be a view of a buffer read into again): memory of
   * one piece however large the object. The recorded checksum is checked as the bytes go by, so
   * IntegrityError comes after the last piece: a caller acts on what it wrote only once this
   * resolves. NotFoundError before any piece. An object stored compressed or encrypted may come
   * whole, as one piece.
   */
  getTo?(name: string, write: (piece: Buffer) => Promise<void>): Promise<ObjectInfo>;
  /**
   * put for an uncompressed, unencrypted object whose bytes come as `pieces`, each valid only
   * until the next is asked for (they may be views of one buffer read into again): memory of one
   * piece however large the object. Only where the store writes pieces as they come (a local
   * archive); undefined where it cannot (then use put), 'taken' when the name is already held
   * (nothing was stored: use put, which compares the copies). The source may throw to abandon the
   * object: nothing is stored then and that error comes back. `file`: the pieces are the whole of
   * this file, which is complete, durable and never written again (a receiver's finished spool
   * file, never a file in pg_wal, which PostgreSQL reuses): a local archive on the same file system
   * then keeps the object as a second name of it instead of a copy. `known`: the file's SHA-256
   * and size as its writer computed them from the bytes it wrote (the receiver hashes a segment as
   * it writes it): an object kept as a second name then takes them without reading the file again;
   * a copy hashes what it reads and is not stored when that differs.
   */
  putPieces?(name: string, pieces: AsyncIterable<Buffer>, opts?: PutPiecesOptions): Promise<PutResult | 'taken' | undefined>;
  /** Whether putPieces with `file` can keep the files of directory `dir` as they are (a second name, not a copy). */
  linksFrom?(dir: string): Promise<boolean>;
  /**
   * Whether list(prefix) reads every name at the prefix's level to find those it wants (a
   * directory: the more the archive holds, the more each listing costs), rather than asking the
   * store for the prefix (an object store). Absent: it asks.
   */
  listScans?(): boolean;
  /**
   * For writers with encryption keys, once the archive is known to be recorded as encrypted
   * (archive/identity.ts claimArchive calls it): from then on a put that finds an unencrypted
   * object under a WAL file name treats it as damaged even when its contents are identical, since
   * every reader of an encrypted archive refuses it: S3 and memory move it to quarantine/ and
   * replace it with the encrypted copy (`replacedDamaged`), the local store refuses with
   * ConflictError (the operator moves it aside). A store whose keyring has requireEncrypted does
   * so from the start. Stores without keys ignore it.
   */
  setArchiveEncrypted?(encrypted: boolean): void;
  /** The leftovers of writers in the archive (temporary files, incomplete multipart uploads), judged. */
  scanLeftovers?(opts?: LeftoverOptions): Promise<LeftoverScan>;
  /**
   * Remove the leftovers whose writer is gone ('dead' or 'stale'); with dryRun, only report them.
   * Never one whose writer may still publish it.
   */
  removeLeftovers?(opts?: LeftoverOptions & { dryRun?: boolean }): Promise<LeftoverRemoval>;
}

export class StorageError extends Error {
  constructor(
    message: string,
    readonly transient: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'StorageError';
  }
}

export class NotFoundError extends StorageError {
  constructor(readonly objectName: string) {
    super(`"${objectName}" is not in the archive`, false);
    this.name = 'NotFoundError';
  }
}

export class ConflictError extends StorageError {
  constructor(
    readonly objectName: string,
    readonly quarantinedAs: string,
    /** The message, when there is more to say than "different contents" (a stored copy that cannot be kept). */
    message?: string,
  ) {
    super(message ?? `"${objectName}" is already in the archive with different contents; not overwritten (the new copy is kept as "${quarantinedAs}")`, false);
    this.name = 'ConflictError';
  }
}

export class IntegrityError extends StorageError {
  constructor(
    readonly objectName: string,
    detail: string,
  ) {
    super(`archived object "${objectName}" is corrupt: ${detail}`, false);
    this.name = 'IntegrityError';
  }
}

/**
 * An encrypted object whose key was not given: never served. Permanent (a retry cannot help),
 * and not IntegrityError: nothing says the object is damaged.
 */
export class KeyUnavailableError extends StorageError {
  constructor(
    readonly objectName: string,
    readonly keyId: string,
    /** The ids of the keys that were given, if any. */
    given: readonly string[] | undefined,
  ) {
    super(
      given === undefined || given.length === 0
        ? `archived object "${objectName}" is encrypted with key "${keyId}" and no encryption key was given (use --encryption-key-file or WALSTREAM_ENCRYPTION_KEY)`
        : `archived object "${objectName}" is encrypted with key "${keyId}", which is not among the keys given (${given.map((g) => `"${g}"`).join(', ')})`,
      false,
    );
    this.name = 'KeyUnavailableError';
  }
}

export const QUARANTINE_PREFIX = 'quarantine/';

/**
 * The archive's identity record (archive/identity.ts): which database system and segment size the
 * archive holds, and whether its objects are encrypted. An object under this reserved name;
 * listings leave it out unless asked by name.
 */
export const IDENTITY_NAME = 'walstream.json';

/**
 * The archive's encryption marker (archive/identity.ts): its existence says the archive's objects
 * are encrypted, for an archive whose identity record was written without saying so. Written once,
 * never changed; listings leave it out unless asked by name.
 */
export const ENCRYPTED_MARKER_NAME = 'walstream.encrypted';

/** The archive's own records (not WAL): reserved names, left out of listings. */
export const RESERVED_NAMES: ReadonlySet<string> = new Set([IDENTITY_NAME, ENCRYPTED_MARKER_NAME]);

/**
 * Where each receiver archiving into the archive records how far it is (archive/writers.ts):
 * `walstream.writer.<writer>.<12 hex digits of its time in ms>`, a new object each time, the
 * older one removed. Left out of listings unless asked for by this prefix.
 */
export const WRITER_RECORD_PREFIX = 'walstream.writer.';
export const WRITER_RECORD_RE = /^walstream\.writer\.([a-z0-9_-]{1,63})\.([0-9a-f]{12})$/;

/**
 * Names an archive accepts: WAL segments, history, backup history and partial files, pieces of a
 * segment still being received (`<segment>.partial.<offset as 8 hex digits>`: the bytes from that
 * offset, see archive/partial.ts), or quarantine copies.
 */
export const ARCHIVE_NAME_RE = /^(?:[0-9A-F]{24}(?:\.partial(?:\.[0-9A-F]{8})?|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$/;

/** Where base backups live (backup/layout.ts): one level below the WAL, so WAL listings never see them. */
export const BACKUP_PREFIX = 'backups/';

/**
 * The objects of a base backup (backup/layout.ts): `backups/<backup name>.<part>`, the backup
 * name its start time in UTC (YYYYMMDDTHHMMSSZ) with an optional "-N" when two start in one
 * second, the part "base.tar", "<tablespace oid>.tar", "backup_manifest" or "json" (its record,
 * written last).
 */
export const BACKUP_OBJECT_RE = /^backups\/\d{8}T\d{6}Z(?:-\d{1,3})?\.(?:base\.tar|\d{1,10}\.tar|backup_manifest|json)$/;

/**
 * A name from the command line or an archive, fit for a one-line message: at most 80 characters
 * (longer ones are cut, with "..."), quoted, control characters and newlines escaped.
 */
export function shownName(name: string): string {
  return JSON.stringify(name.length > 80 ? `${name.slice(0, 80)}...` : name);
}

export function assertArchiveName(name: string): void {
  if (RESERVED_NAMES.has(name) || BACKUP_OBJECT_RE.test(name) || WRITER_RECORD_RE.test(name)) return;
  if (name.startsWith(QUARANTINE_PREFIX)) {
    const original = name.slice(QUARANTINE_PREFIX.length).replace(/\.\d{8}T\d{6}(?:\.\d+)?Z$/, '');
    if (ARCHIVE_NAME_RE.test(original) || RESERVED_NAMES.has(original) || BACKUP_OBJECT_RE.test(original)) return;
  }
  if (!ARCHIVE_NAME_RE.test(name)) throw new StorageError(`${shownName(name)} is not a WAL file name`, false);
}
