// One conformance suite for the archive contract (src/storage/types.ts), run against every
// backend: MemoryStore, LocalStore (temp directory), S3Store (s3rver, or the store named by
// WALSTREAM_TEST_S3_ENDPOINT) and AzureStore (Azurite). Backend-specific checks follow in their
// own describe blocks.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { constants as zc, createGzip, gzipSync } from 'node:zlib';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { harnessTmpRoot } from '../harness/exec.js';
import { startS3, unusedPort, type S3TestServer } from '../harness/s3.js';
import { startAzurite, type AzuriteServer } from '../harness/azure.js';
import { AzureStore, type AzureStoreOptions } from '../../src/storage/azure.js';
import { zstdAvailable } from '../../src/sink/segment-file.js';
import { sha256Hex } from '../../src/storage/codec.js';
import { Keyring, isSealed } from '../../src/storage/encryption.js';
import { LocalStore, META_DIR } from '../../src/storage/local.js';
import { MemoryStore } from '../../src/storage/memory.js';
import { openArchive } from '../../src/storage/open.js';
import { S3Store, type S3StoreOptions } from '../../src/storage/s3.js';
import { ConflictError, IDENTITY_NAME, IntegrityError, KeyUnavailableError, NotFoundError, StorageError, type ArchiveStore, type Compression, type PutResult } from '../../src/storage/types.js';

// --- helpers ---

const hex8 = (n: number): string => n.toString(16).toUpperCase().padStart(8, '0');
/** Segment file name: timeline, log, seg. */
const seg = (n: number, tli = 1, log = 0): string => hex8(tli) + hex8(log) + hex8(n);

/** Deterministic test bytes: a compressible half and a noisy half. */
function payload(seed: number, size = 40 * 1024): Buffer {
  const b = Buffer.alloc(size);
  let x = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < size; i++) {
    if (i < size / 2) {
      b[i] = (i + seed) % 251;
    } else {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      b[i] = x >>> 24;
    }
  }
  return b;
}

