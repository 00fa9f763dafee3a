// The records of streamed objects on S3 (drivers/s3-multipart.ts writes them): S3 fixes an
// object's metadata when its upload starts, before its checksum is known, so a streamed object's
// record is a small object of its own, .walstream-meta/<key>.<id>.json, and the object's metadata
// names it (walstream-streamed: <id>). Here: the record's format and key, finding a streamed
// object's record (stat, read), refusing to hand out a streamed object without its record
// (read, readStream), and deleting an object with its record.
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import type { DriverObject, NewMeta, ObjectMeta } from '../driver.js';
import { IntegrityError, StorageError, isCompression, type Compression } from '../types.js';
import { META_STREAMED, metaOf, readBody, statusOf, streamedId, toBuffer, type S3Bucket } from './s3-bucket.js';

/** Where the records of streamed objects are, under the prefix: <RECORD_DIR><key>.<id>.json. */
export const RECORD_DIR = '.walstream-meta/';
const RECORD_FORMAT = 1;
export const RECORD_RE = /^(.+)\.([0-9a-f]{16})\.json$/;
const RECORD_ID_RE = /^[0-9a-f]{16}$/;

/** What a streamed object's record holds (RECORD_DIR/<key>.<id>.json). */
interface StreamRecord {
  format: typeof RECORD_FORMAT;
  /** The key under the prefix, and the id the object's metadata names: what binds the two. */
  key: string;
  id: string;
  sha256: string;
  compression: Compression;
  size: number;
  /** Bytes of the object as stored. */
  storedSize: number;
}

/** A record is a few hundred bytes: anything much larger is not one (and is not read into memory). */
const RECORD_MAX_BYTES = 64 * 1024;

