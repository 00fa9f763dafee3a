// What killed writers leave in an S3 archive. A multipart upload never completed (its writer
// killed, drivers/s3-multipart.ts) keeps its parts, billed, and is never listed among the
// objects. scanLeftovers lists those under the prefix (ListMultipartUploads, and ListParts for
// their bytes and newest part) with the records no object names (drivers/s3-records.ts), and
// removeLeftovers aborts the uploads idle for longer than the leftover age
// (AbortMultipartUpload), as the bucket lifecycle rule AbortIncompleteMultipartUpload does, and
// deletes those records.
import { AbortMultipartUploadCommand, ListMultipartUploadsCommand, ListObjectsV2Command, ListPartsCommand } from '@aws-sdk/client-s3';
import { mapLimit } from '../../util/concurrency.js';
import { DEFAULT_LEFTOVER_AGE_MS, judgeLeftover, removable } from '../leftovers.js';
import { StorageError, type Leftover, type LeftoverOptions, type LeftoverRemoval, type LeftoverScan } from '../types.js';
import { streamedId, unsupportedCall, type S3Bucket } from './s3-bucket.js';
import { RECORD_DIR, RECORD_RE } from './s3-records.js';

/**
 * What killed writers left under the prefix: the multipart uploads that were started and never
 * completed or aborted, with their bytes and when their newest part arrived (ListParts; when
 * the store cannot list parts: bytes unknown, and the upload's start), and the records of
 * streamed objects that no object names (kind 'temp-file'). A store that does not list uploads
 * at all (some S3-compatible ones) is reported in `unavailable`, not as an error.
 */
export async function scanLeftovers(b: S3Bucket, opts: LeftoverOptions = {}): Promise<LeftoverScan> {
  const uploads = await leftoverUploads(b, opts);
  const records = await unnamedRecords(b, opts);
  const leftovers = [...uploads.leftovers, ...records].sort(
    (x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0) || ((x.upload?.id ?? '') < (y.upload?.id ?? '') ? -1 : (x.upload?.id ?? '') > (y.upload?.id ?? '') ? 1 : 0),
  );
  return { leftovers, unavailable: uploads.unavailable };
}

/** Abort the uploads idle for longer than the leftover age, and delete the records no object names once as old (see scanLeftovers). */
export async function removeLeftovers(b: S3Bucket, opts: LeftoverOptions & { dryRun?: boolean } = {}): Promise<LeftoverRemoval> {
  const scan = await scanLeftovers(b, opts);
  const result: LeftoverRemoval = { ...scan, removed: [], failed: [] };
  for (const l of scan.leftovers) {
    if (!removable(l.state)) continue;
    if (!l.upload && !l.name.startsWith(RECORD_DIR)) continue;
    if (!opts.dryRun) {
      try {
        if (l.upload) {
          const { key, id } = l.upload;
          await b.request('ABORT UPLOAD', key, async (abortSignal) => {
            try {
              await b.client.send(new AbortMultipartUploadCommand({ Bucket: b.bucket, Key: key, UploadId: id }), { abortSignal });
            } catch (err) {
              if (!b.isNotFound(err)) throw err; // NoSuchUpload: gone already
            }
          });
        } else {
          await b.deleteKey(b.prefix + l.name);
        }
      } catch (err) {
        result.failed.push({ leftover: l, error: (err as Error).message });
        continue;
      }
    }
    result.removed.push(l);
  }
  return result;
}

