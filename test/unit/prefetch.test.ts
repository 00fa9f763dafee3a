// The restore side's helpers: the prefetch spool (window, take, cleanup, another archive's files,
// unsafe modes), the partial-segment reader for fetch --partial, the archive identity, and push's
// look-ahead order in archive_status.
import { afterEach, describe, expect, it } from 'vitest';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryStore } from '../../src/storage/memory.js';
import { IDENTITY_NAME } from '../../src/storage/types.js';
import { prefetchFirst, prepareSpool, requestPrefetch, runPrefetchWorker, takeFromSpool, windowNames, workerRunning } from '../../src/archive/prefetch.js';
import { pieceName, readPartialSegment } from '../../src/archive/partial.js';
import { claimArchive, IdentityMismatchError, readIdentity } from '../../src/archive/identity.js';
import { readyFiles } from '../../src/commands/push.js';
import { silentLogger } from '../../src/util/log.js';
import { FIXTURE_NAME, FIXTURE_SEG_SIZE, fixtureSegment, fixtureSystemId } from './fixture.js';

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'walstream-prefetch-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A segment-shaped file: a long header naming a 1 MB segment size, then zeros. */
function fakeSegment(fill = 0): Buffer {
  const b = Buffer.alloc(FIXTURE_SEG_SIZE, fill);
  fixtureSegment().copy(b, 0, 0, 40);
  return b;
}

describe('prefetch window', () => {
  it('names the next segments on the same timeline, across an xlogid boundary', () => {
    expect(windowNames({ name: '0000000200000000000000FE', segSize: 16 * 1024 * 1024, count: 3 })).toEqual(['0000000200000000000000FF', '000000020000000100000000', '000000020000000100000001']);
    expect(windowNames({ name: '000000010000000000000FFF', segSize: 1024 * 1024, count: 1 })).toEqual(['000000010000000100000000']);
  });
});

