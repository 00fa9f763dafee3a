// A storage driver over an S3 bucket, AWS or any S3-compatible store (storage/driver.ts): one
// object per key under `prefix`, the record riding along as object metadata (walstream-sha256,
// walstream-compression, walstream-size), so a read costs one GET, read straight into one buffer
// of its Content-Length. A create is one PUT carrying a SHA-256 transfer checksum and
// If-None-Match: * (S3 conditional writes): the server refuses to overwrite (412), and concurrent
// creates of one key have one winner. Stores without conditional writes can use
// conditionalWrites: false (a HEAD before the PUT, which does not protect against two concurrent
// writers). overwrite is a plain PUT (a damaged copy, kept aside by the archive first).
//
// Streamed objects (createStream: base backups, larger than memory) are multipart uploads whose
// record is an object of its own, written before the upload is completed: drivers/s3-multipart.ts
// (the upload), drivers/s3-records.ts (the records, reading and deleting streamed objects),
// drivers/s3-leftovers.ts (uploads and records that killed writers left). drivers/s3-bucket.ts
// holds the client, the requests and their errors, which all of them share.
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, type PutObjectCommandInput, type S3Client } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CreateOptions, CreateResult, Driver, DriverObject, ListPageOptions, NewMeta, ObjectMeta, ReadResult } from '../driver.js';
import { StorageError, type LeftoverOptions, type LeftoverRemoval, type LeftoverScan } from '../types.js';
import { META_COMPRESSION, META_SHA256, META_SIZE, S3Bucket, codeOf, oneLine, readBody, statusOf, streamedId, type S3DriverOptions } from './s3-bucket.js';
import { removeLeftovers, scanLeftovers } from './s3-leftovers.js';
import { PartReader, multipartUpload, partSize } from './s3-multipart.js';
import { RECORD_DIR, deleteWithRecord, readStream, recordKey, recordOf, recordOrRefusal } from './s3-records.js';

export { META_COMPRESSION, META_SHA256, META_SIZE, META_STREAMED, type S3Credentials, type S3DriverOptions, type ServerSideEncryption } from './s3-bucket.js';
export { FIRST_PART_SIZE, MAX_PARTS, PARTS_IN_FLIGHT, partSize } from './s3-multipart.js';
export { RECORD_DIR } from './s3-records.js';

export class S3Driver implements Driver {
  readonly description: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly bodyChecksum: boolean;
  private readonly b: S3Bucket;
  private readonly client: S3Client;

  constructor(opts: S3DriverOptions) {
    this.b = new S3Bucket(opts);
    this.description = this.b.description;
    this.bucket = this.b.bucket;
    this.prefix = this.b.prefix;
    this.client = this.b.client;
    this.bodyChecksum = this.b.transferChecksum;
  }

  async create(key: string, body: Buffer, meta: NewMeta, opts: CreateOptions = {}): Promise<CreateResult> {
    const k = this.b.key(key);
    for (let attempt = 0; attempt < 6; attempt++) {
      if (!this.b.conditionalWrites && (await this.b.head(k))) return { created: false };
      const written = await this.b.request('PUT', k, async (abortSignal) => {
        try {
          await this.client.send(new PutObjectCommand(this.putInput(k, body, meta, opts.bodySha256, true)), { abortSignal });
          return 'created' as const;
        } catch (err) {
          const status = statusOf(err);
          if (status === 412 && this.b.conditionalWrites) return 'taken' as const;
          // 409 ConditionalRequestConflict: another conditional write of this key is in flight.
          if (status === 409 && codeOf(err) === 'ConditionalRequestConflict') return 'busy' as const;
          throw err;
        }
      });
      if (written === 'created') return { created: true, modified: new Date() };
      if (written === 'taken') return { created: false };
      await sleep(50 * 2 ** attempt + Math.floor(Math.random() * 50));
    }
    throw new StorageError(`S3 PUT ${this.b.where(k)}: the object keeps changing under concurrent writers; try again`, true);
  }

  /**
   * A streamed create (see the top of this file): a body shorter than one part is one PUT; a
   * longer one a multipart upload whose record is created before the upload is completed. A key
   * taken when the upload would start or complete: the body is consumed to its end and nothing is
   * stored. Any failure (a part that fails after the SDK's retries, the body failing, a deadline)
   * aborts the upload (best effort: some stores cannot) and throws a StorageError.
   */
  async createStream(key: string, body: AsyncIterable<Buffer>, meta: () => NewMeta, opts: CreateOptions = {}): Promise<CreateResult> {
    const k = this.b.key(key);
    const parts = new PartReader(body[Symbol.asyncIterator]());
    try {
      // Taken already: nothing to upload, but the caller wants the body's checksum.
      if (await this.b.head(k)) {
        await parts.drain();
        return { created: false };
      }
      const first = await parts.next(partSize(1));
      if (first === undefined || first.length < partSize(1)) {
        const whole = first ?? Buffer.alloc(0);
        const sum = this.b.transferChecksum ? { bodySha256: createHash('sha256').update(whole).digest('hex') } : {};
        return await this.create(key, whole, meta(), { ...opts, ...sum });
      }
      return await multipartUpload(this.b, key, first, parts, meta);
    } catch (err) {
      await parts.release();
      if (parts.sourceError !== undefined && err === parts.sourceError.err && !(err instanceof StorageError)) {
        throw new StorageError(`S3 streamed upload of ${this.b.where(k)}: the body failed: ${oneLine((err as Error)?.message ?? String(err))}; nothing was stored`, false, { cause: err });
      }
      throw err;
    }
  }

