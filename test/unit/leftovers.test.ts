// The rule for leftovers of dead writers (storage/leftovers.ts) and every place that follows it:
// temp names, the liveness of their writers (real child processes, alive and dead, and a reused
// pid), directory sweeps, writeFileAtomic, the local archive's puts and its scan, the receiver's
// spool, the prefetch spool and fetch's temp file next to %p. No mocks: real files, real processes.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_LEFTOVER_AGE_MS, THIS_WRITER, judgeLeftover, parseTempName, processStart, scanDirectory, sweepDirectory, tempName, type WriterId } from '../../src/storage/leftovers.js';
import { writeFileAtomic } from '../../src/sink/fsutil.js';
import { LocalStore, META_DIR, TEMP_DIR } from '../../src/storage/local.js';
import { MemoryStore } from '../../src/storage/memory.js';
import { SpoolUploader } from '../../src/archive/uploader.js';
import { prepareSpool, requestPrefetch, runPrefetchWorker } from '../../src/archive/prefetch.js';
import { fetch } from '../../src/commands/fetch.js';
import { silentLogger } from '../../src/util/log.js';
import { FIXTURE_NAME, fixtureSegment } from './fixture.js';

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'walstream-leftovers-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** Processes started by these tests (a writer that stays alive, or one that is gone). */
const children = new Set<ChildProcess>();
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
});

/** A real process of this host, as a writer: alive until `stop()`. */
async function liveProcess(): Promise<{ writer: WriterId; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  children.add(child);
  await once(child, 'spawn');
  const pid = child.pid!;
  const writer: WriterId = { pid, start: processStart(pid), host: THIS_WRITER.host, space: THIS_WRITER.space };
  return {
    writer,
    stop: async () => {
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
      children.delete(child);
    },
  };
}

/** A writer of this host that has exited (killed). */
async function deadWriter(): Promise<WriterId> {
  const p = await liveProcess();
  await p.stop();
  return p.writer;
}

/** A writer of another host (another pid space): its liveness cannot be checked from here. */
const OTHER_HOST: WriterId = { pid: process.pid, start: THIS_WRITER.start, host: 'db2', space: THIS_WRITER.space === '00000000' ? '11111111' : '00000000' };

const HOUR = 3600_000;

function writeAged(path: string, data: string | Buffer, ageMs: number): void {
  writeFileSync(path, data);
  const t = new Date(Date.now() - ageMs);
  utimesSync(path, t, t);
}

describe('temp names', () => {
  it('record the writer: pid, start time, host and pid space; dot-prefixed', () => {
    const name = tempName('000000010000000000000003');
    expect(name.startsWith('.000000010000000000000003.')).toBe(true);
    expect(name.endsWith('.tmp')).toBe(true);
    expect(parseTempName(name)).toEqual({ target: '000000010000000000000003', writer: { ...THIS_WRITER } });
    // A name with dots in it (a checksum record, a quarantine copy) keeps its target whole.
    const q = '000000010000000000000003.20250102T030405Z.sha256';
    expect(parseTempName(tempName(q, OTHER_HOST))).toEqual({ target: q, writer: OTHER_HOST });
    // Two temp names of one target never collide.
    expect(tempName('x')).not.toBe(tempName('x'));
    if (process.platform === 'linux') expect(THIS_WRITER.start).toMatch(/^\d+$/);
  });

  it('older formats are temp names without a writer; other names are not temp names', () => {
    for (const [file, target] of [
      ['.000000010000000000000003.4242.deadbeef.tmp', '000000010000000000000003'],
      ['.000000010000000000000003.sha256.4242.deadbeef.tmp', '000000010000000000000003.sha256'],
      ['.00000002.history.tmp', '00000002.history'],
      ['.000000010000000000000008.4242.tmp', '000000010000000000000008'],
      ['.RECOVERYXLOG.walstream-tmp', 'RECOVERYXLOG'],
      ['RECOVERYXLOG.walstream-tmp', 'RECOVERYXLOG'],
    ]) {
      expect(parseTempName(file!), file).toEqual({ target, writer: undefined });
    }
    for (const file of ['000000010000000000000003', '000000010000000000000003.partial', '.walstream-meta', '.want', '.lock', '.archive', '.walstream-spare-4242-0', 'x.tmp']) {
      expect(parseTempName(file), file).toBeUndefined();
    }
  });
});

