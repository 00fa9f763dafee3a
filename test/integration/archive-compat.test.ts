// Archives written by walstream before the storage drivers were split from the archive's policy
// (fixtures/archive-v0.tar.gz, written with that code: local plain, -Z gzip, encrypted, and the
// raw objects of the same three on S3) still read, verify and accept new WAL, and what is written
// now is laid out byte for byte as then: file names, checksum records, S3 metadata keys.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { harnessTmpRoot } from '../harness/exec.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { makeSegment, seg } from '../unit/ops-walgen.js';
import { parseKeyFile, isSealed, type Keyring } from '../../src/storage/encryption.js';
import { LocalStore } from '../../src/storage/local.js';
import { S3Store } from '../../src/storage/s3.js';
import { ConflictError, type ArchiveStore, type Compression } from '../../src/storage/types.js';
import { verifyArchive } from '../../src/ops/verify.js';
import { readIdentity } from '../../src/archive/identity.js';

const FIXTURE = new URL('../../fixtures/archive-v0.tar.gz', import.meta.url).pathname;

interface Flavour {
  dir: string;
  s3prefix: string;
  compression: Compression;
  encrypted: boolean;
}

const FLAVOURS: Flavour[] = [
  { dir: 'local-plain', s3prefix: 'plain/', compression: 'none', encrypted: false },
  { dir: 'local-gzip', s3prefix: 'gzip/', compression: 'gzip', encrypted: false },
  { dir: 'local-encrypted', s3prefix: 'encrypted/', compression: 'gzip', encrypted: true },
];

let root: string;
let keyring: Keyring;

beforeAll(async () => {
  root = await mkdtemp(join(harnessTmpRoot(), 'archive-compat-'));
  execFileSync('tar', ['-xzf', FIXTURE, '-C', root]);
  keyring = parseKeyFile(await readFile(join(root, 'archive-v0', 'fixture.key'), 'utf8'), 'fixture.key');
});
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

/** What every old archive holds, read back and verified; then a new segment appended and verified again. */
async function readVerifyAppend(store: ArchiveStore, f: Flavour): Promise<void> {
  const id = await readIdentity(store);
  expect(id?.segmentSize).toBe(1024 * 1024);
  expect(id?.encryption).toBe(f.encrypted ? 'aes-256-gcm' : undefined);
  for (let n = 1; n <= 3; n++) {
    const g = await store.get(seg(1, n));
    expect(g.data.equals(makeSegment({ tli: 1, segNo: n }))).toBe(true);
    expect(g.info.compression).toBe(f.compression);
    expect(g.info.keyId).toBe(f.encrypted ? 'fixture1' : undefined);
  }
  expect((await store.get(`${seg(1, 4)}.partial.00000000`)).data.equals(makeSegment({ tli: 1, segNo: 4 }).subarray(0, 16384))).toBe(true);
  expect((await store.get('00000002.history')).data.toString()).toMatch(/^1\t0\/600000/);
  const quarantined = await store.list('quarantine/');
  expect(quarantined.map((o) => o.name)).toEqual([expect.stringMatching(new RegExp(`^quarantine/${seg(1, 3)}\\.\\d{8}T\\d{6}Z$`))]);
  expect((await store.get(quarantined[0]!.name)).data.toString()).toBe('other bytes');

  // The history says timeline 1 went on to 0/600000: segments 4 and 5 are still to come.
  const before = await verifyArchive({ store });
  expect(before.problems).toEqual([expect.objectContaining({ object: seg(1, 4), kind: 'missing-segment', count: 2 })]);

  // The same bytes again: already there; other bytes: refused.
  expect((await store.put(seg(1, 2), makeSegment({ tli: 1, segNo: 2 }), { compression: f.compression })).status).toBe('exists');
  await expect(store.put(seg(1, 2), Buffer.from('not that segment'), { compression: f.compression })).rejects.toBeInstanceOf(ConflictError);
  // New WAL is accepted: the segment in progress completed, and the next one.
  for (const n of [4, 5]) {
    expect((await store.put(seg(1, n), makeSegment({ tli: 1, segNo: n }), { compression: f.compression })).status).toBe('created');
  }
  const after = await verifyArchive({ store });
  expect(after.problems).toEqual([]);
  expect(after.ok).toBe(true);
  expect(after.checked.segments).toBe(5);
}

