import { describe, it, expect } from 'vitest';
import {
  walFileName,
  parseWalFileName,
  lsnToSegNo,
  segNoToLsn,
  segmentOffset,
  segmentStart,
  segmentsPerXLogId,
  parseSizeSetting,
  isValidSegSize,
  assertSegSize,
  isWalFileName,
  historyFileName,
  HISTORY_NAME_RE,
  BACKUP_NAME_RE,
} from '../../src/wal/segment.js';
import { parseLsn } from '../../src/wal/lsn.js';

const MB = 1024 * 1024;
const GB = 1024 * MB;

/** Name of the segment holding `lsn` (XLByteToSeg + XLogFileName). */
function nameAt(lsnText: string, tli: number, segSize: number): string {
  return walFileName(tli, lsnToSegNo(parseLsn(lsnText), segSize), segSize);
}

describe('walFileName', () => {
  it('16 MiB: 1/2C3D4F58 on timeline 1', () => {
    expect(lsnToSegNo(0x12c3d4f58n, 16 * MB)).toBe(300n);
    expect(nameAt('1/2C3D4F58', 1, 16 * MB)).toBe('00000001000000010000002C');
  });

  it('1 MiB: 0/B023F8 and 1/0', () => {
    expect(nameAt('0/B023F8', 1, MB)).toBe('00000001000000000000000B');
    expect(lsnToSegNo(0x100000000n, MB)).toBe(4096n);
    expect(walFileName(1, 4096n, MB)).toBe('000000010000000100000000');
  });

  it('1 GiB: the last field runs 0-3', () => {
    expect(nameAt('5/C0000000', 1, GB)).toBe('000000010000000500000003');
    expect(nameAt('5/0', 1, GB)).toBe('000000010000000500000000');
    expect(nameAt('5/80000000', 1, GB)).toBe('000000010000000500000002');
  });

  it('timeline goes in the first field, upper-case hex', () => {
    expect(walFileName(0xab, 0x12cn, 16 * MB)).toBe('000000AB000000010000002C');
    expect(walFileName(0xffffffff, 0n, 16 * MB)).toBe('FFFFFFFF0000000000000000');
  });

  it('segments per xlogid', () => {
    expect(segmentsPerXLogId(MB)).toBe(4096n);
    expect(segmentsPerXLogId(16 * MB)).toBe(256n);
    expect(segmentsPerXLogId(GB)).toBe(4n);
  });
});

describe('segment boundaries', () => {
  // [segment size, last byte of a segment, its name, first byte of the next, its name]
  const cases: [string, number, string, string, string, string][] = [
    ['1 MiB', MB, '0/FFFFF', '000000010000000000000000', '0/100000', '000000010000000000000001'],
    ['1 MiB, end of xlogid', MB, '0/FFFFFFFF', '000000010000000000000FFF', '1/0', '000000010000000100000000'],
    ['1 MiB, mid', MB, '0/B0FFFFF', '0000000100000000000000B0', '0/B100000', '0000000100000000000000B1'],
    ['16 MiB', 16 * MB, '1/2CFFFFFF', '00000001000000010000002C', '1/2D000000', '00000001000000010000002D'],
    ['16 MiB, end of xlogid', 16 * MB, '1/FFFFFFFF', '0000000100000001000000FF', '2/0', '000000010000000200000000'],
    ['16 MiB, first segment', 16 * MB, '0/FFFFFF', '000000010000000000000000', '0/1000000', '000000010000000000000001'],
    ['1 GiB', GB, '0/3FFFFFFF', '000000010000000000000000', '0/40000000', '000000010000000000000001'],
    ['1 GiB, end of xlogid', GB, '5/FFFFFFFF', '000000010000000500000003', '6/0', '000000010000000600000000'],
  ];

  it.each(cases)('%s', (_label, segSize, lastText, lastName, nextText, nextName) => {
    const last = parseLsn(lastText);
    const next = parseLsn(nextText);
    expect(next).toBe(last + 1n);
    expect(nameAt(lastText, 1, segSize)).toBe(lastName);
    expect(nameAt(nextText, 1, segSize)).toBe(nextName);
    expect(segmentOffset(last, segSize)).toBe(segSize - 1);
    expect(segmentOffset(next, segSize)).toBe(0);
    expect(segmentStart(last, segSize)).toBe(next - BigInt(segSize));
    expect(segmentStart(next, segSize)).toBe(next);
    expect(lsnToSegNo(next, segSize)).toBe(lsnToSegNo(last, segSize) + 1n);
    expect(segNoToLsn(lsnToSegNo(next, segSize), segSize)).toBe(next);
    expect(parseWalFileName(lastName, segSize)).toEqual({ tli: 1, segNo: lsnToSegNo(last, segSize) });
    expect(parseWalFileName(nextName, segSize)).toEqual({ tli: 1, segNo: lsnToSegNo(next, segSize) });
  });
});

