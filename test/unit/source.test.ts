// The WAL source over synthetic archives: which timeline is current, where it ends, how a
// historic timeline ends at its switch point (its last segment from the next timeline's file),
// when a client waits and when a segment is "already removed", the segment in progress (pieces,
// a pre-padded .partial), the durable tail of a receiver, and that nothing unverified is handed out.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryStore } from '../../src/storage/memory.js';
import { LocalStore } from '../../src/storage/local.js';
import { StoreReader, completePagesOfPadded, wholeHeaders } from '../../src/source/store-reader.js';
import { WalSource } from '../../src/source/wal-source.js';
import { LiveTail } from '../../src/source/live-tail.js';
import { WalSourceError, type ReadResult } from '../../src/source/types.js';
import { pieceName } from '../../src/archive/partial.js';
import { silentLogger } from '../../src/util/log.js';
import { parseLsn } from '../../src/wal/lsn.js';
import { BLOCK, MAGIC, SEG, SYSID, historyText, makeSegment, putSegments, seg } from './ops-walgen.js';

async function open(stores: StoreReader[], tail?: LiveTail): Promise<WalSource> {
  return WalSource.open({ stores, log: silentLogger, pollIntervalMs: 10, ...(tail ? { tail } : {}) });
}

/** Read everything a cursor gives until it would wait or the timeline ends. */
async function drain(source: WalSource, tli: number, start: bigint): Promise<{ bytes: Buffer; last: ReadResult }> {
  const c = source.cursor(tli, start);
  const parts: Buffer[] = [];
  for (;;) {
    const r = await c.read(256 * 1024);
    if (r.kind !== 'data') return { bytes: Buffer.concat(parts), last: r };
    parts.push(Buffer.from(r.data));
    c.consumed(r.data.length);
  }
}

describe('WalSource over an archive', () => {
  it('knows the system, the current timeline and the end of WAL, and serves the bytes as stored', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 3, 6);
    const source = await open([new StoreReader(store, 'archive')]);
    expect(source.identity).toMatchObject({ systemId: SYSID, segSize: SEG, blockSize: BLOCK, magic: MAGIC, major: 15 });
    const ts = await source.timelines();
    expect(ts.current).toBe(1);
    expect(ts.end).toBe(7n * BigInt(SEG));
    const { bytes, last } = await drain(source, 1, 3n * BigInt(SEG) + 100n);
    expect(last.kind).toBe('wait');
    const want = Buffer.concat([3, 4, 5, 6].map((n) => makeSegment({ tli: 1, segNo: n }))).subarray(100);
    expect(bytes.equals(want)).toBe(true);
  });

  it('ends a historic timeline at its switch point, reading the switch segment from the next timeline', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 2, 5);
    // Timeline 2 forks inside segment 5; its copy of segment 5 differs after the switch point only.
    const switchAt = 5n * BigInt(SEG) + 3n * BigInt(BLOCK) + 200n;
    await store.put('00000002.history', historyText([[1, `0/${switchAt.toString(16).toUpperCase()}`]]));
    const tl2seg5 = makeSegment({ tli: 2, segNo: 5, pageTli: 1 });
    tl2seg5.fill(0x5a, Number(switchAt % BigInt(SEG)), Number(switchAt % BigInt(SEG)) + 100);
    await store.put(seg(2, 5), tl2seg5);
    await putSegments(store, 2, 6, 7);
    const source = await open([new StoreReader(store, 'archive')]);
    expect((await source.timelines()).current).toBe(2);
    expect(source.plan(1)).toEqual({ kind: 'historic', switchpoint: switchAt, nextTli: 2 });
    expect(source.plan(3)).toEqual({ kind: 'unknown' });
    const { bytes, last } = await drain(source, 1, 4n * BigInt(SEG));
    expect(last).toEqual({ kind: 'end', switchpoint: switchAt, nextTli: 2 });
    expect(bytes.length).toBe(Number(switchAt - 4n * BigInt(SEG)));
    // Up to the switch point: timeline 1's segment 4, then timeline 2's file of segment 5.
    expect(bytes.subarray(SEG).equals(tl2seg5.subarray(0, Number(switchAt % BigInt(SEG))))).toBe(true);
    // Without the next timeline's file, timeline 1's own copy serves the same bytes.
    await store.delete(seg(2, 5));
    const again = await open([new StoreReader(store, 'archive')]);
    const { bytes: b2, last: l2 } = await drain(again, 1, 5n * BigInt(SEG));
    expect(l2.kind).toBe('end');
    expect(b2.equals(makeSegment({ tli: 1, segNo: 5 }).subarray(0, Number(switchAt % BigInt(SEG))))).toBe(true);
  });

  it('waits at the end of WAL, but calls a missing segment with later WAL behind it removed', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 2, 3);
    await putSegments(store, 1, 5, 6);
    const source = await open([new StoreReader(store, 'archive')]);
    await expect(drain(source, 1, 2n * BigInt(SEG))).rejects.toThrow(/requested WAL segment 000000010000000000000004 has already been removed/);
    const { last } = await drain(source, 1, 5n * BigInt(SEG));
    expect(last.kind).toBe('wait');
    // New WAL in the archive wakes a waiting reader within the poll interval.
    const c = source.cursor(1, 7n * BigInt(SEG));
    expect((await c.read(1024)).kind).toBe('wait');
    await putSegments(store, 1, 7, 7);
    await c.waitForMore();
    const r = await c.read(1024);
    expect(r.kind).toBe('data');
  });

  it('never hands out a segment that fails its checks, and says which', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 2, 4);
    const bad = makeSegment({ tli: 1, segNo: 3 });
    bad.writeBigUInt64LE(123n, 5 * BLOCK + 8); // a page address that does not fit
    await store.delete(seg(1, 3));
    await store.put(seg(1, 3), bad);
    const source = await open([new StoreReader(store, 'archive')]);
    const c = source.cursor(1, 3n * BigInt(SEG));
    await expect(c.read(1024)).rejects.toThrow(WalSourceError);
    await expect(c.read(1024)).rejects.toThrow(/archived WAL segment 000000010000000000000003 failed verification and is not sent: page at offset 40960/);
    // Another system's segment under the right name is refused as well.
    await store.delete(seg(1, 3));
    await store.put(seg(1, 3), makeSegment({ tli: 1, segNo: 3, sysid: 42n }));
    await expect(source.cursor(1, 3n * BigInt(SEG)).read(1024)).rejects.toThrow(/system identifier 42 differs/);
  });

  it('serves the pieces of the segment in progress and follows them as they grow', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 2, 2);
    const s3 = makeSegment({ tli: 1, segNo: 3 });
    await store.put(pieceName(seg(1, 3), 0), s3.subarray(0, 3 * BLOCK + 100));
    const source = await open([new StoreReader(store, 'archive')]);
    expect((await source.timelines()).end).toBe(3n * BigInt(SEG) + BigInt(3 * BLOCK + 100));
    const c = source.cursor(1, 3n * BigInt(SEG));
    let got = Buffer.alloc(0);
    for (let r = await c.read(SEG); r.kind === 'data'; r = await c.read(SEG)) {
      got = Buffer.concat([got, r.data]);
      c.consumed(r.data.length);
    }
    expect(got.equals(s3.subarray(0, 3 * BLOCK + 100))).toBe(true);
    await store.put(pieceName(seg(1, 3), 3 * BLOCK + 100), s3.subarray(3 * BLOCK + 100, 6 * BLOCK));
    await c.waitForMore();
    const r = await c.read(SEG);
    expect(r.kind === 'data' && r.data.equals(s3.subarray(3 * BLOCK + 100, 6 * BLOCK))).toBe(true);
  });
});