describe('whose writer is gone', () => {
  it('a writer of this host: live while its process runs, however old the file; dead once it exits', async () => {
    const p = await liveProcess();
    const old = new Date(Date.now() - 30 * 24 * HOUR);
    expect(judgeLeftover(p.writer, old)).toBe('live');
    expect(judgeLeftover(THIS_WRITER, old)).toBe('live');
    await p.stop();
    expect(judgeLeftover(p.writer, new Date())).toBe('dead');
  });

  it('a reused pid: a live process with the pid but another start time is not the writer', async () => {
    if (process.platform !== 'linux') return expect(THIS_WRITER.start).toBeUndefined();
    const p = await liveProcess();
    expect(judgeLeftover({ ...p.writer, start: String(Number(p.writer.start) + 1) }, new Date())).toBe('dead');
    // This very pid, started at another time: a process before this one.
    expect(judgeLeftover({ ...THIS_WRITER, start: '1' }, new Date())).toBe('dead');
    await p.stop();
  });

  it('another host, or no writer recorded: by age (an hour by default, or as given)', () => {
    const now = new Date();
    expect(judgeLeftover(OTHER_HOST, new Date(now.getTime() - 59 * 60_000), { now })).toBe('recent');
    expect(judgeLeftover(OTHER_HOST, new Date(now.getTime() - DEFAULT_LEFTOVER_AGE_MS), { now })).toBe('stale');
    expect(judgeLeftover(undefined, new Date(now.getTime() - 2 * HOUR), { now })).toBe('stale');
    expect(judgeLeftover(undefined, new Date(now.getTime() - 2 * HOUR), { now, maxAgeMs: 3 * HOUR })).toBe('recent');
    expect(judgeLeftover(undefined, new Date(now.getTime() - 2 * 60_000), { now, maxAgeMs: 60_000 })).toBe('stale');
  });
});

