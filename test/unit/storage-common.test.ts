import { describe, expect, it } from 'vitest';
import { isArchiveName, listedUnder, mapLimit, quarantineName } from '../../src/storage/common.js';
import { assertArchiveName } from '../../src/storage/types.js';

const SEG = '00000001000000000000000A';

describe('quarantineName', () => {
  const when = new Date('2025-01-02T03:04:05.678Z');
  it('is quarantine/<name>.<UTC second>Z, with a counter after the first', () => {
    expect(quarantineName(SEG, when)).toBe(`quarantine/${SEG}.20250102T030405Z`);
    expect(quarantineName(SEG, when, 3)).toBe(`quarantine/${SEG}.20250102T030405.3Z`);
    expect(quarantineName('00000002.history', when)).toBe('quarantine/00000002.history.20250102T030405Z');
  });
  it('gives names the archive accepts', () => {
    for (const n of [SEG, `${SEG}.partial`, `${SEG}.00000028.backup`, '00000002.history']) {
      expect(() => assertArchiveName(quarantineName(n, when))).not.toThrow();
      expect(() => assertArchiveName(quarantineName(n, when, 12))).not.toThrow();
    }
  });
});

describe('isArchiveName', () => {
  it('accepts WAL names and quarantine copies only', () => {
    expect(isArchiveName(SEG)).toBe(true);
    expect(isArchiveName(`quarantine/${SEG}.20250102T030405Z`)).toBe(true);
    for (const bad of ['', SEG.toLowerCase(), `${SEG}.gz`, `quarantine/../${SEG}.20250102T030405Z`, `x/${SEG}`]) {
      expect(isArchiveName(bad)).toBe(false);
    }
  });
});

describe('listedUnder', () => {
  it('matches by prefix and hides quarantine unless asked', () => {
    expect(listedUnder(SEG, '')).toBe(true);
    expect(listedUnder(SEG, '00000001')).toBe(true);
    expect(listedUnder(SEG, '00000002')).toBe(false);
    const q = `quarantine/${SEG}.20250102T030405Z`;
    expect(listedUnder(q, '')).toBe(false);
    expect(listedUnder(q, 'q')).toBe(false);
    expect(listedUnder(q, 'quarantine/')).toBe(true);
    expect(listedUnder(q, `quarantine/${SEG}`)).toBe(true);
    expect(listedUnder(q, 'quarantine/00000002')).toBe(false);
  });
});

describe('mapLimit', () => {
  it('keeps order and bounds concurrency', async () => {
    let running = 0;
    let peak = 0;
    const out = await mapLimit([5, 1, 4, 2, 3, 0, 6], 3, async (n) => {
      running++;
      peak = Math.max(peak, running);
      await new Promise((r) => setTimeout(r, n));
      running--;
      return n * 10;
    });
    expect(out).toEqual([50, 10, 40, 20, 30, 0, 60]);
    expect(peak).toBe(3);
    expect(await mapLimit([], 4, async () => 1)).toEqual([]);
  });
});
