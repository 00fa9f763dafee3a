// Streamed objects on S3 (src/storage/drivers/s3.ts createStream / readStream) through the
// archive's policy (putStream / getStream): multipart uploads of several parts, the record in
// its own object (.walstream-meta/<key>.<id>.json) named by the object's metadata and created
// before the upload is completed, memory bounded by the parts in flight whatever the size, and
// nothing under the key unless the whole body was stored. Runs on the built-in s3rver, or on the
// store named by WALSTREAM_TEST_S3_ENDPOINT (checks of the request log are built-in only).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { startS3, type S3RequestRecord, type S3TestServer } from '../harness/s3.js';
import { FIRST_PART_SIZE, MAX_PARTS, META_STREAMED, PARTS_IN_FLIGHT, RECORD_DIR, S3Driver, partSize, type S3DriverOptions } from '../../src/storage/drivers/s3.js';
import { Keyring } from '../../src/storage/encryption.js';
import { S3Store } from '../../src/storage/s3.js';
import { ConflictError, IntegrityError, NotFoundError, StorageError } from '../../src/storage/types.js';

const MiB = 1024 * 1024;
const keyring = new Keyring([{ id: 'k1', key: Buffer.alloc(32, 9) }], 'test');
const NAME = 'backups/20260101T000000Z.base.tar';
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** ~40 MB: a compressible half and a noisy half, not a whole number of parts. */
const BIG = Buffer.concat([Buffer.alloc(20 * MiB, 7), randomBytes(20 * MiB + 12_345)]);
/** Two parts (the smallest streamed object that is a multipart upload). */
const TWO_PARTS = randomBytes(FIRST_PART_SIZE + 300_000);

