// Pieces every archive backend shares: quarantine names, which names a listing shows, how a
// stored copy compares with the bytes a put brings, and a bounded parallel map. Pure except for
// the clock a caller passes in.
import { decompress, sha256Hex } from './codec.js';
import { ALG_AES_256_GCM, SEALED_VERSION, isSealed, sealedHeader, unseal, type Keyring } from './encryption.js';
export { mapLimit } from '../util/concurrency.js';
import { ARCHIVE_NAME_RE, IntegrityError, QUARANTINE_PREFIX, RESERVED_NAMES, StorageError, WRITER_RECORD_PREFIX, WRITER_RECORD_RE, assertArchiveName, type Compression } from './types.js';

export function isArchiveName(name: string): boolean {
  try {
    assertArchiveName(name);
    return true;
  } catch {
    return false;
  }
}

/** A plain WAL file name (not a quarantine copy). */
export function isWalName(name: string): boolean {
  return ARCHIVE_NAME_RE.test(name);
}

/** How many quarantine names one conflict may try before giving up (same second, different bytes). */
export const QUARANTINE_ATTEMPTS = 50;

/**
 * quarantine/<name>.<YYYYMMDDTHHMMSSZ>; attempt n > 0 inserts ".n" before the Z so that two
 * conflicting copies within one second get different names (assertArchiveName accepts both).
 */
export function quarantineName(name: string, when: Date, attempt = 0): string {
  const iso = when.toISOString(); // 2025-01-02T03:04:05.678Z
  const stamp = iso.slice(0, 19).replace(/[-:]/g, '');
  return `${QUARANTINE_PREFIX}${name}.${stamp}${attempt > 0 ? `.${attempt}` : ''}Z`;
}

/** Whether list(prefix) shows `name`: prefix match, and quarantine copies only when asked for. */
export function listedUnder(name: string, prefix: string): boolean {
  if (!name.startsWith(prefix)) return false;
  if (RESERVED_NAMES.has(name)) return prefix === name;
  if (WRITER_RECORD_RE.test(name)) return prefix.startsWith(WRITER_RECORD_PREFIX);
  return !name.startsWith(QUARANTINE_PREFIX) || prefix.startsWith(QUARANTINE_PREFIX);
}

export function byName(a: { name: string }, b: { name: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/**
 * Whether a get of `name` refuses an unencrypted object: with a keyring given requireEncrypted
 * (--encryption-required) or in an archive recorded as encrypted. The archive's own records are
 * exempt (archive-layer policy, kept here so that every backend applies it alike): an identity
 * record written before encryption was turned on stays plain, as does the encryption marker,
 * and neither holds WAL.
 */
export function plainRefused(refuse: boolean, name: string): boolean {
  return refuse && !RESERVED_NAMES.has(name);
}

/** What a backend holds under a name, for judgeStored. */
export interface StoredCopy {
  /** The bytes as stored (sealed or not, compressed or not). */
  stored: Buffer;
  compression: Compression;
  /** The SHA-256 of the uncompressed bytes recorded with it, if any. */
  checksum: string | undefined;
  /** The uncompressed size recorded with it, if any. */
  size: number | undefined;
}

/**
 * How a stored copy compares with the bytes a put brings:
 * - identical: the same uncompressed bytes (an encrypted copy whose key is not given: its
 *   recorded checksum and size match);
 * - different: another valid object: a conflict, never overwritten;
 * - damaged: the archive was meant to hold exactly these bytes (the checksum recorded with the
 *   copy is the SHA-256 of `data`), but the copy fails that checksum or cannot be decoded (a write
 *   cut short, corruption); or it holds these very bytes unencrypted where only encrypted ones are
 *   read (`plainIsDamaged`). S3 and memory quarantine and replace it; the local store refuses (a
 *   damaged local file is bit rot or tampering: the operator decides). A copy failing a checksum
 *   recorded for other bytes, or without one, is 'different': replacing it could lose the only
 *   copy of WAL that was never ours;
 * - unauthenticated: encrypted with a key id we have, but it does not authenticate with our key:
 *   two different keys under one id (or damage we cannot tell from that): an error, never replaced.
 */
export type Verdict = { kind: 'identical' } | { kind: 'different' } | { kind: 'damaged'; why: string } | { kind: 'unauthenticated'; keyId: string };

export interface JudgeOptions {
  keyring: Keyring | undefined;
  /** An unencrypted copy, even with identical contents, is damaged (see ArchiveStore.setArchiveEncrypted). */
  plainIsDamaged: boolean;
  /** Decode a compressed stream cut short (an unverified in-progress .partial). */
  allowTruncated?: boolean;
}

export async function judgeStored(name: string, copy: StoredCopy, data: Buffer, opts: JudgeOptions): Promise<Verdict> {
  const sha = sha256Hex(data);
  // Replaceable only where the archive was meant to hold exactly `data`.
  const fromRecord = (why: string): Verdict => (copy.checksum === sha ? { kind: 'damaged', why } : { kind: 'different' });
  const sealed = isSealed(copy.stored);
  let payload = copy.stored;
  if (sealed) {
    // A format version or algorithm this walstream does not know (a newer writer): not damage.
    if (copy.stored.length >= 10 && (copy.stored[8] !== SEALED_VERSION || copy.stored[9] !== ALG_AES_256_GCM)) return { kind: 'different' };
    let keyId: string;
    try {
      keyId = sealedHeader(name, copy.stored).keyId;
    } catch (err) {
      if (err instanceof IntegrityError) return fromRecord('its encryption header is invalid');
      throw err;
    }
    if (!opts.keyring?.has(keyId)) {
      // Encrypted with a key not given: the checksum recorded of the plaintext decides.
      return copy.checksum === sha && (copy.size === undefined || copy.size === data.length) ? { kind: 'identical' } : { kind: 'different' };
    }
    try {
      payload = unseal(opts.keyring, name, copy.compression, copy.stored).payload;
    } catch (err) {
      if (err instanceof IntegrityError) return { kind: 'unauthenticated', keyId };
      throw err;
    }
  }
  let theirs: Buffer | undefined;
  try {
    theirs = await decompress(payload, copy.compression, { allowTruncated: opts.allowTruncated ?? false });
  } catch (err) {
    if (err instanceof StorageError) throw err;
    theirs = undefined; // undecodable bytes
  }
  if (theirs?.equals(data)) {
    return !sealed && opts.plainIsDamaged ? { kind: 'damaged', why: 'it is not encrypted, and the archive is encrypted' } : { kind: 'identical' };
  }
  if (theirs === undefined) return fromRecord('it cannot be decompressed');
  // Other bytes than `data`: damaged only when they fail a checksum recorded of `data`.
  return fromRecord('it fails its recorded checksum');
}

/** The error for an 'unauthenticated' verdict: never replaced, never taken for a conflict of contents. */
export function unauthenticatedError(name: string, keyId: string): IntegrityError {
  return new IntegrityError(
    name,
    `the stored copy does not authenticate with key "${keyId}", though a key with that id was given: likely two different keys under one id ` +
      '(compare the key files of every host writing to this archive), or the stored copy is damaged; it was not replaced',
  );
}
