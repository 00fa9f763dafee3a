// util/bulk.ts: whole-file reads and SHA-256 on worker threads give the same bytes and digests as
// the plain calls, whichever thread hashes.
import { afterEach, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readWhole, sha256Owned, useHashThreads } from '../../src/util/bulk.js';

const dirs: string[] = [];
afterEach(() => {
  useHashThreads(0);
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'walstream-bulk-'));
  dirs.push(d);
  return d;
}
const hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('readWhole', () => {
  it('reads whole files, into a reused buffer when it is large enough, and refuses links when asked', async () => {
    const d = tmp();
    const big = randomBytes(3 * 1024 * 1024 + 5);
    writeFileSync(join(d, 'big'), big);
    writeFileSync(join(d, 'small'), 'abc');
    writeFileSync(join(d, 'empty'), '');
    expect((await readWhole(join(d, 'big'))).equals(big)).toBe(true);
    expect((await readWhole(join(d, 'empty'))).length).toBe(0);
    const spare = Buffer.alloc(4 * 1024 * 1024, 7);
    const small = await readWhole(join(d, 'small'), { into: spare });
    expect(small.toString()).toBe('abc');
    expect(small.buffer).toBe(spare.buffer);
    const again = await readWhole(join(d, 'big'), { into: Buffer.alloc(10) });
    expect(again.equals(big)).toBe(true);
    symlinkSync(join(d, 'big'), join(d, 'link'));
    expect((await readWhole(join(d, 'link'))).equals(big)).toBe(true);
    await expect(readWhole(join(d, 'link'), { noFollow: true })).rejects.toMatchObject({ code: 'ELOOP' });
  });
});

describe('sha256Owned', () => {
  it('gives the SHA-256 of the bytes on the calling thread and on worker threads, with the bytes handed back intact', async () => {
    const bufs = Array.from({ length: 6 }, (_, i) => randomBytes(2 * 1024 * 1024 + i));
    const want = bufs.map(hex);
    const copies = bufs.map((b) => Buffer.from(b));
    // No threads: nothing is handed over.
    const here = await sha256Owned(bufs[0]!);
    expect(here.hex).toBe(want[0]);
    expect(here.data).toBe(bufs[0]);
    useHashThreads(2);
    const results = await Promise.all(bufs.map((b) => sha256Owned(b)));
    results.forEach((r, i) => {
      expect(r.hex).toBe(want[i]);
      expect(r.data.equals(copies[i]!)).toBe(true);
    });
    // The buffers passed in were handed to a thread: they are empty now.
    expect(bufs[1]!.length).toBe(0);
    // A view inside a larger buffer comes back as the same view.
    const outer = randomBytes(3 * 1024 * 1024);
    const view = outer.subarray(1000, 1000 + 2 * 1024 * 1024);
    const viewHex = hex(view);
    const r = await sha256Owned(view);
    expect(r.hex).toBe(viewHex);
    expect(r.data.byteOffset).toBe(1000);
    expect(r.data.length).toBe(2 * 1024 * 1024);
    // Small buffers stay on the calling thread.
    const small = Buffer.from('abc');
    expect((await sha256Owned(small)).data).toBe(small);
  });
});