describe("the segment in progress in a receiver's directory", () => {
  it('serves a pre-padded .partial up to the last page known complete', async () => {
    const data = makeSegment({ tli: 1, segNo: 3 });
    data.fill(0, 10 * BLOCK); // the writer is in page 9: pages 0-8 are complete
    expect(completePagesOfPadded(data, BLOCK)).toBe(9 * BLOCK);
    expect(completePagesOfPadded(Buffer.alloc(SEG), BLOCK)).toBe(0);
    expect(wholeHeaders(5 * BLOCK + 10, BLOCK)).toBe(5 * BLOCK);
    expect(wholeHeaders(5 * BLOCK + 24, BLOCK)).toBe(5 * BLOCK + 24);
    expect(wholeHeaders(30, BLOCK)).toBe(0);
    const dir = mkdtempSync(join(tmpdir(), 'walstream-src-'));
    try {
      writeFileSync(join(dir, seg(1, 2)), makeSegment({ tli: 1, segNo: 2 }));
      writeFileSync(join(dir, `${seg(1, 3)}.partial`), data);
      const source = await open([new StoreReader(new LocalStore(dir), 'directory')]);
      expect((await source.timelines()).end).toBe(3n * BigInt(SEG) + 9n * BigInt(BLOCK));
      const { bytes, last } = await drain(source, 1, 3n * BigInt(SEG));
      expect(last.kind).toBe('wait');
      expect(bytes.equals(data.subarray(0, 9 * BLOCK))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the live tail of a receiver', () => {
  it('hands out only what is durable, wakes readers when that moves, and starts afresh on a new timeline', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 2, 3);
    const tail = new LiveTail(4 * SEG);
    const source = await open([new StoreReader(store, 'archive')], tail);
    const s4 = makeSegment({ tli: 1, segNo: 4 });
    tail.begin(4n * BigInt(SEG), 1);
    tail.append(4n * BigInt(SEG), s4.subarray(0, 100_000));
    const c = source.cursor(1, 4n * BigInt(SEG));
    expect((await c.read(SEG)).kind).toBe('wait'); // received, not durable
    const woke = c.waitForMore();
    tail.setDurable(4n * BigInt(SEG) + 60_000n);
    await woke;
    const r = await c.read(SEG);
    expect(r.kind === 'data' && r.data.equals(s4.subarray(0, 60_000))).toBe(true);
    c.consumed(60_000);
    expect((await source.timelines()).end).toBe(4n * BigInt(SEG) + 60_000n);
    // The views handed out never change: later appends go elsewhere.
    const view = r.kind === 'data' ? Buffer.from(r.data) : Buffer.alloc(0);
    tail.append(4n * BigInt(SEG) + 100_000n, s4.subarray(100_000, SEG));
    tail.setDurable(5n * BigInt(SEG));
    expect(r.kind === 'data' && r.data.equals(view)).toBe(true);
    // Trimmed when more than the limit is held; older positions come from the stores.
    for (let n = 5; n < 10; n++) tail.append(BigInt(n) * BigInt(SEG), makeSegment({ tli: 1, segNo: n }));
    tail.setDurable(10n * BigInt(SEG));
    expect(tail.first).toBeGreaterThan(4n * BigInt(SEG));
    expect(tail.read(1, 4n * BigInt(SEG), 10)).toBeUndefined();
    tail.begin(10n * BigInt(SEG), 2);
    expect(tail.first).toBeUndefined();
    expect(tail.read(1, 9n * BigInt(SEG), 10)).toBeUndefined();
  });
});

describe('LSNs clients send', () => {
  it('parse in any width', () => {
    expect(parseLsn('0/3000000')).toBe(0x3000000n);
  });
});
