// Regression (found by the fault suite: a full disk, a kill while a segment file is being padded):
// a .partial shorter than a segment that holds only zeros is a padding cut short. It used to stop
// every later attempt at that segment ("incorrect size"), so the receiver retried forever even
// after space returned. Now it is padded again and written; a short file with other bytes is
// still refused and left alone.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WalDirSink } from '../../src/sink/wal-dir.js';
import { fixtureSegment, fixtureSystemId, FIXTURE_BLOCK_SIZE, FIXTURE_MAGIC, FIXTURE_NAME, FIXTURE_SEG_SIZE, FIXTURE_START, FIXTURE_TLI } from './fixture.js';

let dir = '';
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'walstream-short-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function sink(): WalDirSink {
  return new WalDirSink({
    dir,
    segSize: FIXTURE_SEG_SIZE,
    blockSize: FIXTURE_BLOCK_SIZE,
    compression: 'none',
    noSync: true,
    systemId: fixtureSystemId(),
    magic: FIXTURE_MAGIC,
    // The file mechanics alone: the one fixture segment ends inside a record that runs on into
    // a segment the fixture lacks (sink-records.test.ts covers the record check).
    verifyRecords: false,
  });
}

describe('a .partial left short by an interrupted padding', () => {
  it('is padded again and completed when it holds only zeros', async () => {
    await writeFile(join(dir, `${FIXTURE_NAME}.partial`), Buffer.alloc(16384));
    const s = sink();
    s.begin(FIXTURE_START, FIXTURE_TLI);
    const seg = fixtureSegment();
    for (let off = 0; off < seg.length; off += 100_000) s.write(FIXTURE_START + BigInt(off), seg.subarray(off, Math.min(off + 100_000, seg.length)));
    await s.endStream();
    expect((await readdir(dir)).filter((n) => !n.startsWith('.'))).toEqual([FIXTURE_NAME]);
    expect((await readFile(join(dir, FIXTURE_NAME))).equals(seg)).toBe(true);
  });

  it('is refused and left alone when it holds anything else', async () => {
    const short = Buffer.alloc(16384);
    short[9000] = 1;
    await writeFile(join(dir, `${FIXTURE_NAME}.partial`), short);
    const s = sink();
    s.begin(FIXTURE_START, FIXTURE_TLI);
    expect(() => s.write(FIXTURE_START, fixtureSegment().subarray(0, 8192))).toThrow(/has incorrect size 16384, expected 0 or 1048576/);
    await expect(s.endStream()).rejects.toThrow(/incorrect size/);
    expect((await readFile(join(dir, `${FIXTURE_NAME}.partial`))).equals(short)).toBe(true);
  });
});
