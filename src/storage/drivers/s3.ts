// A storage driver over an S3 bucket, AWS or any S3-compatible store (storage/driver.ts): one
// object per key under `prefix`, the record riding along as object metadata (walstream-sha256,
// walstream-compression, walstream-size), so a read costs one GET, read straight into one buffer
// of its Content-Length. A create is one PUT carrying a SHA-256 transfer checksum and
// If-None-Match: * (S3 conditional writes): the server refuses to overwrite (412), and concurrent
// creates of one key have one winner. Stores without conditional writes can use
// conditionalWrites: false (a HEAD before the PUT, which does not protect against two concurrent
// writers). overwrite is a plain PUT (a damaged copy, kept aside by the archive first).
//
// Streamed objects (createStream: base backups, larger than memory) are multipart uploads: parts
// of 8 MiB, doubling every 1,000 parts (S3 takes at most 10,000 parts, so up to about 7.8 TiB),
// each with its SHA-256 transfer checksum, at most PARTS_IN_FLIGHT of them uploading while the
// next one fills: memory is (PARTS_IN_FLIGHT + 1) x the part size whatever the object's size
// (24 MiB up to 7.8 GiB, then twice that for each further 1,000 parts). A body shorter than one
// part is one PUT as above. S3 fixes an object's metadata when its upload starts, before the
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
// A multipart upload never completed (its writer killed) keeps its parts, billed, and is never
// listed among the objects. scanLeftovers lists those under the prefix (ListMultipartUploads, and
// ListParts for their bytes and newest part) with the records no object names, and
// removeLeftovers aborts the uploads idle for longer than the leftover age
// (AbortMultipartUpload), as the bucket lifecycle rule AbortIncompleteMultipartUpload does, and
// deletes those records.
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type CompletedPart,
  type GetObjectCommandOutput,
  type HeadObjectCommandOutput,
  type PutObjectCommandInput,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { createHash, randomBytes } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { sha256Owned } from '../../util/bulk.js';
import { mapLimit } from '../../util/concurrency.js';
import { DEFAULT_LEFTOVER_AGE_MS, judgeLeftover, removable } from '../leftovers.js';
import { withDeadline, type CreateOptions, type CreateResult, type Driver, type DriverObject, type ListPageOptions, type NewMeta, type ObjectMeta, type ReadResult } from '../driver.js';
import { IntegrityError, StorageError, isCompression, type Compression, type Leftover, type LeftoverOptions, type LeftoverRemoval, type LeftoverScan } from '../types.js';

export const META_SHA256 = 'walstream-sha256';
export const META_COMPRESSION = 'walstream-compression';
export const META_SIZE = 'walstream-size';
/** Object metadata of a streamed object: the id of its record (see the top of this file). */
export const META_STREAMED = 'walstream-streamed';
/** Where the records of streamed objects are, under the prefix: <RECORD_DIR><key>.<id>.json. */
export const RECORD_DIR = '.walstream-meta/';
const RECORD_FORMAT = 1;
const RECORD_RE = /^(.+)\.([0-9a-f]{16})\.json$/;
const RECORD_ID_RE = /^[0-9a-f]{16}$/;

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

export type ServerSideEncryption = 'AES256' | 'aws:kms';

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface S3DriverOptions {
  bucket: string;
  /** Key prefix; "" or ending in "/" (a missing "/" is added). */
  prefix?: string;
  /** Custom endpoint (S3-compatible stores); default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, then AWS. */
  endpoint?: string;
  /** Default: AWS_REGION, else us-east-1. */
  region?: string;
  /** Path-style URLs (default: true with a custom endpoint, false for AWS). */
  forcePathStyle?: boolean;
  /** Explicit credentials; default: the standard AWS chain (environment, profile, instance role...). */
  credentials?: S3Credentials;
  sse?: ServerSideEncryption;
  /** KMS key for sse 'aws:kms' (implies it). */
  sseKmsKeyId?: string;
  /** Send a SHA-256 transfer checksum with every PUT and let the SDK check response checksums (default true). */
  transferChecksum?: boolean;
  /** Use If-None-Match: * on PUT (default true); false: HEAD before PUT, for stores that ignore it. */
  conditionalWrites?: boolean;
  /** Deadline of one S3 request including the SDK's retries, in ms (default 30 000). */
  timeoutMs?: number;
  /** Attempts per request, SDK standard retry mode (default 4). */
  maxAttempts?: number;
  /** MaxKeys of one ListObjectsV2 page (default 1000). */
  listPageSize?: number;
  /** What `description` shows (default s3://bucket/prefix). */
  description?: string;
}

