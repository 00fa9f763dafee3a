// The archive's identity: the database system (its system identifier from pg_control, as every
// segment's long page header carries it) and the segment size. It is recorded once, by the first
// writer (walstream receive --archive or walstream push), under a reserved name, and checked by
// every later writer, so that WAL of two clusters can never mix in one archive: a segment of
// another system under the same name would otherwise be quarantined only when names collide, and
// a recovery could replay a foreign segment that merely has the right name.
//
// It also records whether the archive's objects are encrypted (storage/encryption.ts), so that a
// writer without the key cannot add plain objects to an encrypted archive, and readers refuse
// plain objects there as if given --encryption-required. The archive is encrypted when its record
// says `"encryption": "aes-256-gcm"` or is itself stored encrypted (only a writer with a key writes
// one, and a reader without the key cannot read the field). A record without the field, stored
// plain, is an unencrypted archive, as every record was before the field existed. The first
// writer with a key records the field; an existing record gains it only from a writer given
// --encryption-required (recordEncryption below), since plain objects written before would then
// be refused.
import { ConflictError, IDENTITY_NAME, IntegrityError, KeyUnavailableError, NotFoundError, StorageError, type ArchiveStore, type GetResult, type ObjectInfo, type PutOptions, type PutResult } from '../storage/types.js';

/** The one encryption an archive can record: storage/encryption.ts's AES-256-GCM sealed objects. */
export const ARCHIVE_ENCRYPTION = 'aes-256-gcm';

export interface ArchiveIdentity {
  systemIdentifier: bigint;
  segmentSize: number;
  /** Set when the archive's objects are encrypted; absent in an unencrypted archive. */
  encryption?: typeof ARCHIVE_ENCRYPTION;
}

/** A writer without a key, into an archive whose identity record says it is encrypted. */
export class ArchiveEncryptedError extends StorageError {
  constructor(message: string) {
    super(message, false);
    this.name = 'ArchiveEncryptedError';
  }
}

export class IdentityMismatchError extends StorageError {
  constructor(message: string) {
    super(message, false);
    this.name = 'IdentityMismatchError';
  }
}

export function encodeIdentity(id: ArchiveIdentity): Buffer {
  const record = { format: 1, systemIdentifier: id.systemIdentifier.toString(), segmentSize: id.segmentSize, ...(id.encryption ? { encryption: id.encryption } : {}) };
  return Buffer.from(`${JSON.stringify(record)}\n`);
}

export function decodeIdentity(data: Buffer, where: string): ArchiveIdentity {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data.toString('utf8'));
  } catch {
    throw new StorageError(`${where}: the archive's ${IDENTITY_NAME} is not valid JSON`, false);
  }
  const o = parsed as { systemIdentifier?: unknown; segmentSize?: unknown; encryption?: unknown };
  if (typeof o.systemIdentifier !== 'string' || !/^\d{1,20}$/.test(o.systemIdentifier) || typeof o.segmentSize !== 'number' || !Number.isInteger(o.segmentSize)) {
    throw new StorageError(`${where}: the archive's ${IDENTITY_NAME} does not name a system identifier and segment size`, false);
  }
  // An encryption this walstream does not know: it can neither write nor read such objects.
  if (o.encryption !== undefined && o.encryption !== ARCHIVE_ENCRYPTION) {
    throw new StorageError(`${where}: the archive's ${IDENTITY_NAME} names encryption ${JSON.stringify(o.encryption).slice(0, 40)}, which this walstream does not know`, false);
  }
  return { systemIdentifier: BigInt(o.systemIdentifier), segmentSize: o.segmentSize, ...(o.encryption !== undefined ? { encryption: ARCHIVE_ENCRYPTION } : {}) };
}

/**
 * The recorded identity, or undefined for an archive nobody has claimed yet. A record stored
 * encrypted counts as saying the archive is encrypted, with or without the field.
 */
export async function readIdentity(store: ArchiveStore): Promise<ArchiveIdentity | undefined> {
  let got: GetResult;
  try {
    got = await store.get(IDENTITY_NAME);
  } catch (err) {
    if (err instanceof NotFoundError) return undefined;
    throw err;
  }
  const id = decodeIdentity(got.data, store.description);
  return got.info.keyId !== undefined ? { ...id, encryption: ARCHIVE_ENCRYPTION } : id;
}

/**
 * Whether the archive's identity record says its objects are encrypted. A record encrypted with
 * a key not given says so too (it was written by a writer with a key); no record: false.
 */
export async function archiveEncrypted(store: ArchiveStore): Promise<boolean> {
  try {
    return (await readIdentity(store))?.encryption !== undefined;
  } catch (err) {
    if (err instanceof KeyUnavailableError) return true;
    throw err;
  }
}

function compare(found: ArchiveIdentity, ours: ArchiveIdentity, store: ArchiveStore, what: string): void {
  if (found.systemIdentifier !== ours.systemIdentifier) {
    throw new IdentityMismatchError(
      `${what} is from database system ${ours.systemIdentifier}, but the archive ${store.description} holds WAL of system ${found.systemIdentifier}; use another archive`,
    );
  }
  if (found.segmentSize !== ours.segmentSize) {
    throw new IdentityMismatchError(
      `${what} has ${ours.segmentSize}-byte segments, but the archive ${store.description} holds ${found.segmentSize}-byte segments; use another archive`,
    );
  }
}

/** What a writer brings: whether it encrypts (has a key), and whether it was given --encryption-required. */
export interface WriterEncryption {
  encrypts: boolean;
  /** With a key: record in an existing identity without the field that the archive is encrypted. */
  requireEncrypted?: boolean;
}

