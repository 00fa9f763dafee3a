// Streamed objects on S3 (createStream: base backups, larger than memory) are multipart
// uploads: parts of 8 MiB, doubling every 1,000 parts (S3 takes at most 10,000 parts, so up to about 7.8 TiB),
// each with its SHA-256 transfer checksum, at most PARTS_IN_FLIGHT of them uploading while the
// next one fills: memory is (PARTS_IN_FLIGHT + 1) x the part size whatever the object's size
// (24 MiB up to 7.8 GiB, then twice that for each further 1,000 parts). A body shorter than one
// part is one PUT (drivers/s3.ts). S3 fixes an object's metadata when its upload starts, before the
// checksum is known, so the record of a streamed object is a small object of its own,
// .walstream-meta/<key>.<id>.json (where a directory archive keeps its records too), and the
// object's metadata names it (walstream-streamed: <id>, random per upload). The record is created
// once the whole body went by and BEFORE CompleteMultipartUpload (with If-None-Match: *, and a HEAD
// just before it) publishes the object. So:
// - nothing is readable under the key before every part is stored, and from the moment the object
//   is, its record exists: a writer killed at any point leaves at worst an upload never completed
//   and a record that no object names (harmless; scanLeftovers reports it, removeLeftovers removes
//   it once older than the leftover age);
// - the id binds the object to its record: a record left by a writer that lost, died or whose
//   object was deleted never passes for another object's, and a writer tells its own completed
//   object (a complete whose answer was lost) from a concurrent writer's;
// - stat, read and readStream of a streamed object take its record from there (one more small
//   GET). One whose record is missing or does not match it (key, id, stored size) stats without a
//   checksum, and read and readStream refuse it (IntegrityError): its bytes are never handed out
//   unverifiable;
// - delete removes the object first, then its record: a crash between leaves a record no object
//   names, never an object without its record.
// (The alternative, copying the finished object onto itself with the record as metadata, needs a
// second multipart upload (UploadPartCopy) for objects over 5 GB and leaves a window where the
// object is readable without its record.)
//
// Here: the part sizes, the parts read from the body, and the upload itself (parts, record,
// complete, abort). The records and the reads of streamed objects are in drivers/s3-records.ts,
// the uploads killed writers left in drivers/s3-leftovers.ts.
import { AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateMultipartUploadCommand, UploadPartCommand, type CompletedPart } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { sha256Owned } from '../../util/bulk.js';
import type { CreateResult, NewMeta } from '../driver.js';
import { StorageError } from '../types.js';
import { META_STREAMED, codeOf, statusOf, streamedId, type S3Bucket } from './s3-bucket.js';
import { putRecord, recordBody, recordKey } from './s3-records.js';

/** The first part of a streamed object; later parts grow (partSize). */
export const FIRST_PART_SIZE = 8 * 1024 * 1024;
/** Parts of one size before the size doubles. */
const PARTS_PER_SIZE = 1000;
/** S3's limits: parts per upload, bytes per part. */
export const MAX_PARTS = 10_000;
const MAX_PART_SIZE = 5 * 1024 * 1024 * 1024;
/** UploadParts of one streamed object at a time; one more part fills meanwhile (memory: see the top of this file). */
export const PARTS_IN_FLIGHT = 2;

/** The size of part `n` (from 1) of a streamed object: 8 MiB, doubling every 1,000 parts. */
export function partSize(n: number): number {
  return Math.min(MAX_PART_SIZE, FIRST_PART_SIZE * 2 ** Math.floor((n - 1) / PARTS_PER_SIZE));
}

/**
 * A streamed body cut into parts, each in memory of its own (never a view into the source's
 * buffers, which a source may reuse once asked for more).
 */
export class PartReader {
  /** What the source threw, if it did. */
  sourceError: { err: unknown } | undefined;
  private rest: Buffer | undefined;
  private ended = false;

  constructor(private readonly it: AsyncIterator<Buffer>) {}

  /** The next `size` bytes (fewer at the end of the body), or undefined when none is left. */
  async next(size: number): Promise<Buffer | undefined> {
    let part: Buffer | undefined;
    let at = 0;
    while (at < size) {
      let chunk = this.rest;
      this.rest = undefined;
      if (chunk === undefined) {
        chunk = await this.pull();
        if (chunk === undefined) break;
      }
      if (chunk.length === 0) continue;
      part ??= Buffer.allocUnsafeSlow(size);
      const take = Math.min(size - at, chunk.length);
      chunk.copy(part, at, 0, take);
      at += take;
      // The rest of a chunk is taken before the source is asked for more: it cannot change meanwhile.
      if (take < chunk.length) this.rest = chunk.subarray(take);
    }
    return part?.subarray(0, at);
  }

