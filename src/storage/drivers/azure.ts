// A storage driver over an Azure Blob Storage container (storage/driver.ts), through
// @azure/storage-blob: one block blob per key under `prefix`, the record in blob metadata
// (walstream_sha256, walstream_compression, walstream_size: Azure metadata names are C#
// identifiers, so "_" where S3 has "-"). A create is one Put Blob with If-None-Match: *, which
// the service refuses on an existing blob (409 BlobAlreadyExists): atomic, and concurrent creates
// of one key have one winner. A read is one Get Blob, its body read into one buffer of its length.
// Credentials as Azure users give them: AZURE_STORAGE_CONNECTION_STRING (which may carry a custom
// endpoint, e.g. Azurite's), else AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or
// AZURE_STORAGE_SAS_TOKEN, else @azure/identity's DefaultAzureCredential (managed identity,
// workload identity, the Azure CLI...), loaded only then.
import type { BlobServiceClient, ContainerClient, StoragePipelineOptions } from '@azure/storage-blob';
import { randomBytes } from 'node:crypto';
import { rechunk } from '../../util/chunks.js';
import { StorageError, isCompression } from '../types.js';
import { withDeadline, type CreateOptions, type CreateResult, type Driver, type DriverObject, type ListPageOptions, type NewMeta, type ObjectMeta, type ReadResult } from '../driver.js';

/** Bytes per staged block of a streamed create (memory held: one block). */
const BLOCK_SIZE = 8 * 1024 * 1024;

export const AZURE_META_SHA256 = 'walstream_sha256';
export const AZURE_META_COMPRESSION = 'walstream_compression';
export const AZURE_META_SIZE = 'walstream_size';

export interface AzureDriverOptions {
  container: string;
  /** Blob name prefix; "" or ending in "/" (a missing "/" is added). */
  prefix?: string;
  /** Default AZURE_STORAGE_CONNECTION_STRING. */
  connectionString?: string;
  /** Default AZURE_STORAGE_ACCOUNT (used without a connection string). */
  account?: string;
  /** Shared key; default AZURE_STORAGE_KEY. */
  accountKey?: string;
  /** SAS token; default AZURE_STORAGE_SAS_TOKEN. */
  sasToken?: string;
  /** Blob service URL with an account (default https://ACCOUNT.blob.core.windows.net). */
  endpoint?: string;
  /** Deadline of one request including the SDK's retries, in ms (default 30 000). */
  timeoutMs?: number;
  /** Tries per request (default 4). */
  maxAttempts?: number;
  /** Blobs per listing page (default 1000, at most 5000). */
  listPageSize?: number;
  /** What `description` shows (default azure://container/prefix). */
  description?: string;
}

interface RestErrorShape {
  name?: string;
  code?: string;
  statusCode?: number;
  message?: string;
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'REQUEST_SEND_ERROR']);

/** A create-if-absent that found the blob there (If-None-Match: * answered 409 or 412). */
function alreadyThere(err: unknown): boolean {
  const e = shape(err);
  return (e.statusCode === 409 && e.code === 'BlobAlreadyExists') || e.statusCode === 412;
}

