import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync, constants as zconst } from 'node:zlib';
import { createHash } from 'node:crypto';
import { WalDirSink, WalValidationError, type SegmentDigest, type WalDirSinkOptions, type SinkListener } from '../../src/sink/wal-dir.js';
import type { Lsn } from '../../src/wal/lsn.js';
import { fixtureSegment, fixtureSystemId, FIXTURE_BLOCK_SIZE, FIXTURE_MAGIC, FIXTURE_NAME, FIXTURE_SEG_SIZE, FIXTURE_START, FIXTURE_TLI } from './fixture.js';

const SEG = FIXTURE_SEG_SIZE;
const CHUNK = 128 * 1024;
const END = FIXTURE_START + BigInt(SEG);
const NEXT_NAME = '000000010000000000000008';

let dir = '';
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'walstream-sink-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function makeSink(over: Partial<WalDirSinkOptions> = {}): WalDirSink {
  return new WalDirSink({
    dir,
    segSize: SEG,
    blockSize: FIXTURE_BLOCK_SIZE,
    compression: 'none',
    noSync: false,
    systemId: fixtureSystemId(),
    magic: FIXTURE_MAGIC,
    // The file mechanics alone: the one fixture segment ends inside a record that runs on into
    // a segment the fixture lacks (sink-records.test.ts covers the record check).
    verifyRecords: false,
    ...over,
  });
}

/** Write `data` starting at `lsn` in pieces of `chunk` bytes. */
function writeChunks(sink: WalDirSink, lsn: Lsn, data: Buffer, chunk = CHUNK): void {
  for (let off = 0; off < data.length; off += chunk) {
    sink.write(lsn + BigInt(off), data.subarray(off, Math.min(off + chunk, data.length)));
  }
}

/** The fixture turned into the following segment: the same pages with their addresses moved on. */
function nextSegment(): Buffer {
  const seg = fixtureSegment();
  for (let off = 0; off < seg.length; off += FIXTURE_BLOCK_SIZE) {
    seg.writeBigUInt64LE(seg.readBigUInt64LE(off + 8) + BigInt(SEG), off + 8);
  }
  return seg;
}

const listDir = async (): Promise<string[]> => (await readdir(dir)).sort();