describe('directory sweeps', () => {
  it("remove exactly the temp files of gone writers: never a live one's, another host's young one, or anything else", async () => {
    const dir = tmp();
    const live = await liveProcess();
    const dead = await deadWriter();
    const files = {
      live: tempName('A', live.writer),
      mine: tempName('B'),
      dead: tempName('C', dead),
      otherYoung: tempName('D', OTHER_HOST),
      otherOld: tempName('E', OTHER_HOST),
      legacyOld: '.F.4242.deadbeef.tmp',
      legacyYoung: '.G.tmp',
    };
    writeAged(join(dir, files.live), 'live', 5 * HOUR);
    writeAged(join(dir, files.mine), 'mine', 5 * HOUR);
    writeAged(join(dir, files.dead), 'dead!', 0);
    writeAged(join(dir, files.otherYoung), 'x', 10 * 60_000);
    writeAged(join(dir, files.otherOld), 'xy', 2 * HOUR);
    writeAged(join(dir, files.legacyOld), 'xyz', 2 * HOUR);
    writeAged(join(dir, files.legacyYoung), 'x', 0);
    // Not temp files: WAL, a directory and a symbolic link under temp names, a foreign dot file.
    writeFileSync(join(dir, '000000010000000000000001'), 'wal');
    const asDir = tempName('H', dead);
    const asLink = tempName('I', dead);
    mkdirSync(join(dir, asDir));
    symlinkSync(join(dir, '000000010000000000000001'), join(dir, asLink));
    writeAged(join(dir, '.bashrc'), 'x', 10 * HOUR);

    const found = await scanDirectory(dir);
    const state = Object.fromEntries(found.map((l) => [l.name, l.state]));
    expect(state).toEqual({
      [files.live]: 'live',
      [files.mine]: 'live',
      [files.dead]: 'dead',
      [files.otherYoung]: 'recent',
      [files.otherOld]: 'stale',
      [files.legacyOld]: 'stale',
      [files.legacyYoung]: 'recent',
    });
    expect(found.find((l) => l.name === files.dead)).toMatchObject({ kind: 'temp-file', bytes: 5, writer: { pid: dead.pid, host: dead.host } });
    expect(found.find((l) => l.name === files.legacyOld)?.writer).toBeUndefined();

    const dry = await sweepDirectory(dir, { dryRun: true });
    expect(dry.removed.map((l) => l.name).sort()).toEqual([files.dead, files.otherOld, files.legacyOld].sort());
    expect(readdirSync(dir)).toContain(files.dead);

    const r = await sweepDirectory(dir);
    expect(r.removed.map((l) => l.name).sort()).toEqual([files.dead, files.otherOld, files.legacyOld].sort());
    expect(r.failed).toEqual([]);
    expect(readdirSync(dir).sort()).toEqual([files.live, files.mine, files.otherYoung, files.legacyYoung, '000000010000000000000001', asDir, asLink, '.bashrc'].sort());
    // Once the live writer is gone too, its file goes.
    await live.stop();
    expect((await sweepDirectory(dir)).removed.map((l) => l.name)).toEqual([files.live]);
    // With a shorter age, another host's younger file goes as well.
    expect((await sweepDirectory(dir, { maxAgeMs: 60_000 })).removed.map((l) => l.name)).toEqual([files.otherYoung]);
  });

  it("writeFileAtomic removes the dead writers' temp files of its own target only, and writes the file", async () => {
    const dir = tmp();
    const live = await liveProcess();
    const dead = await deadWriter();
    const target = '00000002.history';
    const liveTemp = tempName(target, live.writer);
    const otherTarget = tempName('00000003.history', dead);
    writeFileSync(join(dir, tempName(target, dead)), 'half a history file');
    writeFileSync(join(dir, liveTemp), 'being written');
    writeFileSync(join(dir, otherTarget), 'another target');
    await writeFileAtomic(join(dir, target), Buffer.from('1\t0/3000000\tno recovery target specified\n'));
    expect(readFileSync(join(dir, target), 'utf8')).toBe('1\t0/3000000\tno recovery target specified\n');
    expect(readdirSync(dir).sort()).toEqual([liveTemp, otherTarget, target].sort());
    await live.stop();
  });
});

