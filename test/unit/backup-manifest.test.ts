// backup_manifest parsing and verification (backup/manifest.ts) and CRC-32C (util/crc32c.ts):
// file checksums as PostgreSQL 15 wrote them for the files in fixtures/backup, manifests in the
// exact layout backup_manifest.c writes (version 1, and 2 with System-Identifier).
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { crc32c, crc32cImplementation, crc32cJs } from '../../src/util/crc32c.js';
import { ManifestError, ManifestVerifier, parseManifest, tablespacePrefix, verifyTarEntries } from '../../src/backup/manifest.js';
import { readTar } from '../../src/backup/tar.js';

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'fixtures', 'backup');
const PG15_BASE_HEAD = readFileSync(join(FIXTURES, 'pg15-base-head.tar'));
const PG15_TABLESPACE = readFileSync(join(FIXTURES, 'pg15-tablespace-16384.tar'));

// The lines PostgreSQL 15 wrote for these files (their CRC-32C as the server computed them).
const PG15_LINES = [
  '{ "Path": "pg_tblspc/16384/PG_15_202209061/5/16385", "Size": 8192, "Last-Modified": "2026-12-04 08:51:33 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "76d8d79b" }',
  '{ "Path": "backup_label", "Size": 225, "Last-Modified": "2026-12-04 08:51:36 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "f1ffcc70" }',
  '{ "Path": "tablespace_map", "Size": 18, "Last-Modified": "2026-12-04 08:51:36 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "bf54c725" }',
  '{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2026-12-04 08:51:28 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "8a744722" }',
];

/** A manifest laid out as backup_manifest.c writes it, with its Manifest-Checksum. */
function manifest(fileLines: string[], opts: { version?: 1 | 2; systemId?: string } = {}): Buffer {
  let head = `{ "PostgreSQL-Backup-Manifest-Version": ${opts.version ?? 1},\n`;
  if (opts.version === 2) head += `"System-Identifier": ${opts.systemId ?? '7446598361812345678'},\n`;
  const body = `${head}"Files": [\n${fileLines.join(',\n')}\n],\n"WAL-Ranges": [\n{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }\n],\n`;
  const sum = createHash('sha256').update(body).digest('hex');
  return Buffer.from(`${body}"Manifest-Checksum": "${sum}"}\n`);
}

async function* once(b: Buffer): AsyncGenerator<Buffer> {
  yield b;
}

async function verifyFixtures(m: Buffer, base = PG15_BASE_HEAD, ts = PG15_TABLESPACE): Promise<ReturnType<ManifestVerifier['finish']>> {
  const v = new ManifestVerifier(parseManifest(m));
  await verifyTarEntries(readTar(once(base)), v);
  await verifyTarEntries(readTar(once(ts)), v, tablespacePrefix(16384));
  return v.finish();
}

