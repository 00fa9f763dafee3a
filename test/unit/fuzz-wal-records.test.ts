// Seeded fuzzing of the WAL record decoder (src/wal/records.ts): 10,000 damaged copies of
// hand-built WAL (bytes flipped, lost, inserted, zeroed, cut, random pages), fed in random pieces.
// On any input it must not throw, must finish, must keep its problems bounded, and must still read
// the undamaged records before the first damaged byte.
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
      const whole = Buffer.concat(base.segments);
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
});
