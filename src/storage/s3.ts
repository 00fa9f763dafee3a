// An archive in an S3 bucket (AWS or any S3-compatible store), one object per WAL file under
// `prefix` with no suffix; the compression, uncompressed size and SHA-256 ride along as object
// metadata (walstream-compression, walstream-size, walstream-sha256), so get costs one request.
// A put is one PUT carrying a SHA-256 transfer checksum and If-None-Match: * (S3 conditional
// writes): the server refuses to overwrite (412), and concurrent puts of one name have one winner.
// Stores without conditional writes can use conditionalWrites: false (a HEAD before the PUT,
// which does not protect against two concurrent writers).
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
import { createHash } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { assertCompressionAvailable, compress, decompress, isCompression, sha256Hex } from './codec.js';
import { sha256Owned } from '../util/bulk.js';
import { QUARANTINE_ATTEMPTS, byName, isArchiveName, isWalName, judgeStored, listedUnder, mapLimit, plainRefused, quarantineName, unauthenticatedError } from './common.js';
import { decodeStored, encodeStored, type Keyring } from './encryption.js';
import { judgeLeftover, removable } from './leftovers.js';
import {
  ConflictError,
  IntegrityError,
  NotFoundError,
  QUARANTINE_PREFIX,
  StorageError,
  assertArchiveName,
  type ArchiveStore,
  type Compression,
  type GetResult,
  type Leftover,
  type LeftoverOptions,
  type LeftoverRemoval,
  type LeftoverScan,
  type ListOptions,
  type ObjectInfo,
  type PutOptions,
  type PutResult,
} from './types.js';

export const META_SHA256 = 'walstream-sha256';
export const META_COMPRESSION = 'walstream-compression';
export const META_SIZE = 'walstream-size';

export type ServerSideEncryption = 'AES256' | 'aws:kms';

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface S3StoreOptions {
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
  /** Client-side encryption: new objects with the first key, reads with any (storage/encryption.ts). */
  keyring?: Keyring;
}

interface Prepared {
  data: Buffer;
  stored: Buffer;
  sha: string;
  compression: Compression;
  /** The keys the object is written with (none for a put with `unencrypted`). */
  keyring: Keyring | undefined;
  /** An unencrypted copy under the name is damaged (common.ts judgeStored). */
  plainIsDamaged: boolean;
}

/**
 * 'damaged': what is stored must be replaced (it fails the checksum recorded of the very bytes
 * being put, or is an unencrypted copy of them where only encrypted ones are read; common.ts
 * judgeStored); 'unauthenticated': an error, never replaced.
 */
type Outcome = PutResult | 'conflict' | { damaged: Buffer } | { unauthenticated: string };

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

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
]);

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

function metaInfo(name: string, meta: Record<string, string> | undefined, storedSize: number, modified: Date | undefined): ObjectInfo {
  const m = meta ?? {};
  const sha = m[META_SHA256];
  const comp = m[META_COMPRESSION];
  const size = m[META_SIZE];
  return {
    name,
    size: size !== undefined && /^\d+$/.test(size) ? Number(size) : storedSize,
    storedSize,
    checksum: sha !== undefined && /^[0-9a-f]{64}$/.test(sha) ? sha : undefined,
    compression: isCompression(comp) ? comp : 'none',
    modified: modified ?? new Date(0),
  };
}

export class S3Store implements ArchiveStore {
  readonly description: string;
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;
  private readonly endpointText: string;
  private readonly secrets: string[];
  private readonly sse: ServerSideEncryption | undefined;
  private readonly sseKmsKeyId: string | undefined;
  private readonly transferChecksum: boolean;
  private readonly conditionalWrites: boolean;
  private readonly timeoutMs: number;
  private readonly listPageSize: number;
  private readonly keyring: Keyring | undefined;
  private archiveEncrypted = false;