function shape(err: unknown): RestErrorShape {
  return typeof err === 'object' && err !== null ? (err as RestErrorShape) : { message: String(err) };
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

function metaOf(m: Record<string, string> | undefined): ObjectMeta {
  const sha = m?.[AZURE_META_SHA256];
  const comp = m?.[AZURE_META_COMPRESSION];
  const size = m?.[AZURE_META_SIZE];
  return {
    sha256: sha !== undefined && /^[0-9a-f]{64}$/.test(sha) ? sha : undefined,
    compression: isCompression(comp) ? comp : undefined,
    size: size !== undefined && /^\d+$/.test(size) ? Number(size) : undefined,
  };
}

/** A body read into one buffer of its announced length as the chunks arrive; another length is transient (cut short). */
async function readBody(stream: NodeJS.ReadableStream | undefined, length: number | undefined): Promise<Buffer> {
  if (!stream) return Buffer.alloc(0);
  const chunks = stream as AsyncIterable<Buffer>;
  if (length === undefined || !Number.isSafeInteger(length) || length < 0) {
    const parts: Buffer[] = [];
    for await (const chunk of chunks) parts.push(chunk);
    return Buffer.concat(parts);
  }
  const out = Buffer.allocUnsafeSlow(length);
  let at = 0;
  for await (const chunk of chunks) {
    if (at + chunk.length > length) throw new StorageError(`the response held more than its announced ${length} bytes`, true);
    out.set(chunk, at);
    at += chunk.length;
  }
  if (at !== length) throw new StorageError(`the response ended after ${at} of its ${length} bytes`, true);
  return out;
}

export class AzureDriver implements Driver {
  readonly description: string;
  readonly bodyChecksum = false;
  readonly container: string;
  readonly prefix: string;
  private readonly opts: AzureDriverOptions;
  private readonly timeoutMs: number;
  private readonly listPageSize: number;
  private readonly secrets: string[];
  private readonly where: string;
  private client: Promise<ContainerClient> | undefined;

  constructor(opts: AzureDriverOptions) {
    if (!opts.container) throw new StorageError('an Azure archive needs a container', false);
    this.opts = opts;
    this.container = opts.container;
    const prefix = opts.prefix ?? '';
    this.prefix = prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/`;
    this.description = opts.description ?? `azure://${this.container}/${this.prefix}`;
    this.where = `azure://${this.container}/`;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.listPageSize = opts.listPageSize ?? 1000;
    if (!(this.timeoutMs > 0)) throw new StorageError('timeoutMs must be positive', false);
    if (!(this.listPageSize >= 1 && this.listPageSize <= 5000)) throw new StorageError('listPageSize must be 1-5000', false);
    const env = process.env;
    const cs = opts.connectionString ?? env['AZURE_STORAGE_CONNECTION_STRING'];
    const sas = opts.sasToken ?? env['AZURE_STORAGE_SAS_TOKEN'];
    this.secrets = [
      opts.accountKey ?? env['AZURE_STORAGE_KEY'],
      sas,
      /[?&]sig=([^&]+)/.exec(sas ?? '')?.[1],
      ...[/AccountKey=([^;]+)/i, /SharedAccessSignature=([^;]+)/i, /[?&;]sig=([^&;]+)/i].map((re) => re.exec(cs ?? '')?.[1]),
    ].filter((s): s is string => typeof s === 'string' && s.length > 3);
  }

  async create(key: string, body: Buffer, meta: NewMeta): Promise<CreateResult> {
    const k = this.prefix + key;
    const c = await this.containerClient();
    return this.request('PUT', k, async (abortSignal) => {
      try {
        await c.getBlockBlobClient(k).upload(body, body.length, {
          abortSignal,
          conditions: { ifNoneMatch: '*' },
          metadata: this.metadata(meta),
          blobHTTPHeaders: { blobContentType: 'application/octet-stream' },
        });
        return { created: true, modified: new Date() };
      } catch (err) {
        if (alreadyThere(err)) return { created: false };
        throw err;
      }
    });
  }

  /**
   * A streamed create: the body staged as blocks (Put Block, one block in memory at a time, ids
   * random per upload so that concurrent writers never mix blocks), then committed with the
   * record by one Put Block List with If-None-Match: *. Blocks of a create that loses or dies are
   * never committed, and the service discards them (after a week).
   */
  async createStream(key: string, body: AsyncIterable<Buffer>, meta: () => NewMeta): Promise<CreateResult> {
    const k = this.prefix + key;
    const blob = (await this.containerClient()).getBlockBlobClient(k);
    const upload = randomBytes(6).toString('hex');
    const ids: string[] = [];
    for await (const part of rechunk(body, BLOCK_SIZE)) {
      const id = Buffer.from(`${upload}-${String(ids.length).padStart(6, '0')}`).toString('base64');
      await this.request('PUT BLOCK', k, (abortSignal) => blob.stageBlock(id, part, part.length, { abortSignal }));
      ids.push(id);
    }
    return this.request('PUT BLOCK LIST', k, async (abortSignal) => {
      try {
        await blob.commitBlockList(ids, {
          abortSignal,
          conditions: { ifNoneMatch: '*' },
          metadata: this.metadata(meta()),
          blobHTTPHeaders: { blobContentType: 'application/octet-stream' },
        });
        return { created: true, modified: new Date() };
      } catch (err) {
        if (alreadyThere(err)) return { created: false };
        throw err;
      }
    });
  }

  async readStream(key: string): Promise<{ object: DriverObject; meta: ObjectMeta; body: AsyncIterable<Buffer> } | undefined> {
    const k = this.prefix + key;
    const c = await this.containerClient();
    return this.request('GET', k, async () => {
      // A deadline for the answer, none for the body after it (a large object takes long).
      const answer = new AbortController();
      const timer = setTimeout(() => answer.abort(), this.timeoutMs);
      try {
        const res = await c.getBlobClient(k).download(0, undefined, { abortSignal: answer.signal });
        clearTimeout(timer);
        const meta = metaOf(res.metadata);
        const object: DriverObject = { key, storedSize: res.contentLength ?? 0, modified: res.lastModified ?? new Date(0), meta };
        return { object, meta, body: (res.readableStreamBody ?? (async function* () {})()) as AsyncIterable<Buffer> };
      } catch (err) {
        if (this.isNotFound(err)) return undefined;
        throw err;
      } finally {
        clearTimeout(timer);
      }
    });
  }

  async overwrite(key: string, body: Buffer, meta: NewMeta, _opts?: CreateOptions): Promise<void> {
    const k = this.prefix + key;
    const c = await this.containerClient();
    await this.request('PUT', k, (abortSignal) =>
      c.getBlockBlobClient(k).upload(body, body.length, { abortSignal, metadata: this.metadata(meta), blobHTTPHeaders: { blobContentType: 'application/octet-stream' } }),
    );
  }

  async read(key: string): Promise<ReadResult | undefined> {
    const k = this.prefix + key;
    const c = await this.containerClient();
    return this.request('GET', k, async (abortSignal) => {
      try {
        const res = await c.getBlobClient(k).download(0, undefined, { abortSignal });
        const body = await readBody(res.readableStreamBody, res.contentLength);
        return { key, body, owned: true, storedSize: body.length, modified: res.lastModified ?? new Date(0), meta: metaOf(res.metadata) };
      } catch (err) {
        if (this.isNotFound(err)) return undefined;
        throw err;
      }
    });
  }

  async stat(key: string): Promise<DriverObject | undefined> {
    const k = this.prefix + key;
    const c = await this.containerClient();
    return this.request('HEAD', k, async (abortSignal) => {
      try {
        const res = await c.getBlobClient(k).getProperties({ abortSignal });
        return { key, storedSize: res.contentLength ?? 0, modified: res.lastModified ?? new Date(0), meta: metaOf(res.metadata) };
      } catch (err) {
        if (this.isNotFound(err)) return undefined;
        throw err;
      }
    });
  }

  /** List Blobs with a "/" delimiter (one level), with their metadata: a listing tells the record too. */
  async *list(prefix: string, opts: ListPageOptions = {}): AsyncIterable<DriverObject[]> {
    const c = await this.containerClient();
    let token: string | undefined;
    do {
      const page = await this.request('LIST', this.prefix + prefix, async (abortSignal) => {
        const pages = c.listBlobsByHierarchy('/', { prefix: this.prefix + prefix, includeMetadata: true, abortSignal }).byPage({
          maxPageSize: this.listPageSize,
          ...(token !== undefined ? { continuationToken: token } : {}),
        });
        const r = await pages.next();
        return r.done ? undefined : r.value;
      });
      const out: DriverObject[] = [];
      for (const b of page?.segment.blobItems ?? []) {
        if (!b.name.startsWith(this.prefix)) continue;
        const key = b.name.slice(this.prefix.length);
        if (opts.accept && !opts.accept(key)) continue;
        out.push({ key, storedSize: b.properties.contentLength ?? 0, modified: b.properties.lastModified, meta: metaOf(b.metadata) });
      }
      token = page?.continuationToken || undefined;
      yield out;
    } while (token !== undefined);
  }

  async delete(key: string): Promise<void> {
    const k = this.prefix + key;
    const c = await this.containerClient();
    await this.request('DELETE', k, (abortSignal) => c.getBlobClient(k).deleteIfExists({ abortSignal }));
  }

  async close(): Promise<void> {
    // The SDK's HTTP agent keeps no timers of its own once requests are done.
  }

  // --- internals ---

  private metadata(meta: NewMeta): Record<string, string> {
    return { [AZURE_META_SHA256]: meta.sha256, [AZURE_META_COMPRESSION]: meta.compression, [AZURE_META_SIZE]: String(meta.size) };
  }

  private containerClient(): Promise<ContainerClient> {
    this.client ??= this.connect().then((s) => s.getContainerClient(this.container));
    return this.client;
  }

  /** The service client from the credentials given, in the order Azure's own tools take them. */
  private async connect(): Promise<BlobServiceClient> {
    const { BlobServiceClient, StorageSharedKeyCredential } = await import('@azure/storage-blob');
    const env = process.env;
    const o = this.opts;
    const pipeline: StoragePipelineOptions = {
      retryOptions: { maxTries: o.maxAttempts ?? 4, tryTimeoutInMs: this.timeoutMs, retryDelayInMs: 200, maxRetryDelayInMs: 2_000 },
    };
    const cs = o.connectionString ?? env['AZURE_STORAGE_CONNECTION_STRING'];
    if (cs) {
      try {
        return BlobServiceClient.fromConnectionString(cs, pipeline);
      } catch (err) {
        throw new StorageError(`invalid AZURE_STORAGE_CONNECTION_STRING: ${this.redact(oneLine((err as Error).message))}`, false);
      }
    }
    const account = o.account ?? env['AZURE_STORAGE_ACCOUNT'];
    if (!account) {
      throw new StorageError(
        `no Azure credentials for ${this.description}: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN or an Azure identity (managed identity, workload identity, az login)`,
        false,
      );
    }
    const url = (o.endpoint ?? `https://${account}.blob.core.windows.net`).replace(/\/+$/, '');
    const key = o.accountKey ?? env['AZURE_STORAGE_KEY'];
    if (key) return new BlobServiceClient(url, new StorageSharedKeyCredential(account, key), pipeline);
    const sas = o.sasToken ?? env['AZURE_STORAGE_SAS_TOKEN'];
    if (sas) return new BlobServiceClient(`${url}?${sas.replace(/^\?/, '')}`, undefined, pipeline);
    let identity: typeof import('@azure/identity');
    try {
      identity = await import('@azure/identity');
    } catch (err) {
      throw new StorageError(`AZURE_STORAGE_ACCOUNT without a key or SAS token needs @azure/identity, which cannot be loaded: ${oneLine((err as Error).message)}`, false);
    }
    return new BlobServiceClient(url, new identity.DefaultAzureCredential(), pipeline);
  }

  private isNotFound(err: unknown): boolean {
    const e = shape(err);
    return e.statusCode === 404 && e.code !== 'ContainerNotFound';
  }

  /** Run one request under the deadline; anything it throws becomes a StorageError. */
  private request<T>(op: string, key: string, fn: (abortSignal: AbortSignal) => Promise<T>): Promise<T> {
    return withDeadline(this.timeoutMs, fn, (err, timedOut) => this.failure(err, op, key, timedOut));
  }

  private failure(err: unknown, op: string, key: string, timedOut: boolean): StorageError {
    const where = `Azure ${op} ${this.where}${key}`;
    const e = shape(err);
    const status = e.statusCode;
    let text: string;
    let transient: boolean;
    if (timedOut) {
      text = `${where}: no answer within ${this.timeoutMs} ms`;
      transient = true;
    } else if (status === undefined) {
      // A credential source that did not answer is retried like the network (see S3).
      const net = (e.code !== undefined && NETWORK_CODES.has(e.code)) || e.name === 'AbortError' || e.name === 'CredentialUnavailableError' || e.name === 'AuthenticationError';
      text = `${where}: ${net ? 'cannot reach the service: ' : ''}${e.code ?? e.name ?? 'Error'}: ${e.message ?? ''}`;
      transient = net;
    } else {
      transient = status >= 500 || status === 408 || status === 429;
      let hint = '';
      if (status === 403) hint = ' (check the credentials and that they may access this container)';
      else if (e.code === 'ContainerNotFound') hint = ` (container "${this.container}" does not exist)`;
      // The message of a HEAD error has no body: the code and status say it all.
      const detail = e.message && !e.message.startsWith('Unexpected status code') ? `: ${e.message.split('\n')[0]}` : '';
      text = `${where}: ${e.code ?? 'Error'} (HTTP ${status})${detail}${hint}`;
    }
    return new StorageError(this.redact(oneLine(text)), transient, { cause: err });
  }

  private redact(text: string): string {
    let out = text;
    for (const s of this.secrets) out = out.split(s).join('[redacted]');
    return out;
  }
}
