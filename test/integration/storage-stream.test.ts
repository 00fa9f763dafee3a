// Streamed objects through the archive's policy (ArchiveStore.putStream / getStream) on every
// backend: memory, a directory, Azure Blob Storage (Azurite) and S3 (s3rver, or the store named by
// WALSTREAM_TEST_S3_ENDPOINT; objects of several parts in s3-stream.test.ts). Compressed on
// the fly, encrypted in authenticated chunks, the checksum recorded as the bytes went by; the
// same never-overwrite rules as whole objects; whole reads and streamed reads of either kind.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { harnessTmpRoot } from '../harness/exec.js';
import { startAzurite, type AzuriteServer } from '../harness/azure.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { AzureStore } from '../../src/storage/azure.js';
import { Keyring, isSealed } from '../../src/storage/encryption.js';
import { LocalStore } from '../../src/storage/local.js';
import { MemoryStore } from '../../src/storage/memory.js';
import { S3Store } from '../../src/storage/s3.js';
import { ConflictError, IntegrityError, type ArchiveStore } from '../../src/storage/types.js';

const keyring = new Keyring([{ id: 'k1', key: Buffer.alloc(32, 3) }], 'test');
const hex8 = (n: number): string => n.toString(16).toUpperCase().padStart(8, '0');
const seg = (n: number): string => `00000001${hex8(0)}${hex8(n)}`;

async function* pieces(data: Buffer, size = 65_536): AsyncGenerator<Buffer> {
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
}
async function collect(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const b of src) out.push(b);
  return Buffer.concat(out);
}
/** For a transient stream: each piece copied before the next is asked for. */
async function collectCopies(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const b of src) out.push(Buffer.from(b));
  return Buffer.concat(out);
}
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
/** 3 MB: a compressible half and a noisy half, several encryption chunks. */
const DATA = Buffer.concat([Buffer.alloc(1536 * 1024, 5), randomBytes(1536 * 1024)]);

interface Backend {
  make(keys?: Keyring): Promise<ArchiveStore>;
  /** Flip a byte in the middle of what is stored for `name`. */
  damage(store: ArchiveStore, name: string): Promise<void>;
}

