// The record check in the sink (src/sink/record-check.ts): a finished segment is renamed, and its
// bytes reported durable, only once the record running past its end has been read whole and its
// CRC-32C matched; a record that does not check out (a flipped byte, bytes dropped and the rest
// shifted inside a page, a broken xl_prev) stops the stream before any byte of it is written.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WalDirSink, WalValidationError, type WalDirSinkOptions } from '../../src/sink/wal-dir.js';
import { WalRecordDecoder } from '../../src/wal/records.js';
import { FIXTURE_BLOCK_SIZE, FIXTURE_MAGIC, FIXTURE_NAME, FIXTURE_SEG_NO, FIXTURE_SEG_SIZE, FIXTURE_START, FIXTURE_TLI, fixtureSegment, fixtureSystemId } from './fixture.js';
import { WalBuilder } from '../support/walrecords.js';

const SEG = 1024 * 1024;
let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'walstream-sink-records-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function sink(over: Partial<WalDirSinkOptions> = {}): WalDirSink {
  return new WalDirSink({ dir, segSize: SEG, blockSize: 8192, compression: 'none', noSync: true, systemId: 7300000000000000001n, magic: 0xd110, ...over });
}

function feed(s: WalDirSink, lsn: bigint, data: Buffer, chunk = 100_000): void {
  for (let off = 0; off < data.length; off += chunk) s.write(lsn + BigInt(off), data.subarray(off, Math.min(off + chunk, data.length)));
}

/** Segments 7 and 8 of synthetic WAL: a record crossing from 7 into 8, then more records. */
function twoSegments(): { wal: Buffer; crossing: number; crossingEnd: number; records: number[] } {
  const b = new WalBuilder({ segSize: SEG, firstSegNo: 7 });
  b.fillTo(8 * SEG - 3000, 200);
  const crossing = b.record({ dataLen: 9000 });
  const crossingEnd = b.pos;
  b.fillTo(8 * SEG + 40_000, 150);
  const built = b.build();
  return { wal: Buffer.concat(built.segments), crossing, crossingEnd, records: built.records };
}