describe('prefetch spool', () => {
  it('serves a complete file by rename and refuses a short or foreign-sized one', async () => {
    const spool = tmp();
    const out = tmp();
    await prepareSpool(spool, 'archive-a');
    writeFileSync(join(spool, '000000010000000000000008'), fakeSegment(1));
    expect(await takeFromSpool(spool, '000000010000000000000008', join(out, 'RECOVERYXLOG'))).toBe(FIXTURE_SEG_SIZE);
    expect(readFileSync(join(out, 'RECOVERYXLOG')).equals(fakeSegment(1))).toBe(true);
    expect(existsSync(join(spool, '000000010000000000000008'))).toBe(false);
    // Cut short (a torn write): never served, and removed.
    writeFileSync(join(spool, '000000010000000000000009'), fakeSegment(2).subarray(0, 4096));
    expect(await takeFromSpool(spool, '000000010000000000000009', join(out, 'X'))).toBeUndefined();
    expect(existsSync(join(out, 'X'))).toBe(false);
    expect(existsSync(join(spool, '000000010000000000000009'))).toBe(false);
    expect(await takeFromSpool(spool, '00000001000000000000000A', join(out, 'X'))).toBeUndefined();
  });

  it('empties itself when it held files of another archive', async () => {
    const spool = tmp();
    await prepareSpool(spool, 'archive-a');
    writeFileSync(join(spool, '000000010000000000000008'), fakeSegment());
    await prepareSpool(spool, 'archive-a');
    expect(readdirSync(spool)).toContain('000000010000000000000008');
    await prepareSpool(spool, 'archive-b');
    expect(readdirSync(spool)).not.toContain('000000010000000000000008');
  });

  it('refuses a spool other users can write to', async () => {
    const spool = join(tmp(), 'spool');
    mkdirSync(spool);
    chmodSync(spool, 0o777);
    await expect(prepareSpool(spool, 'a')).rejects.toThrow(/writable by other users/);
  });

  it('the worker downloads the window, skips what the archive lacks, and removes what recovery passed', async () => {
    const spool = tmp();
    const store = new MemoryStore();
    for (let i = 8; i <= 11; i++) await store.put(`0000000100000000000000${i.toString(16).toUpperCase().padStart(2, '0')}`, fakeSegment(i));
    await prepareSpool(spool, store.description);
    writeFileSync(join(spool, '000000010000000000000006'), fakeSegment()); // passed already
    let started = 0;
    await requestPrefetch(spool, { name: '000000010000000000000007', segSize: FIXTURE_SEG_SIZE, count: 6 }, () => void started++);
    expect(started).toBe(1);
    await runPrefetchWorker({ dir: spool, store, log: silentLogger, idleMs: 0 });
    const segs = readdirSync(spool).filter((n) => /^[0-9A-F]{24}$/.test(n));
    expect(segs).toEqual(['000000010000000000000008', '000000010000000000000009', '00000001000000000000000A', '00000001000000000000000B']);
    expect(readFileSync(join(spool, '00000001000000000000000A')).equals(fakeSegment(10))).toBe(true);
    expect(existsSync(join(spool, '.lock'))).toBe(false);
    // A corrupt archived object is never put in the spool.
    store.corrupt('00000001000000000000000B');
    rmSync(join(spool, '00000001000000000000000B'));
    await requestPrefetch(spool, { name: '000000010000000000000009', segSize: FIXTURE_SEG_SIZE, count: 4 }, () => void started++);
    await runPrefetchWorker({ dir: spool, store, log: silentLogger, idleMs: 0 });
    expect(readdirSync(spool).filter((n) => /^[0-9A-F]{24}$/.test(n))).toEqual(['00000001000000000000000A']);
  });

  it('follows files taken from the spool without a new request, and exits when idle', async () => {
    const spool = tmp();
    const store = new MemoryStore();
    const name = (i: number): string => `0000000100000000000000${i.toString(16).toUpperCase().padStart(2, '0')}`;
    for (let i = 8; i <= 14; i++) await store.put(name(i), fakeSegment(i));
    await prepareSpool(spool, store.description);
    await requestPrefetch(spool, { name: name(7), segSize: FIXTURE_SEG_SIZE, count: 2 }, () => undefined);
    // idle for 5 s before it exits: a loaded machine can pause this loop for seconds (a CI run with
    // other work beside it stalled it past 2 s, and the worker left before recovery's next file)
    const worker = runPrefetchWorker({ dir: spool, store, log: silentLogger, idleMs: 5000, pollMs: 10 });
    const out = tmp();
    // Recovery takes each file by a plain rename, as a shell restore_command would.
    for (let i = 8; i <= 12; i++) {
      const deadline = Date.now() + 30_000; // arrival, not speed, is what this asserts (a loaded CI machine stalled it past 5 s)
      while (!existsSync(join(spool, name(i)))) {
        if (Date.now() > deadline) throw new Error(`${name(i)} never arrived`);
        await new Promise((r) => setTimeout(r, 10));
      }
      renameSync(join(spool, name(i)), join(out, 'RECOVERYXLOG'));
      expect(readFileSync(join(out, 'RECOVERYXLOG')).equals(fakeSegment(i))).toBe(true);
    }
    await worker;
    // It kept two ahead of the last file taken, and no more.
    expect(readdirSync(spool).filter((n) => /^[0-9A-F]{24}$/.test(n))).toEqual([name(13), name(14)]);
    expect(existsSync(join(spool, '.lock'))).toBe(false);
  });

  it('does not start a second worker while one holds the lock', async () => {
    const spool = tmp();
    await prepareSpool(spool, 'a');
    writeFileSync(join(spool, '.lock'), `${process.pid}\n`);
    let started = 0;
    await requestPrefetch(spool, { name: '000000010000000000000007', segSize: FIXTURE_SEG_SIZE, count: 2 }, () => void started++);
    expect(started).toBe(0);
    // A lock left by a process that is gone is taken over.
    writeFileSync(join(spool, '.lock'), '999999999\n');
    await requestPrefetch(spool, { name: '000000010000000000000007', segSize: FIXTURE_SEG_SIZE, count: 2 }, () => void started++);
    expect(started).toBe(1);
  });

  it('takes the lock for the worker it starts, so fetches during its start-up start no other; the worker adopts it', async () => {
    const spool = tmp();
    const store = new MemoryStore();
    await store.put('000000010000000000000008', fakeSegment(8));
    await prepareSpool(spool, store.description);
    let started = 0;
    // This process stands in for the worker just started.
    const start = (): number => {
      started++;
      return process.pid;
    };
    await requestPrefetch(spool, { name: '000000010000000000000007', segSize: FIXTURE_SEG_SIZE, count: 1 }, start);
    expect(readFileSync(join(spool, '.lock'), 'utf8').trim()).toBe(String(process.pid));
    expect(workerRunning(spool)).toBe(true);
    await requestPrefetch(spool, { name: '000000010000000000000007', segSize: FIXTURE_SEG_SIZE, count: 1 }, start);
    expect(started).toBe(1);
    await runPrefetchWorker({ dir: spool, store, log: silentLogger, idleMs: 0 });
    expect(readFileSync(join(spool, '000000010000000000000008')).equals(fakeSegment(8))).toBe(true);
    expect(existsSync(join(spool, '.lock'))).toBe(false);
  });

  it('a fetch that starts a worker downloads the first segments itself, verified, and skips what is missing or corrupt', async () => {
    const spool = tmp();
    const store = new MemoryStore();
    await store.put('000000010000000000000008', fakeSegment(8));
    await store.put('000000010000000000000009', fakeSegment(9));
    store.corrupt('000000010000000000000009');
    await prepareSpool(spool, store.description);
    await prefetchFirst(store, spool, { name: '000000010000000000000007', segSize: FIXTURE_SEG_SIZE, count: 3 }, silentLogger);
    expect(readdirSync(spool).filter((n) => !n.startsWith('.'))).toEqual(['000000010000000000000008']);
    expect(readFileSync(join(spool, '000000010000000000000008')).equals(fakeSegment(8))).toBe(true);
  });
});

