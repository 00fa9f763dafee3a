// The WAL record decoder (src/wal/records.ts) on hand-built WAL: records within a page, over pages
// and segments, XLOG_SWITCH, and each kind of damage it must name (segment, offset, LSN).
import { describe, expect, it } from 'vitest';
import { WalRecordDecoder, type RecordDecoderOptions, type RecordSummary } from '../../src/wal/records.js';
import { crc32c, crc32cJs, crc32cRange } from '../../src/util/crc32c.js';
import { WalBuilder, type BuiltWal } from '../support/walrecords.js';

function decode(w: BuiltWal, o: Partial<RecordDecoderOptions> & { pieces?: number; tli?: number } = {}): RecordSummary & { seen: number[] } {
  const seen: number[] = [];
  const d = new WalRecordDecoder({ segSize: w.segSize, onRecord: (r) => seen.push(Number(r.lsn)), ...o });
  w.segments.forEach((seg, i) => {
    d.beginSegment(BigInt(w.firstSegNo + i), o.tli ?? 1);
    const step = o.pieces ?? seg.length;
    for (let k = 0; k < seg.length; k += step) d.write(seg.subarray(k, k + step));
    d.endSegment();
  });
  return { ...d.summary(), seen };
}

const hex = (n: number): string => n.toString(16).toUpperCase();

describe('crc32cRange', () => {
  it('is a running CRC-32C: pieces chain to the CRC of the whole, JS and native alike', () => {
    const data = Buffer.alloc(5000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) & 0xff;
    const whole = crc32cJs(data);
    expect(crc32c(data)).toBe(whole);
    for (const cut of [0, 1, 7, 255, 256, 300, 4999]) {
      expect(crc32cRange(data, cut, data.length, crc32cRange(data, 0, cut))).toBe(whole);
    }
    expect(crc32cRange(data, 10, 20)).toBe(crc32cJs(data.subarray(10, 20)));
  });
});