function refusal(store: ArchiveStore): ArchiveEncryptedError {
  return new ArchiveEncryptedError(
    `the archive ${store.description} is encrypted (its identity record ${IDENTITY_NAME} says so) and no encryption key was given: ` +
      'writing to it needs its key (--encryption-key-file or WALSTREAM_ENCRYPTION_KEY); nothing was written',
  );
}

/** readIdentity for a writer: a record it cannot read for want of a key means an encrypted archive. */
async function readForWriter(store: ArchiveStore, writer: WriterEncryption): Promise<ArchiveIdentity | undefined> {
  try {
    return await readIdentity(store);
  } catch (err) {
    if (err instanceof KeyUnavailableError && !writer.encrypts) throw refusal(store);
    throw err;
  }
}

/**
 * Refuse a writer without a key when the archive is encrypted (for files that carry no system
 * identifier to claim the archive with: history and backup files). No record: nothing to refuse.
 */
export async function checkWriter(store: ArchiveStore, writer: WriterEncryption): Promise<void> {
  const found = await readForWriter(store, writer);
  if (found?.encryption && !writer.encrypts) throw refusal(store);
}

/**
 * Record in an existing identity without the field that the archive is encrypted. Objects never
 * change in place (storage/types.ts), and the record has no update path of its own: the old
 * record is deleted and the new one put, encrypted. A writer recreating the record in between
 * (with the same identity) makes this one read it again and try once more; a crash in between
 * leaves no record, and the next writer writes it afresh (with the field when it has a key).
 */
async function recordEncryption(store: ArchiveStore, found: ArchiveIdentity, ours: ArchiveIdentity, what: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    await store.delete(IDENTITY_NAME);
    try {
      await store.put(IDENTITY_NAME, encodeIdentity({ ...found, encryption: ARCHIVE_ENCRYPTION }));
      return;
    } catch (err) {
      if (!(err instanceof ConflictError)) throw err;
    }
    const now = await readIdentity(store);
    if (now) {
      compare(now, ours, store, what);
      if (now.encryption) return;
    }
    if (attempt >= 3) {
      throw new StorageError(`cannot record in ${store.description}'s ${IDENTITY_NAME} that the archive is encrypted: other writers keep recreating it; try again`, true);
    }
  }
}

/**
 * Check that `ours` may write into the archive; record it when the archive has no identity yet
 * (saying the archive is encrypted when the writer has a key). Two first writers racing: the
 * loser finds the winner's record and compares against it. A writer without a key is refused
 * (ArchiveEncryptedError) when the archive is encrypted; a writer with a key and
 * --encryption-required records that it is, in a record without the field.
 */
export async function claimArchive(store: ArchiveStore, ours: ArchiveIdentity, what: string, writer: WriterEncryption = { encrypts: false }): Promise<void> {
  const found = await readForWriter(store, writer);
  if (found) {
    compare(found, ours, store, what);
    if (found.encryption && !writer.encrypts) throw refusal(store);
    if (!found.encryption && writer.encrypts && writer.requireEncrypted) await recordEncryption(store, found, ours, what);
    return;
  }
  const record: ArchiveIdentity = { systemIdentifier: ours.systemIdentifier, segmentSize: ours.segmentSize, ...(writer.encrypts ? { encryption: ARCHIVE_ENCRYPTION } : {}) };
  try {
    await store.put(IDENTITY_NAME, encodeIdentity(record));
  } catch (err) {
    if (!(err instanceof ConflictError)) throw err;
    const winner = await readForWriter(store, writer);
    if (!winner) throw err;
    compare(winner, ours, store, what);
    if (winner.encryption && !writer.encrypts) throw refusal(store);
  }
}

/**
 * A store for readers that refuses plain objects in an encrypted archive, as if the key were
 * given with --encryption-required: get of an object stored unencrypted is IntegrityError when
 * the identity record says the archive is encrypted. The record is read only when a plain object
 * comes back (once per store, its answer kept), so reading an encrypted archive costs no extra
 * request and reading an unencrypted one one request in all.
 */
export class EncryptedArchiveGuard implements ArchiveStore {
  #encrypted: Promise<boolean> | undefined;

  constructor(private readonly inner: ArchiveStore) {}

  get description(): string {
    return this.inner.description;
  }

  /** Whether the archive is encrypted (reads the identity record the first time). */
  encrypted(): Promise<boolean> {
    if (!this.#encrypted) {
      const p = archiveEncrypted(this.inner);
      this.#encrypted = p;
      // A failed read (the archive unreachable) is asked again next time.
      p.catch(() => {
        if (this.#encrypted === p) this.#encrypted = undefined;
      });
    }
    return this.#encrypted;
  }

  async get(name: string): Promise<GetResult> {
    const got = await this.inner.get(name);
    if (got.info.keyId !== undefined || name === IDENTITY_NAME) return got;
    if (await this.encrypted()) {
      throw new IntegrityError(name, `it is not encrypted, and the archive's identity record (${IDENTITY_NAME}) says its objects are encrypted`);
    }
    return got;
  }

  put(name: string, data: Buffer, opts?: PutOptions): Promise<PutResult> {
    return this.inner.put(name, data, opts);
  }

  head(name: string): Promise<ObjectInfo | undefined> {
    return this.inner.head(name);
  }

  list(prefix?: string): Promise<ObjectInfo[]> {
    return this.inner.list(prefix);
  }

  delete(name: string): Promise<void> {
    return this.inner.delete(name);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
