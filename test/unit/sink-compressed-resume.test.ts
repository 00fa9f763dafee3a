// Regression (found by the fault suite, SIGKILL just after a restart with -Z gzip --synchronous):
// a compressed .partial cannot be continued, so a resumed segment is received again from its
// start. It used to be truncated at once, so until the new stream had caught up the directory
// held less than had been reported flushed, and a kill in that window lost acknowledged WAL from
// the receiver. The old copy now stays until the new stream durably holds as much.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync, constants as zconst } from 'node:zlib';
import { WalDirSink } from '../../src/sink/wal-dir.js';
import { fixtureSegment, fixtureSystemId, FIXTURE_BLOCK_SIZE, FIXTURE_MAGIC, FIXTURE_NAME, FIXTURE_SEG_SIZE, FIXTURE_START, FIXTURE_TLI } from './fixture.js';

let dir = '';
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'walstream-gzresume-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const PARTIAL = `${FIXTURE_NAME}.gz.partial`;
const seg = fixtureSegment();

function sink(): WalDirSink {
  const s = new WalDirSink({
    dir,
    segSize: FIXTURE_SEG_SIZE,
    blockSize: FIXTURE_BLOCK_SIZE,
    compression: 'gzip',
    noSync: false,
    systemId: fixtureSystemId(),
    magic: FIXTURE_MAGIC,
    // The file mechanics alone: the one fixture segment ends inside a record that runs on into
    // a segment the fixture lacks (sink-records.test.ts covers the record check).
    verifyRecords: false,
  });
  s.begin(FIXTURE_START, FIXTURE_TLI);
  return s;
}

/** Feed the segment's bytes [from, to) in 64 kB pieces. */
function feed(s: WalDirSink, from: number, to: number): void {
  for (let off = from; off < to; off += 65536) s.write(FIXTURE_START + BigInt(off), seg.subarray(off, Math.min(off + 65536, to)));
}

/** What the .partial on disk holds now, decoded. */
async function held(): Promise<Buffer> {
  return gunzipSync(await readFile(join(dir, PARTIAL)), { finishFlush: zconst.Z_SYNC_FLUSH });
}

describe('a resumed gzip segment', () => {
  it('keeps the copy on disk until the new stream durably holds as much, then replaces it', async () => {
    const first = sink();
    feed(first, 0, 600_000);
    await first.sync();
    await first.endStream();
    expect((await held()).equals(seg.subarray(0, 600_000))).toBe(true);

    // Restarted: the segment is received again from its start.
    const again = sink();
    feed(again, 0, 100_000);
    await again.sync();
    expect((await held()).length).toBe(600_000);
    expect(again.durableLsn).toBe(FIXTURE_START + 100_000n);
    expect(await readdir(dir)).toContain(`${PARTIAL}.rewrite`);

    feed(again, 100_000, 700_000);
    await again.sync();
    expect((await held()).equals(seg.subarray(0, 700_000))).toBe(true);
    expect(await readdir(dir)).not.toContain(`${PARTIAL}.rewrite`);
    await again.endStream();

    // Restarted once more and stopped before catching up: the longer copy stays, the new one goes.
    const short = sink();
    feed(short, 0, 50_000);
    await short.endStream();
    expect((await held()).equals(seg.subarray(0, 700_000))).toBe(true);
    expect((await readdir(dir)).sort()).toEqual([PARTIAL]);

    // And completed: the finished segment is published whole.
    const last = sink();
    feed(last, 0, FIXTURE_SEG_SIZE);
    await last.endStream();
    expect((await readdir(dir)).sort()).toEqual([`${FIXTURE_NAME}.gz`]);
    expect(gunzipSync(await readFile(join(dir, `${FIXTURE_NAME}.gz`))).equals(seg)).toBe(true);
  });

  it('overlapping syncs after catching up share one replacement, and each returns once it is durable', async () => {
    const first = sink();
    feed(first, 0, 300_000);
    await first.sync();
    await first.endStream();

    // In --synchronous mode a sync per batch and one for a keepalive's reply can overlap.
    const again = sink();
    feed(again, 0, 400_000);
    await Promise.all([again.sync(), again.sync(), again.sync()]);
    expect(again.durableLsn).toBe(FIXTURE_START + 400_000n);
    expect((await held()).equals(seg.subarray(0, 400_000))).toBe(true);
    expect((await readdir(dir)).sort()).toEqual([PARTIAL]);
    feed(again, 400_000, FIXTURE_SEG_SIZE);
    await again.endStream();
    expect((await readdir(dir)).sort()).toEqual([`${FIXTURE_NAME}.gz`]);
  });
});
