import { describe, it, expect } from 'vitest';
import {
  checkSegmentPages,
  IncrementalPageChecker,
  magicForServerVersion,
  readLongPageHeader,
  readPageHeader,
  LONG_PAGE_HEADER_SIZE,
  SHORT_PAGE_HEADER_SIZE,
  XLP_LONG_HEADER,
  XLP_FIRST_IS_CONTRECORD,
  XLP_BKP_REMOVABLE,
  type SegmentExpectation,
} from '../../src/wal/page.js';
import { fixtureSegment, fixtureSystemId, rng, FIXTURE_BLOCK_SIZE, FIXTURE_MAGIC, FIXTURE_SEG_NO, FIXTURE_SEG_SIZE, FIXTURE_TLI } from './fixture.js';

const BS = FIXTURE_BLOCK_SIZE;
const PAGES = FIXTURE_SEG_SIZE / BS;
const MIDDLE = 40 * BS; // offset of a page in the middle of the segment

function expectation(over: Partial<SegmentExpectation> = {}): SegmentExpectation {
  return {
    segNo: FIXTURE_SEG_NO,
    segSize: FIXTURE_SEG_SIZE,
    tli: FIXTURE_TLI,
    blockSize: BS,
    systemId: fixtureSystemId(),
    magic: FIXTURE_MAGIC,
    ...over,
  };
}

/** Feed `data` (the segment from offset `start`) in pieces of the given sizes; the first problem and where it came. */
function feedPieces(checker: IncrementalPageChecker, data: Buffer, sizes: Iterable<number>, start = 0): { problem?: string; at?: number } {
  let pos = 0;
  for (const size of sizes) {
    if (pos >= data.length) break;
    const piece = data.subarray(pos, Math.min(pos + size, data.length));
    const problem = checker.feed(start + pos, piece);
    if (problem !== undefined) return { problem, at: start + pos };
    pos += piece.length;
  }
  if (pos < data.length) {
    const problem = checker.feed(start + pos, data.subarray(pos));
    if (problem !== undefined) return { problem, at: start + pos };
  }
  return {};
}

function* fixedSizes(n: number): Generator<number> {
  for (;;) yield n;
}

function* randomSizes(seed: number, max: number): Generator<number> {
  const r = rng(seed);
  for (;;) yield 1 + Math.floor(r() * max);
}

function incrementalProblem(data: Buffer, exp: SegmentExpectation, sizes: Iterable<number> = fixedSizes(data.length)): string | undefined {
  return feedPieces(new IncrementalPageChecker(exp), data, sizes).problem;
}

describe('magicForServerVersion', () => {
  it.each<[number, number | undefined]>([
    [150004, 0xd110],
    [150000, 0xd110],
    [180001, 0xd118],
    [130000, 0xd106],
    [140011, 0xd10d],
    [160004, 0xd113],
    [170002, 0xd116],
    [190000, undefined],
    [120000, undefined],
  ])('%i -> %s', (version, magic) => {
    expect(magicForServerVersion(version)).toBe(magic);
  });
});

