import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, readFile, rm, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { findStreamingStart, listWalFiles, readSegmentSystemId, uncompressedSize } from '../../src/sink/scan.js';
import { fixtureSegment, FIXTURE_GZ_PATH, FIXTURE_NAME, FIXTURE_SEG_SIZE } from './fixture.js';

const MB = 1024 * 1024;
const SYSID = 7710857609574752955n;

let dir = '';
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'walstream-scan-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const put = (name: string, data: Buffer | number): Promise<void> => writeFile(join(dir, name), typeof data === 'number' ? Buffer.alloc(data) : data);

describe('findStreamingStart', () => {
  it('an empty directory has no start', async () => {
    expect(await findStreamingStart(dir, MB)).toBeUndefined();
  });

  it('files that are not segments are ignored', async () => {
    await put('00000002.history', Buffer.from('1\t0/B023F8\tx\n'));
    await put('00000001000000000000000a', MB); // lower case
    await put('000000010000000000000007.tmp', MB);
    await put('.000000010000000000000007.partial', MB);
    await put('000000010000000000000007.00000028.backup', 100);
    await put('000000010000000000001000', MB); // last field too high for 1 MiB segments
    await put('000000000000000000000007', MB); // timeline 0
    expect(await findStreamingStart(dir, MB)).toBeUndefined();
  });

  it('after a complete segment: the start of the next one', async () => {
    await put(FIXTURE_NAME, fixtureSegment());
    const r = await findStreamingStart(dir, FIXTURE_SEG_SIZE);
    expect(r).toMatchObject({ start: 0x800000n, tli: 1, entry: { file: FIXTURE_NAME, segNo: 7n, tli: 1, partial: false, compression: 'none' } });
  });

  it('a .partial is streamed again from its own start', async () => {
    await put(`${FIXTURE_NAME}.partial`, MB);
    const r = await findStreamingStart(dir, MB);
    expect(r).toMatchObject({ start: 0x700000n, tli: 1, entry: { partial: true, segNo: 7n } });
  });

  it('the highest segment number wins', async () => {
    await put('000000010000000000000005', MB);
    await put('000000010000000000000006', MB);
    await put('000000010000000000000007.partial', MB);
    expect(await findStreamingStart(dir, MB)).toMatchObject({ start: 0x700000n, tli: 1 });
    await put('000000010000000000000009', MB);
    expect(await findStreamingStart(dir, MB)).toMatchObject({ start: 0xa00000n, tli: 1, entry: { file: '000000010000000000000009' } });
    // segment numbers compare across the xlogid field: 1/0 > 0/FFF00000
    await put('000000010000000000000FFF', MB);
    await put('000000010000000100000000.partial', MB);
    expect(await findStreamingStart(dir, MB)).toMatchObject({ start: 0x100000000n, entry: { segNo: 4096n, partial: true } });
  });

  it('then the highest timeline', async () => {
    await put('000000010000000000000007', MB);
    await put('000000020000000000000007.partial', MB);
    await put('000000020000000000000006', MB);
    expect(await findStreamingStart(dir, MB)).toMatchObject({ start: 0x700000n, tli: 2, entry: { file: '000000020000000000000007.partial' } });
    await put('000000030000000000000007', MB);
    expect(await findStreamingStart(dir, MB)).toMatchObject({ start: 0x800000n, tli: 3 });
  });

  it('a complete file beats a .partial of the same segment and timeline', async () => {
    await put('000000010000000000000007.partial', MB);
    await put('000000010000000000000007', MB);
    expect(await findStreamingStart(dir, MB)).toMatchObject({ start: 0x800000n, tli: 1, entry: { partial: false } });
  });

  it('the segment size decides the arithmetic', async () => {
    await put('00000001000000010000002C', 16 * MB);
    expect(await findStreamingStart(dir, 16 * MB)).toMatchObject({ start: 0x12d000000n, tli: 1 });
  });

  it('after a crash with several .partial files past the newest complete one: the lowest of them', async () => {
    await put('000000010000000000000005', MB);
    await put('000000010000000000000006.partial', MB);
    await put('000000010000000000000007.partial', MB);
    await put('000000010000000000000003.partial', MB); // stale, before the newest complete segment
    expect(await findStreamingStart(dir, MB)).toMatchObject({ start: 0x600000n, tli: 1, entry: { file: '000000010000000000000006.partial' } });
    // .partial files of other timelines do not count
    await put('000000020000000000000008.partial', MB);
    await put('000000020000000000000009.partial', MB);
    expect(await findStreamingStart(dir, MB)).toMatchObject({ start: 0x800000n, tli: 2, entry: { file: '000000020000000000000008.partial' } });
  });

  it('a complete file of the wrong size throws', async () => {
    await put('000000010000000000000007', MB - 1);
    await expect(findStreamingStart(dir, MB)).rejects.toThrow(/segment file "000000010000000000000007" has incorrect size 1048575, expected 1048576/);
  });

  it('a .partial of any size is accepted', async () => {
    await put('000000010000000000000007.partial', 1234);
    expect(await findStreamingStart(dir, MB)).toMatchObject({ start: 0x700000n });
  });

  it('compressed files: complete .gz by its ISIZE, .gz.partial from its start', async () => {
    await copyFile(FIXTURE_GZ_PATH, join(dir, `${FIXTURE_NAME}.gz`));
    expect(await findStreamingStart(dir, MB)).toMatchObject({ start: 0x800000n, entry: { compression: 'gzip', partial: false } });
    await put('000000010000000000000008.gz.partial', gzipSync(fixtureSegment().subarray(0, 1000)));
    expect(await findStreamingStart(dir, MB)).toMatchObject({ start: 0x800000n, entry: { compression: 'gzip', partial: true, segNo: 8n } });
  });

  it('a complete .gz of the wrong uncompressed size throws', async () => {
    await put(`${FIXTURE_NAME}.gz`, gzipSync(fixtureSegment().subarray(0, MB / 2)));
    await expect(findStreamingStart(dir, MB)).rejects.toThrow(/incorrect uncompressed size 524288, expected 1048576/);
  });
});

