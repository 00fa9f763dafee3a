// Where an archive is, as a user writes it: a directory path, file:///path, s3://bucket/prefix or
// azure://container/prefix, checked and taken apart without touching the archive (storage/open.ts
// opens it). Kept apart from open.ts, which loads the S3 and Azure backends for their URLs: the
// command line's fast path (cli/fast-path.ts) reads locations with this alone.
import { fileURLToPath } from 'node:url';
import { StorageError } from './types.js';

export type ArchiveLocation = { kind: 'local'; path: string } | { kind: 's3'; bucket: string; prefix: string } | { kind: 'azure'; container: string; prefix: string };

/**
 * Bucket names: letters, digits, ".", "-" and "_", 3 to 255 of them, starting and ending with a
 * letter or digit, no "..". That is S3's rule for new buckets (3-63, lowercase, no "_") widened to
 * what older us-east-1 buckets and some S3-compatible stores (Ceph with relaxed names) accept;
 * anything else (a slash, a space, "..", an empty name) cannot name a bucket anywhere.
 */
const BUCKET_RE = /^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$/;

/** Azure container names: 3-63 lowercase letters, digits and "-", starting and ending with a letter or digit, no "--". */
const CONTAINER_RE = /^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/;

function bad(shown: string, why: string): StorageError {
  return new StorageError(`invalid archive location ${shown}: ${why}`, false);
}

/** Parse an archive location; throws a one-line StorageError for anything else. */
export function parseArchiveUrl(url: string): ArchiveLocation {
  const shown = JSON.stringify(url.length > 200 ? `${url.slice(0, 200)}...` : url);
  if (url.trim() === '') throw new StorageError('the archive location is empty (give a directory, file:///path, s3://bucket/prefix or azure://container/prefix)', false);
  if (/[\0\r\n]/.test(url)) throw bad(JSON.stringify(url.replace(/[\0\r\n].*$/s, '...')), 'control characters');
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(url)?.[1]?.toLowerCase();

  if (scheme === 's3') {
    const m = /^s3:\/\/([^/?#]*)(\/[^?#]*)?([?#].*)?$/is.exec(url);
    if (!m) throw bad(shown, 'expected s3://bucket/prefix');
    const host = m[1]!;
    // Never echo anything before an "@": it would be a credential.
    if (host.includes('@')) throw new StorageError('invalid archive location: credentials in an s3:// URL are not supported (use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile)', false);
    if (m[3] !== undefined) throw bad(shown, 'query strings and fragments are not supported');
    if (host === '') throw bad(shown, 'no bucket name');
    if (!BUCKET_RE.test(host)) throw bad(shown, `"${host}" is not a valid bucket name (3-255 letters, digits, ".", "-" and "_", starting and ending with a letter or digit, no "..")`);
    return { kind: 's3', bucket: host, prefix: prefixOf(shown, m[2]) };
  }

  if (scheme === 'azure') {
    const m = /^azure:\/\/([^/?#]*)(\/[^?#]*)?([?#].*)?$/is.exec(url);
    if (!m) throw bad(shown, 'expected azure://container/prefix');
    const host = m[1]!;
    if (host.includes('@'))
      throw new StorageError('invalid archive location: credentials in an azure:// URL are not supported (use AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN)', false);
    if (m[3] !== undefined) throw bad(shown, 'query strings and fragments are not supported (give a SAS token in AZURE_STORAGE_SAS_TOKEN)');
    if (host === '') throw bad(shown, 'no container name');
    if (!CONTAINER_RE.test(host)) throw bad(shown, `"${host}" is not a valid container name (3-63 lowercase letters, digits and "-", starting and ending with a letter or digit, no "--")`);
    return { kind: 'azure', container: host, prefix: prefixOf(shown, m[2]) };
  }

  if (scheme === 'file') {
    // fileURLToPath drops "?..." and "#...": file:///srv/wal#1 would be /srv/wal. A "?" or "#" in
    // the directory's name is written %3F / %23 (or give the path itself).
    if (/[?#]/.test(url)) throw bad(shown, 'a file: URL must not have "?" or "#" (write them %3F and %23, or give the directory path itself)');
    let path: string;
    try {
      path = fileURLToPath(url);
    } catch (err) {
      throw bad(shown, oneLine((err as Error).message));
    }
    return { kind: 'local', path };
  }

  if (scheme !== undefined && url.slice(scheme.length + 1).startsWith('//')) {
    throw bad(shown, `unsupported scheme "${scheme}:" (use a directory, file:///path, s3://bucket/prefix or azure://container/prefix)`);
  }
  return { kind: 'local', path: url };
}

/** The key prefix of an s3:// or azure:// URL's path: "" or "a/b/"; no empty, "." or ".." parts. */
function prefixOf(shown: string, path: string | undefined): string {
  const segments = (path ?? '').split('/').filter((s, i, all) => !(s === '' && (i === 0 || i === all.length - 1)));
  if (segments.some((s) => s === '' || s === '.' || s === '..')) throw bad(shown, 'the prefix has an empty, "." or ".." part');
  return segments.length ? `${segments.join('/')}/` : '';
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}