describe('WalDirSink, plain files', () => {
  it('a whole segment in 128 KiB chunks becomes the final file, byte-identical', async () => {
    const seg = fixtureSegment();
    const done: [string, Lsn][] = [];
    const sink = makeSink({ onSegmentDone: (name, end) => done.push([name, end]) });
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START, seg);
    expect(sink.receivedLsn).toBe(END);
    await sink.endStream();

    expect(await listDir()).toEqual([FIXTURE_NAME]);
    expect((await readFile(join(dir, FIXTURE_NAME))).equals(seg)).toBe(true);
    expect(sink.durableLsn).toBe(END);
    expect(sink.writtenLsn).toBe(END);
    expect(sink.error).toBeUndefined();
    expect(done).toEqual([[FIXTURE_NAME, END]]);
  });

  it('the same with --no-sync and in one single write', async () => {
    const seg = fixtureSegment();
    const sink = makeSink({ noSync: true });
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    sink.write(FIXTURE_START, seg);
    await sink.endStream();
    expect(await listDir()).toEqual([FIXTURE_NAME]);
    expect((await readFile(join(dir, FIXTURE_NAME))).equals(seg)).toBe(true);
    expect(sink.durableLsn).toBe(END);
  });

  it('half a segment stays a .partial padded to the full size with zeros', async () => {
    const seg = fixtureSegment();
    const half = SEG / 2;
    const sink = makeSink();
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START, seg.subarray(0, half));
    await sink.endStream();

    expect(await listDir()).toEqual([`${FIXTURE_NAME}.partial`]);
    const got = await readFile(join(dir, `${FIXTURE_NAME}.partial`));
    expect(got.length).toBe(SEG);
    expect(got.subarray(0, half).equals(seg.subarray(0, half))).toBe(true);
    expect(got.subarray(half).every((b) => b === 0)).toBe(true);
    expect(sink.durableLsn).toBe(FIXTURE_START + BigInt(half));
  });

  it('sync() makes what was written durable and reports it to listeners', async () => {
    const seg = fixtureSegment();
    const sink = makeSink();
    const durable: Lsn[] = [];
    const listener: SinkListener = { pressure: () => {}, drain: () => {}, durable: (l) => durable.push(l), failed: () => {} };
    const detach = sink.attach(listener);
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    sink.write(FIXTURE_START, seg.subarray(0, CHUNK));
    await sink.sync();
    expect(sink.durableLsn).toBe(FIXTURE_START + BigInt(CHUNK));
    expect(durable).toEqual([FIXTURE_START + BigInt(CHUNK)]);
    detach();
    await sink.endStream();
  });

  it('a new stream (reconnect) continuing mid-segment completes the .partial', async () => {
    const seg = fixtureSegment();
    const half = SEG / 2 + 1000; // not page-aligned
    const sink = makeSink();
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START, seg.subarray(0, half));
    await sink.endStream();
    sink.begin(FIXTURE_START + BigInt(half), FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START + BigInt(half), seg.subarray(half));
    await sink.endStream();
    expect(await listDir()).toEqual([FIXTURE_NAME]);
    expect((await readFile(join(dir, FIXTURE_NAME))).equals(seg)).toBe(true);
    expect(sink.durableLsn).toBe(END);

    // The same with a fresh sink, as after a restart of the process.
    await rm(join(dir, FIXTURE_NAME));
    const first = makeSink();
    first.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(first, FIXTURE_START, seg.subarray(0, half));
    await first.endStream();
    const second = makeSink();
    second.begin(FIXTURE_START + BigInt(half), FIXTURE_TLI);
    writeChunks(second, FIXTURE_START + BigInt(half), seg.subarray(half));
    await second.endStream();
    expect(await listDir()).toEqual([FIXTURE_NAME]);
    expect((await readFile(join(dir, FIXTURE_NAME))).equals(seg)).toBe(true);
  });

  it('a stream crossing a segment boundary in unaligned pieces', async () => {
    const data = Buffer.concat([fixtureSegment(), nextSegment().subarray(0, 300_000)]);
    const done: string[] = [];
    const sink = makeSink({ onSegmentDone: (name) => done.push(name) });
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START, data, 100_003);
    await sink.endStream();

    expect(await listDir()).toEqual([FIXTURE_NAME, `${NEXT_NAME}.partial`]);
    expect((await readFile(join(dir, FIXTURE_NAME))).equals(fixtureSegment())).toBe(true);
    const partial = await readFile(join(dir, `${NEXT_NAME}.partial`));
    expect(partial.subarray(0, 300_000).equals(nextSegment().subarray(0, 300_000))).toBe(true);
    expect(partial.subarray(300_000).every((b) => b === 0)).toBe(true);
    expect(done).toEqual([FIXTURE_NAME]);
    expect(sink.durableLsn).toBe(END + 300_000n);
  });

  it('a write at a wrong LSN throws WalValidationError and writes nothing', async () => {
    const seg = fixtureSegment();
    const sink = makeSink();
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    expect(() => sink.write(FIXTURE_START + 8192n, seg.subarray(8192, 8192 + CHUNK))).toThrow(WalValidationError);
    expect(() => sink.write(FIXTURE_START - 1n, seg.subarray(0, CHUNK))).toThrow(/WAL received at 0\/6FFFFF where 0\/700000 was expected/);
    expect(sink.receivedLsn).toBe(FIXTURE_START);
    await sink.endStream();
    expect(await listDir()).toEqual([]);
  });

  it('a gap or an overlap after good data throws and leaves only the good data', async () => {
    const seg = fixtureSegment();
    const sink = makeSink();
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    sink.write(FIXTURE_START, seg.subarray(0, CHUNK));
    // gap
    expect(() => sink.write(FIXTURE_START + BigInt(2 * CHUNK), seg.subarray(2 * CHUNK, 3 * CHUNK))).toThrow(WalValidationError);
    // overlap
    expect(() => sink.write(FIXTURE_START + BigInt(CHUNK / 2), seg.subarray(CHUNK / 2, 2 * CHUNK))).toThrow(WalValidationError);
    expect(sink.receivedLsn).toBe(FIXTURE_START + BigInt(CHUNK));
    await sink.endStream();

    expect(await listDir()).toEqual([`${FIXTURE_NAME}.partial`]);
    const got = await readFile(join(dir, `${FIXTURE_NAME}.partial`));
    expect(got.subarray(0, CHUNK).equals(seg.subarray(0, CHUNK))).toBe(true);
    expect(got.subarray(CHUNK).every((b) => b === 0)).toBe(true);
  });

  it('a chunk with a corrupted page header throws and none of it is written', async () => {
    const seg = fixtureSegment();
    const bad = Buffer.from(seg);
    const page = CHUNK + 5 * FIXTURE_BLOCK_SIZE; // a page inside the second chunk
    bad.writeBigUInt64LE(FIXTURE_START + BigInt(page) + 8192n, page + 8);
    const sink = makeSink();
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    sink.write(FIXTURE_START, seg.subarray(0, CHUNK));
    expect(() => sink.write(FIXTURE_START + BigInt(CHUNK), bad.subarray(CHUNK, 2 * CHUNK))).toThrow(WalValidationError);
    expect(() => sink.write(FIXTURE_START + BigInt(CHUNK), bad.subarray(CHUNK, 2 * CHUNK))).toThrow(/segment 000000010000000000000007: page at offset 172032: address/);
    expect(sink.receivedLsn).toBe(FIXTURE_START + BigInt(CHUNK));
    await sink.endStream();

    expect(await listDir()).toEqual([`${FIXTURE_NAME}.partial`]);
    const got = await readFile(join(dir, `${FIXTURE_NAME}.partial`));
    expect(got.subarray(0, CHUNK).equals(seg.subarray(0, CHUNK))).toBe(true);
    expect(got.subarray(CHUNK).every((b) => b === 0)).toBe(true);
  });

  it('a segment of another cluster is refused at its first page', async () => {
    const sink = makeSink({ systemId: 1234n });
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    expect(() => sink.write(FIXTURE_START, fixtureSegment().subarray(0, CHUNK))).toThrow(/system identifier 7710857609574752955 differs/);
    await sink.endStream();
    // At most an empty (all-zero) .partial may have been created: none of the foreign WAL.
    for (const name of await listDir()) {
      expect(name).toBe(`${FIXTURE_NAME}.partial`);
      expect((await readFile(join(dir, name))).every((b) => b === 0)).toBe(true);
    }
  });

  it('streaming a segment again over its existing .partial completes it', async () => {
    const seg = fixtureSegment();
    const old = Buffer.alloc(SEG);
    seg.copy(old, 0, 0, SEG / 4);
    await writeFile(join(dir, `${FIXTURE_NAME}.partial`), old);
    const sink = makeSink();
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START, seg);
    await sink.endStream();
    expect(await listDir()).toEqual([FIXTURE_NAME]);
    expect((await readFile(join(dir, FIXTURE_NAME))).equals(seg)).toBe(true);
  });

  it('an existing .partial of a wrong size fails the sink cleanly and is left alone', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => {
      unhandled.push(reason);
    };
    process.on('unhandledRejection', onUnhandled);
    try {
      await writeFile(join(dir, `${FIXTURE_NAME}.partial`), Buffer.alloc(1000, 1));
      const sink = makeSink();
      sink.begin(FIXTURE_START, FIXTURE_TLI);
      expect(() => sink.write(FIXTURE_START, fixtureSegment().subarray(0, CHUNK))).toThrow(/has incorrect size 1000, expected 0 or 1048576/);
      await expect(sink.endStream()).rejects.toThrow(/has incorrect size 1000, expected 0 or 1048576/);
      expect((await readFile(join(dir, `${FIXTURE_NAME}.partial`))).equals(Buffer.alloc(1000, 1))).toBe(true);
      expect(sink.durableLsn).toBe(FIXTURE_START);
      await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    expect(unhandled.map((r) => String(r))).toEqual([]);
  });

  it('writing the same segment where an identical final file exists succeeds', async () => {
    const seg = fixtureSegment();
    await writeFile(join(dir, FIXTURE_NAME), seg);
    const sink = makeSink();
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START, seg);
    await sink.endStream();
    expect(await listDir()).toEqual([FIXTURE_NAME]);
    expect((await readFile(join(dir, FIXTURE_NAME))).equals(seg)).toBe(true);
    expect(sink.durableLsn).toBe(END);
  });

  it('a different existing final file makes endStream reject and is left untouched', async () => {
    const seg = fixtureSegment();
    const other = Buffer.from(seg);
    other[500_000] = other[500_000]! ^ 0xff;
    await writeFile(join(dir, FIXTURE_NAME), other);
    const failures: Error[] = [];
    const sink = makeSink();
    sink.attach({ pressure: () => {}, drain: () => {}, durable: () => {}, failed: (e) => failures.push(e) });
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START, seg);
    await expect(sink.endStream()).rejects.toThrow(WalValidationError);
    await expect(sink.endStream()).rejects.toThrow(/already exists with different contents/);

    expect((await readFile(join(dir, FIXTURE_NAME))).equals(other)).toBe(true);
    // The received copy is kept under its .partial name, and nothing was reported durable.
    expect((await readFile(join(dir, `${FIXTURE_NAME}.partial`))).equals(seg)).toBe(true);
    expect(sink.durableLsn).toBe(FIXTURE_START);
    expect(failures).toHaveLength(1);
    expect(sink.error).toBeInstanceOf(WalValidationError);
    expect(() => sink.write(END, Buffer.alloc(10))).toThrow(WalValidationError);
  });

  it('signals pressure when a compressor falls behind, and drain once it catches up', async () => {
    // Plain files are written synchronously; only a compressor can have bytes waiting.
    const events: string[] = [];
    const sink = makeSink({ highWaterBytes: 3 * CHUNK, noSync: true, compression: 'gzip' });
    sink.attach({ pressure: () => events.push('pressure'), drain: () => events.push('drain'), durable: () => {}, failed: () => events.push('failed') });
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    const seg = fixtureSegment();
    writeChunks(sink, FIXTURE_START, seg.subarray(0, FIXTURE_SEG_SIZE / 2));
    expect(events).toEqual(['pressure']);
    const deadline = Date.now() + 10_000;
    while (!events.includes('drain') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(events).toEqual(['pressure', 'drain']);
    await sink.endStream();
  });

  it('with digestSegments, tells the SHA-256 of a segment written whole from its first byte, and of no other', async () => {
    const seg = fixtureSegment();
    const sha = createHash('sha256').update(seg).digest('hex');
    const done: [string, SegmentDigest | undefined][] = [];
    const onSegmentDone = (name: string, _end: Lsn, written?: SegmentDigest): void => {
      done.push([name, written]);
    };
    const sink = makeSink({ digestSegments: true, onSegmentDone });
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START, seg, 100_000);
    await sink.endStream();
    expect(done).toEqual([[FIXTURE_NAME, { sha256: sha, size: SEG }]]);

    // Continued mid-segment (a reconnect): the bytes before were not seen, so no digest.
    await rm(join(dir, FIXTURE_NAME));
    done.length = 0;
    const half = SEG / 2 + 1000;
    const first = makeSink({ digestSegments: true, onSegmentDone });
    first.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(first, FIXTURE_START, seg.subarray(0, half));
    await first.endStream();
    const second = makeSink({ digestSegments: true, onSegmentDone });
    second.begin(FIXTURE_START + BigInt(half), FIXTURE_TLI);
    writeChunks(second, FIXTURE_START + BigInt(half), seg.subarray(half));
    await second.endStream();
    expect(done).toEqual([[FIXTURE_NAME, undefined]]);
    expect((await readFile(join(dir, FIXTURE_NAME))).equals(seg)).toBe(true);

    // Without the option, nothing is hashed.
    await rm(join(dir, FIXTURE_NAME));
    done.length = 0;
    const plain = makeSink({ onSegmentDone });
    plain.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(plain, FIXTURE_START, seg);
    await plain.endStream();
    expect(done).toEqual([[FIXTURE_NAME, undefined]]);
  });

  it('writes timeline history files atomically', async () => {
    const sink = makeSink();
    const content = Buffer.from('1\t0/B023F8\tno recovery target specified\n');
    expect(await sink.hasHistory('00000002.history')).toBe(false);
    await sink.writeHistory('00000002.history', content);
    expect(await sink.hasHistory('00000002.history')).toBe(true);
    expect((await readFile(join(dir, '00000002.history'))).equals(content)).toBe(true);
    expect(await listDir()).toEqual(['00000002.history']);
  });
});