/** A gzip stream cut where an in-progress writer stands: flushed, no trailer (pg_receivewal's X.gz.partial). */
async function gzipInProgress(data: Buffer): Promise<Buffer> {
  const z = createGzip();
  const out: Buffer[] = [];
  z.on('data', (b: Buffer) => out.push(b));
  z.write(data);
  await new Promise<void>((resolve) => z.flush(zc.Z_SYNC_FLUSH, () => resolve()));
  z.destroy();
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

const COMPRESSIONS: Compression[] = ['none', 'gzip', 'zstd'];

interface Backend {
  name: string;
  /** A fresh, empty store (closed after the suite). */
  make(): Promise<ArchiveStore>;
  /** Damage the stored bytes of `name`, leaving its recorded checksum and compression. */
  corrupt(store: ArchiveStore, name: string): Promise<void>;
  /** A store and a name whose get fails for a reason other than "missing". */
  failingGet(): Promise<{ store: ArchiveStore; name: string }>;
  /** How many objects the listing test writes (enough to need several pages). */
  listCount: number;
  /** The same archive as `store`, read and written with these encryption keys (or none). */
  withKeyring(store: ArchiveStore, keyring: Keyring | undefined): ArchiveStore;
  /** Exchange what two names hold behind the store's back: bytes, checksum records and all. */
  swap(store: ArchiveStore, a: string, b: string): Promise<void>;
  /** The bytes stored for `name`, as the backend keeps them. */
  rawStored(store: ArchiveStore, name: string): Promise<Buffer>;
  /** Change the stored bytes of `name` behind the store's back, keeping its recorded checksum and compression. */
  mutate(store: ArchiveStore, name: string, fn: (stored: Buffer) => Buffer): Promise<void>;
  /**
   * Whether a put replaces a stored copy that cannot be kept (S3, memory); the local store never
   * does: ConflictError instead, the stored file untouched.
   */
  replaces: boolean;
}

// --- the contract ---

function archiveContract(backend: () => Backend): void {
  const opened: ArchiveStore[] = [];
  const fresh = async (): Promise<ArchiveStore> => {
    const s = await backend().make();
    opened.push(s);
    return s;
  };
  afterAll(async () => {
    await Promise.all(opened.map((s) => s.close()));
  });

  describe('put and get', () => {
    for (const c of COMPRESSIONS) {
      if (c === 'zstd' && !zstdAvailable()) {
        it('zstd: a clear error on this Node', async () => {
          const s = await fresh();
          const err = await rejection(s.put(seg(3), payload(3), { compression: 'zstd' }));
          expect(err).toBeInstanceOf(StorageError);
          expect((err as StorageError).transient).toBe(false);
          expect((err as Error).message).toMatch(/zstd needs Node 22\.15\+/);
          expect(await s.head(seg(3))).toBeUndefined();
        });
        continue;
      }
      it(`round-trips with compression ${c}`, async () => {
        const s = await fresh();
        const data = payload(1);
        const r = await s.put(seg(1), data, { compression: c });
        expect(r.status).toBe('created');
        expect(r.info).toMatchObject({ name: seg(1), size: data.length, checksum: sha256Hex(data), compression: c });
        if (c === 'none') expect(r.info.storedSize).toBe(data.length);
        else expect(r.info.storedSize).toBeLessThan(data.length);
        const g = await s.get(seg(1));
        expect(g.data.equals(data)).toBe(true);
        expect(g.info).toMatchObject({ name: seg(1), size: data.length, storedSize: r.info.storedSize, checksum: sha256Hex(data), compression: c });
      });
    }

    it('stores every kind of WAL file name, and empty objects', async () => {
      const s = await fresh();
      const names = [seg(2), `${seg(2)}.partial`, `${seg(2)}.00000028.backup`, '00000002.history'];
      for (const [i, n] of names.entries()) expect((await s.put(n, payload(10 + i, 1000), { compression: 'gzip' })).status).toBe('created');
      await s.put(seg(3), Buffer.alloc(0));
      for (const [i, n] of names.entries()) expect((await s.get(n)).data.equals(payload(10 + i, 1000))).toBe(true);
      expect((await s.get(seg(3))).data.length).toBe(0);
    });

    it('default compression is none', async () => {
      const s = await fresh();
      expect((await s.put(seg(4), payload(4))).info.compression).toBe('none');
      expect((await s.head(seg(4)))?.compression).toBe('none');
    });
  });

  describe('never overwrites', () => {
    it('identical re-put: exists (also when asked for another compression)', async () => {
      const s = await fresh();
      const data = payload(5);
      await s.put(seg(5), data, { compression: 'gzip' });
      const again = await s.put(seg(5), data, { compression: 'gzip' });
      expect(again.status).toBe('exists');
      expect(again.info).toMatchObject({ name: seg(5), checksum: sha256Hex(data), compression: 'gzip' });
      const other = await s.put(seg(5), data, { compression: 'none' });
      expect(other.status).toBe('exists');
      expect((await s.head(seg(5)))?.compression).toBe('gzip');
      expect((await s.list()).map((o) => o.name)).toEqual([seg(5)]);
    });

    it('different re-put: ConflictError, the new copy in quarantine/, the original untouched', async () => {
      const s = await fresh();
      const original = payload(6);
      const other = payload(7);
      await s.put(seg(6), original);
      const err = await rejection(s.put(seg(6), other, { compression: 'gzip' }));
      expect(err).toBeInstanceOf(ConflictError);
      const c = err as ConflictError;
      expect(c.transient).toBe(false);
      expect(c.objectName).toBe(seg(6));
      expect(c.quarantinedAs).toMatch(new RegExp(`^quarantine/${seg(6)}\\.\\d{8}T\\d{6}(\\.\\d+)?Z$`));
      expect(c.message).toContain(seg(6));
      expect(c.message).toContain(c.quarantinedAs);
      expect((await s.get(seg(6))).data.equals(original)).toBe(true);
      expect((await s.get(c.quarantinedAs)).data.equals(other)).toBe(true);
      const q = await s.list('quarantine/');
      expect(q.map((o) => o.name)).toEqual([c.quarantinedAs]);
      expect((await s.head(c.quarantinedAs))?.checksum).toBe(sha256Hex(other));
      // Quarantine stays out of ordinary listings.
      expect((await s.list()).map((o) => o.name)).toEqual([seg(6)]);
      expect((await s.list('q')).map((o) => o.name)).toEqual([]);
      // A second, different conflict in the same second gets its own quarantine name.
      const err2 = await rejection(s.put(seg(6), payload(8)));
      expect(err2).toBeInstanceOf(ConflictError);
      expect((err2 as ConflictError).quarantinedAs).not.toBe(c.quarantinedAs);
      expect((await s.get((err2 as ConflictError).quarantinedAs)).data.equals(payload(8))).toBe(true);
      expect((await s.list('quarantine/')).length).toBe(2);
      expect((await s.get(seg(6))).data.equals(original)).toBe(true);
    });

    it('5 concurrent identical puts: one created, 4 exists', async () => {
      const s = await fresh();
      const data = payload(9);
      const results = await Promise.all(Array.from({ length: 5 }, () => s.put(seg(9), data, { compression: 'gzip' })));
      expect(results.map((r) => r.status).sort()).toEqual(['created', 'exists', 'exists', 'exists', 'exists']);
      expect((await s.get(seg(9))).data.equals(data)).toBe(true);
      expect((await s.list()).map((o) => o.name)).toEqual([seg(9)]);
      expect(await s.list('quarantine/')).toEqual([]);
    });

    it('2 concurrent different puts: one created, one ConflictError', async () => {
      const s = await fresh();
      const a = payload(10);
      const b = payload(11);
      const settled = await Promise.allSettled([s.put(seg(10), a), s.put(seg(10), b, { compression: 'gzip' })]);
      const won = settled.findIndex((r) => r.status === 'fulfilled');
      const lost = 1 - won;
      expect(won).toBeGreaterThanOrEqual(0);
      expect((settled[won] as PromiseFulfilledResult<PutResult>).value.status).toBe('created');
      const reason = (settled[lost] as PromiseRejectedResult).reason as unknown;
      expect(reason).toBeInstanceOf(ConflictError);
      const winner = won === 0 ? a : b;
      const loser = won === 0 ? b : a;
      expect((await s.get(seg(10))).data.equals(winner)).toBe(true);
      expect((await s.get((reason as ConflictError).quarantinedAs)).data.equals(loser)).toBe(true);
    });
  });

  describe('missing objects', () => {
    it('get: NotFoundError; head: undefined; delete: no-op', async () => {
      const s = await fresh();
      const err = await rejection(s.get(seg(12)));
      expect(err).toBeInstanceOf(NotFoundError);
      expect(err).toBeInstanceOf(StorageError);
      expect((err as NotFoundError).objectName).toBe(seg(12));
      expect((err as NotFoundError).transient).toBe(false);
      expect(await s.head(seg(12))).toBeUndefined();
      await s.delete(seg(12));
      expect(await s.get('quarantine/' + seg(12) + '.20250101T000000Z').catch((e: unknown) => e)).toBeInstanceOf(NotFoundError);
    });

    it('other failures of get are not NotFoundError', async () => {
      const { store, name } = await backend().failingGet();
      opened.push(store);
      const err = await rejection(store.get(name));
      expect(err).toBeInstanceOf(StorageError);
      expect(err).not.toBeInstanceOf(NotFoundError);
    });
  });

  describe('head', () => {
    it('reports size, storedSize, checksum, compression and time', async () => {
      const s = await fresh();
      const data = payload(13);
      const before = Date.now();
      const put = await s.put(seg(13), data, { compression: 'gzip' });
      const h = await s.head(seg(13));
      expect(h).toBeDefined();
      expect(h).toMatchObject({ name: seg(13), size: data.length, storedSize: put.info.storedSize, checksum: sha256Hex(data), compression: 'gzip' });
      expect(h!.storedSize).toBeLessThan(data.length);
      expect(h!.modified).toBeInstanceOf(Date);
      // S3 keeps whole seconds.
      expect(h!.modified.getTime()).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000 - 2000);
      expect(h!.modified.getTime()).toBeLessThanOrEqual(Date.now() + 2000);
    });
  });

  describe('list', () => {
    it('by prefix, in name order, complete past pagination', async () => {
      const s = await fresh();
      const n = backend().listCount;
      const names: string[] = [];
      for (let i = 0; i < n; i++) names.push(seg(i % 40, 1 + Math.floor(i / 40), i % 3));
      names.push('00000002.history', '00000003.history', seg(1, 2), `${seg(1, 2)}.partial`, `${seg(1, 2)}.00000028.backup`);
      const shuffled = [...names].sort((x, y) => sha256Hex(Buffer.from(x)).localeCompare(sha256Hex(Buffer.from(y))));
      for (let i = 0; i < shuffled.length; i += 25) {
        await Promise.all(shuffled.slice(i, i + 25).map((name) => s.put(name, Buffer.from(name))));
      }
      const sorted = [...names].sort();
      const all = await s.list();
      expect(all.map((o) => o.name)).toEqual(sorted);
      for (const o of all) {
        expect(o.storedSize).toBe(o.name.length);
        expect(o.size).toBe(o.name.length);
        expect(o.modified).toBeInstanceOf(Date);
      }
      expect((await s.list('')).length).toBe(sorted.length);
      const tli2 = await s.list('00000002');
      expect(tli2.map((o) => o.name)).toEqual(sorted.filter((x) => x.startsWith('00000002')));
      expect(tli2.map((o) => o.name)).toContain('00000002.history');
      const one = await s.list(seg(1, 2));
      expect(one.map((o) => o.name)).toEqual([seg(1, 2), `${seg(1, 2)}.00000028.backup`, `${seg(1, 2)}.partial`]);
    });

    it('reports when each object was written (cleanup --older-than relies on it)', async () => {
      const s = await fresh();
      const before = Date.now();
      await s.put(seg(18), payload(18));
      await s.put(`${seg(18)}.partial.00000000`, payload(19), { compression: 'gzip' });
      const listed = await s.list(seg(18));
      expect(listed.map((o) => o.name)).toEqual([seg(18), `${seg(18)}.partial.00000000`]);
      for (const o of listed) {
        // S3 keeps whole seconds.
        expect(o.modified.getTime()).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000 - 2000);
        expect(o.modified.getTime()).toBeLessThanOrEqual(Date.now() + 2000);
      }
    });

    it('a missing prefix lists as empty, and so does an empty archive', async () => {
      const s = await fresh();
      expect(await s.list()).toEqual([]);
      expect(await s.list('quarantine/')).toEqual([]);
      await s.put(seg(14), payload(14));
      expect(await s.list('0000000900')).toEqual([]);
      expect(await s.list('quarantine/')).toEqual([]);
      expect(await s.list('nothing/here')).toEqual([]);
    });
  });

  describe('delete', () => {
    it('removes, is idempotent, and frees the name', async () => {
      const s = await fresh();
      await s.put(seg(15), payload(15), { compression: 'gzip' });
      await s.delete(seg(15));
      expect(await s.head(seg(15))).toBeUndefined();
      expect(await rejection(s.get(seg(15)))).toBeInstanceOf(NotFoundError);
      expect(await s.list()).toEqual([]);
      await s.delete(seg(15));
      expect((await s.put(seg(15), payload(16))).status).toBe('created');
      expect((await s.get(seg(15))).data.equals(payload(16))).toBe(true);
    });
  });

  describe('names', () => {
    const bad = ['../x', 'a/b', `${seg(1)}x`, '', '0'.repeat(25), `/${seg(1)}`, 'quarantine/x', seg(10).toLowerCase()];
    it.each(bad.map((b) => [JSON.stringify(b), b]))('refuses %s', async (_label, name) => {
      const s = await fresh();
      for (const op of [() => s.put(name, Buffer.from('x')), () => s.get(name), () => s.head(name), () => s.delete(name)]) {
        const err = await rejection(op());
        expect(err).toBeInstanceOf(StorageError);
        expect(err).not.toBeInstanceOf(NotFoundError);
        expect((err as StorageError).transient).toBe(false);
      }
      expect(await s.list()).toEqual([]);
    });
  });

  describe('integrity', () => {
    for (const c of ['none', 'gzip'] as const) {
      it(`a corrupted object (${c}) is IntegrityError naming it`, async () => {
        const s = await fresh();
        const name = seg(17);
        await s.put(name, payload(17), { compression: c });
        await backend().corrupt(s, name);
        const err = await rejection(s.get(name));
        expect(err).toBeInstanceOf(IntegrityError);
        expect((err as IntegrityError).objectName).toBe(name);
        expect((err as Error).message).toContain(name);
        expect((err as StorageError).transient).toBe(false);
      });
    }
  });

  describe('a stored copy that fails its own checksum', () => {
    for (const c of ['none', 'gzip'] as const) {
      it(`(${c}) with the checksum of the bytes put: replaced on S3 and memory, an error naming it in a directory`, async () => {
        const s = await fresh();
        const name = seg(18);
        await s.put(name, payload(18), { compression: c });
        await backend().corrupt(s, name);
        const before = await backend().rawStored(s, name);
        if (backend().replaces) {
          const r = await s.put(name, payload(18), { compression: c });
          expect(r.status).toBe('created');
          expect(r.replacedDamaged).toMatch(new RegExp(`^quarantine/${name}\\.`));
          expect((await s.get(name)).data.equals(payload(18))).toBe(true);
        } else {
          const err = await rejection(s.put(name, payload(18), { compression: c }));
          expect(err).toBeInstanceOf(ConflictError);
          expect((err as ConflictError).objectName).toBe(name);
          expect((err as Error).message).toMatch(
            new RegExp(`^"${name}" is already in the archive, but the stored file .* cannot be kept: it (fails its recorded checksum|cannot be decompressed); a local archive never replaces a stored file`),
          );
          expect((await backend().rawStored(s, name)).equals(before)).toBe(true);
          expect(await rejection(s.get(name))).toBeInstanceOf(IntegrityError);
          expect((await s.get((err as ConflictError).quarantinedAs)).data.equals(payload(18))).toBe(true);
        }
      });

      it(`(${c}) with the checksum of other bytes: a conflict, never replaced`, async () => {
        const s = await fresh();
        const name = seg(19);
        await s.put(name, payload(19), { compression: c });
        await backend().corrupt(s, name);
        const before = await backend().rawStored(s, name);
        const err = await rejection(s.put(name, payload(20), { compression: c }));
        expect(err).toBeInstanceOf(ConflictError);
        expect((err as Error).message).toMatch(/with different contents; not overwritten/);
        expect((await backend().rawStored(s, name)).equals(before)).toBe(true);
        expect((await s.get((err as ConflictError).quarantinedAs)).data.equals(payload(20))).toBe(true);
        expect((await s.list('quarantine/')).length).toBe(1);
      });
    }
  });

  describe('list with a limit', () => {
    it('returns the first objects in name order, no more', async () => {
      const s = await fresh();
      const names = [seg(5), seg(3), '00000002.history', `${seg(4)}.partial`, seg(1)];
      for (const n of names) await s.put(n, payload(1, 100));
      await s.put(IDENTITY_NAME, Buffer.from('{}'));
      await rejection(s.put(seg(1), payload(2, 100))); // a quarantine copy
      const sorted = [...names].sort();
      expect((await s.list('', { limit: 1 })).map((o) => o.name)).toEqual(sorted.slice(0, 1));
      expect((await s.list('', { limit: 3 })).map((o) => o.name)).toEqual(sorted.slice(0, 3));
      expect((await s.list('', { limit: 50 })).map((o) => o.name)).toEqual(sorted);
      expect((await s.list('0000000100', { limit: 2 })).map((o) => o.name)).toEqual(sorted.filter((n) => n.startsWith('0000000100')).slice(0, 2));
      expect((await s.list('quarantine/', { limit: 5 })).length).toBe(1);
      expect(await (await fresh()).list('', { limit: 1 })).toEqual([]);
    });
  });

  describe('client-side encryption', () => {
    const keyA = new Keyring([{ id: 'key-a', key: Buffer.alloc(32, 0xa1) }], 'test');
    const keyB = new Keyring([{ id: 'key-b', key: Buffer.alloc(32, 0xb2) }], 'test');
    const rotated = new Keyring(
      [
        { id: 'key-b', key: Buffer.alloc(32, 0xb2) },
        { id: 'key-a', key: Buffer.alloc(32, 0xa1) },
      ],
      'test',
    );
    const sameIdOtherBytes = new Keyring([{ id: 'key-a', key: Buffer.alloc(32, 0x5a) }], 'test');
    /** A fresh archive, and views of it with the given keyrings. */
    const views = async (...rings: (Keyring | undefined)[]): Promise<ArchiveStore[]> => {
      const plain = await fresh();
      return rings.map((r) => {
        const v = backend().withKeyring(plain, r);
        opened.push(v);
        return v;
      });
    };

    for (const c of COMPRESSIONS) {
      if (c === 'zstd' && !zstdAvailable()) continue;
      it(`round-trips with compression ${c}; stored sealed; unreadable without the key`, async () => {
        const [enc, plain] = await views(keyA, undefined);
        const data = payload(50);
        const r = await enc!.put(seg(50), data, { compression: c });
        expect(r.status).toBe('created');
        expect(r.info).toMatchObject({ checksum: sha256Hex(data), compression: c, size: data.length });
        const raw = await backend().rawStored(enc!, seg(50));
        expect(isSealed(raw)).toBe(true);
        expect(raw.includes(data.subarray(0, 64))).toBe(false);
        const g = await enc!.get(seg(50));
        expect(g.data.equals(data)).toBe(true);
        expect(g.info).toMatchObject({ checksum: sha256Hex(data), compression: c, keyId: 'key-a' });
        // head and list need no key.
        expect(await plain!.head(seg(50))).toMatchObject({ name: seg(50), checksum: sha256Hex(data) });
        expect((await plain!.list()).map((o) => o.name)).toEqual([seg(50)]);
        const err = await rejection(plain!.get(seg(50)));
        expect(err).toBeInstanceOf(KeyUnavailableError);
        expect((err as Error).message).toContain(seg(50));
        expect((err as Error).message).toContain('"key-a"');
        expect((err as StorageError).transient).toBe(false);
      });
    }

    it('a changed byte fails authentication: IntegrityError naming the object', async () => {
      const [enc] = await views(keyA);
      for (const c of ['none', 'gzip'] as const) {
        const name = seg(c === 'none' ? 51 : 52);
        await enc!.put(name, payload(51), { compression: c });
        await backend().corrupt(enc!, name);
        const err = await rejection(enc!.get(name));
        expect(err).toBeInstanceOf(IntegrityError);
        expect((err as IntegrityError).objectName).toBe(name);
        expect((err as Error).message).toMatch(/fails authentication with key "key-a"/);
      }
    });

    it("two objects swapped under each other's names (records and all) are refused", async () => {
      const [enc] = await views(keyA);
      await enc!.put(seg(53), payload(53), { compression: 'gzip' });
      await enc!.put(seg(54), payload(54), { compression: 'gzip' });
      await backend().swap(enc!, seg(53), seg(54));
      for (const name of [seg(53), seg(54)]) {
        const err = await rejection(enc!.get(name));
        expect(err).toBeInstanceOf(IntegrityError);
        expect((err as IntegrityError).objectName).toBe(name);
      }
    });

    it('a key of another id: KeyUnavailableError; the same id with other bytes: IntegrityError', async () => {
      const [enc, other, impostor] = await views(keyA, keyB, sameIdOtherBytes);
      await enc!.put(seg(55), payload(55));
      const err = await rejection(other!.get(seg(55)));
      expect(err).toBeInstanceOf(KeyUnavailableError);
      expect((err as Error).message).toMatch(/"key-a", which is not among the keys given \("key-b"\)/);
      expect(await rejection(impostor!.get(seg(55)))).toBeInstanceOf(IntegrityError);
    });

    it('rotation: objects of the old key stay readable once a new key comes first', async () => {
      const [old, both, onlyNew] = await views(keyA, rotated, keyB);
      await old!.put(seg(56), payload(56), { compression: 'gzip' });
      await both!.put(seg(57), payload(57), { compression: 'gzip' });
      expect((await both!.get(seg(56))).info.keyId).toBe('key-a');
      expect((await both!.get(seg(57))).info.keyId).toBe('key-b');
      expect((await both!.get(seg(56))).data.equals(payload(56))).toBe(true);
      expect((await onlyNew!.get(seg(57))).data.equals(payload(57))).toBe(true);
      expect(await rejection(onlyNew!.get(seg(56)))).toBeInstanceOf(KeyUnavailableError);
    });

    it('plain and encrypted objects coexist (encryption turned on later)', async () => {
      const [plain, enc] = await views(undefined, keyA);
      await plain!.put(seg(58), payload(58), { compression: 'gzip' });
      await enc!.put(seg(59), payload(59), { compression: 'gzip' });
      const p = await enc!.get(seg(58));
      expect(p.data.equals(payload(58))).toBe(true);
      expect(p.info.keyId).toBeUndefined();
      expect((await plain!.get(seg(58))).data.equals(payload(58))).toBe(true);
      expect(await rejection(plain!.get(seg(59)))).toBeInstanceOf(KeyUnavailableError);
      expect((await enc!.list()).map((o) => o.name)).toEqual([seg(58), seg(59)]);
    });

    it('requireEncrypted: an unencrypted object is refused as IntegrityError naming it, encrypted ones are served', async () => {
      const [plain, enc, strict] = await views(undefined, keyA, keyA.withRequireEncrypted(true));
      await plain!.put(seg(63), payload(63), { compression: 'gzip' });
      await enc!.put(seg(64), payload(64), { compression: 'gzip' });
      const err = await rejection(strict!.get(seg(63)));
      expect(err).toBeInstanceOf(IntegrityError);
      expect((err as IntegrityError).objectName).toBe(seg(63));
      expect((err as Error).message).toMatch(/not encrypted, and only encrypted objects are accepted/);
      expect((await strict!.get(seg(64))).data.equals(payload(64))).toBe(true);
      expect((await enc!.get(seg(63))).data.equals(payload(63))).toBe(true);
    });

    it('identical re-put: exists (with the key, with another key, without one, over a plain copy); different: ConflictError', async () => {
      const [enc, plain, other] = await views(keyA, undefined, keyB);
      const data = payload(60);
      await enc!.put(seg(60), data, { compression: 'gzip' });
      expect((await enc!.put(seg(60), data, { compression: 'gzip' })).status).toBe('exists');
      expect((await enc!.put(seg(60), data, { compression: 'none' })).status).toBe('exists');
      expect((await plain!.put(seg(60), data, { compression: 'gzip' })).status).toBe('exists');
      expect((await other!.put(seg(60), data, { compression: 'gzip' })).status).toBe('exists');
      const err = await rejection(enc!.put(seg(60), payload(61), { compression: 'gzip' }));
      expect(err).toBeInstanceOf(ConflictError);
      expect(await rejection(plain!.put(seg(60), payload(61)))).toBeInstanceOf(ConflictError);
      // The quarantine copy is readable with the key that wrote it.
      expect((await enc!.get((err as ConflictError).quarantinedAs)).data.equals(payload(61))).toBe(true);
      expect((await enc!.get(seg(60))).data.equals(data)).toBe(true);
      // A plain copy already there: an encrypted re-put of the same bytes is 'exists'.
      await plain!.put(seg(62), payload(62));
      expect((await enc!.put(seg(62), payload(62))).status).toBe('exists');
      expect(isSealed(await backend().rawStored(enc!, seg(62)))).toBe(false);
    });
    it('a plain copy of the same bytes where only encrypted ones are read: replaced (kept in quarantine) on S3 and memory, an error in a directory', async () => {
      const [plain, strict, enc] = await views(undefined, keyA.withRequireEncrypted(true), keyA);
      /** Put over a plain copy of the same bytes: replaced, or (local) refused with the stored file untouched. */
      const overPlain = async (st: ArchiveStore, name: string, data: Buffer, opts: { compression?: Compression } = {}): Promise<void> => {
        const before = await backend().rawStored(st, name);
        if (backend().replaces) {
          const r = await st.put(name, data, opts);
          expect(r.status).toBe('created');
          expect(r.replacedDamaged).toMatch(new RegExp(`^quarantine/${name}\\.`));
          expect(isSealed(await backend().rawStored(st, name))).toBe(true);
          expect((await st.get(name)).data.equals(data)).toBe(true);
          expect(await plain!.head(r.replacedDamaged!)).toBeDefined();
          expect((await st.put(name, data, opts)).status).toBe('exists');
        } else {
          const err = await rejection(st.put(name, data, opts));
          expect(err).toBeInstanceOf(ConflictError);
          expect((err as ConflictError).objectName).toBe(name);
          expect((err as Error).message).toMatch(/cannot be kept: it is not encrypted, and the archive is encrypted; a local archive never replaces a stored file/);
          expect((err as Error).message).toMatch(/move that file and its checksum record .* aside by hand/);
          expect((await backend().rawStored(st, name)).equals(before)).toBe(true);
          expect((await plain!.head((err as ConflictError).quarantinedAs))!.checksum).toBe(sha256Hex(data));
        }
      };
      // --encryption-required: the keyring says so.
      await plain!.put(seg(65), payload(65), { compression: 'gzip' });
      await overPlain(strict!, seg(65), payload(65), { compression: 'gzip' });
      // An archive recorded as encrypted: the writer says so once it knows.
      await plain!.put(seg(66), payload(66));
      expect((await enc!.put(seg(66), payload(66))).status).toBe('exists');
      enc!.setArchiveEncrypted!(true);
      await overPlain(enc!, seg(66), payload(66));
      // Different bytes are still a conflict; the archive's own records are exempt.
      expect(await rejection(strict!.put(seg(65), payload(67)))).toBeInstanceOf(ConflictError);
      await plain!.put(IDENTITY_NAME, Buffer.from('{}'));
      expect((await strict!.put(IDENTITY_NAME, Buffer.from('{}'))).status).toBe('exists');
      expect(isSealed(await backend().rawStored(strict!, IDENTITY_NAME))).toBe(false);
      expect((await plain!.list('quarantine/')).length).toBe(3);
    });

    it('an encryption header of an unknown format version or algorithm (a newer writer) is a conflict, never replaced', async () => {
      const [enc] = await views(keyA);
      for (const [i, offset] of [
        [71, 8],
        [72, 9],
      ] as const) {
        const name = seg(i);
        await enc!.put(name, payload(i));
        await backend().mutate(enc!, name, (b) => {
          b[offset] = 2;
          return b;
        });
        const before = await backend().rawStored(enc!, name);
        // The recorded checksum is the one of the bytes put: still not taken for damage.
        expect((await enc!.head(name))!.checksum).toBe(sha256Hex(payload(i)));
        const err = await rejection(enc!.put(name, payload(i)));
        expect(err).toBeInstanceOf(ConflictError);
        expect((await backend().rawStored(enc!, name)).equals(before)).toBe(true);
      }
    });

    it('a stored copy that does not authenticate with our key of that id is an error, never replaced', async () => {
      const [enc, impostor] = await views(keyA, sameIdOtherBytes);
      for (const c of ['none', 'gzip'] as const) {
        const name = seg(c === 'none' ? 68 : 69);
        await enc!.put(name, payload(68), { compression: c });
        const before = await backend().rawStored(enc!, name);
        for (const data of [payload(68), payload(70)]) {
          const err = await rejection(impostor!.put(name, data, { compression: c }));
          expect(err).toBeInstanceOf(IntegrityError);
          expect((err as IntegrityError).objectName).toBe(name);
          expect((err as Error).message).toMatch(/the stored copy does not authenticate with key "key-a".*likely two different keys under one id/);
          expect((await backend().rawStored(enc!, name)).equals(before)).toBe(true);
        }
        expect((await enc!.get(name)).data.equals(payload(68))).toBe(true);
      }
      expect((await enc!.list('quarantine/')).length).toBe(0);
    });
  });

  it('has a description', async () => {
    const s = await fresh();
    expect(typeof s.description).toBe('string');
    expect(s.description.length).toBeGreaterThan(0);
  });
}

