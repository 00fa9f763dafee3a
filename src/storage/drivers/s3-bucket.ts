// One S3 bucket and key prefix as the S3 driver (drivers/s3.ts) and its streamed objects
// (drivers/s3-multipart.ts, drivers/s3-records.ts, drivers/s3-leftovers.ts) talk to it: the
// S3Client and its configuration, every request under a deadline with its failure turned into a
// StorageError of one line (transient or not, secrets redacted), HEAD and DELETE of a full key,
// the parameters every PUT shares, and the object metadata that carries a record.
import { S3Client, DeleteObjectCommand, HeadObjectCommand, type GetObjectCommandOutput, type HeadObjectCommandOutput, type PutObjectCommandInput, type S3ClientConfig } from '@aws-sdk/client-s3';
import { STATUS_CODES } from 'node:http';
import { withDeadline, type ObjectMeta } from '../driver.js';
import { StorageError, isCompression } from '../types.js';

export const META_SHA256 = 'walstream-sha256';
export const META_COMPRESSION = 'walstream-compression';
export const META_SIZE = 'walstream-size';
/** Object metadata of a streamed object: the id of its record (drivers/s3-records.ts). */
export const META_STREAMED = 'walstream-streamed';

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

export function statusOf(err: unknown): number | undefined {
  return shape(err).$metadata?.httpStatusCode;
}

export function codeOf(err: unknown): string {
  const e = shape(err);
  const code = e.Code ?? e.name ?? 'Error';
  if (code !== 'Unknown' && code !== 'UnknownError') return code;
  // A HEAD error has no body to name it: use the status text.
  const status = statusOf(err);
  return (status !== undefined && STATUS_CODES[status]?.replace(/\s+/g, '')) || code;
}

export function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

/**
 * "NotImplemented (HTTP 501)" and the like when a request failed because the store does not offer
 * that call at all (a 501, or a 405 for a method it does not allow on that resource), else undefined.
 */
export function unsupportedCall(err: unknown): string | undefined {
  const cause = err instanceof StorageError ? err.cause : err;
  const status = statusOf(cause);
  if (status !== 501 && status !== 405) return undefined;
  return `${codeOf(cause)}, HTTP ${status}`;
}

export function toBuffer(u8: Uint8Array): Buffer {
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

/**
 * A GET's body, read straight into one buffer of its Content-Length as the chunks arrive (the
 * SDK's transformToByteArray collects them, then copies them all into a new zeroed array: twice
 * the memory and a copy of every byte). A body of another length than announced is a transient
 * failure (a connection cut short).
 */
export async function readBody(body: NonNullable<GetObjectCommandOutput['Body']>, length: number | undefined): Promise<Buffer> {
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
export function metaOf(m: Record<string, string> | undefined): ObjectMeta {
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
export function streamedId(m: Record<string, string> | undefined): string | undefined {
  return m?.[META_STREAMED];
}

/** The bucket and prefix of one S3 driver, and how it sends requests there. */
export class S3Bucket {
  readonly description: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly client: S3Client;
  readonly transferChecksum: boolean;
  readonly conditionalWrites: boolean;
  readonly timeoutMs: number;
  readonly listPageSize: number;
  private readonly endpointText: string;
  private readonly secrets: string[];
  private readonly sse: ServerSideEncryption | undefined;
  private readonly sseKmsKeyId: string | undefined;

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
  }

  /** The full key of `name`. */
  key(name: string): string {
    return this.prefix + name;
  }

  where(key: string): string {
    return `s3://${this.bucket}/${key}`;
  }

  isNotFound(err: unknown): boolean {
    const code = codeOf(err);
    return statusOf(err) === 404 && code !== 'NoSuchBucket';
  }

  /** HEAD of a full key: its answer, or undefined when there is no such object. */
  async head(k: string): Promise<HeadObjectCommandOutput | undefined> {
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
  async deleteKey(k: string): Promise<void> {
    await this.request('DELETE', k, async (abortSignal) => {
      try {
        await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal });
      } catch (err) {
        if (!this.isNotFound(err)) throw err;
      }
    });
  }

  /**
   * What a PutObject of `body` under the full key `k` sends besides the body: its SHA-256 transfer
   * checksum (`bodySha256`, hex, computed once by the caller: for an object the archive's, for
   * uncompressed plaintext the checksum it records; the SDK then neither hashes the body for the
   * transfer checksum nor, see signWithTransferChecksum, for the signature), If-None-Match: * where
   * asked and conditional writes are used, and server-side encryption.
   */
  putParams(k: string, body: Buffer, p: { contentType: string; metadata?: Record<string, string>; bodySha256: string | undefined; ifNoneMatch: boolean }): PutObjectCommandInput {
    return {
      Bucket: this.bucket,
      Key: k,
      Body: body,
      ContentLength: body.length,
      ContentType: p.contentType,
      ...(p.metadata !== undefined ? { Metadata: p.metadata } : {}),
      ...(this.transferChecksum && p.bodySha256 !== undefined ? { ChecksumAlgorithm: 'SHA256' as const, ChecksumSHA256: Buffer.from(p.bodySha256, 'hex').toString('base64') } : {}),
      ...(this.conditionalWrites && p.ifNoneMatch ? { IfNoneMatch: '*' } : {}),
      ...this.sseParams(),
    };
  }

  /** Server-side encryption of a new object (a PUT, or a multipart upload as it starts). */
  sseParams(): { ServerSideEncryption?: ServerSideEncryption; SSEKMSKeyId?: string } {
    return {
      ...(this.sse !== undefined ? { ServerSideEncryption: this.sse } : {}),
      ...(this.sseKmsKeyId !== undefined ? { SSEKMSKeyId: this.sseKmsKeyId } : {}),
    };
  }

  request<T>(op: string, key: string, fn: (abortSignal: AbortSignal) => Promise<T>, timeoutMs = this.timeoutMs): Promise<T> {
    return withDeadline(timeoutMs, fn, (err, timedOut) => this.failure(err, op, key, timedOut, timeoutMs));
  }

  failure(err: unknown, op: string, key: string, timedOut: boolean, timeoutMs = this.timeoutMs): StorageError {
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