describe('page header layout (little-endian)', () => {
  it('reads a hand-written long header', () => {
    const golden = Buffer.from(
      '10d1' + // magic 0xD110
        '0600' + // info: LONG_HEADER | BKP_REMOVABLE
        '03000000' + // tli 3
        '0000002c01000000' + // pageaddr 1/2C000000
        '10000000' + // rem_len 16
        '00000000' + // padding
        '0807060504030201' + // sysid 0x0102030405060708
        '00000001' + // seg size 16 MiB
        '00200000', // block size 8192
      'hex',
    );
    expect(golden.length).toBe(LONG_PAGE_HEADER_SIZE);
    expect(readLongPageHeader(golden)).toEqual({
      magic: 0xd110,
      info: XLP_LONG_HEADER | XLP_BKP_REMOVABLE,
      tli: 3,
      pageAddr: 0x12c000000n,
      remLen: 16,
      systemId: 0x0102030405060708n,
      segSize: 16 * 1024 * 1024,
      blockSize: 8192,
    });
    expect(readPageHeader(golden)).toEqual({ magic: 0xd110, info: 6, tli: 3, pageAddr: 0x12c000000n, remLen: 16 });
    expect(() => readLongPageHeader(golden.subarray(0, 39))).toThrow();
  });

  it('reads the real first page of segment 7', () => {
    const seg = fixtureSegment();
    // The bytes, as dumped from the file.
    expect(seg.subarray(0, 40).toString('hex')).toBe('10d1' + '0700' + '01000000' + '0000700000000000' + '67000000' + '00000000' + 'bb22525c2478026b' + '00001000' + '00200000');
    const h = readLongPageHeader(seg);
    expect(h).toEqual({
      magic: 0xd110,
      info: XLP_FIRST_IS_CONTRECORD | XLP_LONG_HEADER | XLP_BKP_REMOVABLE,
      tli: 1,
      pageAddr: 0x700000n,
      remLen: 0x67,
      systemId: 0x6b0278245c5222bbn,
      segSize: 1048576,
      blockSize: 8192,
    });
    expect(h.systemId).toBe(fixtureSystemId());
    expect(fixtureSystemId()).toBe(7710857609574752955n);
    expect(readPageHeader(seg, BS)).toMatchObject({ magic: 0xd110, tli: 1, pageAddr: 0x702000n });
    expect(SHORT_PAGE_HEADER_SIZE).toBe(24);
  });
});

describe('checkSegmentPages on the real PG15 segment', () => {
  it('the whole segment passes, with and without an expected magic and sysid', () => {
    const seg = fixtureSegment();
    expect(checkSegmentPages(seg, seg.length, expectation())).toEqual({ ok: true, problems: [], unknownMagic: undefined, pages: PAGES });
    const loose = checkSegmentPages(seg, seg.length, expectation({ magic: undefined, systemId: undefined }));
    expect(loose.ok).toBe(true);
    expect(loose.unknownMagic).toBeUndefined();
  });

  it('a file named on a later timeline may hold pages of an ancestor timeline', () => {
    const seg = fixtureSegment();
    expect(checkSegmentPages(seg, seg.length, expectation({ tli: 3 })).ok).toBe(true);
  });

  it('a half-written partial file (zeros after the written data) passes', () => {
    const seg = fixtureSegment();
    seg.fill(0, FIXTURE_SEG_SIZE / 2);
    const r = checkSegmentPages(seg, FIXTURE_SEG_SIZE / 2, expectation());
    expect(r).toMatchObject({ ok: true, pages: PAGES / 2 });
    // Written data ending inside a page (after its header) counts that page.
    expect(checkSegmentPages(seg, 3 * BS + 100, expectation())).toMatchObject({ ok: true, pages: 4 });
  });

  it('empty and too-short data', () => {
    const seg = fixtureSegment();
    expect(checkSegmentPages(seg, 0, expectation())).toMatchObject({ ok: true, pages: 0 });
    expect(checkSegmentPages(seg, 39, expectation())).toMatchObject({ ok: false, problems: ['segment shorter than its long page header'] });
  });

  it('an unknown magic is reported but not fatal when no magic is expected', () => {
    const seg = fixtureSegment();
    for (let off = 0; off < seg.length; off += BS) seg.writeUInt16LE(0xd120, off);
    const r = checkSegmentPages(seg, seg.length, expectation({ magic: undefined }));
    expect(r).toMatchObject({ ok: true, unknownMagic: 0xd120, pages: PAGES });
  });
});

/** Each corruption: how to damage the segment (or the expectation) and the message both checkers must give. */
interface Corruption {
  name: string;
  damage?: (seg: Buffer) => void;
  exp?: Partial<SegmentExpectation>;
  whole: RegExp;
  incremental: RegExp;
}

