// The fault suite's comparison must be able to fail: a flipped byte, a gap, a wrong tail after a
// .partial's prefix, a piece with other bytes, a segment missing from the archive and a
// quarantined copy are each reported as a loss.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { MemoryStore } from '../../src/storage/memory.js';
import { verifyWal, type WalReference } from './verify.js';

const SEG = 64 * 1024; // the comparison does not care about real segment sizes

function segment(n: number): Buffer {
  const b = Buffer.alloc(SEG);
  for (let i = 0; i < SEG; i++) b[i] = (i * 31 + n * 7) & 0xff || 1;
  return b;
}

const name = (n: number): string => `000000010000000000000${n.toString(16).toUpperCase().padStart(3, '0')}`;
const server = new Map<string, Buffer>([1, 2, 3, 4].map((n) => [name(n), segment(n)]));
server.set('00000002.history', Buffer.from('1\t0/30000\tno recovery target specified\n'));
const reference: WalReference = { read: (n) => server.get(n) };
const range = (from: number, to: number) => [{ tli: 1, from: BigInt(from), to: BigInt(to) }];

describe('the fault suite comparison', () => {
  const dirs: string[] = [];
  const dir = (): string => {
    const d = mkdtempSync(join(tmpdir(), 'walstream-verify-'));
    dirs.push(d);
    return d;
  };
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('accepts identical segments, a zero-padded prefix and a gzip prefix, and counts their bytes', async () => {
    const d = dir();
    writeFileSync(join(d, name(1)), segment(1));
    writeFileSync(join(d, `${name(2)}.gz`), gzipSync(segment(2)));
    const partial = Buffer.alloc(SEG);
    segment(3).copy(partial, 0, 0, 1000);
    writeFileSync(join(d, `${name(3)}.partial`), partial);
    const v = await verifyWal({ segSize: SEG, reference, dirs: [d], ranges: range(SEG, 3 * SEG + 1000) });
    expect(v.losses).toEqual([]);
    expect(v.bytesVerified).toBe(2 * SEG + 1000);
  });

  it('reports a flipped byte in a complete segment', async () => {
    const d = dir();
    const bad = segment(1);
    bad[12345] ^= 0x40;
    writeFileSync(join(d, name(1)), bad);
    const v = await verifyWal({ segSize: SEG, reference, dirs: [d], ranges: range(SEG, 2 * SEG) });
    expect(v.losses.join('\n')).toMatch(/differs from the server's copy at byte 12345/);
    expect(v.losses.join('\n')).toMatch(/WAL missing on timeline 1 from 0\/10000 to 0\/20000/);
  });

  it('reports a gap between segments, and a .partial too short for the flushed position', async () => {
    const d = dir();
    writeFileSync(join(d, name(1)), segment(1));
    writeFileSync(join(d, name(3)), segment(3));
    const partial = Buffer.alloc(SEG);
    segment(4).copy(partial, 0, 0, 500);
    writeFileSync(join(d, `${name(4)}.partial`), partial);
    const v = await verifyWal({ segSize: SEG, reference, dirs: [d], ranges: range(SEG, 4 * SEG + 800) });
    expect(v.losses).toEqual(['WAL missing on timeline 1 from 0/20000 to 0/30000', 'WAL missing on timeline 1 from 0/401F4 to 0/40320']);
  });

  it('reports garbage after the prefix of a .partial', async () => {
    const d = dir();
    const partial = Buffer.alloc(SEG);
    segment(1).copy(partial, 0, 0, 100);
    partial[5000] = 9;
    writeFileSync(join(d, `${name(1)}.partial`), partial);
    const v = await verifyWal({ segSize: SEG, reference, dirs: [d], ranges: [] });
    expect(v.losses.join('\n')).toMatch(/is not zero after it/);
  });

  it('reports archive objects, pieces and history files that differ, missing archived segments and quarantined copies', async () => {
    const store = new MemoryStore();
    await store.put(name(1), segment(1));
    const wrong = segment(2);
    wrong[SEG - 1] ^= 1;
    await store.put(name(2), wrong);
    await store.put(`${name(3)}.partial.00000000`, segment(3).subarray(0, 100));
    const piece = Buffer.from(segment(3).subarray(100, 200));
    piece[50] ^= 2;
    await store.put(`${name(3)}.partial.00000064`, piece);
    await store.put('00000002.history', Buffer.from('1\t0/30001\tno recovery target specified\n'));
    await store.put(name(4), segment(4));
    await expect(store.put(name(4), segment(1))).rejects.toThrow(/different contents/);
    const v = await verifyWal({ segSize: SEG, reference, store, ranges: range(SEG, 3 * SEG + 150), archivedTo: range(SEG, 4 * SEG) });
    const text = v.losses.join('\n');
    expect(text).toMatch(/archive: 000000010000000000000002 differs from the server's copy at byte 65535/);
    expect(text).toMatch(/piece 000000010000000000000003\.partial\.00000064 differs from the server's 000000010000000000000003 at byte 150/);
    expect(text).toMatch(/00000002\.history differs/);
    expect(text).toMatch(/WAL missing on timeline 1 from 0\/20000 to 0\/30000/);
    expect(text).toMatch(/WAL missing on timeline 1 from 0\/30064 to 0\/30096/);
    expect(text).toMatch(/segment 2 of timeline 1 .* is not in the archive/);
    expect(text).toMatch(/quarantine\/000000010000000000000004\.\S+ was quarantined/);
  });
});