interface SdkErrorShape {
  name?: string;
  Code?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

const THROTTLING = new Set([
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'RequestTimeout',
  'RequestTimeoutException',
  'InternalError',
  'ServiceUnavailable',
  'ConditionalRequestConflict',
  'OperationAborted',
]);

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN']);

// A credential source that did not answer (instance metadata, SSO, web identity) is retried like
// the network: those fail for a moment far more often than they are missing for good, and every
// retry is logged with the reason.
const NETWORK_NAMES = new Set(['TimeoutError', 'AbortError', 'RequestAbortedError', 'NetworkingError', 'CredentialsProviderError']);

function shape(err: unknown): SdkErrorShape {
  return typeof err === 'object' && err !== null ? (err as SdkErrorShape) : { message: String(err) };
}

function statusOf(err: unknown): number | undefined {
  return shape(err).$metadata?.httpStatusCode;
}

function codeOf(err: unknown): string {
  const e = shape(err);
  const code = e.Code ?? e.name ?? 'Error';
  if (code !== 'Unknown' && code !== 'UnknownError') return code;
  // A HEAD error has no body to name it: use the status text.
  const status = statusOf(err);
  return (status !== undefined && STATUS_CODES[status]?.replace(/\s+/g, '')) || code;
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

/**
 * "NotImplemented (HTTP 501)" and the like when a request failed because the store does not offer
 * that call at all (a 501, or a 405 for a method it does not allow on that resource), else undefined.
 */
function unsupportedCall(err: unknown): string | undefined {
  const cause = err instanceof StorageError ? err.cause : err;
  const status = statusOf(cause);
  if (status !== 501 && status !== 405) return undefined;
  return `${codeOf(cause)}, HTTP ${status}`;
}

function toBuffer(u8: Uint8Array): Buffer {
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

/**
 * A GET's body, read straight into one buffer of its Content-Length as the chunks arrive (the
 * SDK's transformToByteArray collects them, then copies them all into a new zeroed array: twice
 * the memory and a copy of every byte). A body of another length than announced is a transient
 * failure (a connection cut short).
 */
async function readBody(body: NonNullable<GetObjectCommandOutput['Body']>, length: number | undefined): Promise<Buffer> {
  const stream = body as unknown as Partial<AsyncIterable<Uint8Array>>;
  if (typeof stream[Symbol.asyncIterator] !== 'function') return toBuffer(await body.transformToByteArray());
  if (length === undefined || !Number.isSafeInteger(length) || length < 0) {
    const parts: Buffer[] = [];
    for await (const chunk of stream as AsyncIterable<Uint8Array>) parts.push(toBuffer(chunk));
    return Buffer.concat(parts);
  }
  const out = Buffer.allocUnsafeSlow(length);
  let at = 0;
  for await (const chunk of stream as AsyncIterable<Uint8Array>) {
    if (at + chunk.length > length) throw new StorageError(`the response held more than its announced ${length} bytes`, true);
    out.set(chunk, at);
    at += chunk.length;
  }
  if (at !== length) throw new StorageError(`the response ended after ${at} of its ${length} bytes`, true);
  return out;
}

/**
 * SigV4 signs the SHA-256 of the payload (x-amz-content-sha256); without that header the SDK
 * hashes the whole body for it. A PUT of a buffer carrying its SHA-256 transfer checksum already
 * has that hash: sign with it (the same bytes, hex instead of base64) rather than hash the body
 * a second time. The store checks the body against both.
 */
function signWithTransferChecksum(request: unknown): void {
  const req = request as { headers?: Record<string, string>; body?: unknown };
  const h = req.headers;
  const sum = h?.['x-amz-checksum-sha256'];
  if (h && sum !== undefined && h['x-amz-content-sha256'] === undefined && ArrayBuffer.isView(req.body)) {
    h['x-amz-content-sha256'] = Buffer.from(sum, 'base64').toString('hex');
  }
}

function normalisePrefix(prefix: string): string {
  return prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/`;
}

/** An endpoint URL fit for messages: no user info. */
function safeEndpoint(endpoint: string): string {
  let u: URL;
  try {
    u = new URL(endpoint);
  } catch {
    throw new StorageError('invalid S3 endpoint URL (expected e.g. http://127.0.0.1:9000)', false);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new StorageError(`S3 endpoint must be http:// or https://, not ${u.protocol}`, false);
  u.username = '';
  u.password = '';
  return u.toString().replace(/\/$/, '');
}

/** The record as object metadata: what a GET or HEAD returns of it. */
function metaOf(m: Record<string, string> | undefined): ObjectMeta {
  const sha = m?.[META_SHA256];
  const comp = m?.[META_COMPRESSION];
  const size = m?.[META_SIZE];
  return {
    sha256: sha !== undefined && /^[0-9a-f]{64}$/.test(sha) ? sha : undefined,
    compression: isCompression(comp) ? comp : undefined,
    size: size !== undefined && /^\d+$/.test(size) ? Number(size) : undefined,
  };
}

/** The record id a streamed object's metadata names, or undefined (an object stored whole). */
function streamedId(m: Record<string, string> | undefined): string | undefined {
  return m?.[META_STREAMED];
}

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

/**
 * A streamed body cut into parts, each in memory of its own (never a view into the source's
 * buffers, which a source may reuse once asked for more).
 */
class PartReader {
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

export class S3Driver implements Driver {
  readonly description: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly bodyChecksum: boolean;
  private readonly client: S3Client;
  private readonly endpointText: string;
  private readonly secrets: string[];
  private readonly sse: ServerSideEncryption | undefined;
  private readonly sseKmsKeyId: string | undefined;
  private readonly transferChecksum: boolean;
  private readonly conditionalWrites: boolean;
  private readonly timeoutMs: number;
  private readonly listPageSize: number;

  constructor(opts: S3DriverOptions) {
    if (!opts.bucket) throw new StorageError('an S3 archive needs a bucket', false);
    this.bucket = opts.bucket;
    this.prefix = normalisePrefix(opts.prefix ?? '');
    this.description = opts.description ?? `s3://${this.bucket}/${this.prefix}`;
    const endpoint = opts.endpoint ?? (process.env['AWS_ENDPOINT_URL_S3'] || process.env['AWS_ENDPOINT_URL'] || undefined);
    this.endpointText = endpoint !== undefined ? safeEndpoint(endpoint) : 'AWS S3';
    this.sseKmsKeyId = opts.sseKmsKeyId;
    this.sse = opts.sse ?? (opts.sseKmsKeyId !== undefined ? 'aws:kms' : undefined);
    if (this.sseKmsKeyId !== undefined && this.sse !== 'aws:kms') throw new StorageError('an SSE KMS key id needs sse "aws:kms"', false);
    this.transferChecksum = opts.transferChecksum ?? true;
    this.conditionalWrites = opts.conditionalWrites ?? true;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.listPageSize = opts.listPageSize ?? 1000;
    if (!(this.timeoutMs > 0)) throw new StorageError('timeoutMs must be positive', false);
    if (!(this.listPageSize >= 1 && this.listPageSize <= 1000)) throw new StorageError('listPageSize must be 1-1000', false);
    this.secrets = [opts.credentials?.secretAccessKey, opts.credentials?.sessionToken, process.env['AWS_SECRET_ACCESS_KEY'], process.env['AWS_SESSION_TOKEN']].filter(
      (s): s is string => typeof s === 'string' && s.length > 0,
    );
    const config: S3ClientConfig = {
      region: opts.region ?? (process.env['AWS_REGION'] || 'us-east-1'),
      maxAttempts: opts.maxAttempts ?? 4,
      retryMode: 'standard',
      requestChecksumCalculation: this.transferChecksum ? 'WHEN_SUPPORTED' : 'WHEN_REQUIRED',
      responseChecksumValidation: this.transferChecksum ? 'WHEN_SUPPORTED' : 'WHEN_REQUIRED',
      // A connect that hangs fails this attempt (and is retried); the whole request is bounded by timeoutMs.
      requestHandler: { connectionTimeout: Math.min(this.timeoutMs, 10_000) },
    };
    if (endpoint !== undefined) {
      config.endpoint = endpoint;
      config.forcePathStyle = opts.forcePathStyle ?? true;
    } else if (opts.forcePathStyle !== undefined) {
      config.forcePathStyle = opts.forcePathStyle;
    }
    if (opts.credentials) config.credentials = { ...opts.credentials };
    this.client = new S3Client(config);
    this.client.middlewareStack.add(
      (next) => (args) => {
        signWithTransferChecksum(args.request);
        return next(args);
      },
      { name: 'walstreamSignedPayloadHash', step: 'build', priority: 'low' },
    );
    this.bodyChecksum = this.transferChecksum;
  }

  async create(key: string, body: Buffer, meta: NewMeta, opts: CreateOptions = {}): Promise<CreateResult> {
    const k = this.key(key);
    for (let attempt = 0; attempt < 6; attempt++) {
      if (!this.conditionalWrites && (await this.head(k))) return { created: false };
      const written = await this.request('PUT', k, async (abortSignal) => {
        try {
          await this.client.send(new PutObjectCommand(this.putInput(k, body, meta, opts.bodySha256, true)), { abortSignal });
          return 'created' as const;
        } catch (err) {
          const status = statusOf(err);
          if (status === 412 && this.conditionalWrites) return 'taken' as const;
          // 409 ConditionalRequestConflict: another conditional write of this key is in flight.
          if (status === 409 && codeOf(err) === 'ConditionalRequestConflict') return 'busy' as const;
          throw err;
        }
      });
      if (written === 'created') return { created: true, modified: new Date() };
      if (written === 'taken') return { created: false };
      await sleep(50 * 2 ** attempt + Math.floor(Math.random() * 50));
    }
    throw new StorageError(`S3 PUT ${this.where(k)}: the object keeps changing under concurrent writers; try again`, true);
  }

  /**
   * A streamed create (see the top of this file): a body shorter than one part is one PUT; a
   * longer one a multipart upload whose record is created before the upload is completed. A key
   * taken when the upload would start or complete: the body is consumed to its end and nothing is
   * stored. Any failure (a part that fails after the SDK's retries, the body failing, a deadline)
   * aborts the upload (best effort: some stores cannot) and throws a StorageError.
   */
  async createStream(key: string, body: AsyncIterable<Buffer>, meta: () => NewMeta, opts: CreateOptions = {}): Promise<CreateResult> {
    const k = this.key(key);
    const parts = new PartReader(body[Symbol.asyncIterator]());
    try {
      // Taken already: nothing to upload, but the caller wants the body's checksum.
      if (await this.head(k)) {
        await parts.drain();
        return { created: false };
      }
      const first = await parts.next(partSize(1));
      if (first === undefined || first.length < partSize(1)) {
        const whole = first ?? Buffer.alloc(0);
        const sum = this.transferChecksum ? { bodySha256: createHash('sha256').update(whole).digest('hex') } : {};
        return await this.create(key, whole, meta(), { ...opts, ...sum });
      }
      return await this.multipart(key, first, parts, meta);
    } catch (err) {
      await parts.release();
      if (parts.sourceError !== undefined && err === parts.sourceError.err && !(err instanceof StorageError)) {
        throw new StorageError(`S3 streamed upload of ${this.where(k)}: the body failed: ${oneLine((err as Error)?.message ?? String(err))}; nothing was stored`, false, { cause: err });
      }
      throw err;
    }
  }

  async readStream(key: string): Promise<{ object: DriverObject; meta: ObjectMeta; body: AsyncIterable<Buffer> } | undefined> {
    const k = this.key(key);
    const res = await this.request('GET', k, async () => {
      // A deadline for the answer, none for the body after it (a large object takes long).
      const answer = new AbortController();
      const timer = setTimeout(() => answer.abort(), this.timeoutMs);
      try {
        return await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal: answer.signal });
      } catch (err) {
        if (this.isNotFound(err)) return undefined;
        if (answer.signal.aborted && !(err instanceof StorageError)) throw this.failure(err, 'GET', k, true);
        throw err;
      } finally {
        clearTimeout(timer);
      }
    });
    if (!res) return undefined;
    const stream = res.Body as unknown as (AsyncIterable<Uint8Array> & { destroy?: () => void }) | undefined;
    let meta: ObjectMeta | 'gone';
    try {
      meta = await this.recordOrRefusal(key, res.Metadata, res.ContentLength);
    } catch (err) {
      stream?.destroy?.();
      throw err;
    }
    if (meta === 'gone') {
      stream?.destroy?.();
      return undefined;
    }
    const object: DriverObject = { key, storedSize: res.ContentLength ?? 0, modified: res.LastModified ?? new Date(0), meta };
    return { object, meta, body: this.streamBody(k, stream, res.ContentLength) };
  }

  async overwrite(key: string, body: Buffer, meta: NewMeta, opts: CreateOptions = {}): Promise<void> {
    const k = this.key(key);
    const replaced = streamedId((await this.head(k))?.Metadata);
    await this.request('PUT', k, (abortSignal) => this.client.send(new PutObjectCommand(this.putInput(k, body, meta, opts.bodySha256, false)), { abortSignal }));
    // The record of a streamed object replaced here names nothing now. Left behind when it cannot
    // be deleted: harmless, and a leftover that cleanup removes.
    if (replaced !== undefined) await this.deleteKey(this.recordKey(key, replaced)).catch(() => undefined);
  }

  /** One GET: the body read straight into one buffer of its length, and the record from its metadata (or its record object). */
  async read(key: string): Promise<ReadResult | undefined> {
    const k = this.key(key);
    const got = await this.request('GET', k, async (abortSignal) => {
      try {
        const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal });
        const body = res.Body ? await readBody(res.Body, res.ContentLength) : Buffer.alloc(0);
        return { body, modified: res.LastModified ?? new Date(0), metadata: res.Metadata };
      } catch (err) {
        if (this.isNotFound(err)) return undefined;
        throw err;
      }
    });
    if (!got) return undefined;
    const meta = await this.recordOrRefusal(key, got.metadata, got.body.length);
    if (meta === 'gone') return undefined;
    return { key, body: got.body, owned: true, storedSize: got.body.length, modified: got.modified, meta };
  }