const corruptions: Corruption[] = [
  {
    name: 'wrong system identifier',
    exp: { systemId: 7710857609574752956n },
    whole: /system identifier 7710857609574752955 differs from the server's 7710857609574752956/,
    incremental: /system identifier 7710857609574752955 differs/,
  },
  {
    name: 'wrong segment size in the long header',
    damage: (seg) => seg.writeUInt32LE(16 * 1024 * 1024, 32),
    whole: /segment size 16777216 in header, 1048576 expected/,
    incremental: /segment size 16777216 in header, 1048576 expected/,
  },
  {
    name: 'wrong block size in the long header',
    damage: (seg) => seg.writeUInt32LE(16384, 36),
    whole: /block size 16384 in header, 8192 expected/,
    incremental: /block size 16384 in header/,
  },
  {
    name: 'wrong magic when one is expected (a PG16 server)',
    exp: { magic: 0xd113 },
    whole: /page magic 0xd110 where 0xd113 was expected/,
    incremental: /page magic 0xd110 where 0xd113 was expected/,
  },
  {
    name: 'magic of a middle page differs from the first page',
    damage: (seg) => seg.writeUInt16LE(0xd113, MIDDLE),
    whole: /page at offset 327680: magic 0xd113 differs/,
    incremental: /page at offset 327680: magic 0xd113 differs/,
  },
  {
    name: 'page address off by one page in a middle page',
    damage: (seg) => seg.writeBigUInt64LE(0x700000n + BigInt(MIDDLE) + BigInt(BS), MIDDLE + 8),
    whole: /page at offset 327680: address 0\/752000 where 0\/750000 was expected/,
    incremental: /page at offset 327680: address 0\/752000 where 0\/750000 was expected/,
  },
  {
    name: 'file renamed to segment 8',
    exp: { segNo: 8n },
    whole: /page at offset 0: address 0\/700000 where 0\/800000 was expected/,
    incremental: /page at offset 0: address 0\/700000 where 0\/800000 was expected/,
  },
  {
    name: 'pages on timeline 2 in a file named for timeline 1',
    damage: (seg) => {
      for (let off = 0; off < seg.length; off += BS) seg.writeUInt32LE(2, off + 4);
    },
    whole: /page at offset 0: timeline 2 is not an ancestor of file timeline 1/,
    incremental: /page at offset 0: timeline 2 is not an ancestor of file timeline 1/,
  },
  {
    name: 'a middle page on a later timeline than the file name',
    damage: (seg) => seg.writeUInt32LE(2, MIDDLE + 4),
    whole: /page at offset 327680: timeline 2 is not an ancestor of file timeline 1/,
    incremental: /page at offset 327680: timeline 2 is not an ancestor of file timeline 1/,
  },
  {
    name: 'a zeroed page header in the middle of the written data',
    damage: (seg) => seg.fill(0, MIDDLE, MIDDLE + SHORT_PAGE_HEADER_SIZE),
    // A zero header reads as the zero-filled tail after XLOG_SWITCH, so the next real header is the error.
    whole: /page at offset 335872 has a header after zero-filled pages/,
    incremental: /page at offset 335872 has a header after zero-filled pages/,
  },
  {
    name: 'first page without the long header flag',
    damage: (seg) => seg.writeUInt16LE(seg.readUInt16LE(2) & ~XLP_LONG_HEADER, 2),
    whole: /first page lacks the long header flag/,
    incremental: /first page lacks the long header flag/,
  },
  {
    name: 'long header flag on a middle page',
    damage: (seg) => seg.writeUInt16LE(seg.readUInt16LE(MIDDLE + 2) | XLP_LONG_HEADER, MIDDLE + 2),
    whole: /page at offset 327680: long header flag on a page that is not first/,
    incremental: /page at offset 327680: long header flag on a page that is not first/,
  },
  {
    name: 'timeline 0 in a middle page',
    damage: (seg) => seg.writeUInt32LE(0, MIDDLE + 4),
    whole: /page at offset 327680: timeline 0/,
    incremental: /page at offset 327680: timeline 0/,
  },
];