async function until(cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in 10 s');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A record of segment 8 whose 2000 bytes before and after lie in its page: offset in `wal`. */
function recordInsideAPage(records: number[]): number {
  const r = records.find((x) => x > 8 * SEG + 8192 && x % 8192 > 2100 && x % 8192 < 6000)!;
  return r - 7 * SEG;
}

describe('the record check of a received stream', () => {
  it('keeps a finished segment .partial, and its last record unreported, until the record running past its end checks out', async () => {
    const { wal, crossing, crossingEnd } = twoSegments();
    expect(crossing).toBeLessThan(8 * SEG);
    expect(crossingEnd).toBeGreaterThan(8 * SEG);
    const s = sink();
    s.begin(7n * BigInt(SEG), 1);
    // Segment 7 whole and segment 8 up to the middle of the crossing record.
    const mid = crossingEnd - 7 * SEG - 1000;
    feed(s, 7n * BigInt(SEG), wal.subarray(0, mid));
    await s.sync();
    // Segment 7's file is synced beside the writes: durable up to the crossing record, not past it.
    await until(() => s.durableLsn === BigInt(crossing));
    expect((await readdir(dir)).sort()).toEqual(['000000010000000000000007.partial', '000000010000000000000008.partial']);
    // The rest of the record (and more): segment 7 gets its name.
    feed(s, 7n * BigInt(SEG) + BigInt(mid), wal.subarray(mid, mid + 20_000));
    await s.endStream();
    expect((await readdir(dir)).sort()).toEqual(['000000010000000000000007', '000000010000000000000008.partial']);
    expect((await readFile(join(dir, '000000010000000000000007'))).equals(wal.subarray(0, SEG))).toBe(true);
    expect(s.durableLsn).toBeGreaterThan(BigInt(crossingEnd));
  });

  it('a stream that ends inside that record leaves the finished segment .partial, to be streamed again', async () => {
    const seg = fixtureSegment();
    // Where the fixture's last whole record ends: the one after it runs on into segment 8.
    const d = new WalRecordDecoder({ segSize: FIXTURE_SEG_SIZE });
    d.beginSegment(FIXTURE_SEG_NO, FIXTURE_TLI);
    d.write(seg);
    const sum = d.summary();
    expect(sum.problems).toEqual([]);
    expect(sum.endKind).toBe('incomplete-record');
    const unverified: string[] = [];
    const s = sink({ blockSize: FIXTURE_BLOCK_SIZE, systemId: fixtureSystemId(), magic: FIXTURE_MAGIC, onUnverifiedSegment: (n) => unverified.push(n) });
    s.begin(FIXTURE_START, FIXTURE_TLI);
    feed(s, FIXTURE_START, seg, 128 * 1024);
    await s.endStream();
    expect(await readdir(dir)).toEqual([`${FIXTURE_NAME}.partial`]);
    expect((await readFile(join(dir, `${FIXTURE_NAME}.partial`))).equals(seg)).toBe(true);
    expect(unverified).toEqual([FIXTURE_NAME]);
    expect(s.durableLsn).toBe(sum.end);
    // The sink does not go on past it on another timeline.
    expect(() => s.begin(FIXTURE_START + BigInt(FIXTURE_SEG_SIZE), 2)).toThrow(WalValidationError);
  });

  it('at the end of a timeline, the segments before it are named though a record ran on past them (cut short by the promotion)', async () => {
    const { wal, crossingEnd } = twoSegments();
    const s = sink();
    s.begin(7n * BigInt(SEG), 1);
    const upTo = crossingEnd - 7 * SEG - 1000;
    feed(s, 7n * BigInt(SEG), wal.subarray(0, upTo));
    s.endOfTimeline(7n * BigInt(SEG) + BigInt(upTo));
    await s.endStream();
    expect((await readdir(dir)).sort()).toEqual(['000000010000000000000007', '000000010000000000000008.partial']);
    // The sink goes on with the next timeline.
    s.begin(8n * BigInt(SEG), 2);
  });

  const refusals: [string, (wal: Buffer, at: number) => Buffer][] = [
    [
      'a byte flipped inside a record',
      (wal, at) => {
        const bad = Buffer.from(wal);
        bad[at + 60]! ^= 0x10;
        return bad;
      },
    ],
    ['bytes dropped inside the last page and the rest shifted', (wal, at) => Buffer.concat([wal.subarray(0, at + 16), wal.subarray(at + 32), Buffer.alloc(16)])],
    [
      'a record whose xl_prev points elsewhere',
      (wal, at) => {
        const bad = Buffer.from(wal);
        bad.writeUInt32LE(bad.readUInt32LE(at + 8) + 8, at + 8);
        return bad;
      },
    ],
  ];
  for (const [what, tamper] of refusals) {
    it(`refuses ${what}: none of the piece is written and nothing of it reported`, async () => {
      const { wal, records } = twoSegments();
      const at = recordInsideAPage(records);
      const bad = tamper(wal, at);
      const s = sink();
      s.begin(7n * BigInt(SEG), 1);
      const cut = at - 2000;
      feed(s, 7n * BigInt(SEG), bad.subarray(0, cut));
      let refused: unknown;
      try {
        s.write(7n * BigInt(SEG) + BigInt(cut), bad.subarray(cut, cut + 4000));
      } catch (err) {
        refused = err;
      }
      expect(refused).toBeInstanceOf(WalValidationError);
      expect((refused as Error).message).toMatch(/^segment 000000010000000000000008, offset \d+: record at 0\/8[0-9A-F]+/);
      await s.endStream().catch(() => undefined);
      // Synced to the end of what was accepted, reported only up to the last record proven there.
      expect(s.durableLsn).toBeGreaterThan(BigInt(8 * SEG));
      expect(s.durableLsn).toBeLessThanOrEqual(7n * BigInt(SEG) + BigInt(cut));
      const partial = await readFile(join(dir, '000000010000000000000008.partial'));
      expect(partial.subarray(0, cut - SEG).equals(wal.subarray(SEG, cut))).toBe(true);
      expect(partial.subarray(cut - SEG).every((x) => x === 0)).toBe(true);
    });
  }

  it('with verifyRecords false, the same flipped byte is written as received', async () => {
    const { wal, records } = twoSegments();
    const at = recordInsideAPage(records);
    const bad = Buffer.from(wal);
    bad[at + 60]! ^= 0x10;
    const s = sink({ verifyRecords: false });
    s.begin(7n * BigInt(SEG), 1);
    feed(s, 7n * BigInt(SEG), bad.subarray(0, at + 4000));
    await s.endStream();
    expect((await readFile(join(dir, '000000010000000000000008.partial')))[at + 60 - SEG]).toBe(bad[at + 60]);
  });
});