function parseRecord(body: Buffer): StreamRecord | undefined {
  let v: unknown;
  try {
    v = JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const r = v as Record<string, unknown>;
  const count = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
  if (r['format'] !== RECORD_FORMAT || typeof r['key'] !== 'string' || typeof r['id'] !== 'string') return undefined;
  if (typeof r['sha256'] !== 'string' || !/^[0-9a-f]{64}$/.test(r['sha256']) || !isCompression(r['compression']) || !count(r['size']) || !count(r['storedSize'])) return undefined;
  return { format: RECORD_FORMAT, key: r['key'], id: r['id'], sha256: r['sha256'], compression: r['compression'], size: r['size'], storedSize: r['storedSize'] };
}

/** The body of the record `id` of the streamed object `key`, `storedSize` bytes as stored. */
export function recordBody(key: string, id: string, meta: NewMeta, storedSize: number): Buffer {
  const record: StreamRecord = { format: RECORD_FORMAT, key, id, sha256: meta.sha256, compression: meta.compression, size: meta.size, storedSize };
  return Buffer.from(`${JSON.stringify(record)}\n`);
}

/** The full key of the record `id` of the streamed object `key`. */
export function recordKey(b: S3Bucket, key: string, id: string): string {
  return `${b.prefix}${RECORD_DIR}${key}.${id}.json`;
}

/**
 * The record of the object `key` whose metadata is `metadata`: the metadata itself for an object
 * stored whole; for a streamed one its record object, or why it has none (a sentence).
 */
export async function recordOf(b: S3Bucket, key: string, metadata: Record<string, string> | undefined, storedSize: number | undefined): Promise<ObjectMeta | string> {
  const id = streamedId(metadata);
  if (id === undefined) return metaOf(metadata);
  if (!RECORD_ID_RE.test(id)) return `it was stored as a stream, and its metadata names no valid record (${META_STREAMED}: ${JSON.stringify(id.slice(0, 40))})`;
  const rk = recordKey(b, key, id);
  const body = await b.request('GET', rk, async (abortSignal) => {
    try {
      const res = await b.client.send(new GetObjectCommand({ Bucket: b.bucket, Key: rk }), { abortSignal });
      if (res.ContentLength !== undefined && res.ContentLength > RECORD_MAX_BYTES) {
        (res.Body as unknown as { destroy?: () => void } | undefined)?.destroy?.();
        return 'too large' as const;
      }
      return res.Body ? await readBody(res.Body, res.ContentLength) : Buffer.alloc(0);
    } catch (err) {
      if (b.isNotFound(err)) return undefined;
      throw err;
    }
  });
  const shown = b.where(rk);
  if (body === undefined) {
    return `it was stored as a stream and its record ${shown} is missing, so its checksum cannot be verified (the record was deleted, or the object was copied here without it)`;
  }
  const rec = body === 'too large' ? undefined : parseRecord(body);
  if (!rec) return `it was stored as a stream and its record ${shown} is not a walstream record`;
  if (rec.key !== key || rec.id !== id) return `its record ${shown} was written for another object ("${rec.key}", record ${rec.id})`;
  if (storedSize !== undefined && rec.storedSize !== storedSize) return `it holds ${storedSize} bytes, and its record ${shown} says ${rec.storedSize} were stored`;
  return { sha256: rec.sha256, compression: rec.compression, size: rec.size };
}

/**
 * recordOf for a read: an object without its record is refused (IntegrityError), unless it
 * turns out to be gone (deleted meanwhile: its record goes just after it), then 'gone'.
 */
export async function recordOrRefusal(b: S3Bucket, key: string, metadata: Record<string, string> | undefined, storedSize: number | undefined): Promise<ObjectMeta | 'gone'> {
  const meta = await recordOf(b, key, metadata, storedSize);
  if (typeof meta !== 'string') return meta;
  const now = await b.head(b.key(key));
  if (!now) return 'gone';
  throw new IntegrityError(key, meta);
}

/** Create a streamed object's record (its id is random: a 412 is this very record, put by an earlier attempt). */
export async function putRecord(b: S3Bucket, rk: string, body: Buffer): Promise<void> {
  const params = b.putParams(rk, body, { contentType: 'application/json', bodySha256: b.transferChecksum ? createHash('sha256').update(body).digest('hex') : undefined, ifNoneMatch: true });
  await b.request('PUT', rk, async (abortSignal) => {
    try {
      await b.client.send(new PutObjectCommand(params), { abortSignal });
    } catch (err) {
      if (!(statusOf(err) === 412 && b.conditionalWrites)) throw err;
    }
  });
}

/**
 * A GET of the object `key` whose body is read as it comes: its record checked first (a streamed
 * object without one is refused, see recordOrRefusal).
 */
export async function readStream(b: S3Bucket, key: string): Promise<{ object: DriverObject; meta: ObjectMeta; body: AsyncIterable<Buffer> } | undefined> {
  const k = b.key(key);
  const res = await b.request('GET', k, async () => {
    // A deadline for the answer, none for the body after it (a large object takes long).
    const answer = new AbortController();
    const timer = setTimeout(() => answer.abort(), b.timeoutMs);
    try {
      return await b.client.send(new GetObjectCommand({ Bucket: b.bucket, Key: k }), { abortSignal: answer.signal });
    } catch (err) {
      if (b.isNotFound(err)) return undefined;
      if (answer.signal.aborted && !(err instanceof StorageError)) throw b.failure(err, 'GET', k, true);
      throw err;
    } finally {
      clearTimeout(timer);
    }
  });
  if (!res) return undefined;
  const stream = res.Body as unknown as (AsyncIterable<Uint8Array> & { destroy?: () => void }) | undefined;
  let meta: ObjectMeta | 'gone';
  try {
    meta = await recordOrRefusal(b, key, res.Metadata, res.ContentLength);
  } catch (err) {
    stream?.destroy?.();
    throw err;
  }
  if (meta === 'gone') {
    stream?.destroy?.();
    return undefined;
  }
  const object: DriverObject = { key, storedSize: res.ContentLength ?? 0, modified: res.LastModified ?? new Date(0), meta };
  return { object, meta, body: streamBody(b, k, stream, res.ContentLength) };
}

/** A GET's body as a stream of Buffers; a cut or a length other than announced fails (transient). */
async function* streamBody(b: S3Bucket, k: string, stream: AsyncIterable<Uint8Array> | undefined, length: number | undefined): AsyncGenerator<Buffer> {
  if (!stream) return;
  let at = 0;
  try {
    for await (const chunk of stream) {
      at += chunk.length;
      yield toBuffer(chunk);
    }
  } catch (err) {
    throw err instanceof StorageError ? err : b.failure(err, 'GET', k, false);
  }
  if (length !== undefined && at !== length) throw new StorageError(`S3 GET ${b.where(k)}: the response ended after ${at} of its ${length} bytes`, true);
}

/**
 * The object, then its record when it was streamed: a crash between leaves a record that no
 * object names (a leftover), never an object without its record.
 */
export async function deleteWithRecord(b: S3Bucket, key: string): Promise<void> {
  const k = b.key(key);
  const held = await b.head(k);
  if (!held) return;
  await b.deleteKey(k);
  const id = streamedId(held.Metadata);
  if (id !== undefined && RECORD_ID_RE.test(id)) await b.deleteKey(recordKey(b, key, id));
}