describe.each(corruptions)('corruption: $name', (c) => {
  const damaged = (): Buffer => {
    const seg = fixtureSegment();
    c.damage?.(seg);
    return seg;
  };

  it('checkSegmentPages reports it', () => {
    const seg = damaged();
    const r = checkSegmentPages(seg, seg.length, expectation(c.exp));
    expect(r.ok).toBe(false);
    expect(r.problems.join('; ')).toMatch(c.whole);
  });

  it('IncrementalPageChecker reports it, whole and in pieces', () => {
    const seg = damaged();
    expect(incrementalProblem(seg, expectation(c.exp))).toMatch(c.incremental);
    expect(incrementalProblem(seg, expectation(c.exp), fixedSizes(4096))).toMatch(c.incremental);
    expect(incrementalProblem(seg, expectation(c.exp), randomSizes(7, 3000))).toMatch(c.incremental);
  });
});

describe('zero-filled tail after pg_switch_wal', () => {
  // After an XLOG_SWITCH record the server leaves the rest of the segment as zeros, headers included.
  const switched = (): Buffer => {
    const seg = fixtureSegment();
    seg.fill(0, MIDDLE);
    return seg;
  };

  it('checkSegmentPages accepts it', () => {
    const seg = switched();
    const r = checkSegmentPages(seg, seg.length, expectation());
    expect(r.problems).toEqual([]);
    expect(r.ok).toBe(true);
  });

  it('IncrementalPageChecker accepts it, whole and in pieces', () => {
    expect(incrementalProblem(switched(), expectation())).toBeUndefined();
    expect(incrementalProblem(switched(), expectation(), randomSizes(11, 5000))).toBeUndefined();
  });
});