  /** A GET whose body is read as it comes (drivers/s3-records.ts: a streamed object's record checked first). */
  readStream(key: string): Promise<{ object: DriverObject; meta: ObjectMeta; body: AsyncIterable<Buffer> } | undefined> {
    return readStream(this.b, key);
  }

  async overwrite(key: string, body: Buffer, meta: NewMeta, opts: CreateOptions = {}): Promise<void> {
    const k = this.b.key(key);
    const replaced = streamedId((await this.b.head(k))?.Metadata);
    await this.b.request('PUT', k, (abortSignal) => this.client.send(new PutObjectCommand(this.putInput(k, body, meta, opts.bodySha256, false)), { abortSignal }));
    // The record of a streamed object replaced here names nothing now. Left behind when it cannot
    // be deleted: harmless, and a leftover that cleanup removes.
    if (replaced !== undefined) await this.b.deleteKey(recordKey(this.b, key, replaced)).catch(() => undefined);
  }

  /** One GET: the body read straight into one buffer of its length, and the record from its metadata (or its record object). */
  async read(key: string): Promise<ReadResult | undefined> {
    const k = this.b.key(key);
    const got = await this.b.request('GET', k, async (abortSignal) => {
      try {
        const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: k }), { abortSignal });
        const body = res.Body ? await readBody(res.Body, res.ContentLength) : Buffer.alloc(0);
        return { body, modified: res.LastModified ?? new Date(0), metadata: res.Metadata };
      } catch (err) {
        if (this.b.isNotFound(err)) return undefined;
        throw err;
      }
    });
    if (!got) return undefined;
    const meta = await recordOrRefusal(this.b, key, got.metadata, got.body.length);
    if (meta === 'gone') return undefined;
    return { key, body: got.body, owned: true, storedSize: got.body.length, modified: got.modified, meta };
  }

  /** HEAD, and for a streamed object its record (stat'ed without a checksum when it has none: reads refuse it). */
  async stat(key: string): Promise<DriverObject | undefined> {
    const res = await this.b.head(this.b.key(key));
    if (!res) return undefined;
    const storedSize = res.ContentLength ?? 0;
    const meta = await recordOf(this.b, key, res.Metadata, storedSize);
    return { key, storedSize, modified: res.LastModified ?? new Date(0), meta: typeof meta === 'string' ? { sha256: undefined, compression: undefined, size: undefined } : meta };
  }

  /** ListObjectsV2 pages with a "/" delimiter (one level); a listing cannot tell the record (meta undefined). */
  async *list(prefix: string, opts: ListPageOptions = {}): AsyncIterable<DriverObject[]> {
    let token: string | undefined;
    do {
      const page = await this.b.request('LIST', this.prefix + prefix, (abortSignal) =>
        this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.prefix + prefix,
            Delimiter: '/',
            MaxKeys: this.b.listPageSize,
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
      if (page.IsTruncated && token === undefined) throw new StorageError(`S3 LIST ${this.b.where(this.prefix + prefix)}: truncated listing without a continuation token`, true);
      yield out;
    } while (token !== undefined);
  }

  /** The object, then its record when it was streamed (drivers/s3-records.ts). */
  delete(key: string): Promise<void> {
    return deleteWithRecord(this.b, key);
  }

  /** The multipart uploads killed writers left, and the records no object names (drivers/s3-leftovers.ts). */
  scanLeftovers(opts: LeftoverOptions = {}): Promise<LeftoverScan> {
    return scanLeftovers(this.b, opts);
  }

  /** Abort those uploads, delete those records, once older than the leftover age (drivers/s3-leftovers.ts). */
  removeLeftovers(opts: LeftoverOptions & { dryRun?: boolean } = {}): Promise<LeftoverRemoval> {
    return removeLeftovers(this.b, opts);
  }

  async close(): Promise<void> {
    this.client.destroy();
  }

  /** The PUT of an object stored whole, its record as metadata (the parameters shared with a record's PUT: S3Bucket.putParams). */
  private putInput(k: string, body: Buffer, meta: NewMeta, bodySha256: string | undefined, ifNoneMatch: boolean): PutObjectCommandInput {
    return this.b.putParams(k, body, {
      contentType: 'application/octet-stream',
      metadata: { [META_SHA256]: meta.sha256, [META_COMPRESSION]: meta.compression, [META_SIZE]: String(meta.size) },
      bodySha256,
      ifNoneMatch,
    });
  }
}