  constructor(opts: S3StoreOptions) {
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
    this.keyring = opts.keyring;
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

  setArchiveEncrypted(encrypted: boolean): void {
    this.archiveEncrypted = encrypted;
  }

  async put(name: string, data: Buffer, opts: PutOptions = {}): Promise<PutResult> {
    assertArchiveName(name);
    const compression = opts.compression ?? 'none';
    assertCompressionAvailable(compression);
    const keyring = opts.unencrypted ? undefined : this.keyring;
    const obj: Prepared = {
      data,
      stored: encodeStored(keyring, name, compression, await compress(data, compression)),
      sha: opts.sha256 ?? sha256Hex(data),
      compression,
      keyring,
      plainIsDamaged: keyring !== undefined && (keyring.requireEncrypted || this.archiveEncrypted) && isWalName(name),
    };
    const outcome = await this.store(name, obj);
    if (outcome === 'conflict') {
      const when = new Date();
      const quarantined: Prepared = { ...obj, plainIsDamaged: false };
      for (let attempt = 0; attempt < QUARANTINE_ATTEMPTS; attempt++) {
        const q = quarantineName(name, when, attempt);
        if ((await this.store(q, quarantined)) !== 'conflict') throw new ConflictError(name, q);
      }
    } else if ('unauthenticated' in outcome) {
      throw unauthenticatedError(name, outcome.unauthenticated);
    } else if ('damaged' in outcome) {
      return this.replaceDamaged(name, obj, outcome.damaged);
    } else {
      return outcome;
    }
    throw new StorageError(`"${name}" conflicts with the archive and no free quarantine name was found`, false);
  }

  async get(name: string): Promise<GetResult> {
    assertArchiveName(name);
    const fetched = await this.fetch(name);
    if (!fetched) throw new NotFoundError(name);
    const { stored, info } = fetched;
    const compression = info.compression ?? 'none';
    const { payload, keyId } = decodeStored(this.keyring, name, compression, stored, plainRefused(this.keyring?.requireEncrypted === true, name));
    let data: Buffer;
    try {
      data = await decompress(payload, compression);
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw new IntegrityError(name, `cannot decompress (${compression}): ${(err as Error).message}`);
    }
    if (info.checksum !== undefined) {
      // The body was collected into memory of its own for this call: it may be handed over.
      const hashed = await sha256Owned(data);
      data = hashed.data;
      if (hashed.hex !== info.checksum) throw new IntegrityError(name, `SHA-256 ${hashed.hex} does not match the recorded ${info.checksum}`);
    }
    return { data, info: { ...info, size: data.length, ...(keyId !== undefined ? { keyId } : {}) } };
  }

  async head(name: string): Promise<ObjectInfo | undefined> {
    assertArchiveName(name);
    const key = this.key(name);
    return this.request('HEAD', key, async (abortSignal) => {
      try {
        const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal });
        return metaInfo(name, res.Metadata, res.ContentLength ?? 0, res.LastModified);
      } catch (err) {
        if (this.isNotFound(err)) return undefined;
        throw err;
      }
    });
  }

  async list(prefix = '', opts: ListOptions = {}): Promise<ObjectInfo[]> {
    const quarantine = prefix.startsWith(QUARANTINE_PREFIX);
    if (!quarantine && prefix.includes('/')) return [];
    const out: ObjectInfo[] = [];
    let token: string | undefined;
    do {
      const page = await this.request('LIST', this.prefix + prefix, (abortSignal) =>
        this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.prefix + prefix,
            // Without a delimiter the listing would walk quarantine/ (and anything else below).
            ...(quarantine ? {} : { Delimiter: '/' }),
            MaxKeys: this.listPageSize,
            ...(token !== undefined ? { ContinuationToken: token } : {}),
          }),
          { abortSignal },
        ),
      );
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined || !o.Key.startsWith(this.prefix)) continue;
        const name = o.Key.slice(this.prefix.length);
        if (!isArchiveName(name) || !listedUnder(name, prefix)) continue;
        const size = o.Size ?? 0;
        out.push({ name, size, storedSize: size, checksum: undefined, compression: undefined, modified: o.LastModified ?? new Date(0) });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
      if (page.IsTruncated && token === undefined) throw new StorageError(`S3 LIST ${this.where(this.prefix + prefix)}: truncated listing without a continuation token`, true);
      // Pages come in key order: once enough are found, the rest come after them.
    } while (token !== undefined && (opts.limit === undefined || out.length < opts.limit));
    out.sort(byName);
    return opts.limit !== undefined ? out.slice(0, opts.limit) : out;
  }

  async delete(name: string): Promise<void> {
    assertArchiveName(name);
    const key = this.key(name);
    await this.request('DELETE', key, async (abortSignal) => {
      try {
        await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal });
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
          unavailable:
            `${this.description} does not list incomplete multipart uploads (${unsupported}): a bucket lifecycle rule ` +
            'AbortIncompleteMultipartUpload removes those of killed writers',
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
    const leftovers = found.filter((l): l is Leftover => l !== undefined).sort((a, b) => byName(a, b) || (a.upload!.id < b.upload!.id ? -1 : 1));
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
            return await this.client.send(
              new ListPartsCommand({ Bucket: this.bucket, Key: key, UploadId: id, ...(marker !== undefined ? { PartNumberMarker: marker } : {}) }),
              { abortSignal },
            );
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

  /** One GET: stored bytes and what the metadata says, or undefined when missing. */
  private async fetch(name: string): Promise<{ stored: Buffer; info: ObjectInfo } | undefined> {
    const key = this.key(name);
    return this.request('GET', key, async (abortSignal) => {
      try {
        const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal });
        const stored = res.Body ? await readBody(res.Body, res.ContentLength) : Buffer.alloc(0);
        return { stored, info: metaInfo(name, res.Metadata, stored.length, res.LastModified) };
      } catch (err) {
        if (this.isNotFound(err)) return undefined;
        throw err;
      }
    });
  }

  /** Compare what `name` holds with `obj` (common.ts judgeStored), or 'gone' (deleted since). */
  private async compareWith(name: string, obj: Prepared): Promise<Outcome | 'gone'> {
    const fetched = await this.fetch(name);
    if (!fetched) return 'gone';
    const { info, stored } = fetched;
    const verdict = await judgeStored(name, { stored, compression: info.compression ?? 'none', checksum: info.checksum, size: info.size }, obj.data, {
      keyring: obj.keyring,
      plainIsDamaged: obj.plainIsDamaged,
    });
    switch (verdict.kind) {
      case 'identical':
        return { status: 'exists', info: { ...info, size: obj.data.length } };
      case 'different':
        return 'conflict';
      case 'damaged':
        return { damaged: stored };
      case 'unauthenticated':
        return { unauthenticated: verdict.keyId };
    }
  }

  /**
   * Keep the damaged bytes under quarantine/ for the operator, then store the verified copy in
   * their place (the one case where a put replaces what is there).
   */
  private async replaceDamaged(name: string, obj: Prepared, damaged: Buffer): Promise<PutResult> {
    const when = new Date();
    let kept: string | undefined;
    for (let attempt = 0; attempt < QUARANTINE_ATTEMPTS && kept === undefined; attempt++) {
      const q = quarantineName(name, when, attempt);
      const raw: Prepared = { data: damaged, stored: damaged, sha: sha256Hex(damaged), compression: 'none', keyring: undefined, plainIsDamaged: false };
      const r = await this.store(q, raw);
      if (r !== 'conflict') kept = q;
    }
    if (kept === undefined) throw new StorageError(`"${name}" is damaged in the archive and no free quarantine name was found`, false);
    const key = this.key(name);
    await this.request('PUT', key, (abortSignal) => {
      const { IfNoneMatch: _ignored, ...input } = this.putInput(key, obj);
      void _ignored;
      return this.client.send(new PutObjectCommand(input), { abortSignal });
    });
    const info = metaInfo(name, { [META_SHA256]: obj.sha, [META_COMPRESSION]: obj.compression, [META_SIZE]: String(obj.data.length) }, obj.stored.length, new Date());
    return { status: 'created', info, replacedDamaged: kept };
  }

  private async store(name: string, obj: Prepared): Promise<Outcome> {
    const key = this.key(name);
    for (let attempt = 0; attempt < 6; attempt++) {
      if (!this.conditionalWrites) {
        const held = await this.head(name);
        if (held) {
          const r = await this.compareWith(name, obj);
          if (r !== 'gone') return r;
          continue;
        }
      }
      const written = await this.request('PUT', key, async (abortSignal) => {
        try {
          await this.client.send(new PutObjectCommand(this.putInput(key, obj)), { abortSignal });
          return 'created' as const;
        } catch (err) {
          const status = statusOf(err);
          if (status === 412 && this.conditionalWrites) return 'taken' as const;
          // 409 ConditionalRequestConflict: another conditional write of this key is in flight.
          if (status === 409 && codeOf(err) === 'ConditionalRequestConflict') return 'busy' as const;
          throw err;
        }
      });
      if (written === 'created') {
        return {
          status: 'created',
          info: { name, size: obj.data.length, storedSize: obj.stored.length, checksum: obj.sha, compression: obj.compression, modified: new Date() },
        };
      }
      if (written === 'busy') {
        await sleep(50 * 2 ** attempt + Math.floor(Math.random() * 50));
        continue;
      }
      const r = await this.compareWith(name, obj);
      if (r !== 'gone') return r;
    }
    throw new StorageError(`S3 PUT ${this.where(key)}: the object keeps changing under concurrent writers; try again`, true);
  }

  private putInput(key: string, obj: Prepared): PutObjectCommandInput {
    return {
      Bucket: this.bucket,
      Key: key,
      Body: obj.stored,
      ContentLength: obj.stored.length,
      ContentType: 'application/octet-stream',
      Metadata: { [META_SHA256]: obj.sha, [META_COMPRESSION]: obj.compression, [META_SIZE]: String(obj.data.length) },
      // The SHA-256 of the bytes sent, computed once: for uncompressed plaintext it is the
      // checksum already recorded. The SDK then neither hashes the body for the transfer
      // checksum nor (see signWithTransferChecksum) for the signature.
      ...(this.transferChecksum ? { ChecksumAlgorithm: 'SHA256' as const, ChecksumSHA256: (obj.stored === obj.data ? Buffer.from(obj.sha, 'hex') : createHash('sha256').update(obj.stored).digest()).toString('base64') } : {}),
      ...(this.conditionalWrites ? { IfNoneMatch: '*' } : {}),
      ...(this.sse !== undefined ? { ServerSideEncryption: this.sse } : {}),
      ...(this.sseKmsKeyId !== undefined ? { SSEKMSKeyId: this.sseKmsKeyId } : {}),
    };
  }

  /** Run one S3 request under the deadline; anything it throws becomes a StorageError. */
  private async request<T>(op: string, key: string, fn: (abortSignal: AbortSignal) => Promise<T>): Promise<T> {
    const signal = AbortSignal.timeout(this.timeoutMs);
    try {
      return await fn(signal);
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw this.failure(err, op, key, signal.aborted);
    }
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
      else if (status === 301 || code === 'PermanentRedirect' || code === 'AuthorizationHeaderMalformed') hint = ' (set AWS_REGION to the bucket\'s region)';
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