describe('crc32c', () => {
  it('gives the check values, in JS and natively, and chains', () => {
    const check = Buffer.from('123456789');
    expect(crc32cJs(check)).toBe(0xe3069283);
    expect(crc32c(check)).toBe(0xe3069283);
    expect(crc32cJs(Buffer.alloc(0))).toBe(0);
    expect(crc32cJs(Buffer.alloc(32))).toBe(0x8a9136aa); // RFC 3720 B.4: 32 bytes of zeros
    expect(crc32cJs(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43); // and of ones
    expect(crc32cJs(Buffer.from('6789'), crc32cJs(Buffer.from('12345')))).toBe(0xe3069283);
    expect(['native', 'js']).toContain(crc32cImplementation());
  });

  it('JS and native agree on random data at every alignment', () => {
    const data = randomBytes(5000);
    for (const [a, b] of [
      [0, 5000],
      [1, 4999],
      [3, 17],
      [7, 8],
    ] as const) {
      const part = data.subarray(a, b);
      expect(crc32c(part)).toBe(crc32cJs(part));
      expect(crc32c(part.subarray(5), crc32c(part.subarray(0, 5)))).toBe(crc32cJs(part));
    }
  });
});

describe('parseManifest', () => {
  it('reads a version 1 manifest as PostgreSQL 15 writes it', () => {
    const m = parseManifest(manifest(PG15_LINES));
    expect(m.version).toBe(1);
    expect(m.systemIdentifier).toBeUndefined();
    expect(m.files).toHaveLength(4);
    expect(m.files[1]).toEqual({ path: 'backup_label', size: 225, lastModified: '2026-12-04 08:51:36 GMT', algorithm: 'CRC32C', checksum: 'f1ffcc70' });
    expect(m.walRanges).toEqual([{ timeline: 1, startLsn: '0/2000028', endLsn: '0/2000100' }]);
  });

  it('reads version 2 with its System-Identifier exactly (past 2^53)', () => {
    const m = parseManifest(manifest(PG15_LINES, { version: 2, systemId: '7446598361812345679' }));
    expect(m.systemIdentifier).toBe('7446598361812345679');
  });

  it('refuses a manifest whose bytes were altered, or that is not one', () => {
    const good = manifest(PG15_LINES);
    const altered = Buffer.from(good.toString().replace('"Size": 225', '"Size": 226'));
    expect(() => parseManifest(altered, 'backups/X.backup_manifest')).toThrow(/backups\/X.backup_manifest fails its Manifest-Checksum/);
    expect(() => parseManifest(good.subarray(0, good.length - 1))).toThrow(/not newline-terminated/);
    expect(() => parseManifest(Buffer.from('{}\n'))).toThrow(ManifestError);
    expect(() => parseManifest(Buffer.from('x\ny\n'))).toThrow(/not JSON/);
    expect(() => parseManifest(manifest(PG15_LINES).subarray(0, 40))).toThrow(ManifestError);
    const v3 = Buffer.from(good.toString().replace('Version": 1', 'Version": 3'));
    expect(() => parseManifest(v3)).toThrow(ManifestError);
  });

  it('reads Encoded-Path and every checksum algorithm, and refuses bad entries', () => {
    const m = parseManifest(
      manifest([
        `{ "Encoded-Path": "${Buffer.from('odd/name').toString('hex')}", "Size": 1, "Last-Modified": "2026-12-04 08:51:36 GMT", "Checksum-Algorithm": "NONE" }`,
        `{ "Path": "a", "Size": 1, "Last-Modified": "x", "Checksum-Algorithm": "SHA512", "Checksum": "${'AB'.repeat(64)}" }`,
      ]),
    );
    expect(m.files.map((f) => [f.path, f.algorithm, f.checksum])).toEqual([
      ['odd/name', 'NONE', undefined],
      ['a', 'SHA512', 'ab'.repeat(64)],
    ]);
    const bad =
      (line: string): (() => unknown) =>
      () =>
        parseManifest(manifest([line]));
    expect(bad('{ "Path": "a", "Size": 1, "Checksum-Algorithm": "MD5", "Checksum": "00" }')).toThrow(/Checksum-Algorithm "MD5"/);
    expect(bad('{ "Path": "a", "Size": 1, "Checksum-Algorithm": "CRC32C", "Checksum": "001" }')).toThrow(/no valid CRC32C Checksum/);
    expect(bad('{ "Path": "../a", "Size": 1 }')).toThrow(/not a plain relative path/);
    expect(bad('{ "Path": "a", "Size": -1 }')).toThrow(/no valid Size/);
    expect(() => parseManifest(manifest(['{ "Path": "a", "Size": 1 }', '{ "Path": "a", "Size": 1 }']))).toThrow(/listed twice/);
  });
});

describe('ManifestVerifier', () => {
  it('accepts PostgreSQL 15 tars against the checksums the server wrote (CRC-32C in its byte order)', async () => {
    const r = await verifyFixtures(manifest(PG15_LINES));
    expect(r.problems).toEqual([]);
    expect(r).toMatchObject({ ok: true, checked: 4, bytes: 8192 + 225 + 18 + 3 });
  });

  it('checks SHA-224/256/384/512 too', async () => {
    for (const algo of ['SHA224', 'SHA256', 'SHA384', 'SHA512']) {
      const sum = createHash(algo.toLowerCase()).update('15\n').digest('hex');
      const lines = [...PG15_LINES.slice(0, 3), `{ "Path": "PG_VERSION", "Size": 3, "Checksum-Algorithm": "${algo}", "Checksum": "${sum}" }`];
      expect((await verifyFixtures(manifest(lines))).ok, algo).toBe(true);
      const wrong = [...PG15_LINES.slice(0, 3), `{ "Path": "PG_VERSION", "Size": 3, "Checksum-Algorithm": "${algo}", "Checksum": "${'0'.repeat(sum.length)}" }`];
      expect((await verifyFixtures(manifest(wrong))).problems.map((p) => p.kind)).toEqual(['checksum']);
    }
  });

  it('names a file whose bytes differ, one missing, one extra, one of another size', async () => {
    const tampered = Buffer.from(PG15_TABLESPACE);
    tampered[1536 + 100] ^= 1; // inside PG_15_202209061/5/16385's content
    let r = await verifyFixtures(manifest(PG15_LINES), PG15_BASE_HEAD, tampered);
    expect(r.problems).toEqual([{ kind: 'checksum', path: 'pg_tblspc/16384/PG_15_202209061/5/16385', message: '"pg_tblspc/16384/PG_15_202209061/5/16385" does not match its CRC32C checksum in the manifest' }]);

    const extraLine = '{ "Path": "global/pg_control", "Size": 8192, "Last-Modified": "2026-12-04 08:51:36 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "43872087" }';
    r = await verifyFixtures(manifest([...PG15_LINES.slice(0, 3), extraLine]));
    expect(r.problems.map((p) => [p.kind, p.path])).toEqual([
      ['extra', 'PG_VERSION'],
      ['missing', 'global/pg_control'],
    ]);

    const sized = PG15_LINES[3]!.replace('"Size": 3', '"Size": 4');
    r = await verifyFixtures(manifest([...PG15_LINES.slice(0, 3), sized]));
    expect(r.problems.map((p) => p.message)).toEqual(['"PG_VERSION" has size 3 in the backup but 4 in its manifest']);
  });

  it('skips what pg_verifybackup skips: pg_wal, postgresql.auto.conf, the signal files, backup_manifest', async () => {
    const v = new ManifestVerifier(parseManifest(manifest([...PG15_LINES, '{ "Path": "postgresql.auto.conf", "Size": 88, "Checksum-Algorithm": "CRC32C", "Checksum": "00000000" }'])));
    for (const p of ['pg_wal/000000010000000000000002', 'standby.signal', 'recovery.signal', 'backup_manifest', 'postgresql.auto.conf']) expect(v.begin(p, 5), p).toBeUndefined();
    expect(v.isIgnored('pg_walx')).toBe(false);
    expect(v.nonFile('pg_tblspc/16384', 'symlink')).toBeUndefined();
    expect(v.nonFile('PG_VERSION', 'dir')?.kind).toBe('not-a-file');
  });

  it('reports a file that ends short of its size', () => {
    const v = new ManifestVerifier(parseManifest(manifest(PG15_LINES)));
    const c = v.begin('PG_VERSION', 3)!;
    c.update(Buffer.from('15'));
    expect(c.end()?.message).toBe('"PG_VERSION" ended after 2 of its 3 bytes');
  });

  it('checks a size and CRC-32C taken elsewhere (as a backup is stored) the same way, and says when the manifest uses another algorithm', () => {
    const v = new ManifestVerifier(parseManifest(manifest(PG15_LINES)));
    expect(v.needsOtherDigest()).toBe(false);
    expect(v.checkCrc32c('PG_VERSION', 3, crc32c(Buffer.from('15\n')))).toBeUndefined();
    expect(v.checkCrc32c('backup_label', 225, 0x12345678)?.kind).toBe('checksum');
    expect(v.checkCrc32c('tablespace_map', 17, 0)?.message).toBe('"tablespace_map" has size 17 in the backup but 18 in its manifest');
    expect(v.checkCrc32c('PG_VERSION', 3, crc32c(Buffer.from('15\n')))?.kind).toBe('duplicate');
    expect(v.checkCrc32c('pg_wal/000000010000000000000002', 5, 0)).toBeUndefined();
    const r = v.finish();
    expect(r.problems.map((p) => [p.kind, p.path])).toEqual([
      ['checksum', 'backup_label'],
      ['size', 'tablespace_map'],
      ['duplicate', 'PG_VERSION'],
      ['missing', 'pg_tblspc/16384/PG_15_202209061/5/16385'],
    ]);
    expect(r.checked).toBe(2);

    const sum = createHash('sha256').update('15\n').digest('hex');
    const sha = new ManifestVerifier(parseManifest(manifest([`{ "Path": "PG_VERSION", "Size": 3, "Checksum-Algorithm": "SHA256", "Checksum": "${sum}" }`])));
    expect(sha.needsOtherDigest()).toBe(true);
    expect(() => sha.checkCrc32c('PG_VERSION', 3, 0)).toThrow(/SHA256/);
  });
});