describe('listWalFiles', () => {
  it('parses names, suffixes and compression', async () => {
    await put('000000010000000000000007', 0);
    await put('000000010000000000000008.gz', 0);
    await put('000000010000000000000009.zst.partial', 0);
    await put('00000001000000000000000A.partial', 0);
    await put('notes.txt', 0);
    const got = (await listWalFiles(dir, MB)).sort((a, b) => a.file.localeCompare(b.file));
    expect(got).toEqual([
      { file: '000000010000000000000007', tli: 1, segNo: 7n, compression: 'none', partial: false },
      { file: '000000010000000000000008.gz', tli: 1, segNo: 8n, compression: 'gzip', partial: false },
      { file: '000000010000000000000009.zst.partial', tli: 1, segNo: 9n, compression: 'zstd', partial: true },
      { file: '00000001000000000000000A.partial', tli: 1, segNo: 10n, compression: 'none', partial: true },
    ]);
  });
});

describe('uncompressedSize', () => {
  it('reads the gzip ISIZE trailer', async () => {
    expect(await uncompressedSize(FIXTURE_GZ_PATH, 'gzip')).toBe(MB);
    await put('tiny.gz', Buffer.alloc(5));
    expect(await uncompressedSize(join(dir, 'tiny.gz'), 'gzip')).toBe(-1);
  });
});

describe('readSegmentSystemId', () => {
  it('reads the long page header of a plain file', async () => {
    await put(FIXTURE_NAME, fixtureSegment());
    expect(await readSegmentSystemId(join(dir, FIXTURE_NAME), 'none')).toBe(SYSID);
  });

  it('reads the long page header of a .gz file', async () => {
    expect(await readSegmentSystemId(FIXTURE_GZ_PATH, 'gzip')).toBe(SYSID);
    await put('head.gz', gzipSync(fixtureSegment().subarray(0, 40)));
    expect(await readSegmentSystemId(join(dir, 'head.gz'), 'gzip')).toBe(SYSID);
  });

  it('a .partial that is still all zeros or too short has none', async () => {
    await put('zeros', MB);
    await put('short', fixtureSegment().subarray(0, 39));
    await put('zeros.gz', gzipSync(Buffer.alloc(MB)));
    await put('short.gz', gzipSync(fixtureSegment().subarray(0, 39)));
    await put('empty.gz', gzipSync(Buffer.alloc(0)));
    expect(await readSegmentSystemId(join(dir, 'zeros'), 'none')).toBeUndefined();
    expect(await readSegmentSystemId(join(dir, 'short'), 'none')).toBeUndefined();
    expect(await readSegmentSystemId(join(dir, 'zeros.gz'), 'gzip')).toBeUndefined();
    expect(await readSegmentSystemId(join(dir, 'short.gz'), 'gzip')).toBeUndefined();
    expect(await readSegmentSystemId(join(dir, 'empty.gz'), 'gzip')).toBeUndefined();
  });

  it('agrees with the fixture system_identifier file', async () => {
    const text = await readFile(join(FIXTURE_GZ_PATH, '..', 'system_identifier'), 'utf8');
    expect(BigInt(text.trim())).toBe(SYSID);
  });
});
