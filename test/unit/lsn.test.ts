import { describe, it, expect } from 'vitest';
import { formatLsn, parseLsn, LsnParseError, INVALID_LSN } from '../../src/wal/lsn.js';
import { unixMsToPgTime, pgTimeToUnixMs, PG_EPOCH_OFFSET_US } from '../../src/wal/time.js';

describe('formatLsn', () => {
  it.each<[bigint, string]>([
    [0n, '0/0'],
    [0x16b3748n, '0/16B3748'],
    [0x3000000n, '0/3000000'],
    [0x12c3d4f58n, '1/2C3D4F58'],
    [0x10000002cn, '1/2C'],
    [0xffffffffn, '0/FFFFFFFF'],
    [0x100000000n, '1/0'],
    [0xabcdef0123456789n, 'ABCDEF01/23456789'],
    [0xffffffffffffffffn, 'FFFFFFFF/FFFFFFFF'],
  ])('%s -> %s (upper case, no padding)', (lsn, text) => {
    expect(formatLsn(lsn)).toBe(text);
  });

  it('rejects values outside uint64', () => {
    expect(() => formatLsn(-1n)).toThrow(RangeError);
    expect(() => formatLsn(1n << 64n)).toThrow(RangeError);
  });

  it('INVALID_LSN is 0/0', () => {
    expect(formatLsn(INVALID_LSN)).toBe('0/0');
  });
});

describe('parseLsn', () => {
  it.each<[string, bigint]>([
    ['0/0', 0n],
    ['0/16B3748', 0x16b3748n],
    ['0/16b3748', 0x16b3748n],
    ['00000001/0000002C', 0x10000002cn],
    ['00000001/0000002c', 0x10000002cn],
    ['1/2C3D4F58', 0x12c3d4f58n],
    ['FFFFFFFF/FFFFFFFF', 0xffffffffffffffffn],
    ['ffffffff/ffffffff', 0xffffffffffffffffn],
    ['0/B023F8', 0xb023f8n],
  ])('%s', (text, lsn) => {
    expect(parseLsn(text)).toBe(lsn);
  });

  it.each(['', '1/', '/1', 'g/1', '1/g', '1/2/3', '123456789/0', '0/123456789', '1', '-1/0', '0x1/0', '1 /0', '1/ 0'])('rejects %j', (text) => {
    expect(() => parseLsn(text)).toThrow(LsnParseError);
  });

  it('the error names the offending text', () => {
    expect(() => parseLsn('g/1')).toThrow(/invalid LSN "g\/1"/);
  });

  it('round-trips through formatLsn', () => {
    for (const lsn of [0n, 1n, 0xfffn, 0x1000n, 0xdb2210n, 0x5c0000000n, 0x7fffffffffffffffn, 0xffffffffffffffffn]) {
      expect(parseLsn(formatLsn(lsn))).toBe(lsn);
    }
  });
});

describe('PostgreSQL epoch times', () => {
  it('the Unix time of 2000-01-01 UTC is PG time 0', () => {
    expect(Date.UTC(2000, 0, 1)).toBe(946684800000);
    expect(unixMsToPgTime(946684800000)).toBe(0n);
    expect(pgTimeToUnixMs(0n)).toBe(946684800000);
    expect(PG_EPOCH_OFFSET_US).toBe(946684800000000n);
  });

  it('converts in microseconds, both directions', () => {
    expect(unixMsToPgTime(946684800001)).toBe(1000n);
    expect(unixMsToPgTime(0)).toBe(-946684800000000n);
    // 2024-01-01T00:00:00.123Z
    const ms = Date.UTC(2024, 0, 1, 0, 0, 0, 123);
    const pg = unixMsToPgTime(ms);
    expect(pg).toBe(757382400123000n);
    expect(pgTimeToUnixMs(pg)).toBe(ms);
    expect(pgTimeToUnixMs(1500n)).toBe(946684800001.5);
  });
});
