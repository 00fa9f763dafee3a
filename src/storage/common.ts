// Pieces every archive backend shares: quarantine names, which names a listing shows, and a
// bounded parallel map. Pure except for the clock a caller passes in.
import { ARCHIVE_NAME_RE, IDENTITY_NAME, QUARANTINE_PREFIX, assertArchiveName } from './types.js';

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
  if (name === IDENTITY_NAME) return prefix === IDENTITY_NAME;
  return !name.startsWith(QUARANTINE_PREFIX) || prefix.startsWith(QUARANTINE_PREFIX);
}

/** Map with at most `limit` calls in flight; results in input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

export function byName(a: { name: string }, b: { name: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}