  /** HEAD, and for a streamed object its record (stat'ed without a checksum when it has none: reads refuse it). */
  async stat(key: string): Promise<DriverObject | undefined> {
    const res = await this.head(this.key(key));
    if (!res) return undefined;
    const storedSize = res.ContentLength ?? 0;
    const meta = await this.recordOf(key, res.Metadata, storedSize);
    return { key, storedSize, modified: res.LastModified ?? new Date(0), meta: typeof meta === 'string' ? { sha256: undefined, compression: undefined, size: undefined } : meta };
  }

  /** ListObjectsV2 pages with a "/" delimiter (one level); a listing cannot tell the record (meta undefined). */
  async *list(prefix: string, opts: ListPageOptions = {}): AsyncIterable<DriverObject[]> {
    let token: string | undefined;
    do {
      const page = await this.request('LIST', this.prefix + prefix, (abortSignal) =>
        this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.prefix + prefix,
            Delimiter: '/',
            MaxKeys: this.listPageSize,
            ...(token !== undefined ? { ContinuationToken: token } : {}),
          }),
          { abortSignal },
        ),
      );
      const out: DriverObject[] = [];
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined || !o.Key.startsWith(this.prefix)) continue;
        const key = o.Key.slice(this.prefix.length);
        // The records of streamed objects are not objects of the archive.
        if (key.startsWith(RECORD_DIR)) continue;
        if (opts.accept && !opts.accept(key)) continue;
        out.push({ key, storedSize: o.Size ?? 0, modified: o.LastModified ?? new Date(0), meta: undefined });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
      if (page.IsTruncated && token === undefined) throw new StorageError(`S3 LIST ${this.where(this.prefix + prefix)}: truncated listing without a continuation token`, true);
      yield out;
    } while (token !== undefined);
  }

  /**
   * The object, then its record when it was streamed: a crash between leaves a record that no
   * object names (a leftover), never an object without its record.
   */
  async delete(key: string): Promise<void> {
    const k = this.key(key);
    const held = await this.head(k);
    if (!held) return;
    await this.deleteKey(k);
    const id = streamedId(held.Metadata);
    if (id !== undefined && RECORD_ID_RE.test(id)) await this.deleteKey(this.recordKey(key, id));
  }

  /**
   * What killed writers left under the prefix: the multipart uploads that were started and never
   * completed or aborted, with their bytes and when their newest part arrived (ListParts; when
   * the store cannot list parts: bytes unknown, and the upload's start), and the records of
   * streamed objects that no object names (kind 'temp-file'). A store that does not list uploads
   * at all (some S3-compatible ones) is reported in `unavailable`, not as an error.
   */
  async scanLeftovers(opts: LeftoverOptions = {}): Promise<LeftoverScan> {
    const uploads = await this.leftoverUploads(opts);
    const records = await this.unnamedRecords(opts);
    const leftovers = [...uploads.leftovers, ...records].sort(
      (a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0) || ((a.upload?.id ?? '') < (b.upload?.id ?? '') ? -1 : (a.upload?.id ?? '') > (b.upload?.id ?? '') ? 1 : 0),
    );
    return { leftovers, unavailable: uploads.unavailable };
  }

  /** Abort the uploads idle for longer than the leftover age, and delete the records no object names once as old (see scanLeftovers). */
  async removeLeftovers(opts: LeftoverOptions & { dryRun?: boolean } = {}): Promise<LeftoverRemoval> {
    const scan = await this.scanLeftovers(opts);
    const result: LeftoverRemoval = { ...scan, removed: [], failed: [] };
    for (const l of scan.leftovers) {
      if (!removable(l.state)) continue;
      if (!l.upload && !l.name.startsWith(RECORD_DIR)) continue;
      if (!opts.dryRun) {
        try {
          if (l.upload) {
            const { key, id } = l.upload;
            await this.request('ABORT UPLOAD', key, async (abortSignal) => {
              try {
                await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: id }), { abortSignal });
              } catch (err) {
                if (!this.isNotFound(err)) throw err; // NoSuchUpload: gone already
              }
            });
          } else {
            await this.deleteKey(this.prefix + l.name);
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

  async close(): Promise<void> {
    this.client.destroy();
  }

  // --- internals ---

  private key(name: string): string {
    return this.prefix + name;
  }

  private where(key: string): string {
    return `s3://${this.bucket}/${key}`;
  }

  private isNotFound(err: unknown): boolean {
    const code = codeOf(err);
    return statusOf(err) === 404 && code !== 'NoSuchBucket';
  }

  /** HEAD of a full key: its answer, or undefined when there is no such object. */
  private async head(k: string): Promise<HeadObjectCommandOutput | undefined> {
    return this.request('HEAD', k, async (abortSignal) => {
      try {
        return await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal });
      } catch (err) {
        if (this.isNotFound(err)) return undefined;
        throw err;
      }
    });
  }

  /** DELETE of a full key; a missing one is a no-op. */
  private async deleteKey(k: string): Promise<void> {
    await this.request('DELETE', k, async (abortSignal) => {
      try {
        await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal });
      } catch (err) {
        if (!this.isNotFound(err)) throw err;
      }
    });
  }

  /** The full key of the record `id` of the streamed object `key`. */
  private recordKey(key: string, id: string): string {
    return `${this.prefix}${RECORD_DIR}${key}.${id}.json`;
  }

  /**
   * The record of the object `key` whose metadata is `metadata`: the metadata itself for an object
   * stored whole; for a streamed one its record object, or why it has none (a sentence).
   */
  private async recordOf(key: string, metadata: Record<string, string> | undefined, storedSize: number | undefined): Promise<ObjectMeta | string> {
    const id = streamedId(metadata);
    if (id === undefined) return metaOf(metadata);
    if (!RECORD_ID_RE.test(id)) return `it was stored as a stream, and its metadata names no valid record (${META_STREAMED}: ${JSON.stringify(id.slice(0, 40))})`;
    const rk = this.recordKey(key, id);
    const body = await this.request('GET', rk, async (abortSignal) => {
      try {
        const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: rk }), { abortSignal });
        if (res.ContentLength !== undefined && res.ContentLength > RECORD_MAX_BYTES) {
          (res.Body as unknown as { destroy?: () => void } | undefined)?.destroy?.();
          return 'too large' as const;
        }
        return res.Body ? await readBody(res.Body, res.ContentLength) : Buffer.alloc(0);
      } catch (err) {
        if (this.isNotFound(err)) return undefined;
        throw err;
      }
    });
    const shown = this.where(rk);
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
  private async recordOrRefusal(key: string, metadata: Record<string, string> | undefined, storedSize: number | undefined): Promise<ObjectMeta | 'gone'> {
    const meta = await this.recordOf(key, metadata, storedSize);
    if (typeof meta !== 'string') return meta;
    const now = await this.head(this.key(key));
    if (!now) return 'gone';
    throw new IntegrityError(key, meta);
  }

  /** A GET's body as a stream of Buffers; a cut or a length other than announced fails (transient). */
  private async *streamBody(k: string, stream: AsyncIterable<Uint8Array> | undefined, length: number | undefined): AsyncGenerator<Buffer> {
    if (!stream) return;
    let at = 0;
    try {
      for await (const chunk of stream) {
        at += chunk.length;
        yield toBuffer(chunk);
      }
    } catch (err) {
      throw err instanceof StorageError ? err : this.failure(err, 'GET', k, false);
    }
    if (length !== undefined && at !== length) throw new StorageError(`S3 GET ${this.where(k)}: the response ended after ${at} of its ${length} bytes`, true);
  }

  /**
   * The multipart upload of a streamed body whose first part is `first` (see the top of this
   * file): parts uploaded PARTS_IN_FLIGHT at a time while the next one fills, the record created,
   * then the upload completed with If-None-Match: *.
   */
  private async multipart(key: string, first: Buffer, parts: PartReader, meta: () => NewMeta): Promise<CreateResult> {
    const k = this.key(key);
    const id = randomBytes(8).toString('hex');
    const uploadId = await this.request('CREATE UPLOAD', k, async (abortSignal) => {
      const r = await this.client.send(
        new CreateMultipartUploadCommand({
          Bucket: this.bucket,
          Key: k,
          ContentType: 'application/octet-stream',
          Metadata: { [META_STREAMED]: id },
          ...(this.transferChecksum ? { ChecksumAlgorithm: 'SHA256' as const } : {}),
          ...(this.sse !== undefined ? { ServerSideEncryption: this.sse } : {}),
          ...(this.sseKmsKeyId !== undefined ? { SSEKMSKeyId: this.sseKmsKeyId } : {}),
        }),
        { abortSignal },
      );
      if (r.UploadId === undefined) throw new StorageError(`S3 CREATE UPLOAD ${this.where(k)}: the answer names no upload`, true);
      return r.UploadId;
    });
    const rk = this.recordKey(key, id);
    let recorded = false;
    try {
      const { completed, storedSize } = await this.uploadParts(k, uploadId, first, parts);
      const m = meta();
      // Taken meanwhile: lost (also where a store ignores If-None-Match on a complete).
      if (await this.head(k)) {
        await this.abortUpload(k, uploadId);
        return { created: false };
      }
      const record: StreamRecord = { format: RECORD_FORMAT, key, id, sha256: m.sha256, compression: m.compression, size: m.size, storedSize };
      await this.putRecord(rk, Buffer.from(`${JSON.stringify(record)}\n`));
      recorded = true;
      if ((await this.complete(k, uploadId, completed)) === 'created' || (await this.isOurs(k, id))) return { created: true, modified: new Date() };
      // Another writer's object is there (412): nothing of ours is.
      await this.abortUpload(k, uploadId);
      await this.deleteKey(rk).catch(() => undefined); // else a record no object names: a leftover
      return { created: false };
    } catch (err) {
      // A complete that failed may have gone through with its answer lost.
      if (recorded && (await this.isOurs(k, id).catch(() => false))) return { created: true, modified: new Date() };
      const aborted = await this.abortUpload(k, uploadId);
      // Once the upload is aborted it can never complete: its record names nothing. (Not
      // aborted: a complete still on its way may yet publish the object, which needs it.)
      if (recorded && aborted) await this.deleteKey(rk).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Upload `first` and the parts after it, PARTS_IN_FLIGHT at a time while the next one fills:
   * memory (PARTS_IN_FLIGHT + 1) x the part size. The first failure stops it (after the parts in
   * flight settled) and is thrown.
   */
  private async uploadParts(k: string, uploadId: string, first: Buffer, parts: PartReader): Promise<{ completed: CompletedPart[]; storedSize: number }> {
    const completed: CompletedPart[] = [];
    const running = new Set<Promise<void>>();
    let failure: { err: unknown } | undefined;
    let storedSize = 0;
    let n = 0;
    const start = (part: Buffer): void => {
      const number = ++n;
      storedSize += part.length;
      const p: Promise<void> = this.uploadPart(k, uploadId, number, part)
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
          throw new StorageError(`S3 streamed upload of ${this.where(k)}: the object is larger than ${MAX_PARTS} parts can hold (${storedSize} bytes so far)`, false);
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
  private async uploadPart(k: string, uploadId: string, number: number, body: Buffer): Promise<CompletedPart> {
    let part = body;
    let sum: string | undefined;
    if (this.transferChecksum) {
      const hashed = await sha256Owned(part);
      part = hashed.data;
      sum = Buffer.from(hashed.hex, 'hex').toString('base64');
    }
    const deadline = this.timeoutMs * Math.max(1, part.length / FIRST_PART_SIZE);
    const r = await this.request(
      `PUT PART ${number}`,
      k,
      (abortSignal) =>
        this.client.send(
          new UploadPartCommand({
            Bucket: this.bucket,
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
    if (r.ETag === undefined) throw new StorageError(`S3 PUT PART ${number} ${this.where(k)}: the answer has no ETag`, true);
    return { PartNumber: number, ETag: r.ETag, ...(sum !== undefined ? { ChecksumSHA256: sum } : {}) };
  }

  /** CompleteMultipartUpload, with If-None-Match: * where conditional writes are used: 'taken' when the key holds an object. */
  private async complete(k: string, uploadId: string, parts: CompletedPart[]): Promise<'created' | 'taken'> {
    // S3 may take minutes to assemble many parts.
    const deadline = this.timeoutMs * (1 + Math.ceil(parts.length / 1000));
    for (let attempt = 0; attempt < 6; attempt++) {
      const done = await this.request(
        'COMPLETE UPLOAD',
        k,
        async (abortSignal) => {
          try {
            await this.client.send(
              new CompleteMultipartUploadCommand({
                Bucket: this.bucket,
                Key: k,
                UploadId: uploadId,
                MultipartUpload: { Parts: parts },
                ...(this.conditionalWrites ? { IfNoneMatch: '*' } : {}),
              }),
              { abortSignal },
            );
            return 'created' as const;
          } catch (err) {
            const status = statusOf(err);
            if (status === 412 && this.conditionalWrites) return 'taken' as const;
            if (status === 409 && codeOf(err) === 'ConditionalRequestConflict') return 'busy' as const;
            throw err;
          }
        },
        deadline,
      );
      if (done !== 'busy') return done;
      await sleep(50 * 2 ** attempt + Math.floor(Math.random() * 50));
    }
    throw new StorageError(`S3 COMPLETE UPLOAD ${this.where(k)}: the object keeps changing under concurrent writers; try again`, true);
  }

  /** Whether the object under `k` is the one of upload record `id` (this writer's). */
  private async isOurs(k: string, id: string): Promise<boolean> {
    return streamedId((await this.head(k))?.Metadata) === id;
  }

  /** AbortMultipartUpload, best effort (some stores cannot: a lifecycle rule or cleanup removes it then); whether the store did. */
  private async abortUpload(k: string, uploadId: string): Promise<boolean> {
    try {
      await this.request('ABORT UPLOAD', k, (abortSignal) => this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: k, UploadId: uploadId }), { abortSignal }));
      return true;
    } catch {
      // The error that made the upload fail is what the caller reports.
      return false;
    }
  }

  /** Create a streamed object's record (its id is random: a 412 is this very record, put by an earlier attempt). */
  private async putRecord(rk: string, body: Buffer): Promise<void> {
    await this.request('PUT', rk, async (abortSignal) => {
      try {
        await this.client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: rk,
            Body: body,
            ContentLength: body.length,
            ContentType: 'application/json',
            ...(this.transferChecksum ? { ChecksumAlgorithm: 'SHA256' as const, ChecksumSHA256: createHash('sha256').update(body).digest('base64') } : {}),
            ...(this.conditionalWrites ? { IfNoneMatch: '*' } : {}),
            ...(this.sse !== undefined ? { ServerSideEncryption: this.sse } : {}),
            ...(this.sseKmsKeyId !== undefined ? { SSEKMSKeyId: this.sseKmsKeyId } : {}),
          }),
          { abortSignal },
        );
      } catch (err) {
        if (!(statusOf(err) === 412 && this.conditionalWrites)) throw err;
      }
    });
  }

  /** The multipart uploads under the prefix never completed (see scanLeftovers). */
  private async leftoverUploads(opts: LeftoverOptions): Promise<LeftoverScan> {
    const uploads: { key: string; id: string; initiated: Date }[] = [];
    let keyMarker: string | undefined;
    let idMarker: string | undefined;
    try {
      do {
        const page = await this.request('LIST UPLOADS', this.prefix, (abortSignal) =>
          this.client.send(
            new ListMultipartUploadsCommand({
              Bucket: this.bucket,
              Prefix: this.prefix,
              MaxUploads: this.listPageSize,
              ...(keyMarker !== undefined ? { KeyMarker: keyMarker } : {}),
              ...(idMarker !== undefined ? { UploadIdMarker: idMarker } : {}),
            }),
            { abortSignal },
          ),
        );
        for (const u of page.Uploads ?? []) {
          if (u.Key === undefined || u.UploadId === undefined || !u.Key.startsWith(this.prefix)) continue;
          uploads.push({ key: u.Key, id: u.UploadId, initiated: u.Initiated ?? new Date(0) });
        }
        const more = page.IsTruncated === true;
        if (more && page.NextKeyMarker === undefined) throw new StorageError(`S3 LIST UPLOADS ${this.where(this.prefix)}: truncated listing without a marker`, true);
        keyMarker = more ? page.NextKeyMarker : undefined;
        idMarker = more ? page.NextUploadIdMarker : undefined;
      } while (keyMarker !== undefined);
    } catch (err) {
      const unsupported = unsupportedCall(err);
      if (unsupported) {
        return {
          leftovers: [],
          unavailable: `${this.description} does not list incomplete multipart uploads (${unsupported}): a bucket lifecycle rule ` + 'AbortIncompleteMultipartUpload removes those of killed writers',
        };
      }
      throw err;
    }
    const found = await mapLimit(uploads, 8, async (u): Promise<Leftover | undefined> => {
      const parts = await this.uploadPartsListed(u.key, u.id);
      if (parts === 'gone') return undefined; // completed or aborted meanwhile
      const modified = parts && parts.newest > u.initiated ? parts.newest : u.initiated;
      return {
        name: u.key.slice(this.prefix.length),
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
  private async unnamedRecords(opts: LeftoverOptions): Promise<Leftover[]> {
    const base = this.prefix + RECORD_DIR;
    const found: { key: string; id: string; name: string; bytes: number; modified: Date }[] = [];
    let token: string | undefined;
    do {
      const page = await this.request('LIST', base, (abortSignal) =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: base, MaxKeys: this.listPageSize, ...(token !== undefined ? { ContinuationToken: token } : {}) }), { abortSignal }),
      );
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined || !o.Key.startsWith(base)) continue;
        const m = RECORD_RE.exec(o.Key.slice(base.length));
        if (!m) continue;
        found.push({ key: m[1]!, id: m[2]!, name: o.Key.slice(this.prefix.length), bytes: o.Size ?? 0, modified: o.LastModified ?? new Date(0) });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
      if (page.IsTruncated && token === undefined) throw new StorageError(`S3 LIST ${this.where(base)}: truncated listing without a continuation token`, true);
    } while (token !== undefined);
    const keys = [...new Set(found.map((f) => f.key))];
    const named = new Map<string, string | undefined>();
    await mapLimit(keys, 8, async (key) => {
      named.set(key, streamedId((await this.head(this.key(key)))?.Metadata));
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
  private async uploadPartsListed(key: string, id: string): Promise<{ bytes: number; newest: Date } | 'gone' | undefined> {
    let bytes = 0;
    let newest = new Date(0);
    let marker: string | undefined;
    try {
      do {
        const page = await this.request('LIST PARTS', key, async (abortSignal) => {
          try {
            return await this.client.send(new ListPartsCommand({ Bucket: this.bucket, Key: key, UploadId: id, ...(marker !== undefined ? { PartNumberMarker: marker } : {}) }), { abortSignal });
          } catch (err) {
            if (this.isNotFound(err)) return 'gone' as const;
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

  private putInput(key: string, body: Buffer, meta: NewMeta, bodySha256: string | undefined, ifNoneMatch: boolean): PutObjectCommandInput {
    return {
      Bucket: this.bucket,
      Key: key,
      Body: body,
      ContentLength: body.length,
      ContentType: 'application/octet-stream',
      Metadata: { [META_SHA256]: meta.sha256, [META_COMPRESSION]: meta.compression, [META_SIZE]: String(meta.size) },
      // The SHA-256 of the bytes sent, computed once by the archive (for uncompressed plaintext:
      // the checksum it records). The SDK then neither hashes the body for the transfer checksum
      // nor (see signWithTransferChecksum) for the signature.
      ...(this.transferChecksum && bodySha256 !== undefined ? { ChecksumAlgorithm: 'SHA256' as const, ChecksumSHA256: Buffer.from(bodySha256, 'hex').toString('base64') } : {}),
      ...(this.conditionalWrites && ifNoneMatch ? { IfNoneMatch: '*' } : {}),
      ...(this.sse !== undefined ? { ServerSideEncryption: this.sse } : {}),
      ...(this.sseKmsKeyId !== undefined ? { SSEKMSKeyId: this.sseKmsKeyId } : {}),
    };
  }

  private request<T>(op: string, key: string, fn: (abortSignal: AbortSignal) => Promise<T>, timeoutMs = this.timeoutMs): Promise<T> {
    return withDeadline(timeoutMs, fn, (err, timedOut) => this.failure(err, op, key, timedOut, timeoutMs));
  }

  private failure(err: unknown, op: string, key: string, timedOut: boolean, timeoutMs = this.timeoutMs): StorageError {
    const where = `S3 ${op} ${this.where(key)}`;
    const e = shape(err);
    const status = statusOf(err);
    const code = codeOf(err);
    let text: string;
    let transient: boolean;
    if (timedOut) {
      text = `${where}: no answer from ${this.endpointText} within ${timeoutMs} ms`;
      transient = true;
    } else if (status === undefined && /checksum mismatch/i.test(e.message ?? '')) {
      // The SDK checks what it downloaded against the checksum S3 stored at upload.
      text = `${where}: the bytes received do not match the checksum the store recorded (damaged in transfer?): ${e.message ?? ''}`;
      transient = true;
    } else if (status === undefined) {
      const net = (e.code !== undefined && NETWORK_CODES.has(e.code)) || NETWORK_NAMES.has(e.name ?? '');
      text = net ? `${where}: cannot reach ${this.endpointText}: ${e.message ?? code}` : `${where}: ${code}: ${e.message ?? ''}`;
      transient = net;
    } else {
      transient = status >= 500 || status === 429 || status === 408 || THROTTLING.has(code);
      let hint = '';
      if (status === 403) hint = ' (check the credentials and that they may access this bucket and prefix)';
      else if (code === 'NoSuchBucket') hint = ` (bucket "${this.bucket}" does not exist)`;
      else if (status === 301 || code === 'PermanentRedirect' || code === 'AuthorizationHeaderMalformed') hint = " (set AWS_REGION to the bucket's region)";
      else if (status === 501 && (op === 'PUT' || op === 'COMPLETE UPLOAD')) hint = ' (the store may not support If-None-Match conditional writes: use conditionalWrites: false)';
      const detail = e.message && e.message !== code && e.message !== 'UnknownError' ? `: ${e.message}` : '';
      text = `${where}: ${code} (HTTP ${status})${detail}${hint}`;
    }
    return new StorageError(this.redact(oneLine(text)), transient, { cause: err });
  }

  private redact(text: string): string {
    let out = text;
    for (const s of this.secrets) out = out.split(s).join('[redacted]');
    return out;
  }
}