describe('the local archive', () => {
  it('puts write their temp files in .walstream-meta/tmp/, which is gone at rest', async () => {
    const dir = tmp();
    const s = new LocalStore(dir);
    await s.put(FIXTURE_NAME, fixtureSegment(), { compression: 'gzip' });
    expect(existsSync(join(dir, META_DIR, TEMP_DIR))).toBe(false);
    expect((await s.scanLeftovers()).leftovers).toEqual([]);
  });

  it("the next put removes the temp files of dead writers, never a live writer's", async () => {
    const dir = tmp();
    const s = new LocalStore(dir);
    await s.put('000000010000000000000001', Buffer.from('one'));
    const live = await liveProcess();
    const dead = await deadWriter();
    const tmpDir = join(dir, META_DIR, TEMP_DIR);
    mkdirSync(tmpDir, { recursive: true });
    const deadData = tempName(FIXTURE_NAME, dead);
    const deadRecord = tempName(`${FIXTURE_NAME}.sha256`, dead);
    const liveData = tempName('000000010000000000000002', live.writer);
    const otherYoung = tempName('000000010000000000000003', OTHER_HOST);
    writeFileSync(join(tmpDir, deadData), fixtureSegment());
    writeFileSync(join(tmpDir, deadRecord), 'x');
    writeAged(join(tmpDir, liveData), 'y', 3 * HOUR);
    writeAged(join(tmpDir, otherYoung), 'z', 30 * 60_000);

    // A second store (another writer's process would open its own).
    const next = new LocalStore(dir);
    expect((await next.put('000000010000000000000004', Buffer.from('four'))).status).toBe('created');
    expect(readdirSync(tmpDir).sort()).toEqual([liveData, otherYoung].sort());
    // The killed put's segment was never published; a put of it now works as usual.
    expect(await next.head(FIXTURE_NAME)).toBeUndefined();
    expect((await next.put(FIXTURE_NAME, fixtureSegment())).status).toBe('created');
    expect((await next.get(FIXTURE_NAME)).data.equals(fixtureSegment())).toBe(true);
    // The live writer's temp file stays until its writer is gone; the next put then removes it.
    await live.stop();
    await next.put('000000010000000000000005', Buffer.from('five'));
    expect(readdirSync(tmpDir)).toEqual([otherYoung]);
    // A store told a shorter leftover age removes another host's young one too; then the directory goes.
    await new LocalStore(dir, { leftoverAgeMs: 60_000 }).put('000000010000000000000006', Buffer.from('six'));
    expect(existsSync(tmpDir)).toBe(false);
    expect((await next.list()).map((o) => o.name)).toEqual(['000000010000000000000001', '000000010000000000000004', '000000010000000000000005', '000000010000000000000006', FIXTURE_NAME]);
  });

  it("scanLeftovers finds temp files in every place, older versions' too; removeLeftovers removes the gone writers' ones", async () => {
    const dir = tmp();
    const s = new LocalStore(dir);
    await s.put('000000010000000000000001', Buffer.from('one'));
    await expect(s.put('000000010000000000000001', Buffer.from('other'))).rejects.toThrow(/different contents/); // makes quarantine/
    const live = await liveProcess();
    const dead = await deadWriter();
    mkdirSync(join(dir, META_DIR, TEMP_DIR));
    const placed = {
      [`${META_DIR}/${TEMP_DIR}/${tempName('000000010000000000000002', dead)}`]: ['dead', 1000],
      [`${META_DIR}/${TEMP_DIR}/${tempName('000000010000000000000003', live.writer)}`]: ['live', 10],
      [`${META_DIR}/${TEMP_DIR}/unknown-file`]: ['stale', 7], // anything there is a temp file
      ['.000000010000000000000004.4242.deadbeef.tmp']: ['stale', 2000],
      ['.000000010000000000000005.4242.deadbeef.tmp']: ['recent', 30],
      [`${META_DIR}/.000000010000000000000004.sha256.4242.deadbeef.tmp`]: ['stale', 20],
      ['quarantine/.000000010000000000000001.20250101T000000Z.4242.deadbeef.tmp']: ['stale', 40],
      [`${META_DIR}/quarantine/.000000010000000000000001.20250101T000000Z.sha256.4242.deadbeef.tmp`]: ['stale', 50],
    } as const;
    for (const [name, [state, bytes]] of Object.entries(placed)) writeAged(join(dir, name), Buffer.alloc(bytes), state === 'recent' || state === 'dead' ? 0 : 2 * HOUR);
    const scan = await s.scanLeftovers();
    expect(scan.unavailable).toBeUndefined();
    expect(Object.fromEntries(scan.leftovers.map((l) => [l.name, [l.state, l.bytes]]))).toEqual(Object.fromEntries(Object.entries(placed).map(([k, v]) => [k, [...v]])));
    // The listing never shows them.
    expect((await s.list()).map((o) => o.name)).toEqual(['000000010000000000000001']);

    const dry = await s.removeLeftovers({ dryRun: true });
    expect(dry.removed).toHaveLength(6);
    expect((await s.scanLeftovers()).leftovers).toHaveLength(8);
    const r = await s.removeLeftovers();
    expect(r.removed.map((l) => l.name).sort()).toEqual(
      Object.keys(placed)
        .filter((k) => ['dead', 'stale'].includes(placed[k as keyof typeof placed][0]))
        .sort(),
    );
    expect((await s.scanLeftovers()).leftovers.map((l) => l.state).sort()).toEqual(['live', 'recent']);
    expect((await s.get('000000010000000000000001')).data.toString()).toBe('one');
    await live.stop();
  });
});

