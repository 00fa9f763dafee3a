// What status, verify and cleanup say and do about the leftovers of writers, over a real local
// archive (temp files named for real processes, alive and gone) and the in-memory store's uploads.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { THIS_WRITER, processStart, tempName, type WriterId } from '../../src/storage/leftovers.js';
import { LocalStore, META_DIR, TEMP_DIR } from '../../src/storage/local.js';
import { MemoryStore } from '../../src/storage/memory.js';
import { archiveStatus, formatStatus, statusJson } from '../../src/ops/status.js';
import { formatVerify, verifyArchive } from '../../src/ops/verify.js';
import { cleanupArchive, cleanupLeftovers } from '../../src/ops/cleanup.js';
import { summariseLeftovers } from '../../src/ops/inventory.js';
import { StorageError } from '../../src/storage/types.js';
import { makeSegment, seg } from './ops-walgen.js';

const HOUR = 3600_000;
const dirs: string[] = [];
const children = new Set<ChildProcess>();
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
});

async function child(): Promise<{ writer: WriterId; stop: () => Promise<void> }> {
  const c = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  children.add(c);
  await once(c, 'spawn');
  return {
    writer: { pid: c.pid!, start: processStart(c.pid!), host: THIS_WRITER.host, space: THIS_WRITER.space },
    stop: async () => {
      const exited = once(c, 'exit');
      c.kill('SIGKILL');
      await exited;
      children.delete(c);
    },
  };
}

/**
 * A local archive of segments 1-4 on timeline 1, and in its temp directory: a killed put's
 * segment (1 MB) and record, a live writer's temp file (10 bytes), and, beside the data, an older
 * version's temp file from two hours ago (3000 bytes).
 */
async function archiveWithLeftovers(): Promise<{ dir: string; store: LocalStore; live: Awaited<ReturnType<typeof child>> }> {
  const dir = mkdtempSync(join(tmpdir(), 'walstream-leftovers-ops-'));
  dirs.push(dir);
  const store = new LocalStore(dir);
  for (let n = 1; n <= 4; n++) await store.put(seg(1, n), makeSegment({ tli: 1, segNo: n }));
  const live = await child();
  const dead = await child();
  await dead.stop();
  const tmp = join(dir, META_DIR, TEMP_DIR);
  mkdirSync(tmp, { recursive: true });
  writeFileSync(join(tmp, tempName(seg(1, 5), dead.writer)), makeSegment({ tli: 1, segNo: 5 }));
  writeFileSync(join(tmp, tempName(`${seg(1, 5)}.sha256`, dead.writer)), Buffer.alloc(90));
  writeFileSync(join(tmp, tempName(seg(1, 6), live.writer)), Buffer.alloc(10));
  const old = join(dir, `.${seg(1, 7)}.4242.deadbeef.tmp`);
  writeFileSync(old, Buffer.alloc(3000));
  const t = new Date(Date.now() - 2 * HOUR);
  utimesSync(old, t, t);
  return { dir, store, live };
}

const MB = 1024 * 1024;

describe('status and verify report leftovers', () => {
  it('status: how many, how many bytes, how many cleanup removes; in text and JSON', async () => {
    const { store, live } = await archiveWithLeftovers();
    const r = await archiveStatus({ store });
    expect(r.objects).toBe(4);
    expect(r.leftovers).toMatchObject({ count: 4, bytes: MB + 90 + 10 + 3000, removable: 3, removableBytes: MB + 90 + 3000, inUse: 1, uploads: 0, unavailable: null });
    expect(r.leftovers!.items.map((i) => i.state).sort()).toEqual(['dead', 'dead', 'live', 'stale']);
    expect(r.leftovers!.items.find((i) => i.state === 'live')).toMatchObject({ kind: 'temp-file', bytes: 10, writer: { pid: live.writer.pid, host: THIS_WRITER.host } });
    const text = formatStatus(r);
    expect(text).toMatch(/^leftovers {3}4 temp files, 1\.0 MB: 3 of writers that are gone \(1\.0 MB; walstream cleanup removes them\), 1 kept \(a writer may still be at work\)$/m);
    const json = JSON.parse(statusJson(r)) as { leftovers: { count: number; bytes: number; items: { name: string }[] } };
    expect(json.leftovers.count).toBe(4);
    expect(json.leftovers.bytes).toBe(MB + 3100);
    expect(json.leftovers.items.map((i) => i.name)).toContain(`.${seg(1, 7)}.4242.deadbeef.tmp`);
    // With a longer leftover age the older version's file is no longer removable.
    expect((await archiveStatus({ store, leftoverAgeMs: 3 * HOUR })).leftovers).toMatchObject({ removable: 2, inUse: 2 });
    await live.stop();
  });

  it('status of an archive without leftovers: no line, and zeros in JSON', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'walstream-leftovers-ops-'));
    dirs.push(dir);
    const store = new LocalStore(dir);
    await store.put(seg(1, 1), makeSegment({ tli: 1, segNo: 1 }));
    const r = await archiveStatus({ store });
    expect(r.leftovers).toEqual({ count: 0, bytes: 0, removable: 0, removableBytes: 0, inUse: 0, uploads: 0, items: [], unavailable: null });
    expect(formatStatus(r)).not.toMatch(/^leftovers/m);
  });

  it('verify: a note and the summary; never a problem', async () => {
    const { store, live } = await archiveWithLeftovers();
    const r = await verifyArchive({ store });
    expect(r.ok).toBe(true);
    expect(r.problems).toEqual([]);
    expect(r.leftovers).toMatchObject({ count: 4, removable: 3, inUse: 1 });
    expect(r.notes).toContain('4 temp files (1.0 MB) left by writers, not WAL and not checked; 3 of writers that are gone (1.0 MB), which walstream cleanup removes; 1 kept (a writer may still be at work)');
    expect(formatVerify(r)).toMatch(/^note: 4 temp files \(1\.0 MB\) left by writers/m);
    await live.stop();
  });

  it('incomplete uploads count apart (the in-memory store holds them like S3)', async () => {
    const store = new MemoryStore('memory:uploads');
    await store.put(seg(1, 1), makeSegment({ tli: 1, segNo: 1 }));
    store.addLeftover(`${seg(1, 2)}`, { kind: 'multipart-upload', bytes: 5 * MB, modified: new Date(Date.now() - 3 * HOUR) });
    store.addLeftover(`${seg(1, 3)}`, { kind: 'multipart-upload', bytes: 5 * MB, modified: new Date() });
    const r = await archiveStatus({ store });
    expect(r.leftovers).toMatchObject({ count: 2, uploads: 2, removable: 1, inUse: 1 });
    expect(formatStatus(r)).toMatch(/^leftovers {3}2 incomplete multipart uploads, 10\.0 MB: 1 of writers that are gone \(5\.0 MB; walstream cleanup removes them\), 1 kept/m);
  });
});