describe('parseWalFileName', () => {
  it('inverts walFileName', () => {
    expect(parseWalFileName('00000001000000010000002C', 16 * MB)).toEqual({ tli: 1, segNo: 300n });
    expect(parseWalFileName('00000001000000000000000B', MB)).toEqual({ tli: 1, segNo: 11n });
    expect(parseWalFileName('000000010000000100000000', MB)).toEqual({ tli: 1, segNo: 4096n });
    expect(parseWalFileName('000000010000000500000003', GB)).toEqual({ tli: 1, segNo: 23n });
    expect(parseWalFileName('0000000A0000000000000007', MB)).toEqual({ tli: 10, segNo: 7n });
    expect(parseWalFileName('FFFFFFFFFFFFFFFF000000FF', 16 * MB)).toEqual({ tli: 0xffffffff, segNo: 0xffffffffn * 256n + 255n });
    for (const segSize of [MB, 2 * MB, 16 * MB, 64 * MB, GB]) {
      for (const segNo of [0n, 1n, 3n, 255n, 4095n, 4096n, 123456n]) {
        const name = walFileName(3, segNo, segSize);
        expect(parseWalFileName(name, segSize)).toEqual({ tli: 3, segNo });
      }
    }
  });

  it('accepts the highest last field for each size', () => {
    expect(parseWalFileName('000000010000000000000FFF', MB).segNo).toBe(4095n);
    expect(parseWalFileName('0000000100000000000000FF', 16 * MB).segNo).toBe(255n);
    expect(parseWalFileName('000000010000000000000003', GB).segNo).toBe(3n);
  });

  it.each<[string, number]>([
    ['000000010000000000000100', 16 * MB],
    ['000000010000000000001000', MB],
    ['000000010000000000000004', GB],
    ['0000000100000000FFFFFFFF', 16 * MB],
  ])('rejects %s: last field too high for %i-byte segments', (name, segSize) => {
    expect(() => parseWalFileName(name, segSize)).toThrow(/not valid for/);
  });

  it.each([
    '00000001000000010000002c',
    '00000001000000010000002',
    '00000001000000010000002C0',
    '',
    '00000001000000010000002G',
    '00000001000000010000002C.partial',
    ' 00000001000000010000002C',
    '00000002.history',
  ])('rejects the malformed name %j', (name) => {
    expect(() => parseWalFileName(name, 16 * MB)).toThrow(/not a WAL segment file name/);
  });

  it('rejects timeline 0', () => {
    expect(() => parseWalFileName('000000000000000100000002', 16 * MB)).toThrow(/timeline 0/);
  });

  it('isWalFileName only accepts 24 upper-case hex digits', () => {
    expect(isWalFileName('00000001000000010000002C')).toBe(true);
    expect(isWalFileName('00000001000000010000002c')).toBe(false);
    expect(isWalFileName('00000001000000010000002C.gz')).toBe(false);
  });
});

describe('other file names', () => {
  it('history files', () => {
    expect(historyFileName(2)).toBe('00000002.history');
    expect(historyFileName(0x1a)).toBe('0000001A.history');
    expect(HISTORY_NAME_RE.test('00000002.history')).toBe(true);
    expect(HISTORY_NAME_RE.test('0000001a.history')).toBe(false);
  });

  it('backup history files', () => {
    expect(BACKUP_NAME_RE.test('000000010000000000000002.00000028.backup')).toBe(true);
    expect(BACKUP_NAME_RE.test('000000010000000000000002.backup')).toBe(false);
  });
});

describe('segment sizes', () => {
  it.each<[string, number]>([
    ['16MB', 16777216],
    ['1GB', 1073741824],
    ['1024kB', 1048576],
    ['1MB', 1048576],
    ['64MB', 67108864],
    ['8192', 8192],
    ['8192B', 8192],
    [' 16MB ', 16777216],
  ])('parseSizeSetting(%j) = %i', (text, bytes) => {
    expect(parseSizeSetting(text)).toBe(bytes);
  });

  it.each(['', 'MB', '16 XB', '16mb', '1.5GB', '-16MB', '16TB'])('parseSizeSetting rejects %j', (text) => {
    expect(() => parseSizeSetting(text)).toThrow(/cannot parse size setting/);
  });

  it('valid sizes are powers of two from 1 MiB to 1 GiB', () => {
    for (let s = MB; s <= GB; s *= 2) expect(isValidSegSize(s)).toBe(true);
    for (const s of [0, 512 * 1024, 3 * MB, 2 * GB, MB + 1, 1.5 * MB, Number.NaN]) expect(isValidSegSize(s)).toBe(false);
    expect(() => assertSegSize(16 * MB)).not.toThrow();
    expect(() => assertSegSize(3 * MB)).toThrow(RangeError);
  });
});