// --- MemoryStore ---

describe('MemoryStore', () => {
  archiveContract(() => ({
    name: 'memory',
    listCount: 60,
    make: async () => new MemoryStore(),
    corrupt: async (store, name) => (store as MemoryStore).corrupt(name),
    withKeyring: (store, keyring) => (store as MemoryStore).withKeyring(keyring),
    swap: async (store, a, b) => (store as MemoryStore).swap(a, b),
    rawStored: async (store, name) => (store as MemoryStore).rawStored(name),
    mutate: async (store, name, fn) => (store as MemoryStore).mutate(name, fn),
    replaces: true,
    failingGet: async () => {
      const store = new MemoryStore();
      store.failNext(new StorageError('injected failure', true));
      return { store, name: seg(1) };
    },
  }));
});

// --- LocalStore ---

describe('LocalStore', () => {
  let root = '';
  let n = 0;
  const dirs = new Map<ArchiveStore, string>();
  const newDir = (): string => join(root, `a${n++}`);

  beforeAll(async () => {
    root = await mkdtemp(join(harnessTmpRoot(), 'walstream-local-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  archiveContract(() => ({
    name: 'local directory',
    listCount: 60,
    make: async () => {
      const dir = newDir();
      const s = new LocalStore(dir);
      dirs.set(s, dir);
      return s;
    },
    corrupt: async (store, name) => {
      const dir = dirs.get(store)!;
      const file = (await readdir(dir)).find((f) => f.startsWith(name) && !f.startsWith('.'))!;
      const bytes = await readFile(join(dir, file));
      const i = Math.floor(bytes.length / 2);
      bytes[i] = bytes[i]! ^ 0x55;
      await writeFile(join(dir, file), bytes);
    },
    withKeyring: (store, keyring) => {
      const dir = dirs.get(store)!;
      const view = new LocalStore(dir, keyring ? { keyring } : {});
      dirs.set(view, dir);
      return view;
    },
    swap: async (store, a, b) => {
      const dir = dirs.get(store)!;
      const files = await readdir(dir);
      const fa = files.find((f) => f.startsWith(a) && !f.startsWith('.'))!;
      const fb = files.find((f) => f.startsWith(b) && !f.startsWith('.'))!;
      expect(fa.slice(a.length)).toBe(fb.slice(b.length)); // same compression suffix
      for (const [x, y] of [
        [join(dir, fa), join(dir, fb)],
        [join(dir, META_DIR, `${a}.sha256`), join(dir, META_DIR, `${b}.sha256`)],
      ] as const) {
        const bx = await readFile(x);
        const by = await readFile(y);
        await writeFile(x, by);
        await writeFile(y, bx);
      }
    },
    rawStored: async (store, name) => {
      const dir = dirs.get(store)!;
      const file = (await readdir(dir)).find((f) => f.startsWith(name) && !f.startsWith('.'))!;
      return readFile(join(dir, file));
    },
    mutate: async (store, name, fn) => {
      const dir = dirs.get(store)!;
      const file = (await readdir(dir)).find((f) => f.startsWith(name) && !f.startsWith('.'))!;
      await writeFile(join(dir, file), fn(await readFile(join(dir, file))));
    },
    replaces: false,
    failingGet: async () => {
      // Something that is not a file where the object would be.
      const dir = newDir();
      await mkdir(join(dir, seg(1)), { recursive: true });
      return { store: new LocalStore(dir), name: seg(1) };
    },
  }));

  describe('local only', () => {
    it('reads a directory written by pg_receivewal (no checksum records)', async () => {
      const dir = newDir();
      await mkdir(dir);
      const plain = payload(20);
      const gz = payload(21);
      const inProgress = payload(22);
      const plainPartial = payload(23);
      await writeFile(join(dir, seg(1)), plain);
      await writeFile(join(dir, `${seg(2)}.gz`), gzipSync(gz));
      await writeFile(join(dir, `${seg(3)}.gz.partial`), await gzipInProgress(inProgress));
      await writeFile(join(dir, `${seg(4)}.partial`), plainPartial);
      await writeFile(join(dir, '00000002.history'), '1\t0/3000000\tno recovery target specified\n');
      // Not archive objects:
      await writeFile(join(dir, 'README'), 'x');
      await writeFile(join(dir, `.${seg(5)}.tmp`), 'x');
      await writeFile(join(dir, `${seg(6)}.tmp`), 'x');
      await mkdir(join(dir, 'archive_status'));
      const s = new LocalStore(dir);
      const listed = await s.list();
      expect(listed.map((o) => [o.name, o.compression, o.checksum])).toEqual([
        [seg(1), 'none', undefined],
        [seg(2), 'gzip', undefined],
        [`${seg(3)}.partial`, 'gzip', undefined],
        [`${seg(4)}.partial`, 'none', undefined],
        ['00000002.history', 'none', undefined],
      ]);
      expect((await s.get(seg(1))).data.equals(plain)).toBe(true);
      expect((await s.get(seg(2))).data.equals(gz)).toBe(true);
      const partial = await s.get(`${seg(3)}.partial`);
      expect(partial.data.equals(inProgress)).toBe(true);
      expect(partial.info).toMatchObject({ compression: 'gzip', checksum: undefined, size: inProgress.length });
      expect((await s.get(`${seg(4)}.partial`)).data.equals(plainPartial)).toBe(true);
      expect(await s.head(seg(1))).toMatchObject({ size: plain.length, storedSize: plain.length, checksum: undefined });
      // Same bytes again: exists; other bytes: conflict, the original stays.
      expect((await s.put(seg(2), gz, { compression: 'gzip' })).status).toBe('exists');
      expect((await s.put(seg(1), plain, { compression: 'gzip' })).status).toBe('exists');
      expect(await rejection(s.put(seg(1), payload(99)))).toBeInstanceOf(ConflictError);
      expect((await s.get(seg(1))).data.equals(plain)).toBe(true);
      expect((await s.get(seg(1))).info.checksum).toBeUndefined();
    });

    it('layout: <name><suffix> flat, checksum record in .walstream-meta', async () => {
      const dir = newDir();
      const s = new LocalStore(dir);
      const data = payload(24);
      await s.put(seg(1), data);
      await s.put(`${seg(2)}.partial`, data, { compression: 'gzip' });
      expect((await readdir(dir)).sort()).toEqual([META_DIR, seg(1), `${seg(2)}.partial.gz`].sort());
      const rec = await readFile(join(dir, META_DIR, `${seg(2)}.partial.sha256`), 'utf8');
      expect(rec.startsWith(sha256Hex(data))).toBe(true);
      expect((await readdir(join(dir, META_DIR))).sort()).toEqual([`${seg(1)}.sha256`, `${seg(2)}.partial.sha256`]);
    });

    it('delete removes the checksum record with the data file', async () => {
      const dir = newDir();
      const s = new LocalStore(dir);
      await s.put(seg(1), payload(25), { compression: 'gzip' });
      await s.put(seg(2), payload(26));
      await s.delete(seg(1));
      expect((await readdir(dir)).sort()).toEqual([META_DIR, seg(2)].sort());
      expect(await readdir(join(dir, META_DIR))).toEqual([`${seg(2)}.sha256`]);
    });

    it('files 0600, directories 0700, the archive directory created on first put', async () => {
      const dir = join(newDir(), 'nested', 'archive');
      const s = new LocalStore(dir);
      expect(await s.list()).toEqual([]);
      expect(await s.head(seg(1))).toBeUndefined();
      expect(await rejection(s.get(seg(1)))).toBeInstanceOf(NotFoundError);
      await s.delete(seg(1));
      await s.put(seg(1), payload(25));
      await rejection(s.put(seg(1), payload(26)));
      const mode = async (p: string): Promise<number> => (await stat(p)).mode & 0o777;
      expect(await mode(dir)).toBe(0o700);
      expect(await mode(join(dir, '..'))).toBe(0o700);
      expect(await mode(join(dir, META_DIR))).toBe(0o700);
      expect(await mode(join(dir, 'quarantine'))).toBe(0o700);
      expect(await mode(join(dir, META_DIR, 'quarantine'))).toBe(0o700);
      expect(await mode(join(dir, seg(1)))).toBe(0o600);
      expect(await mode(join(dir, META_DIR, `${seg(1)}.sha256`))).toBe(0o600);
      const q = (await readdir(join(dir, 'quarantine')))[0]!;
      expect(await mode(join(dir, 'quarantine', q))).toBe(0o600);
    });

    it('the final name only ever shows the complete object; temp files are dot-names', async () => {
      const dir = newDir();
      const s = new LocalStore(dir);
      const data = Buffer.concat(Array.from({ length: 64 }, (_, i) => payload(i, 64 * 1024)));
      const seen = new Set<string>();
      let done = false;
      const put = s.put(seg(1), data).finally(() => {
        done = true;
      });
      while (!done) {
        const names = await readdir(dir).catch(() => [] as string[]);
        for (const f of names) {
          seen.add(f);
          if (f === seg(1)) {
            const st = await stat(join(dir, f));
            expect(st.size).toBe(data.length);
          }
        }
        await new Promise((r) => setImmediate(r));
      }
      expect((await put).status).toBe('created');
      for (const f of seen) expect([seg(1), META_DIR].includes(f) || f.startsWith('.')).toBe(true);
      // Nothing left behind.
      expect((await readdir(dir)).filter((f) => f.startsWith('.') && f !== META_DIR)).toEqual([]);
      expect((await readdir(join(dir, META_DIR))).filter((f) => f.startsWith('.'))).toEqual([]);
    });

    it('leftovers of a crashed put are ignored: temp files, a checksum record without data', async () => {
      const dir = newDir();
      const s = new LocalStore(dir, { claimWaitMs: 50, staleClaimMs: 60_000 });
      await s.put(seg(9), payload(9));
      // A temp data file (crash before publishing) and a temp record.
      await writeFile(join(dir, `.${seg(1)}.4242.deadbeef.tmp`), payload(1));
      await writeFile(join(dir, META_DIR, `.${seg(1)}.sha256.4242.deadbeef.tmp`), sha256Hex(payload(1)));
      expect((await s.list()).map((o) => o.name)).toEqual([seg(9)]);
      expect(await s.head(seg(1))).toBeUndefined();
      // A record without data, same bytes: the next put completes the object.
      await writeFile(join(dir, META_DIR, `${seg(1)}.sha256`), `${sha256Hex(payload(1))} none ${payload(1).length}\n`);
      expect(await s.head(seg(1))).toBeUndefined();
      expect((await s.list()).map((o) => o.name)).toEqual([seg(9)]);
      expect((await s.put(seg(1), payload(1))).status).toBe('created');
      expect((await s.get(seg(1))).data.equals(payload(1))).toBe(true);
      // A fresh record of other bytes without data: another put may be running: transient.
      await writeFile(join(dir, META_DIR, `${seg(2)}.sha256`), `${sha256Hex(payload(0))} none 10\n`);
      const err = await rejection(s.put(seg(2), payload(2)));
      expect(err).toBeInstanceOf(StorageError);
      expect((err as StorageError).transient).toBe(true);
      expect(await s.head(seg(2))).toBeUndefined();
      // Once stale, it is taken over.
      const old = new Date(Date.now() - 120_000);
      await utimes(join(dir, META_DIR, `${seg(2)}.sha256`), old, old);
      expect((await s.put(seg(2), payload(2), { compression: 'gzip' })).status).toBe('created');
      expect((await s.get(seg(2))).data.equals(payload(2))).toBe(true);
    });

    it('a damaged checksum record or a record of other bytes is IntegrityError', async () => {
      const dir = newDir();
      const s = new LocalStore(dir);
      await s.put(seg(1), payload(1));
      await writeFile(join(dir, META_DIR, `${seg(1)}.sha256`), 'garbage');
      expect(await rejection(s.get(seg(1)))).toBeInstanceOf(IntegrityError);
      // The listing still shows it (unverified); only reading it fails.
      expect((await s.list()).map((o) => [o.name, o.checksum])).toEqual([[seg(1), undefined]]);
      await writeFile(join(dir, META_DIR, `${seg(1)}.sha256`), `${sha256Hex(payload(2))}\n`);
      expect(await rejection(s.get(seg(1)))).toBeInstanceOf(IntegrityError);
    });

    it('an unreadable archive directory is a StorageError, not "missing"', async () => {
      const file = newDir();
      await writeFile(file, 'not a directory');
      const s = new LocalStore(file);
      for (const op of [() => s.list(), () => s.get(seg(1)), () => s.head(seg(1)), () => s.put(seg(1), Buffer.from('x'))]) {
        const err = await rejection(op());
        expect(err).toBeInstanceOf(StorageError);
        expect(err).not.toBeInstanceOf(NotFoundError);
      }
    });
  });
});

// --- S3Store ---

describe('S3Store', () => {
  let s3: S3TestServer;
  /** The built-in s3rver, for checks that break the server (the same as s3 unless an outside store is used). */
  let local: S3TestServer;
  let n = 0;
  const base = (server: S3TestServer, extra: Partial<S3StoreOptions> = {}): S3StoreOptions => ({
    bucket: server.bucket,
    prefix: `${server.prefix}t${n++}/`,
    endpoint: server.endpoint,
    region: server.region,
    credentials: server.credentials,
    timeoutMs: 10_000,
    maxAttempts: 3,
    ...extra,
  });

  beforeAll(async () => {
    s3 = await startS3();
    local = s3.external ? await startS3({ builtIn: true }) : s3;
  });
  afterAll(async () => {
    await s3?.stop();
    if (local !== s3) await local?.stop();
  });

  archiveContract(() => ({
    name: s3?.external ? 'S3 (outside endpoint)' : 'S3 (s3rver)',
    listCount: 40,
    make: async () => new S3Store(base(s3, { listPageSize: 7 })),
    corrupt: async (store, name) => {
      // Replace the bytes behind the store's back, keeping its metadata.
      const st = store as S3Store;
      const c = s3.client();
      try {
        const key = st.prefix + name;
        const h = await c.send(new HeadObjectCommand({ Bucket: st.bucket, Key: key }));
        const got = await c.send(new GetObjectCommand({ Bucket: st.bucket, Key: key }));
        const bytes = Buffer.from(await got.Body!.transformToByteArray());
        const i = Math.floor(bytes.length / 2);
        bytes[i] = bytes[i]! ^ 0x55;
        await c.send(new PutObjectCommand({ Bucket: st.bucket, Key: key, Body: bytes, Metadata: h.Metadata }));
      } finally {
        c.destroy();
      }
    },
    failingGet: async () => ({
      store: new S3Store(base(s3, { credentials: { accessKeyId: 'WSNOSUCHKEY', secretAccessKey: 'x'.repeat(40) }, maxAttempts: 1 })),
      name: seg(1),
    }),
    withKeyring: (store, keyring) => {
      const st = store as S3Store;
      return new S3Store({ ...base(s3), prefix: st.prefix, ...(keyring ? { keyring } : {}) });
    },
    swap: async (store, a, b) => {
      const st = store as S3Store;
      const c = s3.client();
      try {
        const read = async (name: string): Promise<{ body: Buffer; meta: Record<string, string> | undefined }> => {
          const got = await c.send(new GetObjectCommand({ Bucket: st.bucket, Key: st.prefix + name }));
          return { body: Buffer.from(await got.Body!.transformToByteArray()), meta: got.Metadata };
        };
        const [oa, ob] = [await read(a), await read(b)];
        await c.send(new PutObjectCommand({ Bucket: st.bucket, Key: st.prefix + a, Body: ob.body, Metadata: ob.meta }));
        await c.send(new PutObjectCommand({ Bucket: st.bucket, Key: st.prefix + b, Body: oa.body, Metadata: oa.meta }));
      } finally {
        c.destroy();
      }
    },
    rawStored: async (store, name) => {
      const st = store as S3Store;
      const c = s3.client();
      try {
        const got = await c.send(new GetObjectCommand({ Bucket: st.bucket, Key: st.prefix + name }));
        return Buffer.from(await got.Body!.transformToByteArray());
      } finally {
        c.destroy();
      }
    },
    mutate: async (store, name, fn) => {
      const st = store as S3Store;
      const c = s3.client();
      try {
        const key = st.prefix + name;
        const got = await c.send(new GetObjectCommand({ Bucket: st.bucket, Key: key }));
        const bytes = fn(Buffer.from(await got.Body!.transformToByteArray()));
        await c.send(new PutObjectCommand({ Bucket: st.bucket, Key: key, Body: bytes, Metadata: got.Metadata }));
      } finally {
        c.destroy();
      }
    },
    replaces: true,
  }));

  it('a put over an object cut short by an interrupted upload keeps the damaged bytes in quarantine and stores the verified copy', async () => {
    // Stores without atomic PUTs (s3rver, some gateways) can keep the first bytes of a PUT whose
    // client died: the object then fails the checksum recorded with it.
    const st = new S3Store(base(s3));
    const c = s3.client();
    try {
      const name = seg(40);
      const full = payload(40);
      await st.put(name, full);
      const key = st.prefix + name;
      const h = await c.send(new HeadObjectCommand({ Bucket: st.bucket, Key: key }));
      const cut = full.subarray(0, Math.floor(full.length / 3));
      await c.send(new PutObjectCommand({ Bucket: st.bucket, Key: key, Body: cut, Metadata: h.Metadata }));
      const res = await st.put(name, full);
      expect(res.status).toBe('created');
      expect(res.replacedDamaged).toMatch(new RegExp(`^quarantine/${name}\\.`));
      expect((await st.get(name)).data.equals(full)).toBe(true);
      const kept = await c.send(new GetObjectCommand({ Bucket: st.bucket, Key: st.prefix + res.replacedDamaged! }));
      expect(Buffer.from(await kept.Body!.transformToByteArray()).equals(cut)).toBe(true);
      // A valid, different object is still a conflict, never replaced.
      await expect(st.put(name, payload(41))).rejects.toBeInstanceOf(ConflictError);
      expect((await st.get(name)).data.equals(full)).toBe(true);
    } finally {
      c.destroy();
      await st.close();
    }
  });

  describe('S3 only', () => {
    const stores: S3Store[] = [];
    const open = (extra: Partial<S3StoreOptions> = {}): S3Store => {
      const st = new S3Store(base(local, extra));
      stores.push(st);
      return st;
    };
    afterAll(async () => {
      await Promise.all(stores.map((st) => st.close()));
    });

    it('PUT carries a SHA-256 transfer checksum, If-None-Match and the metadata; get is one request', async () => {
      const st = open();
      const data = payload(30);
      local.requests.length = 0;
      await st.put(seg(1), data, { compression: 'gzip' });
      const puts = local.requests.filter((r) => r.method === 'PUT');
      expect(puts.length).toBe(1);
      const h = puts[0]!.headers;
      expect(h['if-none-match']).toBe('*');
      expect(h['x-amz-checksum-sha256']).toBeDefined();
      expect(h['x-amz-meta-walstream-sha256']).toBe(sha256Hex(data));
      expect(h['x-amz-meta-walstream-compression']).toBe('gzip');
      expect(h['x-amz-meta-walstream-size']).toBe(String(data.length));
      expect(h['content-encoding']).toBeUndefined();
      expect(puts[0]!.path).toBe(`/${local.bucket}/${st.prefix}${seg(1)}`);
      local.requests.length = 0;
      expect((await st.get(seg(1))).data.equals(data)).toBe(true);
      expect(local.requests.map((r) => r.method)).toEqual(['GET']);
    });

    it('the transfer checksum and the signed payload hash are the SHA-256 of the bytes stored', async () => {
      const st = open();
      const c = local.client();
      try {
        for (const [i, compression] of [
          [1, 'none'],
          [2, 'gzip'],
        ] as const) {
          const data = payload(33 + i);
          local.requests.length = 0;
          await st.put(seg(i), data, { compression });
          const h = local.requests.find((r) => r.method === 'PUT')!.headers;
          const got = await c.send(new GetObjectCommand({ Bucket: st.bucket, Key: st.prefix + seg(i) }));
          const stored = Buffer.from(await got.Body!.transformToByteArray());
          expect(h['x-amz-checksum-sha256']).toBe(Buffer.from(sha256Hex(stored), 'hex').toString('base64'));
          // Signed, not UNSIGNED-PAYLOAD: the hash SigV4 covers is the body's.
          expect(h['x-amz-content-sha256']).toBe(sha256Hex(stored));
          expect(h['x-amz-meta-walstream-sha256']).toBe(sha256Hex(data));
        }
      } finally {
        c.destroy();
      }
    });

    it('transferChecksum: false sends no checksum header', async () => {
      const st = open({ transferChecksum: false });
      local.requests.length = 0;
      await st.put(seg(1), payload(31));
      const h = local.requests.find((r) => r.method === 'PUT')!.headers;
      expect(Object.keys(h).filter((k) => k.startsWith('x-amz-checksum-'))).toEqual([]);
      expect((await st.get(seg(1))).data.equals(payload(31))).toBe(true);
    });

    it('server-side encryption options are sent', async () => {
      const st = open({ sse: 'aws:kms', sseKmsKeyId: 'alias/walstream-test' });
      local.requests.length = 0;
      await st.put(seg(1), payload(32));
      const h = local.requests.find((r) => r.method === 'PUT')!.headers;
      expect(h['x-amz-server-side-encryption']).toBe('aws:kms');
      expect(h['x-amz-server-side-encryption-aws-kms-key-id']).toBe('alias/walstream-test');
      const aes = open({ sse: 'AES256' });
      local.requests.length = 0;
      await aes.put(seg(1), payload(32));
      expect(local.requests.find((r) => r.method === 'PUT')!.headers['x-amz-server-side-encryption']).toBe('AES256');
    });

    it('conditionalWrites: false checks with HEAD before PUT (for stores that ignore If-None-Match)', async () => {
      local.conditionalWrites = false; // plain s3rver: If-None-Match ignored
      try {
        const st = open({ conditionalWrites: false });
        local.requests.length = 0;
        expect((await st.put(seg(1), payload(33))).status).toBe('created');
        expect(local.requests.map((r) => r.method)).toEqual(['HEAD', 'PUT']);
        expect(local.requests[1]!.headers['if-none-match']).toBeUndefined();
        expect((await st.put(seg(1), payload(33))).status).toBe('exists');
        const err = await rejection(st.put(seg(1), payload(34)));
        expect(err).toBeInstanceOf(ConflictError);
        expect((await st.get(seg(1))).data.equals(payload(33))).toBe(true);
        expect((await st.get((err as ConflictError).quarantinedAs)).data.equals(payload(34))).toBe(true);
      } finally {
        local.conditionalWrites = true;
      }
    });

    it('an unreachable endpoint: transient StorageError, quickly, without the secret', async () => {
      const port = await unusedPort();
      const secret = 'unreachable-secret-' + 'k'.repeat(20);
      const st = new S3Store({
        bucket: 'b',
        prefix: 'p',
        endpoint: `http://127.0.0.1:${port}`,
        credentials: { accessKeyId: 'AKIDUNREACHABLE', secretAccessKey: secret },
        maxAttempts: 2,
        timeoutMs: 2000,
      });
      stores.push(st);
      expect(st.description).toBe('s3://b/p/');
      const t0 = Date.now();
      for (const op of [() => st.put(seg(1), payload(1)), () => st.get(seg(1)), () => st.head(seg(1)), () => st.list(), () => st.delete(seg(1))]) {
        const err = await rejection(op());
        expect(err).toBeInstanceOf(StorageError);
        expect(err).not.toBeInstanceOf(NotFoundError);
        expect((err as StorageError).transient).toBe(true);
        expect((err as Error).message).not.toContain(secret);
        expect((err as Error).message).toMatch(/cannot reach|no answer/);
        expect((err as Error).message).not.toMatch(/\n/);
      }
      expect(Date.now() - t0).toBeLessThan(8000);
      expect(st.description).not.toContain(secret);
    });

    it('no credentials from any source: transient (an instance role may answer next time), one line', async () => {
      const saved = { ...process.env };
      for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
      Object.assign(process.env, {
        AWS_EC2_METADATA_DISABLED: 'true',
        AWS_CONFIG_FILE: '/nonexistent/walstream-test-config',
        AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/walstream-test-credentials',
      });
      try {
        const st = new S3Store({ bucket: 'b', prefix: 'p', endpoint: `http://127.0.0.1:${await unusedPort()}`, maxAttempts: 1, timeoutMs: 5000 });
        stores.push(st);
        const err = await rejection(st.get(seg(1)));
        expect(err).toBeInstanceOf(StorageError);
        expect(err).not.toBeInstanceOf(NotFoundError);
        expect((err as StorageError).transient).toBe(true);
        expect((err as Error).message).toMatch(/credential/i);
        expect((err as Error).message).not.toMatch(/\n/);
      } finally {
        for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
        Object.assign(process.env, saved);
      }
    });

    it('5xx after the retries is transient; 403 is permanent; neither leaks the secret', async () => {
      const st = open({ maxAttempts: 2 });
      await st.put(seg(1), payload(35));
      local.failNext(2, 503);
      const busy = await rejection(st.get(seg(1)));
      expect(busy).toBeInstanceOf(StorageError);
      expect(busy).not.toBeInstanceOf(NotFoundError);
      expect((busy as StorageError).transient).toBe(true);
      expect((busy as Error).message).toMatch(/SlowDown \(HTTP 503\)/);
      // One 503, then success: the SDK's retry covers it.
      local.failNext(1, 503);
      expect((await st.get(seg(1))).data.equals(payload(35))).toBe(true);
      const secret = 'wrong-secret-' + 'z'.repeat(30);
      const denied = open({ credentials: { accessKeyId: 'WSWRONGKEY', secretAccessKey: secret } });
      for (const op of [() => denied.get(seg(1)), () => denied.put(seg(2), payload(1)), () => denied.head(seg(1))]) {
        const err = await rejection(op());
        expect(err).toBeInstanceOf(StorageError);
        expect(err).not.toBeInstanceOf(NotFoundError);
        expect((err as StorageError).transient).toBe(false);
        expect((err as Error).message).toMatch(/HTTP 403/);
        expect((err as Error).message).not.toContain(secret);
      }
      expect(denied.description).not.toContain(secret);
    });

    it('outage: refused while paused, served again after resume with the data kept', async () => {
      const st = open({ maxAttempts: 2, timeoutMs: 2000 });
      await st.put(seg(1), payload(36));
      await local.pause();
      try {
        const err = await rejection(st.put(seg(2), payload(37)));
        expect((err as StorageError).transient).toBe(true);
      } finally {
        await local.resume();
      }
      expect((await st.get(seg(1))).data.equals(payload(36))).toBe(true);
      expect((await st.put(seg(2), payload(37))).status).toBe('created');
    });

    it('a hung server: the per-request timeout gives a transient error', async () => {
      const st = open({ maxAttempts: 1, timeoutMs: 300 });
      await st.put(seg(1), payload(38));
      await local.pause('hang');
      try {
        const t0 = Date.now();
        const err = await rejection(st.get(seg(1)));
        expect((err as StorageError).transient).toBe(true);
        expect((err as Error).message).toMatch(/no answer .* within 300 ms/);
        expect(Date.now() - t0).toBeLessThan(3000);
      } finally {
        await local.resume();
      }
      expect((await st.get(seg(1))).data.equals(payload(38))).toBe(true);
    });

    it('openArchive("s3://bucket/prefix") reaches the same store', async () => {
      const prefix = `${local.prefix}open${n++}`;
      const a = await openArchive(`s3://${local.bucket}/${prefix}`, { s3Endpoint: local.endpoint, s3: { credentials: local.credentials, timeoutMs: 5000 } });
      try {
        expect(a.description).toBe(`s3://${local.bucket}/${prefix}/`);
        expect(a).toBeInstanceOf(S3Store);
        await a.put(seg(1), payload(39), { compression: 'gzip' });
        const direct = open({ prefix: `${prefix}/` });
        expect((await direct.get(seg(1))).data.equals(payload(39))).toBe(true);
      } finally {
        await a.close();
      }
    });
  });
});

// --- AzureStore ---

describe('AzureStore', () => {
  let az: AzuriteServer;
  let n = 0;
  const base = (extra: Partial<AzureStoreOptions> = {}): AzureStoreOptions => ({
    container: az.container,
    prefix: `t${n++}/`,
    connectionString: az.connectionString,
    timeoutMs: 10_000,
    maxAttempts: 2,
    ...extra,
  });
  beforeAll(async () => {
    az = await startAzurite();
  });
  afterAll(async () => {
    await az?.stop();
  });
  const blob = (store: ArchiveStore, name: string) => {
    const st = store as AzureStore;
    return az
      .client()
      .getContainerClient(st.container)
      .getBlockBlobClient(st.prefix + name);
  };
  const readRaw = async (store: ArchiveStore, name: string): Promise<{ body: Buffer; meta: Record<string, string> | undefined }> => {
    const b = blob(store, name);
    return { body: await b.downloadToBuffer(), meta: (await b.getProperties()).metadata };
  };
  const writeRaw = async (store: ArchiveStore, name: string, body: Buffer, meta: Record<string, string> | undefined): Promise<void> => {
    await blob(store, name).upload(body, body.length, meta ? { metadata: meta } : {});
  };

  archiveContract(() => ({
    name: 'Azure (Azurite)',
    listCount: 40,
    make: async () => new AzureStore(base({ listPageSize: 7 })),
    corrupt: async (store, name) => {
      const { body, meta } = await readRaw(store, name);
      const i = Math.floor(body.length / 2);
      body[i] = body[i]! ^ 0x55;
      await writeRaw(store, name, body, meta);
    },
    failingGet: async () => ({
      store: new AzureStore(base({ connectionString: az.connectionString.replace(/AccountKey=[^;]+/, `AccountKey=${Buffer.alloc(64, 7).toString('base64')}`), maxAttempts: 1 })),
      name: seg(1),
    }),
    withKeyring: (store, keyring) => new AzureStore({ ...base(), prefix: (store as AzureStore).prefix, ...(keyring ? { keyring } : {}) }),
    swap: async (store, a, b) => {
      const [oa, ob] = [await readRaw(store, a), await readRaw(store, b)];
      await writeRaw(store, a, ob.body, ob.meta);
      await writeRaw(store, b, oa.body, oa.meta);
    },
    rawStored: async (store, name) => (await readRaw(store, name)).body,
    mutate: async (store, name, fn) => {
      const { body, meta } = await readRaw(store, name);
      await writeRaw(store, name, fn(body), meta);
    },
    replaces: true,
  }));

  describe('Azure only', () => {
    it('the record rides in blob metadata (walstream_sha256, walstream_compression, walstream_size); listings carry it', async () => {
      const st = new AzureStore(base());
      const data = payload(70);
      await st.put(seg(70), data, { compression: 'gzip' });
      const { meta } = await readRaw(st, seg(70));
      expect(meta).toEqual({ walstream_sha256: sha256Hex(data), walstream_compression: 'gzip', walstream_size: String(data.length) });
      expect(await st.list()).toEqual([expect.objectContaining({ name: seg(70), checksum: sha256Hex(data), compression: 'gzip', size: data.length })]);
      await st.close();
    });

    it('a missing container is a permanent StorageError naming it; bad credentials too, without the key', async () => {
      const missing = new AzureStore(base({ container: 'no-such-container' }));
      const err = await rejection(missing.put(seg(1), payload(1)));
      expect(err).toBeInstanceOf(StorageError);
      expect((err as StorageError).transient).toBe(false);
      expect((err as Error).message).toMatch(/ContainerNotFound.*container "no-such-container" does not exist/);
      const key = Buffer.alloc(64, 9).toString('base64');
      const bad = new AzureStore(base({ connectionString: az.connectionString.replace(/AccountKey=[^;]+/, `AccountKey=${key}`), maxAttempts: 1 }));
      const e2 = await rejection(bad.get(seg(1)));
      expect(e2).toBeInstanceOf(StorageError);
      expect((e2 as StorageError).transient).toBe(false);
      expect((e2 as Error).message).not.toContain(key);
    });

    it('an unreachable endpoint: transient StorageError', async () => {
      const port = await unusedPort();
      const st = new AzureStore(base({ connectionString: az.connectionString.replace(/BlobEndpoint=[^;]+/, `BlobEndpoint=http://127.0.0.1:${port}/devstoreaccount1`), maxAttempts: 1, timeoutMs: 5000 }));
      const err = await rejection(st.head(seg(1)));
      expect(err).toBeInstanceOf(StorageError);
      expect((err as StorageError).transient).toBe(true);
    });

    it('credentials from AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, with the endpoint given', async () => {
      const st = new AzureStore({ container: az.container, prefix: `acct${n++}/`, account: az.account, accountKey: az.accountKey, endpoint: az.endpoint, connectionString: '' });
      expect((await st.put(seg(2), payload(2))).status).toBe('created');
      expect((await st.get(seg(2))).data.equals(payload(2))).toBe(true);
    });

    it('openArchive("azure://container/prefix") reaches the same store, with AZURE_STORAGE_CONNECTION_STRING', async () => {
      const saved = process.env['AZURE_STORAGE_CONNECTION_STRING'];
      process.env['AZURE_STORAGE_CONNECTION_STRING'] = az.connectionString;
      try {
        const id = n++;
        const a = await openArchive(`azure://${az.container}/open${id}`);
        const b = new AzureStore(base({ prefix: `open${id}/` }));
        expect(a).toBeInstanceOf(AzureStore);
        expect(a.description).toBe(`azure://${az.container}/open${id}/`);
        await a.put(seg(3), payload(3));
        expect((await b.get(seg(3))).data.equals(payload(3))).toBe(true);
        await a.close();
      } finally {
        if (saved === undefined) delete process.env['AZURE_STORAGE_CONNECTION_STRING'];
        else process.env['AZURE_STORAGE_CONNECTION_STRING'] = saved;
      }
    });
  });
});