describe('partial copies for fetch --partial', () => {
  it("reassembles the receiver's pieces and pads them to a whole segment", async () => {
    const store = new MemoryStore();
    const seg = fixtureSegment();
    await store.put(pieceName(FIXTURE_NAME, 0), seg.subarray(0, 20000));
    await store.put(pieceName(FIXTURE_NAME, 20000), seg.subarray(20000, 50000));
    await store.put(pieceName(FIXTURE_NAME, 60000), seg.subarray(60000, 70000)); // after a gap: not used
    const got = await readPartialSegment(store, FIXTURE_NAME);
    expect(got!.length).toBe(FIXTURE_SEG_SIZE);
    expect(got!.subarray(0, 50000).equals(seg.subarray(0, 50000))).toBe(true);
    expect(got!.subarray(50000).every((b) => b === 0)).toBe(true);
  });

  it("prefers the segment's .partial object, and has nothing to offer without one", async () => {
    const store = new MemoryStore();
    expect(await readPartialSegment(store, FIXTURE_NAME)).toBeUndefined();
    await store.put(`${FIXTURE_NAME}.partial`, fixtureSegment());
    expect((await readPartialSegment(store, FIXTURE_NAME))!.equals(fixtureSegment())).toBe(true);
  });

  it('refuses pieces that are not WAL of that segment', async () => {
    const store = new MemoryStore();
    await store.put(pieceName('000000010000000000000009', 0), fixtureSegment().subarray(0, 16384));
    await expect(readPartialSegment(store, '000000010000000000000009')).rejects.toThrow(/not valid WAL/);
  });
});

describe('archive identity', () => {
  it('is recorded by the first writer and refuses another system or segment size', async () => {
    const store = new MemoryStore();
    const ours = { systemIdentifier: fixtureSystemId(), segmentSize: FIXTURE_SEG_SIZE };
    await claimArchive(store, ours, 'x');
    expect(await readIdentity(store)).toEqual(ours);
    await claimArchive(store, ours, 'x');
    await expect(claimArchive(store, { ...ours, systemIdentifier: 42n }, '000000010000000000000007')).rejects.toThrow(IdentityMismatchError);
    await expect(claimArchive(store, { ...ours, systemIdentifier: 42n }, '000000010000000000000007')).rejects.toThrow(/system 42.*holds WAL of system/);
    await expect(claimArchive(store, { ...ours, segmentSize: 2 * FIXTURE_SEG_SIZE }, 'y')).rejects.toThrow(/segments/);
    // Listings leave the record out.
    expect((await store.list()).map((o) => o.name)).not.toContain(IDENTITY_NAME);
  });
});

describe('push look-ahead', () => {
  it('takes history files first, then the ready segments after the one asked for, in order', async () => {
    const wal = tmp();
    mkdirSync(join(wal, 'archive_status'));
    for (const n of ['000000010000000000000003', '000000010000000000000005', '000000010000000000000004', '000000010000000000000002', '00000002.history', 'junk']) {
      writeFileSync(join(wal, 'archive_status', `${n}.ready`), '');
    }
    writeFileSync(join(wal, 'archive_status', '000000010000000000000006.done'), '');
    expect(await readyFiles(wal, '000000010000000000000003', 8)).toEqual(['00000002.history', '000000010000000000000004', '000000010000000000000005']);
    expect(await readyFiles(wal, '000000010000000000000003', 2)).toEqual(['00000002.history', '000000010000000000000004']);
    expect(await readyFiles(join(wal, 'nowhere'), '000000010000000000000003', 2)).toEqual([]);
  });
});