describe('IncrementalPageChecker on the real PG15 segment', () => {
  it('passes fed whole', () => {
    const checker = new IncrementalPageChecker(expectation());
    expect(checker.feed(0, fixtureSegment())).toBeUndefined();
    expect(checker.sawLongHeader).toBe(true);
    expect(checker.unknownMagic).toBeUndefined();
  });

  it('passes fed in random-sized pieces', () => {
    const seg = fixtureSegment();
    for (const [seed, max] of [
      [1, 50],
      [2, 700],
      [3, 9000],
      [4, 40000],
      [5, 200000],
    ] as const) {
      const checker = new IncrementalPageChecker(expectation());
      expect(feedPieces(checker, seg, randomSizes(seed, max)), `seed ${seed}`).toEqual({});
      expect(checker.sawLongHeader).toBe(true);
    }
  });

  it('passes fed in whole pages, and in pieces ending just inside each header', () => {
    const seg = fixtureSegment();
    expect(incrementalProblem(seg, expectation(), fixedSizes(BS))).toBeUndefined();
    expect(incrementalProblem(seg, expectation(), fixedSizes(BS + 1))).toBeUndefined();
    expect(incrementalProblem(seg, expectation(), fixedSizes(BS + 23))).toBeUndefined();
    expect(incrementalProblem(seg, expectation(), fixedSizes(BS - 1))).toBeUndefined();
  });

  it('passes split at every offset 0..40 inside the first (long) page header', () => {
    const seg = fixtureSegment();
    for (let k = 0; k <= LONG_PAGE_HEADER_SIZE; k++) {
      const checker = new IncrementalPageChecker(expectation());
      expect(checker.feed(0, seg.subarray(0, k)), `split at ${k}`).toBeUndefined();
      expect(checker.feed(k, seg.subarray(k)), `split at ${k}`).toBeUndefined();
      expect(checker.sawLongHeader).toBe(true);
    }
  });

  it('passes split at every offset inside the second page header, and across several feeds', () => {
    const seg = fixtureSegment();
    for (let k = BS - 1; k <= BS + SHORT_PAGE_HEADER_SIZE + 1; k++) {
      const checker = new IncrementalPageChecker(expectation());
      expect(checker.feed(0, seg.subarray(0, k)), `split at ${k}`).toBeUndefined();
      expect(checker.feed(k, seg.subarray(k)), `split at ${k}`).toBeUndefined();
    }
    // One byte at a time through the first two headers, then the rest.
    const checker = new IncrementalPageChecker(expectation());
    for (let i = 0; i < 48; i++) expect(checker.feed(i, seg.subarray(i, i + 1))).toBeUndefined();
    expect(checker.feed(48, seg.subarray(48, BS + 5))).toBeUndefined();
    for (let i = BS + 5; i < BS + 30; i++) expect(checker.feed(i, seg.subarray(i, i + 1))).toBeUndefined();
    expect(checker.feed(BS + 30, seg.subarray(BS + 30))).toBeUndefined();
  });

  it('catches a corrupted first header however it is split', () => {
    const seg = fixtureSegment();
    seg.writeUInt32LE(16 * 1024 * 1024, 32);
    for (let k = 0; k <= LONG_PAGE_HEADER_SIZE; k++) {
      const checker = new IncrementalPageChecker(expectation());
      const first = checker.feed(0, seg.subarray(0, k));
      const second = first ?? checker.feed(k, seg.subarray(k));
      expect(second, `split at ${k}`).toMatch(/segment size 16777216 in header/);
    }
  });

  it('catches a corrupted middle header however it is split', () => {
    const seg = fixtureSegment();
    seg.writeBigUInt64LE(0x700000n + BigInt(MIDDLE) + BigInt(BS), MIDDLE + 8);
    for (let k = MIDDLE; k < MIDDLE + SHORT_PAGE_HEADER_SIZE; k++) {
      const checker = new IncrementalPageChecker(expectation());
      expect(checker.feed(0, seg.subarray(0, k)), `split at ${k}`).toBeUndefined();
      expect(checker.feed(k, seg.subarray(k)), `split at ${k}`).toMatch(/page at offset 327680: address/);
    }
  });

  it('a stream starting mid-segment checks the pages after its start', () => {
    const start = 3 * BS + 100;
    const seg = fixtureSegment();
    const checker = new IncrementalPageChecker(expectation());
    expect(feedPieces(checker, seg.subarray(start), randomSizes(11, 5000), start)).toEqual({});
    expect(checker.sawLongHeader).toBe(false);

    const bad = fixtureSegment();
    bad.writeUInt32LE(2, MIDDLE + 4);
    const checker2 = new IncrementalPageChecker(expectation());
    expect(feedPieces(checker2, bad.subarray(start), fixedSizes(5000), start).problem).toMatch(/page at offset 327680: timeline 2/);
  });

  it('a mid-segment start with an unexpected magic is caught when a magic is expected', () => {
    const seg = fixtureSegment();
    for (let off = 0; off < seg.length; off += BS) seg.writeUInt16LE(0xd120, off);
    const strict = new IncrementalPageChecker(expectation());
    expect(strict.feed(BS, seg.subarray(BS))).toMatch(/page at offset 8192: magic 0xd120 where 0xd110 was expected/);
    const loose = new IncrementalPageChecker(expectation({ magic: undefined }));
    expect(loose.feed(BS, seg.subarray(BS))).toBeUndefined();
  });

  it('an unknown magic is recorded, not fatal, when no magic is expected', () => {
    const seg = fixtureSegment();
    for (let off = 0; off < seg.length; off += BS) seg.writeUInt16LE(0xd120, off);
    const checker = new IncrementalPageChecker(expectation({ magic: undefined }));
    expect(feedPieces(checker, seg, fixedSizes(10000))).toEqual({});
    expect(checker.unknownMagic).toBe(0xd120);
  });

  it('refuses pieces out of order while a header is pending', () => {
    const seg = fixtureSegment();
    const checker = new IncrementalPageChecker(expectation());
    expect(checker.feed(0, seg.subarray(0, 10))).toBeUndefined();
    expect(checker.feed(11, seg.subarray(11, 100))).toBe('page checker fed out of order');
  });

  it('unknown info bits on a middle page are caught by both checkers', () => {
    const seg = fixtureSegment();
    seg.writeUInt16LE(seg.readUInt16LE(MIDDLE + 2) | 0x0010, MIDDLE + 2);
    expect(checkSegmentPages(seg, seg.length, expectation()).problems.join()).toMatch(/page at offset 327680: unknown info flags 0x1/);
    expect(incrementalProblem(seg, expectation()) ?? 'no problem reported').toMatch(/page at offset 327680/);
  });
});