  /** Consume the body to its end (its checksum is computed as it goes by), keeping nothing. */
  async drain(): Promise<void> {
    this.rest = undefined;
    while ((await this.pull()) !== undefined);
  }

  /** Let the source go (its file, its connection) when the body is given up before its end. */
  async release(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    try {
      await this.it.return?.();
    } catch {
      // The source failing as it closes changes nothing: the upload failed already.
    }
  }

  private async pull(): Promise<Buffer | undefined> {
    if (this.ended) return undefined;
    let r: IteratorResult<Buffer>;
    try {
      r = await this.it.next();
    } catch (err) {
      this.ended = true;
      this.sourceError = { err };
      throw err;
    }
    if (r.done) {
      this.ended = true;
      return undefined;
    }
    return r.value;
  }
}

/**
 * The multipart upload of a streamed body whose first part is `first` (see the top of this
 * file): parts uploaded PARTS_IN_FLIGHT at a time while the next one fills, the record created,
 * then the upload completed with If-None-Match: *.
 */
export async function multipartUpload(b: S3Bucket, key: string, first: Buffer, parts: PartReader, meta: () => NewMeta): Promise<CreateResult> {
  const k = b.key(key);
  const id = randomBytes(8).toString('hex');
  const uploadId = await b.request('CREATE UPLOAD', k, async (abortSignal) => {
    const r = await b.client.send(
      new CreateMultipartUploadCommand({
        Bucket: b.bucket,
        Key: k,
        ContentType: 'application/octet-stream',
        Metadata: { [META_STREAMED]: id },
        ...(b.transferChecksum ? { ChecksumAlgorithm: 'SHA256' as const } : {}),
        ...b.sseParams(),
      }),
      { abortSignal },
    );
    if (r.UploadId === undefined) throw new StorageError(`S3 CREATE UPLOAD ${b.where(k)}: the answer names no upload`, true);
    return r.UploadId;
  });
  const rk = recordKey(b, key, id);
  let recorded = false;
  try {
    const { completed, storedSize } = await uploadParts(b, k, uploadId, first, parts);
    const m = meta();
    // Taken meanwhile: lost (also where a store ignores If-None-Match on a complete).
    if (await b.head(k)) {
      await abortUpload(b, k, uploadId);
      return { created: false };
    }
    await putRecord(b, rk, recordBody(key, id, m, storedSize));
    recorded = true;
    if ((await complete(b, k, uploadId, completed)) === 'created' || (await isOurs(b, k, id))) return { created: true, modified: new Date() };
    // Another writer's object is there (412): nothing of ours is.
    await abortUpload(b, k, uploadId);
    await b.deleteKey(rk).catch(() => undefined); // else a record no object names: a leftover
    return { created: false };
  } catch (err) {
    // A complete that failed may have gone through with its answer lost.
    if (recorded && (await isOurs(b, k, id).catch(() => false))) return { created: true, modified: new Date() };
    const aborted = await abortUpload(b, k, uploadId);
    // Once the upload is aborted it can never complete: its record names nothing. (Not
    // aborted: a complete still on its way may yet publish the object, which needs it.)
    if (recorded && aborted) await b.deleteKey(rk).catch(() => undefined);
    throw err;
  }
}

/**
 * Upload `first` and the parts after it, PARTS_IN_FLIGHT at a time while the next one fills:
 * memory (PARTS_IN_FLIGHT + 1) x the part size. The first failure stops it (after the parts in
 * flight settled) and is thrown.
 */