async function* pieces(data: Buffer, size = MiB): AsyncGenerator<Buffer> {
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
}
async function collect(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const b of src) out.push(b);
  return Buffer.concat(out);
}
async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('S3: streamed objects', () => {
  let s3: S3TestServer;
  let raw: S3Client;
  let n = 0;

  beforeAll(async () => {
    s3 = await startS3();
    raw = s3.client();
  });
  afterAll(async () => {
    raw?.destroy();
    await s3?.stop();
  });

  const driverOptions = (extra: Partial<S3DriverOptions> = {}): S3DriverOptions => ({
    bucket: s3.bucket,
    prefix: `${s3.prefix}stream${n++}/`,
    endpoint: s3.endpoint,
    region: s3.region,
    credentials: s3.credentials,
    ...extra,
  });
  const makeStore = (keys?: Keyring, extra: Partial<S3DriverOptions> = {}): S3Store => new S3Store({ ...driverOptions(extra), ...(keys ? { keyring: keys } : {}) });
  /** Every key under `prefix`, at any depth. */
  const keysUnder = async (prefix: string): Promise<string[]> => {
    const out: string[] = [];
    let token: string | undefined;
    do {
      const page = await raw.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
      for (const o of page.Contents ?? []) out.push(o.Key!.slice(prefix.length));
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out.sort();
  };
  const recordKey = async (store: S3Store, name: string): Promise<string> => {
    const head = await raw.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: store.prefix + name }));
    const id = head.Metadata?.[META_STREAMED];
    expect(id).toMatch(/^[0-9a-f]{16}$/);
    return `${store.prefix}${RECORD_DIR}${name}.${id}.json`;
  };
  const getRaw = async (key: string): Promise<{ body: Buffer; metadata: Record<string, string> }> => {
    const r = await raw.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
    return { body: Buffer.from(await r.Body!.transformToByteArray()), metadata: r.Metadata ?? {} };
  };
  const putRaw = (key: string, body: Buffer, metadata: Record<string, string> = {}): Promise<unknown> =>
    raw.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body, ContentLength: body.length, Metadata: metadata }));
  /** Built-in server only: the requests seen since `from`. */
  const requestsSince = (from: number): S3RequestRecord[] => s3.requests.slice(from);
  const isUploadPart = (r: S3RequestRecord): boolean => r.method === 'PUT' && /(^|&)partNumber=/.test(r.query);

  const cases = [
    { compression: 'none' as const, keys: undefined },
    { compression: 'gzip' as const, keys: undefined },
    { compression: 'none' as const, keys: keyring },
    { compression: 'gzip' as const, keys: keyring },
  ];
  for (const c of cases) {
    it(`${c.compression}${c.keys ? ', encrypted' : ''}: ~40 MB in several parts round-trips byte-identical, its SHA-256 recorded beside it`, async () => {
      const store = makeStore(c.keys);
      const from = s3.requests.length;
      const put = await store.putStream!(NAME, pieces(BIG), { compression: c.compression });
      expect(put.status).toBe('created');
      expect(put.info).toMatchObject({ name: NAME, size: BIG.length, checksum: sha(BIG), compression: c.compression });

      const got = await store.getStream!(NAME);
      expect(got.info).toMatchObject({ name: NAME, size: BIG.length, checksum: sha(BIG), compression: c.compression, storedSize: put.info.storedSize });
      expect((await collect(got.stream)).equals(BIG)).toBe(true);
      expect((await store.get(NAME)).data.equals(BIG)).toBe(true);
      expect(await store.head(NAME)).toMatchObject({ checksum: sha(BIG), size: BIG.length, compression: c.compression });

      // The object names its record, which holds the checksum; listings show the object only.
      const rk = await recordKey(store, NAME);
      const record = JSON.parse((await getRaw(rk)).body.toString('utf8')) as Record<string, unknown>;
      expect(record).toMatchObject({ key: NAME, sha256: sha(BIG), compression: c.compression, size: BIG.length, storedSize: put.info.storedSize });
      expect((await store.list('backups/')).map((o) => o.name)).toEqual([NAME]);

      if (!s3.external) {
        const seen = requestsSince(from);
        const parts = seen.filter(isUploadPart);
        expect(parts.length).toBe(Math.ceil(put.info.storedSize / FIRST_PART_SIZE));
        expect(parts.length).toBeGreaterThanOrEqual(3);
        // Every part carries its SHA-256 transfer checksum, the upload says so from its start.
        for (const p of parts) expect(p.headers['x-amz-checksum-sha256']).toMatch(/^[A-Za-z0-9+/]{43}=$/);
        const start = seen.find((r) => r.method === 'POST' && /(^|&)uploads(=|&|$)/.test(r.query));
        expect(start?.headers['x-amz-checksum-algorithm']).toBe('SHA256');
        // Created if absent: the complete carries If-None-Match: *, and comes after the record's PUT.
        const complete = seen.findIndex((r) => r.method === 'POST' && /(^|&)uploadId=/.test(r.query));
        expect(seen[complete]?.headers['if-none-match']).toBe('*');
        const recordPut = seen.findIndex((r) => r.method === 'PUT' && decodeURIComponent(r.path).endsWith(rk));
        expect(recordPut).toBeGreaterThanOrEqual(0);
        expect(recordPut).toBeLessThan(complete);
      }
      await store.close();
    });
  }

  it('never overwrites: the same bytes again are "exists", others a ConflictError, the stored copy untouched', async () => {
    const store = makeStore(keyring);
    expect((await store.putStream!(NAME, pieces(TWO_PARTS), { compression: 'gzip' })).status).toBe('created');
    const again = await store.putStream!(NAME, pieces(TWO_PARTS), { compression: 'gzip' });
    expect(again.status).toBe('exists');
    expect(again.info.checksum).toBe(sha(TWO_PARTS));
    const other = Buffer.from(TWO_PARTS);
    other[FIRST_PART_SIZE + 5] = other[FIRST_PART_SIZE + 5]! ^ 1;
    await expect(store.putStream!(NAME, pieces(other), { compression: 'gzip' })).rejects.toBeInstanceOf(ConflictError);
    expect((await store.get(NAME)).data.equals(TWO_PARTS)).toBe(true);
    // One object, one record: the losing uploads left none.
    expect(await keysUnder(store.prefix)).toEqual([(await recordKey(store, NAME)).slice(store.prefix.length), NAME]);
    await store.close();
  });

  it('a tampered record, a tampered object or one without its record is refused on read', async () => {
    const store = makeStore();
    await store.putStream!(NAME, pieces(TWO_PARTS));
    const rk = await recordKey(store, NAME);
    const record = await getRaw(rk);
    const stored = await getRaw(store.prefix + NAME);

    // A record claiming other bytes: the stream fails its checksum at the end, a whole read at once.
    const forged = JSON.parse(record.body.toString('utf8')) as Record<string, unknown>;
    await putRaw(rk, Buffer.from(JSON.stringify({ ...forged, sha256: sha(Buffer.from('other')) })));
    await expect(collect((await store.getStream!(NAME)).stream)).rejects.toThrow(/does not match the recorded/);
    await expect(store.get(NAME)).rejects.toBeInstanceOf(IntegrityError);
    // A record of another size, of another object, or not a record at all.
    for (const bad of [JSON.stringify({ ...forged, storedSize: TWO_PARTS.length + 1 }), JSON.stringify({ ...forged, key: 'backups/20260101T000000Z.json' }), '{"format":1,']) {
      await putRaw(rk, Buffer.from(bad));
      expect(await rejection(store.getStream!(NAME))).toBeInstanceOf(IntegrityError);
      expect(await rejection(store.get(NAME))).toBeInstanceOf(IntegrityError);
    }

    // The record back, the object's bytes changed behind the store's back (its metadata kept).
    await putRaw(rk, record.body);
    expect((await collect((await store.getStream!(NAME)).stream)).equals(TWO_PARTS)).toBe(true);
    const damaged = Buffer.from(stored.body);
    damaged[FIRST_PART_SIZE] = damaged[FIRST_PART_SIZE]! ^ 0x55;
    await putRaw(store.prefix + NAME, damaged, stored.metadata);
    await expect(collect((await store.getStream!(NAME)).stream)).rejects.toThrow(/does not match the recorded/);
    await expect(store.get(NAME)).rejects.toBeInstanceOf(IntegrityError);

    // No record at all: no checksum to report, and no read hands out the bytes.
    await putRaw(store.prefix + NAME, stored.body, stored.metadata);
    await raw.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: rk }));
    expect((await store.head(NAME))?.checksum).toBeUndefined();
    const err = await rejection(store.getStream!(NAME));
    expect(err).toBeInstanceOf(IntegrityError);
    expect((err as Error).message).toContain(NAME);
    expect((err as Error).message).toMatch(/record .* is missing, so its checksum cannot be verified/);
    expect(await rejection(store.get(NAME))).toBeInstanceOf(IntegrityError);
    // Another put of the same bytes cannot tell them apart from what is there: not overwritten.
    await expect(store.putStream!(NAME, pieces(TWO_PARTS))).rejects.toBeInstanceOf(ConflictError);
    await store.close();
  });

  it("the body's iterator failing midway: a StorageError, the upload aborted, no object and no record", async () => {
    const store = makeStore(keyring);
    const from = s3.requests.length;
    async function* broken(): AsyncGenerator<Buffer> {
      // Noise (gzip leaves it as large): parts went up before the failure.
      yield* pieces(BIG.subarray(20 * MiB, 40 * MiB));
      throw new Error('the source broke');
    }
    const err = await rejection(store.putStream!(NAME, broken(), { compression: 'gzip' }));
    expect(err).toBeInstanceOf(StorageError);
    expect((err as Error).message).toMatch(/the source broke/);
    expect(await keysUnder(store.prefix)).toEqual([]);
    await expect(store.getStream!(NAME)).rejects.toBeInstanceOf(NotFoundError);
    if (!s3.external) {
      const seen = requestsSince(from);
      expect(seen.filter(isUploadPart).length).toBeGreaterThanOrEqual(1);
      // AbortMultipartUpload was asked for (s3rver does not implement it: best effort).
      expect(seen.some((r) => r.method === 'DELETE' && /(^|&)uploadId=/.test(r.query))).toBe(true);
    } else {
      const ups = await raw.send(new ListMultipartUploadsCommand({ Bucket: s3.bucket, Prefix: store.prefix })).catch(() => undefined);
      if (ups) expect(ups.Uploads ?? []).toEqual([]);
    }
    await store.close();
  });

  it('a part failing after the retries: a StorageError, nothing under the key', async () => {
    if (s3.external) return; // needs the built-in server's injected failures
    const store = makeStore(undefined, { maxAttempts: 1 });
    async function* failing(): AsyncGenerator<Buffer> {
      yield* pieces(BIG.subarray(0, FIRST_PART_SIZE));
      // The next two requests fail: a part (the first if it has not gone yet, else the second),
      // then the part or the abort after it (nothing else comes between).
      s3.failNext(2, 500);
      yield* pieces(BIG.subarray(FIRST_PART_SIZE, 3 * FIRST_PART_SIZE));
    }
    const err = await rejection(store.putStream!(NAME, failing()));
    expect(err).toBeInstanceOf(StorageError);
    expect((err as Error).message).toMatch(/PUT PART .*InternalError \(HTTP 500\)/);
    expect(await keysUnder(store.prefix)).toEqual([]);
    await store.close();
  });

  for (const conditionalWrites of [true, false]) {
    it(`a key taken (conditionalWrites ${conditionalWrites}): created false, the body consumed to its end, nothing of it stored`, async () => {
      const driver = new S3Driver(driverOptions({ conditionalWrites }));
      const meta = () => ({ sha256: sha(Buffer.alloc(0)), compression: 'none' as const, size: 0 });
      // Taken before the upload starts: no upload at all.
      await putRaw(`${driver.prefix}a`, Buffer.from('first'));
      let consumed = 0;
      async function* counted(data: Buffer, atHalf?: () => Promise<unknown>): AsyncGenerator<Buffer> {
        for await (const p of pieces(data)) {
          if (atHalf && consumed === 10 * MiB) await atHalf();
          consumed += p.length;
          yield p;
        }
      }
      const from = s3.requests.length;
      expect(await driver.createStream('a', counted(BIG.subarray(0, 20 * MiB)), meta)).toEqual({ created: false });
      expect(consumed).toBe(20 * MiB);
      if (!s3.external) expect(requestsSince(from).filter((r) => r.method === 'POST')).toEqual([]);

      // Taken while the parts go up: lost, the other writer's object untouched, no record left.
      consumed = 0;
      const result = await driver.createStream(
        'b',
        counted(BIG.subarray(0, 20 * MiB), () => putRaw(`${driver.prefix}b`, Buffer.from('second'))),
        meta,
      );
      expect(result).toEqual({ created: false });
      expect(consumed).toBe(20 * MiB);
      expect((await getRaw(`${driver.prefix}b`)).body.toString()).toBe('second');
      expect(await keysUnder(driver.prefix)).toEqual(['a', 'b']);

      // Free: created, the complete conditional only where conditional writes are used.
      const from2 = s3.requests.length;
      expect(await driver.createStream('c', pieces(TWO_PARTS), () => ({ sha256: sha(TWO_PARTS), compression: 'none', size: TWO_PARTS.length }))).toMatchObject({ created: true });
      if (!s3.external) {
        const complete = requestsSince(from2).find((r) => r.method === 'POST' && /(^|&)uploadId=/.test(r.query));
        expect(complete?.headers['if-none-match']).toBe(conditionalWrites ? '*' : undefined);
      }
      const read = await driver.readStream('c');
      expect(read?.meta).toEqual({ sha256: sha(TWO_PARTS), compression: 'none', size: TWO_PARTS.length });
      expect((await collect(read!.body)).equals(TWO_PARTS)).toBe(true);
      await driver.close();
    });
  }

  it('an empty body and one shorter than a part are one PUT with the record in the metadata', async () => {
    const store = makeStore();
    const small = randomBytes(100_000);
    const from = s3.requests.length;
    expect((await store.putStream!('backups/20260101T000000Z.1663.tar', pieces(Buffer.alloc(0)))).info.checksum).toBe(sha(Buffer.alloc(0)));
    expect((await store.putStream!(NAME, pieces(small))).status).toBe('created');
    expect((await collect((await store.getStream!(NAME)).stream)).equals(small)).toBe(true);
    expect((await collect((await store.getStream!('backups/20260101T000000Z.1663.tar')).stream)).length).toBe(0);
    expect(await keysUnder(store.prefix)).toEqual(['backups/20260101T000000Z.1663.tar', NAME]);
    if (!s3.external) expect(requestsSince(from).filter((r) => r.method === 'POST')).toEqual([]);
    await store.close();
  });

  it('delete removes the object and its record; a record whose object is gone is a leftover that cleanup removes', async () => {
    const store = makeStore();
    await store.putStream!(NAME, pieces(TWO_PARTS));
    await store.delete(NAME);
    expect(await keysUnder(store.prefix)).toEqual([]);

    await store.putStream!(NAME, pieces(TWO_PARTS));
    const rk = await recordKey(store, NAME);
    await raw.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: store.prefix + NAME }));
    const scan = await store.scanLeftovers!();
    const left = scan.leftovers.filter((l) => l.kind !== 'multipart-upload');
    expect(left).toEqual([expect.objectContaining({ name: rk.slice(store.prefix.length), kind: 'temp-file', state: 'recent' })]);
    // Not removed while young (a writer may be completing its upload), removed once old.
    expect((await store.removeLeftovers!({ maxAgeMs: 0 })).removed.filter((l) => l.kind !== 'multipart-upload')).toEqual([]);
    const later = new Date(Date.now() + 2 * 3600_000);
    const removal = await store.removeLeftovers!({ now: later });
    expect(removal.removed.filter((l) => l.kind !== 'multipart-upload').map((l) => l.name)).toEqual([rk.slice(store.prefix.length)]);
    expect(await keysUnder(store.prefix)).toEqual([]);
    await store.close();
  });

  it('memory stays bounded by the parts in flight while 200 MB stream through', async () => {
    const store = makeStore();
    const client = (store as unknown as { driver: { client: S3Client } }).driver.client;
    let uploaded = 0;
    let inFlight = 0;
    let maxInFlight = 0;
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName !== 'UploadPartCommand') return next(args);
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        try {
          const out = await next(args);
          uploaded += (args.input as { ContentLength: number }).ContentLength;
          return out;
        } finally {
          inFlight--;
        }
      },
      { step: 'initialize', name: 'countParts' },
    );
    const total = 200 * MiB;
    const piece = randomBytes(MiB);
    let produced = 0;
    let ahead = 0;
    const base = process.memoryUsage().arrayBuffers;
    let peak = base;
    async function* source(): AsyncGenerator<Buffer> {
      while (produced < total) {
        ahead = Math.max(ahead, produced - uploaded);
        peak = Math.max(peak, process.memoryUsage().arrayBuffers);
        produced += piece.length;
        yield piece;
      }
    }
    const r = await store.putStream!(NAME, source());
    expect(r.info.size).toBe(total);
    expect(uploaded).toBe(total);
    expect(maxInFlight).toBeLessThanOrEqual(PARTS_IN_FLIGHT);
    // What the upload holds: the parts in flight, the one filling, and the piece being copied.
    expect(ahead).toBeLessThanOrEqual((PARTS_IN_FLIGHT + 1) * FIRST_PART_SIZE + piece.length);
    // And what the process holds (garbage included, collected when V8 likes): well under the object.
    expect(peak - base).toBeLessThan(total / 2);
    await store.close();
  });
});

describe('S3 streamed objects: part sizes', () => {
  it('8 MiB parts, doubling every 1,000 parts: at least 5 MiB, at most 5 GiB, over 5 TiB in 10,000 parts', () => {
    expect(partSize(1)).toBe(8 * MiB);
    expect(partSize(1000)).toBe(8 * MiB);
    expect(partSize(1001)).toBe(16 * MiB);
    expect(partSize(MAX_PARTS)).toBe(4096 * MiB);
    let total = 0;
    for (let i = 1; i <= MAX_PARTS; i++) {
      expect(partSize(i)).toBeGreaterThanOrEqual(5 * MiB);
      expect(partSize(i)).toBeLessThanOrEqual(5 * 1024 * MiB);
      total += partSize(i);
    }
    expect(total).toBeGreaterThan(5 * 1024 * 1024 * MiB);
  });
});
