// The WAL record decoder (src/wal/records.ts) gives the same result however its input is cut:
// whole segments (records read where they lie, on its fast path), one byte at a time (every header
// gathered piece by piece), pieces of every size and a cut at every offset, chunks at any memory
// alignment. Also the CRC-32C functions that read through a DataView (src/util/crc32c.ts).
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { WalRecordDecoder, type RecordDecoderOptions, type WalRecordHeader } from '../../src/wal/records.js';
import { NATIVE_CRC_MIN_BYTES, crc32cJs, crc32cJsView, crc32cJsView2, crc32cRangeView } from '../../src/util/crc32c.js';
import { WalBuilder, type BuiltWal } from '../support/walrecords.js';
import { FIXTURE_SEG_NO, FIXTURE_SEG_SIZE, fixtureSegment } from './fixture.js';

/** Everything the decoder says: its summary and every header it passed to onRecord. */
function outcome(segments: Buffer[], firstSegNo: number, cut: (seg: Buffer) => Buffer[], o: Partial<RecordDecoderOptions> & { segSize: number; tli?: number }): string {
  const headers: WalRecordHeader[] = [];
  const d = new WalRecordDecoder({ onRecord: (r) => headers.push(r), ...o });
  segments.forEach((seg, i) => {
    d.beginSegment(BigInt(firstSegNo + i), o.tli ?? 1);
    for (const piece of cut(seg)) d.write(piece);
    d.endSegment();
  });
  const json = (x: unknown): string => JSON.stringify(x, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
  // the headers by their hash (thousands of them), the first and last in full
  return json({ summary: d.summary(), headers: headers.length, first: headers[0], last: headers.at(-1), all: createHash('sha256').update(json(headers)).digest('hex') });
}

const inPieces =
  (n: number) =>
  (seg: Buffer): Buffer[] => {
    const out: Buffer[] = [];
    for (let k = 0; k < seg.length; k += n) out.push(seg.subarray(k, k + n));
    return out;
  };
const whole = (seg: Buffer): Buffer[] => [seg];
/** The same bytes at `shift` bytes past a 8-byte boundary of their ArrayBuffer. */
const shifted = (seg: Buffer, shift: number): Buffer => {
  const b = Buffer.alloc(seg.length + 16);
  const at = 8 - (b.byteOffset % 8) + shift;
  seg.copy(b, at);
  return b.subarray(at, at + seg.length);
};

/** WAL with every layout a record can have against page and segment boundaries (small ones). */
function layouts(): BuiltWal {
  const b = new WalBuilder({ segSize: 16384, blockSize: 1024 });
  const room = (): number => b.blockSize - (b.pos % b.blockSize);
  /** Records until `left` bytes are left on the page (a multiple of 8), then one record. */
  const leave = (left: number, dataLen: number): number => {
    while (room() !== left) {
      const r = room();
      b.record({ dataLen: r > left + 300 ? 10 + (r % 200) : Math.max(0, r - left - 24) });
    }
    return b.record({ dataLen });
  };
  for (let i = 0; i < 20; i++) b.record({ dataLen: (i * 53) % 400, xid: 1000 + i, info: i % 16 });
  leave(8, 60); // the header split 8 + 16 by a page boundary
  leave(16, 60); // 16 + 8
  leave(24, 0); // a header alone ends the page
  leave(64, 40); // ends the page exactly
  leave(200, 600); // over the page boundary
  leave(600, NATIVE_CRC_MIN_BYTES + 5); // within the page, the native CRC's size
  b.record({ dataLen: 3 * 1024 }); // over four pages
  b.record({ dataLen: NATIVE_CRC_MIN_BYTES - 1 }); // the sizes either side of the native CRC's
  b.record({ dataLen: NATIVE_CRC_MIN_BYTES });
  b.record({ dataLen: 900 });
  b.fillTo(b.segSize - 30, 120); // the next header is cut by the segment's end
  b.record({ dataLen: 200 });
  b.record({ dataLen: 40000 }); // over a whole segment
  b.switchSegment();
  for (let i = 0; i < 30; i++) b.record({ dataLen: (i * 71) % 500 });
  return b.build();
}

describe('crc32c through a DataView', () => {
  it('equals crc32cJs at every length and memory alignment, and chains', () => {
    const data = Buffer.alloc(NATIVE_CRC_MIN_BYTES * 3);
    for (let i = 0; i < data.length; i++) data[i] = (i * 131 + 17) & 0xff;
    for (let shift = 0; shift < 8; shift++) {
      const s = shifted(data, shift);
      const v = new DataView(s.buffer, s.byteOffset, s.length);
      for (let start = 0; start < 8; start++) {
        for (const len of [...Array.from({ length: 70 }, (_x, k) => k), NATIVE_CRC_MIN_BYTES - 1, NATIVE_CRC_MIN_BYTES, NATIVE_CRC_MIN_BYTES * 2 + 3]) {
          const want = crc32cJs(data.subarray(start, start + len));
          expect(crc32cJsView(v, start, start + len), `shift ${shift} start ${start} len ${len}`).toBe(want);
          expect(crc32cRangeView(v, start, start + len), `shift ${shift} start ${start} len ${len}`).toBe(want);
          const mid = start + (len >> 1);
          expect(crc32cRangeView(v, mid, start + len, crc32cJsView(v, start, mid))).toBe(want);
        }
      }
      // a record's CRC: its data after the 24-byte header, then the header's first 20 bytes
      for (const len of [24, 25, 31, 40, 100, 203]) {
        const want = crc32cJs(data.subarray(0, 20), crc32cJs(data.subarray(24, len)));
        expect(crc32cJsView2(v, 24, len, 0, 20), `shift ${shift} len ${len}`).toBe(want);
      }
    }
  });
});

describe('WalRecordDecoder, input cut any way', () => {
  it('real WAL (a PostgreSQL 15 segment): the same summary and headers in pieces of any size, at any alignment', () => {
    const seg = fixtureSegment();
    const o = { segSize: FIXTURE_SEG_SIZE };
    const first = Number(FIXTURE_SEG_NO);
    const want = outcome([seg], first, whole, o);
    expect(JSON.parse(want).summary.records).toBeGreaterThan(100);
    expect(JSON.parse(want).summary.problems).toEqual([]);
    for (const n of [7, 24, 25, 4095, 8191, 8192, 8193, 65536, 100003]) expect(outcome([seg], first, inPieces(n), o), `pieces of ${n}`).toBe(want);
    for (const shift of [1, 2, 3, 4, 5]) {
      expect(outcome([shifted(seg, shift)], first, whole, o), `shifted ${shift}`).toBe(want);
      expect(outcome([shifted(seg, shift)], first, inPieces(8191), o), `shifted ${shift}, pieces`).toBe(want);
    }
  });

  it('every layout against page and segment boundaries: pieces of every size, a cut at every offset', () => {
    const w = layouts();
    expect(w.segments.length).toBe(5);
    const o = { segSize: w.segSize };
    const want = outcome(w.segments, w.firstSegNo, whole, o);
    const parsed = JSON.parse(want) as { summary: { records: number; problems: unknown[]; switches: number; endKind: string } };
    expect(parsed.summary.problems).toEqual([]);
    expect(parsed.summary.switches).toBe(1);
    expect(parsed.summary.endKind).toBe('zeros');
    const seen: number[] = [];
    const d = new WalRecordDecoder({ segSize: w.segSize, onRecord: (r) => seen.push(Number(r.lsn)) });
    w.segments.forEach((seg, i) => {
      d.beginSegment(BigInt(w.firstSegNo + i), 1);
      d.write(seg);
    });
    expect(seen).toEqual(w.records);
    for (const n of [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 20, 23, 24, 25, 31, 33]) expect(outcome(w.segments, w.firstSegNo, inPieces(n), o), `pieces of ${n}`).toBe(want);
    for (const n of [100, 1000, 1023, 1024, 1025, 4096, 16383, 16384, 40000]) expect(outcome(w.segments, w.firstSegNo, inPieces(n), o), `pieces of ${n}`).toBe(want);
    // one cut at every offset of the first five pages and of the last one of the first segment
    const first = [w.segments[0]!];
    const wantFirst = outcome(first, w.firstSegNo, whole, o);
    const cutAt =
      (k: number) =>
      (seg: Buffer): Buffer[] => [seg.subarray(0, k), seg.subarray(k)];
    for (let k = 0; k <= w.segSize; k = k === 5 * w.blockSize ? w.segSize - w.blockSize : k + 1) expect(outcome(first, w.firstSegNo, cutAt(k), o), `cut at ${k}`).toBe(wantFirst);
  });

  it('a record across a switch point of the timeline history, within a page: named the same, cut or not', () => {
    const b = new WalBuilder();
    b.fillTo(b.segSize + 3 * 8192 + 1000, 60);
    const across = b.record({ dataLen: 300 });
    const switchPoint = across + 100;
    b.tli = 2; // the pages after it
    b.fillTo(b.segSize + 6 * 8192, 60);
    const w = b.build();
    const o = { segSize: w.segSize, tli: 2, history: { tli: 2, entries: [{ tli: 1, end: BigInt(switchPoint), reason: '' }] } };
    const want = outcome(w.segments, w.firstSegNo, whole, o);
    const s = JSON.parse(want) as { summary: { problems: { message: string; offset: number }[]; records: number } };
    expect(s.summary.problems).toHaveLength(1);
    expect(s.summary.problems[0]!.offset).toBe(across % w.segSize);
    expect(s.summary.problems[0]!.message).toContain('across the switch point');
    expect(s.summary.records).toBe(w.records.length);
    for (const n of [1, 24, 8192]) expect(outcome(w.segments, w.firstSegNo, inPieces(n), o), `pieces of ${n}`).toBe(want);
  });
});
