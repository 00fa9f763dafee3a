// Seeded fuzzing of the WAL record decoder (src/wal/records.ts): 10,000 damaged copies of
// hand-built WAL (bytes flipped, lost, inserted, zeroed, cut, random pages), fed in random pieces.
// On any input it must not throw, must finish, must keep its problems bounded, and must still read
// the undamaged records before the first damaged byte; and it must say the same whether a damaged
// stream is fed in whole segments, one byte at a time or in pieces of any size.
import { describe, expect, it } from 'vitest';
import { WalRecordDecoder } from '../../src/wal/records.js';
import { WalBuilder, type BuiltWal } from '../support/walrecords.js';
import { rng } from './fixture.js';

function baseWal(seed: number): BuiltWal {
  const r = rng(seed);
  const b = new WalBuilder({ segSize: 8192, blockSize: 1024 });
  while (b.pos < 3 * 8192 + 2000) {
    const x = r();
    if (x < 0.03 && b.pos < 3 * 8192) b.switchSegment();
    else if (x < 0.1) b.record({ dataLen: Math.floor(r() * 12000) });
    else b.record({ dataLen: Math.floor(r() * 300) });
  }
  return b.build();
}

/** Damage `whole` with 1 to 3 edits; returns the damaged copy and where the first edit is. */
function damage(whole: Buffer, r: () => number): { data: Buffer; firstDamage: number } {
  let data: Buffer = Buffer.from(whole);
  const edits = 1 + Math.floor(r() * 3);
  let firstDamage = data.length;
  for (let e = 0; e < edits; e++) {
    const at = Math.floor(r() * data.length);
    firstDamage = Math.min(firstDamage, at);
    const kind = Math.floor(r() * 6);
    if (kind === 0) data[at] = data[at]! ^ (1 << Math.floor(r() * 8));
    else if (kind === 1) data = Buffer.concat([data.subarray(0, at), data.subarray(at + 1 + Math.floor(r() * 40))]);
    else if (kind === 2) data = Buffer.concat([data.subarray(0, at), Buffer.from([Math.floor(r() * 256)]), data.subarray(at)]);
    else if (kind === 3) data.fill(0, at, Math.min(data.length, at + Math.floor(r() * 2000)));
    else if (kind === 4) data = data.subarray(0, at);
    else for (let k = at; k < Math.min(data.length, at + 1024); k++) data[k] = Math.floor(r() * 256);
  }
  return { data, firstDamage };
}

const CASES = 10_000;
const MAX_PROBLEMS = 20;

describe('WAL record decoder fuzz', () => {
  it(`survives ${CASES} damaged streams: no throw, no hang, bounded output`, () => {
    const bases = [1, 2, 3, 4].map(baseWal);
    const started = Date.now();
    let withProblems = 0;
    for (let c = 0; c < CASES; c++) {
      const r = rng(1000 + c);
      const base = bases[c % bases.length]!;
      const { data, firstDamage } = damage(Buffer.concat(base.segments), r);
      const seen: number[] = [];
      const d = new WalRecordDecoder({ segSize: base.segSize, maxProblems: MAX_PROBLEMS, onRecord: (x) => seen.push(Number(x.lsn)) });
      try {
        for (let s = 0; s * base.segSize < data.length; s++) {
          d.beginSegment(BigInt(base.firstSegNo + s), 1);
          const seg = data.subarray(s * base.segSize, (s + 1) * base.segSize);
          let k = 0;
          while (k < seg.length) {
            const n = r() < 0.5 ? seg.length : 1 + Math.floor(r() * 3000);
            d.write(seg.subarray(k, k + n));
            k += n;
          }
          d.endSegment();
        }
      } catch (err) {
        throw new Error(`case ${c} (seed ${1000 + c}) threw: ${(err as Error).stack}`);
      }
      const s = d.summary();
      if (s.problems.length > 0) withProblems++;
      expect(s.problems.length).toBeLessThanOrEqual(MAX_PROBLEMS);
      // Records wholly before the first damaged byte are all read.
      const firstSeg = base.firstSegNo * base.segSize;
      const intact = base.records.filter((_lsn, i) => {
        const next = base.records[i + 1] ?? base.end;
        return next - firstSeg <= firstDamage - 64;
      });
      expect(seen.slice(0, intact.length), `case ${c}`).toEqual(intact);
    }
    // Most damage is found (a flip inside zeros past the end of WAL, or a cut, may be harmless).
    expect(withProblems).toBeGreaterThan(CASES / 2);
    expect(Date.now() - started).toBeLessThan(60_000);
  });

  it('says the same of a damaged stream however it is cut (whole segments, bytes, pieces of any size)', () => {
    const bases = [5, 6].map(baseWal);
    const json = (x: unknown): string => JSON.stringify(x, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
    const feed = (base: BuiltWal, data: Buffer, piece: (seg: Buffer) => number): string => {
      const seen: string[] = [];
      const d = new WalRecordDecoder({ segSize: base.segSize, maxProblems: MAX_PROBLEMS, onRecord: (x) => seen.push(json(x)) });
      for (let s = 0; s * base.segSize < data.length; s++) {
        d.beginSegment(BigInt(base.firstSegNo + s), 1);
        const seg = data.subarray(s * base.segSize, (s + 1) * base.segSize);
        for (let k = 0; k < seg.length; ) {
          const n = piece(seg);
          d.write(seg.subarray(k, k + n));
          k += n;
        }
        d.endSegment();
      }
      return json(d.summary()) + seen.join('');
    };
    let withProblems = 0;
    for (let c = 0; c < 300; c++) {
      const r = rng(50_000 + c);
      const base = bases[c % bases.length]!;
      const { data } = damage(Buffer.concat(base.segments), r);
      const want = feed(base, data, (seg) => seg.length);
      if (want.includes('"problems":[{')) withProblems++;
      expect(
        feed(base, data, () => 1),
        `case ${c}, bytes`,
      ).toBe(want);
      expect(
        feed(base, data, () => 7),
        `case ${c}, pieces of 7`,
      ).toBe(want);
      expect(
        feed(base, data, () => 1 + Math.floor(r() * 1500)),
        `case ${c}, random pieces`,
      ).toBe(want);
    }
    expect(withProblems).toBeGreaterThan(150);
  });
});