describe('a store that cannot be searched for leftovers', () => {
  it('is reported, never a failure of status or cleanup', async () => {
    const store = new MemoryStore('memory:broken');
    store.failNext(new StorageError('the disk is on fire', true));
    expect(await summariseLeftovers(store, { now: new Date() })).toMatchObject({ count: 0, unavailable: 'cannot look for leftovers: the disk is on fire' });
    const warnings: string[] = [];
    const log = { info: () => undefined, verbose: () => undefined, error: () => undefined, warn: (m: string) => warnings.push(m) } as unknown as Parameters<typeof cleanupLeftovers>[1];
    store.failNext(new StorageError('the disk is on fire', true));
    const r = await cleanupLeftovers({ store, dryRun: false }, log);
    expect(r).toEqual({ removed: [], bytes: 0, kept: 0, failed: [], unavailable: 'cannot look for leftovers of writers: the disk is on fire' });
    expect(warnings).toEqual([r.unavailable]);
  });
});

describe('cleanup removes leftovers in every form', () => {
  it('without a WAL rule (the all-zero %r): only the leftovers of writers that are gone', async () => {
    const { dir, store, live } = await archiveWithLeftovers();
    const seen: string[] = [];
    const dry = await cleanupArchive({ store, rule: undefined, dryRun: true, onRemoveLeftover: (l) => seen.push(l.name) });
    expect(dry.leftovers.removed).toHaveLength(3);
    expect(seen).toHaveLength(3);
    expect((await store.scanLeftovers()).leftovers).toHaveLength(4);

    const res = await cleanupArchive({ store, rule: undefined, dryRun: false });
    expect(res.removed).toBe(0);
    expect(res.leftovers).toMatchObject({ bytes: MB + 90 + 3000, kept: 1, failed: [], unavailable: undefined });
    expect(res.leftovers.removed.map((l) => l.state).sort()).toEqual(['dead', 'dead', 'stale']);
    expect((await store.list()).map((o) => o.name)).toEqual([seg(1, 1), seg(1, 2), seg(1, 3), seg(1, 4)]);
    expect(readdirSync(join(dir, META_DIR, TEMP_DIR))).toHaveLength(1);
    expect(existsSync(join(dir, `.${seg(1, 7)}.4242.deadbeef.tmp`))).toBe(false);
    // The live writer's file goes once its writer is gone.
    await live.stop();
    expect((await cleanupArchive({ store, rule: undefined, dryRun: false })).leftovers.removed).toHaveLength(1);
    expect((await store.scanLeftovers()).leftovers).toEqual([]);
  });

  it('with a WAL rule: the WAL it names, and the leftovers; --leftover-age decides for writers it cannot check', async () => {
    const { store, live } = await archiveWithLeftovers();
    const res = await cleanupArchive({ store, rule: { kind: 'before', segment: seg(1, 3) }, dryRun: false, leftoverAgeMs: 3 * HOUR });
    expect(res.plan.remove.map((f) => f.name)).toEqual([seg(1, 1), seg(1, 2)]);
    // The older version's file is two hours old: kept with a three-hour age.
    expect(res.leftovers.removed.map((l) => l.state)).toEqual(['dead', 'dead']);
    expect(res.leftovers.kept).toBe(2);
    const aged = await cleanupArchive({ store, rule: { kind: 'older-than', cutoff: new Date(Date.now() - 7 * 24 * HOUR) }, dryRun: false, leftoverAgeMs: HOUR });
    expect(aged.removed).toBe(0);
    expect(aged.leftovers.removed.map((l) => l.state)).toEqual(['stale']);
    await live.stop();
  });
});