describe('WalDirSink, gzip', () => {
  it('a whole segment becomes <name>.gz whose gunzip is the segment', async () => {
    const seg = fixtureSegment();
    const sink = makeSink({ compression: 'gzip' });
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START, seg);
    await sink.endStream();
    expect(await listDir()).toEqual([`${FIXTURE_NAME}.gz`]);
    expect(gunzipSync(await readFile(join(dir, `${FIXTURE_NAME}.gz`))).equals(seg)).toBe(true);
    expect(sink.durableLsn).toBe(END);
  });

  it('with a level, and across a segment boundary', async () => {
    const next = nextSegment();
    const sink = makeSink({ compression: 'gzip', compressionLevel: 1 });
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START, Buffer.concat([fixtureSegment(), next]), 300_001);
    await sink.endStream();
    expect(await listDir()).toEqual([`${FIXTURE_NAME}.gz`, `${NEXT_NAME}.gz`]);
    expect(gunzipSync(await readFile(join(dir, `${FIXTURE_NAME}.gz`))).equals(fixtureSegment())).toBe(true);
    expect(gunzipSync(await readFile(join(dir, `${NEXT_NAME}.gz`))).equals(next)).toBe(true);
  });

  it('half a segment stays <name>.gz.partial holding a readable prefix', async () => {
    const seg = fixtureSegment();
    const half = SEG / 2;
    const sink = makeSink({ compression: 'gzip' });
    sink.begin(FIXTURE_START, FIXTURE_TLI);
    writeChunks(sink, FIXTURE_START, seg.subarray(0, half));
    await sink.endStream();
    expect(await listDir()).toEqual([`${FIXTURE_NAME}.gz.partial`]);
    const got = gunzipSync(await readFile(join(dir, `${FIXTURE_NAME}.gz.partial`)), { finishFlush: zconst.Z_SYNC_FLUSH });
    expect(got.equals(seg.subarray(0, half))).toBe(true);
  });
});