describe('a local archive written before the drivers', () => {
  for (const f of FLAVOURS) {
    it(`${f.dir}: reads, verifies and accepts new WAL; new files are laid out as before`, async () => {
      const dir = join(root, 'archive-v0', f.dir);
      const store = new LocalStore(dir, f.encrypted ? { keyring } : {});
      try {
        await readVerifyAppend(store, f);
      } finally {
        await store.close();
      }
      const suffix = f.compression === 'gzip' ? '.gz' : '';
      const files = (await readdir(dir)).sort();
      expect(files).toContain(seg(1, 5) + suffix);
      expect(files.filter((x) => x.startsWith('.') && x !== '.walstream-meta')).toEqual([]);
      expect((await stat(join(dir, seg(1, 5) + suffix))).mode & 0o777).toBe(0o600);
      const record = await readFile(join(dir, '.walstream-meta', `${seg(1, 5)}.sha256`), 'utf8');
      expect(record).toMatch(new RegExp(`^[0-9a-f]{64} ${f.compression} 1048576\\n$`));
      const oldRecord = await readFile(join(dir, '.walstream-meta', `${seg(1, 1)}.sha256`), 'utf8');
      expect(oldRecord).toMatch(new RegExp(`^[0-9a-f]{64} ${f.compression} 1048576\\n$`));

      // The same segment written now into an empty archive: the same file, the same record
      // (byte for byte where no random nonce is involved).
      const fresh = join(root, `fresh-${f.dir}`);
      const s = new LocalStore(fresh, f.encrypted ? { keyring } : {});
      await s.put(seg(1, 1), makeSegment({ tli: 1, segNo: 1 }), { compression: f.compression });
      await s.close();
      const now = await readFile(join(fresh, seg(1, 1) + suffix));
      const then = await readFile(join(dir, seg(1, 1) + suffix));
      if (f.encrypted) {
        expect(isSealed(now)).toBe(true);
        expect(now.subarray(0, 19).equals(then.subarray(0, 19))).toBe(true); // magic, version, algorithm, key id
        expect(now.length).toBe(then.length);
      } else {
        expect(now.equals(then)).toBe(true);
      }
      expect(await readFile(join(fresh, '.walstream-meta', `${seg(1, 1)}.sha256`), 'utf8')).toBe(oldRecord);
    });
  }
});

describe('an S3 archive written before the drivers', () => {
  let s3: S3TestServer;
  let objects: { key: string; metadata: Record<string, string>; body: string }[];
  beforeAll(async () => {
    s3 = await startS3({ builtIn: true });
    objects = JSON.parse(await readFile(join(root, 'archive-v0', 's3-objects.json'), 'utf8')) as typeof objects;
    const c = s3.client();
    try {
      for (const o of objects) {
        await c.send(new PutObjectCommand({ Bucket: s3.bucket, Key: o.key, Body: Buffer.from(o.body, 'base64'), Metadata: o.metadata }));
      }
    } finally {
      c.destroy();
    }
  });
  afterAll(async () => {
    await s3?.stop();
  });

  for (const f of FLAVOURS) {
    it(`${f.s3prefix}: reads, verifies and accepts new WAL; new objects carry the same metadata`, async () => {
      const store = new S3Store({
        bucket: s3.bucket,
        prefix: f.s3prefix,
        endpoint: s3.endpoint,
        region: s3.region,
        credentials: s3.credentials,
        ...(f.encrypted ? { keyring } : {}),
      });
      try {
        await readVerifyAppend(store, f);
      } finally {
        await store.close();
      }
      const c = s3.client();
      try {
        const old = objects.find((o) => o.key === `${f.s3prefix}${seg(1, 1)}`)!;
        const head = async (key: string): Promise<{ meta: Record<string, string>; body: Buffer }> => {
          const r = await c.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
          return { meta: r.Metadata ?? {}, body: Buffer.from(await r.Body!.transformToByteArray()) };
        };
        const added = await head(`${f.s3prefix}${seg(1, 5)}`);
        expect(Object.keys(added.meta).sort()).toEqual(Object.keys(old.metadata).sort());
        expect(added.meta['walstream-compression']).toBe(f.compression);
        expect(added.meta['walstream-size']).toBe('1048576');
        // The same segment written now under a new prefix: the same body (bar the nonce) and metadata.
        const s = new S3Store({ bucket: s3.bucket, prefix: `now-${f.s3prefix}`, endpoint: s3.endpoint, region: s3.region, credentials: s3.credentials, ...(f.encrypted ? { keyring } : {}) });
        await s.put(seg(1, 1), makeSegment({ tli: 1, segNo: 1 }), { compression: f.compression });
        await s.close();
        const now = await head(`now-${f.s3prefix}${seg(1, 1)}`);
        expect(now.meta).toEqual(old.metadata);
        const then = Buffer.from(old.body, 'base64');
        if (f.encrypted) expect(now.body.length).toBe(then.length);
        else expect(now.body.equals(then)).toBe(true);
      } finally {
        c.destroy();
      }
    });
  }
});
