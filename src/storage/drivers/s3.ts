// A storage driver over an S3 bucket, AWS or any S3-compatible store (storage/driver.ts): one
// object per key under `prefix`, the record riding along as object metadata (walstream-sha256,
// walstream-compression, walstream-size), so a read costs one GET, read straight into one buffer
// of its Content-Length. A create is one PUT carrying a SHA-256 transfer checksum and
// If-None-Match: * (S3 conditional writes): the server refuses to overwrite (412), and concurrent
// creates of one key have one winner. Stores without conditional writes can use
// conditionalWrites: false (a HEAD before the PUT, which does not protect against two concurrent
// writers). overwrite is a plain PUT (a damaged copy, kept aside by the archive first).
// walstream never starts a multipart upload here, but other writers under the prefix may (tools,
// streamed writes): an upload never completed (its writer killed) keeps its parts, billed, and
// never listed among the objects. scanLeftovers lists them (ListMultipartUploads, and ListParts for
// their bytes and newest part) and removeLeftovers aborts those idle for longer than the leftover
// age (AbortMultipartUpload), as the bucket lifecycle rule AbortIncompleteMultipartUpload does.
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  PutObjectCommand,
  S3Client,
  type GetObjectCommandOutput,
  type PutObjectCommandInput,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { STATUS_CODES } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { mapLimit } from '../../util/concurrency.js';
import { judgeLeftover, removable } from '../leftovers.js';
import { withDeadline, type CreateOptions, type CreateResult, type Driver, type DriverObject, type ListPageOptions, type NewMeta, type ObjectMeta, type ReadResult } from '../driver.js';
import { StorageError, isCompression, type Leftover, type LeftoverOptions, type LeftoverRemoval, type LeftoverScan } from '../types.js';

export const META_SHA256 = 'walstream-sha256';
export const META_COMPRESSION = 'walstream-compression';
export const META_SIZE = 'walstream-size';

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
      if (!this.conditionalWrites && (await this.stat(key))) return { created: false };
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

  async overwrite(key: string, body: Buffer, meta: NewMeta, opts: CreateOptions = {}): Promise<void> {
    const k = this.key(key);
    await this.request('PUT', k, (abortSignal) => this.client.send(new PutObjectCommand(this.putInput(k, body, meta, opts.bodySha256, false)), { abortSignal }));
  }

  /** One GET: the body read straight into one buffer of its length, and the record from its metadata. */
  async read(key: string): Promise<ReadResult | undefined> {
    const k = this.key(key);
    return this.request('GET', k, async (abortSignal) => {
      try {
        const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal });
        const body = res.Body ? await readBody(res.Body, res.ContentLength) : Buffer.alloc(0);
        return { key, body, owned: true, storedSize: body.length, modified: res.LastModified ?? new Date(0), meta: metaOf(res.Metadata) };
      } catch (err) {
        if (this.isNotFound(err)) return undefined;
        throw err;
      }
    });
  }

  async stat(key: string): Promise<DriverObject | undefined> {
    const k = this.key(key);
    return this.request('HEAD', k, async (abortSignal) => {
      try {
        const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal });
        return { key, storedSize: res.ContentLength ?? 0, modified: res.LastModified ?? new Date(0), meta: metaOf(res.Metadata) };
      } catch (err) {
        if (this.isNotFound(err)) return undefined;
        throw err;
      }
    });
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
        if (opts.accept && !opts.accept(key)) continue;
        out.push({ key, storedSize: o.Size ?? 0, modified: o.LastModified ?? new Date(0), meta: undefined });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
      if (page.IsTruncated && token === undefined) throw new StorageError(`S3 LIST ${this.where(this.prefix + prefix)}: truncated listing without a continuation token`, true);
      yield out;
    } while (token !== undefined);
  }

  async delete(key: string): Promise<void> {
    const k = this.key(key);
    await this.request('DELETE', k, async (abortSignal) => {
      try {
        await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal });
      } catch (err) {
        if (!this.isNotFound(err)) throw err;
      }
    });
  }

  /**
   * The multipart uploads under the prefix that were started and never completed or aborted, with
   * their bytes and when their newest part arrived (ListParts; when the store cannot list parts:
   * bytes unknown, and the upload's start). A store that does not list uploads at all (some
   * S3-compatible ones) is reported in `unavailable`, not as an error.
   */
  async scanLeftovers(opts: LeftoverOptions = {}): Promise<LeftoverScan> {
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
      const parts = await this.uploadParts(u.key, u.id);
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
    const leftovers = found.filter((l): l is Leftover => l !== undefined).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0) || (a.upload!.id < b.upload!.id ? -1 : 1));
    return { leftovers, unavailable: undefined };
  }

  /** Abort the uploads idle for longer than the leftover age (see scanLeftovers). */
  async removeLeftovers(opts: LeftoverOptions & { dryRun?: boolean } = {}): Promise<LeftoverRemoval> {
    const scan = await this.scanLeftovers(opts);
    const result: LeftoverRemoval = { ...scan, removed: [], failed: [] };
    for (const l of scan.leftovers) {
      if (!removable(l.state) || !l.upload) continue;
      if (!opts.dryRun) {
        const { key, id } = l.upload;
        try {
          await this.request('ABORT UPLOAD', key, async (abortSignal) => {
            try {
              await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: id }), { abortSignal });
            } catch (err) {
              if (!this.isNotFound(err)) throw err; // NoSuchUpload: gone already
            }
          });
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

  /**
   * The bytes an upload holds and when its newest part arrived; 'gone' when it no longer exists;
   * undefined when the store does not list parts.
   */
  private async uploadParts(key: string, id: string): Promise<{ bytes: number; newest: Date } | 'gone' | undefined> {
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

  private request<T>(op: string, key: string, fn: (abortSignal: AbortSignal) => Promise<T>): Promise<T> {
    return withDeadline(this.timeoutMs, fn, (err, timedOut) => this.failure(err, op, key, timedOut));
  }

  private failure(err: unknown, op: string, key: string, timedOut: boolean): StorageError {
    const where = `S3 ${op} ${this.where(key)}`;
    const e = shape(err);
    const status = statusOf(err);
    const code = codeOf(err);
    let text: string;
    let transient: boolean;
    if (timedOut) {
      text = `${where}: no answer from ${this.endpointText} within ${this.timeoutMs} ms`;
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
      else if (status === 501 && op === 'PUT') hint = ' (the store may not support If-None-Match conditional writes: use conditionalWrites: false)';
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
