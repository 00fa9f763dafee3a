// The archive's identity: the database system (its system identifier from pg_control, as every
// segment's long page header carries it) and the segment size. It is recorded once, by the first
// writer (walstream receive --archive or walstream push), under a reserved name, and checked by
// every later writer, so that WAL of two clusters can never mix in one archive: a segment of
// another system under the same name would otherwise be quarantined only when names collide, and
// a recovery could replay a foreign segment that merely has the right name.
import { ConflictError, IDENTITY_NAME, NotFoundError, StorageError, type ArchiveStore } from '../storage/types.js';

export interface ArchiveIdentity {
  systemIdentifier: bigint;
  segmentSize: number;
}

export class IdentityMismatchError extends StorageError {
  constructor(message: string) {
    super(message, false);
    this.name = 'IdentityMismatchError';
  }
}

export function encodeIdentity(id: ArchiveIdentity): Buffer {
  return Buffer.from(`${JSON.stringify({ format: 1, systemIdentifier: id.systemIdentifier.toString(), segmentSize: id.segmentSize })}\n`);
}

export function decodeIdentity(data: Buffer, where: string): ArchiveIdentity {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data.toString('utf8'));
  } catch {
    throw new StorageError(`${where}: the archive's ${IDENTITY_NAME} is not valid JSON`, false);
  }
  const o = parsed as { systemIdentifier?: unknown; segmentSize?: unknown };
  if (typeof o.systemIdentifier !== 'string' || !/^\d{1,20}$/.test(o.systemIdentifier) || typeof o.segmentSize !== 'number' || !Number.isInteger(o.segmentSize)) {
    throw new StorageError(`${where}: the archive's ${IDENTITY_NAME} does not name a system identifier and segment size`, false);
  }
  return { systemIdentifier: BigInt(o.systemIdentifier), segmentSize: o.segmentSize };
}

/** The recorded identity, or undefined for an archive nobody has claimed yet. */
export async function readIdentity(store: ArchiveStore): Promise<ArchiveIdentity | undefined> {
  try {
    return decodeIdentity((await store.get(IDENTITY_NAME)).data, store.description);
  } catch (err) {
    if (err instanceof NotFoundError) return undefined;
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

/**
 * Check that `ours` may write into the archive; record it when the archive has no identity yet.
 * Two first writers racing: the loser finds the winner's record and compares against it.
 */
export async function claimArchive(store: ArchiveStore, ours: ArchiveIdentity, what: string): Promise<void> {
  const found = await readIdentity(store);
  if (found) return compare(found, ours, store, what);
  try {
    await store.put(IDENTITY_NAME, encodeIdentity(ours));
  } catch (err) {
    if (!(err instanceof ConflictError)) throw err;
    const winner = await readIdentity(store);
    if (!winner) throw err;
    compare(winner, ours, store, what);
  }
}