async function uploadParts(b: S3Bucket, k: string, uploadId: string, first: Buffer, parts: PartReader): Promise<{ completed: CompletedPart[]; storedSize: number }> {
  const completed: CompletedPart[] = [];
  const running = new Set<Promise<void>>();
  let failure: { err: unknown } | undefined;
  let storedSize = 0;
  let n = 0;
  const start = (part: Buffer): void => {
    const number = ++n;
    storedSize += part.length;
    const p: Promise<void> = uploadPart(b, k, uploadId, number, part)
      .then(
        (done) => {
          completed[number - 1] = done;
        },
        (err: unknown) => {
          failure ??= { err };
        },
      )
      .finally(() => running.delete(p));
    running.add(p);
  };
  try {
    let part: Buffer | undefined = first;
    while (part !== undefined && failure === undefined) {
      start(part);
      part = await parts.next(partSize(n + 1));
      if (part !== undefined && n >= MAX_PARTS) {
        throw new StorageError(`S3 streamed upload of ${b.where(k)}: the object is larger than ${MAX_PARTS} parts can hold (${storedSize} bytes so far)`, false);
      }
      while (running.size >= PARTS_IN_FLIGHT && failure === undefined) await Promise.race(running);
    }
  } finally {
    // Never leave a part on its way: an abort must come after the last of them.
    await Promise.all(running);
  }
  if (failure !== undefined) throw failure.err;
  return { completed, storedSize };
}

/** One part, with its SHA-256 transfer checksum; its deadline grows with its size. */
async function uploadPart(b: S3Bucket, k: string, uploadId: string, number: number, body: Buffer): Promise<CompletedPart> {
  let part = body;
  let sum: string | undefined;
  if (b.transferChecksum) {
    const hashed = await sha256Owned(part);
    part = hashed.data;
    sum = Buffer.from(hashed.hex, 'hex').toString('base64');
  }
  const deadline = b.timeoutMs * Math.max(1, part.length / FIRST_PART_SIZE);
  const r = await b.request(
    `PUT PART ${number}`,
    k,
    (abortSignal) =>
      b.client.send(
        new UploadPartCommand({
          Bucket: b.bucket,
          Key: k,
          UploadId: uploadId,
          PartNumber: number,
          Body: part,
          ContentLength: part.length,
          ...(sum !== undefined ? { ChecksumAlgorithm: 'SHA256' as const, ChecksumSHA256: sum } : {}),
        }),
        { abortSignal },
      ),
    deadline,
  );
  if (r.ETag === undefined) throw new StorageError(`S3 PUT PART ${number} ${b.where(k)}: the answer has no ETag`, true);
  return { PartNumber: number, ETag: r.ETag, ...(sum !== undefined ? { ChecksumSHA256: sum } : {}) };
}

/** CompleteMultipartUpload, with If-None-Match: * where conditional writes are used: 'taken' when the key holds an object. */
async function complete(b: S3Bucket, k: string, uploadId: string, parts: CompletedPart[]): Promise<'created' | 'taken'> {
  // S3 may take minutes to assemble many parts.
  const deadline = b.timeoutMs * (1 + Math.ceil(parts.length / 1000));
  for (let attempt = 0; attempt < 6; attempt++) {
    const done = await b.request(
      'COMPLETE UPLOAD',
      k,
      async (abortSignal) => {
        try {
          await b.client.send(
            new CompleteMultipartUploadCommand({
              Bucket: b.bucket,
              Key: k,
              UploadId: uploadId,
              MultipartUpload: { Parts: parts },
              ...(b.conditionalWrites ? { IfNoneMatch: '*' } : {}),
            }),
            { abortSignal },
          );
          return 'created' as const;
        } catch (err) {
          const status = statusOf(err);
          if (status === 412 && b.conditionalWrites) return 'taken' as const;
          if (status === 409 && codeOf(err) === 'ConditionalRequestConflict') return 'busy' as const;
          throw err;
        }
      },
      deadline,
    );
    if (done !== 'busy') return done;
    await sleep(50 * 2 ** attempt + Math.floor(Math.random() * 50));
  }
  throw new StorageError(`S3 COMPLETE UPLOAD ${b.where(k)}: the object keeps changing under concurrent writers; try again`, true);
}

/** Whether the object under `k` is the one of upload record `id` (this writer's). */
async function isOurs(b: S3Bucket, k: string, id: string): Promise<boolean> {
  return streamedId((await b.head(k))?.Metadata) === id;
}

/** AbortMultipartUpload, best effort (some stores cannot: a lifecycle rule or cleanup removes it then); whether the store did. */
async function abortUpload(b: S3Bucket, k: string, uploadId: string): Promise<boolean> {
  try {
    await b.request('ABORT UPLOAD', k, (abortSignal) => b.client.send(new AbortMultipartUploadCommand({ Bucket: b.bucket, Key: k, UploadId: uploadId }), { abortSignal }));
    return true;
  } catch {
    // The error that made the upload fail is what the caller reports.
    return false;
  }
}