/** The multipart uploads under the prefix never completed (see scanLeftovers). */
async function leftoverUploads(b: S3Bucket, opts: LeftoverOptions): Promise<LeftoverScan> {
  const uploads: { key: string; id: string; initiated: Date }[] = [];
  let keyMarker: string | undefined;
  let idMarker: string | undefined;
  try {
    do {
      const page = await b.request('LIST UPLOADS', b.prefix, (abortSignal) =>
        b.client.send(
          new ListMultipartUploadsCommand({
            Bucket: b.bucket,
            Prefix: b.prefix,
            MaxUploads: b.listPageSize,
            ...(keyMarker !== undefined ? { KeyMarker: keyMarker } : {}),
            ...(idMarker !== undefined ? { UploadIdMarker: idMarker } : {}),
          }),
          { abortSignal },
        ),
      );
      for (const u of page.Uploads ?? []) {
        if (u.Key === undefined || u.UploadId === undefined || !u.Key.startsWith(b.prefix)) continue;
        uploads.push({ key: u.Key, id: u.UploadId, initiated: u.Initiated ?? new Date(0) });
      }
      const more = page.IsTruncated === true;
      if (more && page.NextKeyMarker === undefined) throw new StorageError(`S3 LIST UPLOADS ${b.where(b.prefix)}: truncated listing without a marker`, true);
      keyMarker = more ? page.NextKeyMarker : undefined;
      idMarker = more ? page.NextUploadIdMarker : undefined;
    } while (keyMarker !== undefined);
  } catch (err) {
    const unsupported = unsupportedCall(err);
    if (unsupported) {
      return {
        leftovers: [],
        unavailable: `${b.description} does not list incomplete multipart uploads (${unsupported}): a bucket lifecycle rule ` + 'AbortIncompleteMultipartUpload removes those of killed writers',
      };
    }
    throw err;
  }
  const found = await mapLimit(uploads, 8, async (u): Promise<Leftover | undefined> => {
    const parts = await uploadPartsListed(b, u.key, u.id);
    if (parts === 'gone') return undefined; // completed or aborted meanwhile
    const modified = parts && parts.newest > u.initiated ? parts.newest : u.initiated;
    return {
      name: u.key.slice(b.prefix.length),
      kind: 'multipart-upload',
      bytes: parts?.bytes,
      modified,
      writer: undefined,
      state: judgeLeftover(undefined, modified, opts),
      upload: { key: u.key, id: u.id },
    };
  });
  return { leftovers: found.filter((l): l is Leftover => l !== undefined), unavailable: undefined };
}

/**
 * The records of streamed objects that no object names (their object deleted, replaced, or
 * never completed). Judged by age, at least the default leftover age whatever is asked: the
 * record of a writer still completing its upload is one of them for a moment.
 */
async function unnamedRecords(b: S3Bucket, opts: LeftoverOptions): Promise<Leftover[]> {
  const base = b.prefix + RECORD_DIR;
  const found: { key: string; id: string; name: string; bytes: number; modified: Date }[] = [];
  let token: string | undefined;
  do {
    const page = await b.request('LIST', base, (abortSignal) =>
      b.client.send(new ListObjectsV2Command({ Bucket: b.bucket, Prefix: base, MaxKeys: b.listPageSize, ...(token !== undefined ? { ContinuationToken: token } : {}) }), { abortSignal }),
    );
    for (const o of page.Contents ?? []) {
      if (o.Key === undefined || !o.Key.startsWith(base)) continue;
      const m = RECORD_RE.exec(o.Key.slice(base.length));
      if (!m) continue;
      found.push({ key: m[1]!, id: m[2]!, name: o.Key.slice(b.prefix.length), bytes: o.Size ?? 0, modified: o.LastModified ?? new Date(0) });
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
    if (page.IsTruncated && token === undefined) throw new StorageError(`S3 LIST ${b.where(base)}: truncated listing without a continuation token`, true);
  } while (token !== undefined);
  const keys = [...new Set(found.map((f) => f.key))];
  const named = new Map<string, string | undefined>();
  await mapLimit(keys, 8, async (key) => {
    named.set(key, streamedId((await b.head(b.key(key)))?.Metadata));
  });
  const age = { ...opts, maxAgeMs: Math.max(opts.maxAgeMs ?? DEFAULT_LEFTOVER_AGE_MS, DEFAULT_LEFTOVER_AGE_MS) };
  return found
    .filter((f) => named.get(f.key) !== f.id)
    .map((f) => ({ name: f.name, kind: 'temp-file' as const, bytes: f.bytes, modified: f.modified, writer: undefined, state: judgeLeftover(undefined, f.modified, age) }));
}

/**
 * The bytes an upload holds and when its newest part arrived; 'gone' when it no longer exists;
 * undefined when the store does not list parts.
 */
async function uploadPartsListed(b: S3Bucket, key: string, id: string): Promise<{ bytes: number; newest: Date } | 'gone' | undefined> {
  let bytes = 0;
  let newest = new Date(0);
  let marker: string | undefined;
  try {
    do {
      const page = await b.request('LIST PARTS', key, async (abortSignal) => {
        try {
          return await b.client.send(new ListPartsCommand({ Bucket: b.bucket, Key: key, UploadId: id, ...(marker !== undefined ? { PartNumberMarker: marker } : {}) }), { abortSignal });
        } catch (err) {
          if (b.isNotFound(err)) return 'gone' as const;
          throw err;
        }
      });
      if (page === 'gone') return 'gone';
      for (const p of page.Parts ?? []) {
        bytes += p.Size ?? 0;
        if (p.LastModified && p.LastModified > newest) newest = p.LastModified;
      }
      marker = page.IsTruncated === true ? page.NextPartNumberMarker : undefined;
    } while (marker !== undefined);
  } catch (err) {
    if (unsupportedCall(err)) return undefined;
    throw err;
  }
  return { bytes, newest };
}