describe('the spools', () => {
  it("the receiver's spool: the uploader removes dead writers' temp files at start, and uploads the finished files", async () => {
    const spool = tmp();
    const dead = await deadWriter();
    const live = await liveProcess();
    writeFileSync(join(spool, FIXTURE_NAME), fixtureSegment());
    writeFileSync(join(spool, tempName('00000002.history', dead)), 'half');
    writeAged(join(spool, '.00000003.history.tmp'), 'older version', 2 * HOUR);
    const liveTemp = tempName('00000004.history', live.writer);
    writeFileSync(join(spool, liveTemp), 'being written');
    writeFileSync(join(spool, '000000010000000000000008.partial'), Buffer.alloc(4096));
    const store = new MemoryStore();
    const up = new SpoolUploader({ spoolDir: spool, store, compression: 'none', concurrency: 1, spoolMaxBytes: 1 << 30, log: silentLogger });
    await up.start();
    await up.drained();
    await up.stop();
    // (The segment stays as the spool's resume marker.)
    expect(readdirSync(spool).sort()).toEqual([FIXTURE_NAME, liveTemp, '000000010000000000000008.partial'].sort());
    expect((await store.get(FIXTURE_NAME)).data.equals(fixtureSegment())).toBe(true);
    await live.stop();
  });

  it("the prefetch spool: the worker removes dead writers' downloads, never a live fetch's", async () => {
    const spool = tmp();
    const store = new MemoryStore();
    await prepareSpool(spool, 'archive-a');
    const dead = await deadWriter();
    const live = await liveProcess();
    const deadDownload = tempName('000000010000000000000009', dead);
    const liveDownload = tempName('00000001000000000000000A', live.writer);
    writeFileSync(join(spool, deadDownload), Buffer.alloc(1000));
    writeFileSync(join(spool, liveDownload), Buffer.alloc(1000));
    writeAged(join(spool, '.00000001000000000000000B.4242.tmp'), 'older version', 2 * HOUR);
    await requestPrefetch(spool, { name: FIXTURE_NAME, segSize: 1024 * 1024, count: 2 }, () => undefined);
    await runPrefetchWorker({ dir: spool, store, log: silentLogger, idleMs: 0 });
    const temps = readdirSync(spool).filter((f) => f.endsWith('.tmp'));
    expect(temps).toEqual([liveDownload]);
    // Switched to another archive: emptied whole, a live writer's download too (it must not land there).
    await prepareSpool(spool, 'archive-b');
    expect(readdirSync(spool).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    await live.stop();
  });

  it('fetch removes the temp files of %p that killed fetches left, and nothing else in pg_wal', async () => {
    const pgWal = tmp();
    const dead = await deadWriter();
    const live = await liveProcess();
    const store = new MemoryStore();
    await store.put(FIXTURE_NAME, fixtureSegment());
    const dest = join(pgWal, 'RECOVERYXLOG');
    const deadTemp = tempName('RECOVERYXLOG', dead);
    const liveTemp = tempName('RECOVERYXLOG', live.writer);
    writeFileSync(join(pgWal, deadTemp), Buffer.alloc(1000));
    writeFileSync(join(pgWal, liveTemp), Buffer.alloc(1000));
    writeAged(join(pgWal, '.RECOVERYXLOG.walstream-tmp'), 'older version', 2 * HOUR);
    writeAged(join(pgWal, '.RECOVERYHISTORY.walstream-tmp'), 'another %p', 2 * HOUR);
    const otherTarget = tempName('000000010000000000000001', dead);
    writeFileSync(join(pgWal, otherTarget), 'not ours to judge');
    writeFileSync(join(pgWal, '000000010000000000000001'), 'wal');
    expect(await fetch({ name: FIXTURE_NAME, dest, openStore: async () => store, archiveKey: 'memory', log: silentLogger })).toBe('archive');
    expect(readFileSync(dest).equals(fixtureSegment())).toBe(true);
    expect(readdirSync(pgWal).sort()).toEqual(['.RECOVERYHISTORY.walstream-tmp', liveTemp, otherTarget, '000000010000000000000001', 'RECOVERYXLOG'].sort());
    await live.stop();
  });
});