describe('WalRecordDecoder', () => {
  it('reads records within pages, over pages and over segments, in pieces of any size', () => {
    const b = new WalBuilder();
    for (let i = 0; i < 50; i++) b.record({ dataLen: 10 + ((i * 37) % 300) });
    b.record({ dataLen: 20000 }); // over three pages
    b.record({ dataLen: 8192 - 24 - 16 });
    b.fillTo(b.segSize * 2 - 30); // the next record is cut by the segment's end, within its header
    b.record({ dataLen: 100 });
    b.record({ dataLen: 150000 }); // longer than two segments
    b.record({ dataLen: 8 });
    const w = b.build();
    for (const pieces of [undefined, 1, 7, 8192, 10000]) {
      const s = decode(w, { pieces });
      expect(s.problems).toEqual([]);
      expect(s.seen).toEqual(w.records);
      expect(s.records).toBe(w.records.length);
      expect(Number(s.end)).toBe(w.end);
      expect(s.endKind).toBe('zeros');
    }
  });

  it('a record header split by a page boundary is read whole', () => {
    const b = new WalBuilder();
    // leave 8 bytes on the first page: the next header is split 8 + 16
    b.fillTo(8192 - 600, 100);
    while (8192 - ((b.pos - b.segSize) % 8192) !== 8) {
      const room = 8192 - ((b.pos - b.segSize) % 8192);
      b.record({ dataLen: Math.max(0, Math.min(room - 8 - 24, 200)) });
    }
    const split = b.record({ dataLen: 60 });
    b.record();
    const w = b.build();
    expect(split % 8192).toBe(8184);
    const s = decode(w);
    expect(s.problems).toEqual([]);
    expect(s.seen).toEqual(w.records);
  });

  it('XLOG_SWITCH: the zeros after it to the segment end, the next record on the next segment', () => {
    const b = new WalBuilder();
    b.record();
    const sw = b.switchSegment();
    const after = b.record();
    const last = b.record();
    const w = b.build();
    const s = decode(w);
    expect(s.problems).toEqual([]);
    expect(s.switches).toBe(1);
    expect(s.seen).toEqual([w.records[0], sw, after, last]);
    expect(after).toBe(2 * b.segSize + 40);
  });

  it('a bad CRC names the record, its segment and offset', () => {
    const b = new WalBuilder();
    b.record();
    const bad = b.record({ dataLen: 200 });
    b.record();
    const w = b.build();
    w.segments[0]![(bad % w.segSize) + 100] ^= 0x01;
    const s = decode(w);
    expect(s.problems).toHaveLength(1);
    expect(s.problems[0]).toMatchObject({ segment: '000000010000000000000001', offset: bad % w.segSize, lsn: BigInt(bad) });
    expect(s.problems[0]!.message).toMatch(new RegExp(`record at 0/${hex(bad)} .*CRC-32C 0x[0-9a-f]{8} where its header says`));
    expect(s.records).toBe(2);
  });

  it('a bad CRC in a record over two segments names the segment where the record starts', () => {
    const b = new WalBuilder();
    b.fillTo(b.segSize * 2 - 1000);
    const big = b.record({ dataLen: 5000 });
    b.record();
    const w = b.build();
    expect(Math.floor(big / w.segSize)).toBe(1);
    w.segments[1]![100] ^= 0x80; // in the continuation on the next segment
    const s = decode(w);
    expect(s.problems).toHaveLength(1);
    expect(s.problems[0]).toMatchObject({ segment: '000000010000000000000001', lsn: BigInt(big) });
  });

  it('a broken xl_prev is named', () => {
    const b = new WalBuilder();
    b.record();
    b.record();
    const w0 = b.records[1]!;
    b.prev = 12345 * 8; // the next record points elsewhere
    const broken = b.record();
    b.record();
    const w = b.build();
    const s = decode(w);
    expect(s.problems).toHaveLength(1);
    expect(s.problems[0]).toMatchObject({ segment: '000000010000000000000001', offset: broken % w.segSize, lsn: BigInt(broken) });
    expect(s.problems[0]!.message).toContain(`xl_prev 0/${hex(12345 * 8)}, but the previous record starts at 0/${hex(w0)}`);
  });

  it('a byte lost in the last page (the rest shifted) is caught there', () => {
    const b = new WalBuilder();
    b.fillTo(b.segSize + 8192 * 7 + 2000);
    const w = b.build();
    const seg = w.segments[0]!;
    const at = 8192 * 7 + 1000; // in the last page
    const shifted = Buffer.concat([seg.subarray(0, at), seg.subarray(at + 1), Buffer.alloc(1)]);
    w.segments[0] = shifted;
    const s = decode(w);
    expect(s.problems.length).toBeGreaterThanOrEqual(1);
    const p = s.problems[0]!;
    expect(p.segment).toBe('000000010000000000000001');
    expect(p.offset).toBeGreaterThan(8192 * 7 - 200);
    expect(p.offset).toBeLessThanOrEqual(at);
  });

  it('a non-zero byte in the padding after XLOG_SWITCH is named', () => {
    const b = new WalBuilder();
    b.record();
    const sw = b.switchSegment();
    b.record();
    const w = b.build();
    const off = 3 * 8192 + 17;
    w.segments[0]![off] = 0x5a;
    const s = decode(w);
    expect(s.problems).toHaveLength(1);
    expect(s.problems[0]).toMatchObject({ segment: '000000010000000000000001', offset: off, lsn: BigInt(w.segSize + off) });
    expect(s.problems[0]!.message).toContain(`after the XLOG_SWITCH record at 0/${hex(sw)}`);
  });

  it('a page header with a wrong address, a missing contrecord flag, a wrong xlp_rem_len', () => {
    const b = new WalBuilder();
    b.fillTo(b.segSize + 8192 * 2 - 100);
    const span = b.record({ dataLen: 400 });
    b.fillTo(b.segSize + 8192 * 5);
    const w = b.build();
    const page2 = 8192 * 2;
    const variants: [string, (s: Buffer) => void, RegExp][] = [
      ['address', (s) => s.writeUInt32LE(s.readUInt32LE(8192 * 4 + 8) + 8192, 8192 * 4 + 8), /page address 0\/1A000 where 0\/18000 was expected/],
      ['flag', (s) => s.writeUInt16LE(0, page2 + 2), /continues on page 0\/14000 .* there is no contrecord flag/],
      ['rem_len', (s) => s.writeUInt32LE(7, page2 + 16), /xlp_rem_len 7/],
    ];
    for (const [name, damage, msg] of variants) {
      const copy = { ...w, segments: w.segments.map((x) => Buffer.from(x)) };
      damage(copy.segments[0]!);
      const s = decode(copy);
      expect(s.problems.length, name).toBeGreaterThanOrEqual(1);
      expect(s.problems[0]!.message, name).toMatch(msg);
      if (name !== 'address') expect(s.problems[0]!.lsn).toBe(BigInt(span));
      // it finds its way again: records after the damage are read
      expect(s.records).toBeGreaterThan(w.records.indexOf(span) + 5);
    }
  });

  it('where WAL ends: zeros are an end, a segment after them is not', () => {
    const b = new WalBuilder();
    b.fillTo(b.segSize + 5000);
    const w = b.build();
    const s = decode(w);
    expect(s.endKind).toBe('zeros');
    expect(s.problems).toEqual([]);
    const more = { ...w, segments: [...w.segments, w.segments[0]!] };
    const s2 = decode(more);
    expect(s2.problems[0]!.message).toMatch(/WAL ended at 0\/[0-9A-F]+ \(a zero record header\), but segment 000000010000000000000002 follows/);
    // a record cut by the end of what was fed
    const cut = decode({ ...w, segments: [w.segments[0]!.subarray(0, 4100)] });
    expect(cut.endKind).toBe('incomplete-record');
    expect(cut.problems).toEqual([]);
  });

  it('a missing segment, a timeline going back, a page of the wrong timeline for the history', () => {
    const b = new WalBuilder();
    b.fillTo(b.segSize * 3 + 100);
    const w = b.build();
    const gap = decode({ ...w, segments: [w.segments[0]!, w.segments[2]!], firstSegNo: 1 } as BuiltWal);
    expect(gap.problems[0]!.message).toMatch(/page address|segment/);
    const d = new WalRecordDecoder({ segSize: w.segSize });
    d.beginSegment(1n, 1);
    d.write(w.segments[0]!);
    d.beginSegment(3n, 1);
    d.write(w.segments[2]!);
    expect(d.summary().problems[0]!.message).toContain('segment 000000010000000000000003 follows 000000010000000000000001: the segments between are missing');
    // history: timeline 2 begins at 0/20000; pages before are timeline 1, from there timeline 2
    const h = decode(w, { tli: 2, history: { tli: 2, entries: [{ tli: 1, end: 0x20000n, reason: '' }] } });
    expect(h.problems[0]!.message).toContain('timeline 1, but the history of timeline 2 puts 0/20000 on timeline 2');
  });

  it('a record cut short and overwritten (XLP_FIRST_IS_OVERWRITE_CONTRECORD) is not a problem', () => {
    const b = new WalBuilder();
    b.fillTo(b.segSize + 8192 - 500, 100);
    const lastGood = b.records[b.records.length - 1]!;
    const cut = b.record({ dataLen: 2000 }); // continues on page 2
    // the server crashed before writing page 2; on restart it wrote an overwrite contrecord there
    b.pos = b.segSize + 8192;
    const seg = (): Buffer => (b as unknown as { bytes: Buffer[] }).bytes[0]!;
    seg().fill(0, 8192, 16384);
    b.prev = lastGood;
    const over = b.record({ rmid: 0, info: 0xd0, dataLen: 16 });
    seg().writeUInt16LE(0x0008, 8192 + 2);
    b.record();
    const w = b.build();
    const s = decode(w);
    expect(s.problems).toEqual([]);
    expect(s.overwritten).toEqual([BigInt(cut)]);
    expect(s.seen).toContain(over);
    expect(s.seen).not.toContain(cut);
  });
});