function streamed(name: string, backend: () => Backend): void {
  describe(name, () => {
    for (const c of ['none', 'gzip'] as const) {
      for (const enc of [false, true]) {
        it(`${c}${enc ? ', encrypted' : ''}: putStream, then getStream and get give the bytes back; the record is the SHA-256 of them`, async () => {
          const s = await backend().make(enc ? keyring : undefined);
          const r = await s.putStream!(seg(1), pieces(DATA), { compression: c });
          expect(r.status).toBe('created');
          expect(r.info).toMatchObject({ name: seg(1), size: DATA.length, checksum: sha(DATA), compression: c });
          const g = await s.getStream!(seg(1));
          expect(g.info).toMatchObject({ checksum: sha(DATA), compression: c });
          expect((await collect(g.stream)).equals(DATA)).toBe(true);
          // Pieces valid only until the next is asked for: the same bytes, the same checks.
          const t = await s.getStream!(seg(1), { transient: true });
          expect(t.info).toMatchObject({ checksum: sha(DATA), compression: c });
          expect((await collectCopies(t.stream)).equals(DATA)).toBe(true);
          expect((await s.get(seg(1))).data.equals(DATA)).toBe(true);
          expect((await s.head(seg(1)))?.checksum).toBe(sha(DATA));
          // A whole object reads as a stream too.
          await s.put(seg(2), DATA.subarray(0, 100_000), { compression: c });
          expect((await collect((await s.getStream!(seg(2))).stream)).equals(DATA.subarray(0, 100_000))).toBe(true);
          await s.close();
        });
      }
    }

    it('never overwrites: the same bytes again are "exists", others ConflictError, the stored copy untouched', async () => {
      const s = await backend().make(keyring);
      expect((await s.putStream!(seg(3), pieces(DATA), { compression: 'gzip' })).status).toBe('created');
      expect((await s.putStream!(seg(3), pieces(DATA), { compression: 'gzip' })).status).toBe('exists');
      const other = Buffer.from(DATA);
      other[7] = other[7]! ^ 1;
      await expect(s.putStream!(seg(3), pieces(other), { compression: 'gzip' })).rejects.toBeInstanceOf(ConflictError);
      expect((await s.get(seg(3))).data.equals(DATA)).toBe(true);
      await s.close();
    });

    it('a damaged encrypted stream: IntegrityError, and no byte of the damaged chunk handed out', async () => {
      const s = await backend().make(keyring);
      await s.putStream!(seg(4), pieces(DATA));
      await backend().damage(s, seg(4));
      const got: Buffer[] = [];
      let err: unknown;
      try {
        for await (const b of (await s.getStream!(seg(4))).stream) got.push(Buffer.from(b));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(IntegrityError);
      const out = Buffer.concat(got);
      expect(out.length).toBeLessThan(DATA.length / 2 + 1);
      expect(out.equals(DATA.subarray(0, out.length))).toBe(true);
      await expect(s.get(seg(4))).rejects.toBeInstanceOf(IntegrityError);
      await s.close();
    });

    it('a damaged unencrypted stream fails its recorded checksum at the end', async () => {
      const s = await backend().make();
      await s.putStream!(seg(5), pieces(DATA));
      await backend().damage(s, seg(5));
      await expect(collect((await s.getStream!(seg(5))).stream)).rejects.toThrow(/does not match the recorded/);
      await expect(collectCopies((await s.getStream!(seg(5), { transient: true })).stream)).rejects.toThrow(/SHA-256 .* the recorded/);
      await s.close();
    });
  });
}

streamed('MemoryStore', () => ({
  make: async (keys) => new MemoryStore('memory:', keys ? { keyring: keys } : {}),
  damage: async (store, name) => (store as MemoryStore).corrupt(name),
}));

describe('LocalStore', () => {
  let root = '';
  let n = 0;
  beforeAll(async () => {
    root = await mkdtemp(join(harnessTmpRoot(), 'stream-local-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });
  streamed('directory', () => ({
    make: async (keys) => new LocalStore(join(root, `a${n++}`), keys ? { keyring: keys } : {}),
    damage: async (store, name) => {
      const dir = (store as LocalStore).dir;
      const file = (await readdir(dir)).find((f) => f.startsWith(name))!;
      const b = await readFile(join(dir, file));
      b[Math.floor(b.length / 2)] = b[Math.floor(b.length / 2)]! ^ 0x55;
      await writeFile(join(dir, file), b);
    },
  }));

  it('a transient stream of a large plain object: read into a few buffers again and again, its SHA-256 checked at the end', async () => {
    const big = randomBytes(18 * 1024 * 1024 + 123);
    const s = new LocalStore(join(root, 'transient'));
    await s.putStream!(seg(10), pieces(big, 1 << 20));
    const out: Buffer[] = [];
    let prev: Buffer | undefined;
    let handedOver = 0;
    for await (const b of (await s.getStream!(seg(10), { transient: true })).stream) {
      // The piece before went to the hashing thread (its memory moved) once this one was asked for.
      if (prev !== undefined && prev.buffer.byteLength === 0) handedOver++;
      prev = b;
      out.push(Buffer.from(b));
    }
    expect(Buffer.concat(out).equals(big)).toBe(true);
    expect(out.length).toBeGreaterThan(18);
    expect(handedOver).toBe(out.length - 1);
    // Damaged: the end fails, naming the file.
    const file = join(s.dir, seg(10));
    const b = await readFile(file);
    b[9 * 1024 * 1024] = b[9 * 1024 * 1024]! ^ 1;
    await writeFile(file, b);
    await expect(collectCopies((await s.getStream!(seg(10), { transient: true })).stream)).rejects.toThrow(new RegExp(`SHA-256 of ${seg(10)} is [0-9a-f]{64}, the recorded one ${sha(big)}`));
    // A reader that stops early lets the file and the thread go: the same object reads again at once.
    for await (const _ of (await s.getStream!(seg(10), { transient: true })).stream) break;
    await s.close();
  });

  it('the layout of a streamed object is that of any other: <name><suffix>, its record, no temp file left', async () => {
    const dir = join(root, 'layout');
    const s = new LocalStore(dir, { keyring });
    await s.putStream!(seg(9), pieces(DATA), { compression: 'gzip' });
    expect((await readdir(dir)).sort()).toEqual(['.walstream-meta', `${seg(9)}.gz`]);
    expect(isSealed(await readFile(join(dir, `${seg(9)}.gz`)))).toBe(true);
    expect(await readFile(join(dir, '.walstream-meta', `${seg(9)}.sha256`), 'utf8')).toBe(`${sha(DATA)} gzip ${DATA.length}\n`);
  });
});

describe('AzureStore', () => {
  let az: AzuriteServer;
  let n = 0;
  beforeAll(async () => {
    az = await startAzurite();
  });
  afterAll(async () => {
    await az?.stop();
  });
  streamed('Azure (Azurite)', () => ({
    make: async (keys) => new AzureStore({ container: az.container, prefix: `s${n++}/`, connectionString: az.connectionString, ...(keys ? { keyring: keys } : {}) }),
    damage: async (store, name) => {
      const st = store as AzureStore;
      const blob = az
        .client()
        .getContainerClient(st.container)
        .getBlockBlobClient(st.prefix + name);
      const b = await blob.downloadToBuffer();
      const meta = (await blob.getProperties()).metadata;
      b[Math.floor(b.length / 2)] = b[Math.floor(b.length / 2)]! ^ 0x55;
      await blob.upload(b, b.length, { metadata: meta });
    },
  }));
});

describe('S3Store', () => {
  let s3: S3TestServer;
  let n = 0;
  beforeAll(async () => {
    s3 = await startS3();
  });
  afterAll(async () => {
    await s3?.stop();
  });
  streamed('S3', () => ({
    make: async (keys) => new S3Store({ bucket: s3.bucket, prefix: `${s3.prefix}s${n++}/`, endpoint: s3.endpoint, region: s3.region, credentials: s3.credentials, ...(keys ? { keyring: keys } : {}) }),
    damage: async (store, name) => {
      const st = store as S3Store;
      const c = s3.client();
      try {
        const got = await c.send(new GetObjectCommand({ Bucket: s3.bucket, Key: st.prefix + name }));
        const b = Buffer.from(await got.Body!.transformToByteArray());
        b[Math.floor(b.length / 2)] = b[Math.floor(b.length / 2)]! ^ 0x55;
        await c.send(new PutObjectCommand({ Bucket: s3.bucket, Key: st.prefix + name, Body: b, ContentLength: b.length, Metadata: got.Metadata ?? {} }));
      } finally {
        c.destroy();
      }
    },
  }));
});
