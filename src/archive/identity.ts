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
// says `"encryption": "aes-256-gcm"` or is itself stored encrypted (written so only together with
// the field; a reader without the key cannot read the field), or when the separate marker object
// walstream.encrypted exists. Neither is ever changed or deleted by walstream: the record is
// written once, the marker once.
// - A first writer with a key records the field only when the archive holds no WAL yet (one list
//   at the first claim), or when given --encryption-required: otherwise readers would refuse the
//   plain WAL already there (a pg_receivewal directory, an archive whose record was removed). It
//   then writes the record plain, without the field.
// - An existing record without the field: a writer with a key and --encryption-required creates
//   the marker (put if absent). It does not check the objects already there: readers then refuse
//   any plain WAL, so making sure every object is encrypted first (verify --encryption-required)
//   is the operator's step (README). Turning encryption off again is the operator's removing the
//   marker by hand.
import {
  ConflictError,
  ENCRYPTED_MARKER_NAME,
  IDENTITY_NAME,
  IntegrityError,
  KeyUnavailableError,
  NotFoundError,
  RESERVED_NAMES,
  StorageError,
  type ArchiveStore,
  type GetResult,
  type ListOptions,
  type GetStreamOptions,
  type ObjectInfo,
  type PutOptions,
  type PutResult,
} from '../storage/types.js';

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

/** Whether the marker object says the archive is encrypted (one HEAD). */
async function markerPresent(store: ArchiveStore): Promise<boolean> {
  return (await store.head(ENCRYPTED_MARKER_NAME)) !== undefined;
}

/**
 * What records the archive as encrypted: its identity record (the field; a record encrypted with
 * a key not given says so too: only a writer recording the field writes one), else the marker;
 * undefined when neither (no record and no marker: unencrypted).
 */
export async function encryptionRecordedBy(store: ArchiveStore): Promise<'record' | 'marker' | undefined> {
  try {
    if ((await readIdentity(store))?.encryption !== undefined) return 'record';
  } catch (err) {
    if (err instanceof KeyUnavailableError) return 'record';
    throw err;
  }
  return (await markerPresent(store)) ? 'marker' : undefined;
}

/** Whether the archive is recorded as encrypted (encryptionRecordedBy). */
export async function archiveEncrypted(store: ArchiveStore): Promise<boolean> {
  return (await encryptionRecordedBy(store)) !== undefined;
}

function compare(found: ArchiveIdentity, ours: ArchiveIdentity, store: ArchiveStore, what: string): void {
  if (found.systemIdentifier !== ours.systemIdentifier) {
    throw new IdentityMismatchError(`${what} is from database system ${ours.systemIdentifier}, but the archive ${store.description} holds WAL of system ${found.systemIdentifier}; use another archive`);
  }
  if (found.segmentSize !== ours.segmentSize) {
    throw new IdentityMismatchError(`${what} has ${ours.segmentSize}-byte segments, but the archive ${store.description} holds ${found.segmentSize}-byte segments; use another archive`);
  }
}

/** What a writer brings: whether it encrypts (has a key), and whether it was given --encryption-required. */
export interface WriterEncryption {
  encrypts: boolean;
  /** With a key: record that the archive is encrypted (the field in a new record, else the marker). */
  requireEncrypted?: boolean;
}

/** What a writer learns from the archive. */
export interface WriterCheck {
  /** The archive is recorded as encrypted (by now). */
  encrypted: boolean;
}

function refusal(store: ArchiveStore, by: string): ArchiveEncryptedError {
  return new ArchiveEncryptedError(
    `the archive ${store.description} is encrypted (${by} says so) and no encryption key was given: ` + 'writing to it needs its key (--encryption-key-file or WALSTREAM_ENCRYPTION_KEY); nothing was written',
  );
}

const BY_RECORD = `its identity record ${IDENTITY_NAME}`;
const BY_MARKER = `its marker ${ENCRYPTED_MARKER_NAME}`;

/** readIdentity for a writer: a record it cannot read for want of a key means an encrypted archive. */
async function readForWriter(store: ArchiveStore, writer: WriterEncryption): Promise<ArchiveIdentity | undefined> {
  try {
    return await readIdentity(store);
  } catch (err) {
    if (err instanceof KeyUnavailableError && !writer.encrypts) throw refusal(store, BY_RECORD);
    throw err;
  }
}

/**
 * Whether the archive is encrypted, given its record (read already): the field, else the marker.
 * A writer without a key is refused when it is; a writer with one is told, and tells the store
 * (ArchiveStore.setArchiveEncrypted: a plain copy under a name it puts is then replaced on S3,
 * refused by the local store).
 */
async function settle(store: ArchiveStore, found: ArchiveIdentity | undefined, writer: WriterEncryption): Promise<WriterCheck> {
  let by: string | undefined;
  if (found?.encryption) by = BY_RECORD;
  else if (await markerPresent(store)) by = BY_MARKER;
  if (by !== undefined && !writer.encrypts) throw refusal(store, by);
  if (by !== undefined) store.setArchiveEncrypted?.(true);
  return { encrypted: by !== undefined };
}

/**
 * Refuse a writer without a key when the archive is encrypted (for files that carry no system
 * identifier to claim the archive with: history and backup files). No record: only the marker
 * can refuse.
 */
export async function checkWriter(store: ArchiveStore, writer: WriterEncryption): Promise<WriterCheck> {
  return settle(store, await readForWriter(store, writer), writer);
}

/**
 * Record that the archive is encrypted, in an archive whose identity record says nothing of it:
 * the marker object, put if absent (never the record itself rewritten: an archive without its
 * record, even for a moment, could be claimed by another system's writer). Written plain: it holds
 * no secret, and its existence is what counts (another copy already there counts as well).
 */
async function putMarker(store: ArchiveStore): Promise<void> {
  try {
    await store.put(ENCRYPTED_MARKER_NAME, Buffer.from(`${JSON.stringify({ format: 1, encryption: ARCHIVE_ENCRYPTION })}\n`), { unencrypted: true });
  } catch (err) {
    if (!(err instanceof ConflictError)) throw err;
  }
  store.setArchiveEncrypted?.(true);
}

/**
 * Check that `ours` may write into the archive; record it when the archive has no identity yet.
 * Two first writers racing: the loser finds the winner's record and compares against it. A writer
 * without a key is refused (ArchiveEncryptedError) when the archive is encrypted. A first writer
 * with a key records the archive as encrypted when it holds no WAL yet or with
 * --encryption-required; a writer with a key and --encryption-required records it in an archive
 * with a record without the field by putting the marker.
 */
export async function claimArchive(store: ArchiveStore, ours: ArchiveIdentity, what: string, writer: WriterEncryption = { encrypts: false }): Promise<WriterCheck> {
  const found = await readForWriter(store, writer);
  if (found) {
    compare(found, ours, store, what);
    const check = await settle(store, found, writer);
    if (!check.encrypted && writer.encrypts && writer.requireEncrypted) {
      await putMarker(store);
      return { encrypted: true };
    }
    return check;
  }
  // No record yet (a new archive, one written by other tools, or one whose record was removed).
  const marked = await settle(store, undefined, writer);
  // Record encryption only where no reader can be holding plain WAL from before.
  // (The first WAL object found answers: a large archive is not listed whole.)
  const encrypt = writer.encrypts && !marked.encrypted && (writer.requireEncrypted === true || (await store.list('', { limit: 1 })).length === 0);
  const record: ArchiveIdentity = { systemIdentifier: ours.systemIdentifier, segmentSize: ours.segmentSize, ...(encrypt ? { encryption: ARCHIVE_ENCRYPTION } : {}) };
  try {
    // Sealed only when it records the field: a record stored encrypted says the archive is.
    await store.put(IDENTITY_NAME, encodeIdentity(record), { unencrypted: !encrypt });
  } catch (err) {
    if (!(err instanceof ConflictError)) throw err;
    const winner = await readForWriter(store, writer);
    if (!winner) throw err;
    compare(winner, ours, store, what);
    return settle(store, winner, writer);
  }
  if (encrypt) store.setArchiveEncrypted?.(true);
  return { encrypted: encrypt || marked.encrypted };
}

/**
 * A store for readers that refuses plain objects in an encrypted archive, as if the key were
 * given with --encryption-required: get of an object stored unencrypted is IntegrityError when
 * the archive is recorded as encrypted (archiveEncrypted). The record (one GET) and, when it does
 * not say so, the marker (one HEAD) are read only when a plain object comes back, once per store
 * (its answer kept): reading encrypted objects costs no extra request, reading plain ones two in
 * all per store in an unencrypted archive (one when the record says it is encrypted).
 */
export class EncryptedArchiveGuard implements ArchiveStore {
  #encrypted: Promise<'record' | 'marker' | undefined> | undefined;

  constructor(private readonly inner: ArchiveStore) {}

  get description(): string {
    return this.inner.description;
  }

  /** Whether the archive is encrypted (reads the identity record and the marker the first time). */
  async encrypted(): Promise<boolean> {
    return (await this.recordedBy()) !== undefined;
  }

  private recordedBy(): Promise<'record' | 'marker' | undefined> {
    if (!this.#encrypted) {
      const p = encryptionRecordedBy(this.inner);
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
    await this.refusePlain(name, got.info);
    return got;
  }

  /** IntegrityError when `info` is of a plain object in an archive recorded as encrypted. */
  private async refusePlain(name: string, info: ObjectInfo): Promise<void> {
    if (info.keyId !== undefined || RESERVED_NAMES.has(name)) return;
    const by = await this.recordedBy();
    if (by !== undefined) {
      const what = by === 'record' ? `the archive's identity record (${IDENTITY_NAME})` : `the archive's marker ${ENCRYPTED_MARKER_NAME}`;
      throw new IntegrityError(name, `it is not encrypted, and ${what} says its objects are encrypted`);
    }
  }

  /** Streamed reads, under the same rule as get (checked before a byte is read). */
  get getStream(): ArchiveStore['getStream'] {
    const inner = this.inner.getStream?.bind(this.inner);
    if (!inner) return undefined;
    return async (name: string, opts?: GetStreamOptions) => {
      const got = await inner(name, opts);
      try {
        await this.refusePlain(name, got.info);
      } catch (err) {
        await (got.stream as AsyncGenerator<Buffer>).return?.(undefined);
        throw err;
      }
      return got;
    };
  }

  put(name: string, data: Buffer, opts?: PutOptions): Promise<PutResult> {
    return this.inner.put(name, data, opts);
  }

  head(name: string): Promise<ObjectInfo | undefined> {
    return this.inner.head(name);
  }

  list(prefix?: string, opts?: ListOptions): Promise<ObjectInfo[]> {
    return this.inner.list(prefix, opts);
  }

  listScans(): boolean {
    return this.inner.listScans?.() === true;
  }

  delete(name: string): Promise<void> {
    return this.inner.delete(name);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  setArchiveEncrypted(encrypted: boolean): void {
    this.inner.setArchiveEncrypted?.(encrypted);
  }

  // Leftovers of writers are not objects: nothing to guard, passed through (when the store has them).
  get scanLeftovers(): ArchiveStore['scanLeftovers'] {
    return this.inner.scanLeftovers?.bind(this.inner);
  }

  get removeLeftovers(): ArchiveStore['removeLeftovers'] {
    return this.inner.removeLeftovers?.bind(this.inner);
  }
}
