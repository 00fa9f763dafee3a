// walstream receive --archive: a local spool, finished segments uploaded to S3 (s3rver started by
// the suite, or WALSTREAM_TEST_S3_ENDPOINT) or to a directory; outages, a full spool and kill -9
// lose nothing, and every archived object equals the server's own segment.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster } from '../harness/pg.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { runCli, startCli, type CliProcess } from '../support/cli.js';
import { lsnOf, segName } from '../support/walfiles.js';
import { openArchive } from '../../src/storage/open.js';
import { assemblePieces, listPieces } from '../../src/archive/partial.js';
import type { ArchiveStore } from '../../src/storage/types.js';

const SEG = 1024 * 1024;

describe('receive --archive', () => {
  let primary: PgCluster;
  let s3: S3TestServer;
  const dirs: string[] = [];
  const stores: ArchiveStore[] = [];
  const newDir = (p: string): string => {
    const d = mkdtempSync(join(tmpdir(), `walstream-${p}-`));
    dirs.push(d);
    return d;
  };
  const s3Env = (): Record<string, string> => ({
    AWS_ACCESS_KEY_ID: s3.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
    AWS_REGION: s3.region,
  });
  const s3Url = (name: string): string => `s3://${s3.bucket}/${s3.prefix}${name}/`;
  const open = async (url: string): Promise<ArchiveStore> => {
    const env = s3Env();
    for (const [k, v] of Object.entries(env)) process.env[k] = v;
    const st = await openArchive(url, { s3Endpoint: s3.endpoint });
    stores.push(st);
    return st;
  };
  /** Every segment from `first` up to the one before `endpos` is archived and equals pg_wal's copy. */
  const expectArchived = async (store: ArchiveStore, firstLsn: bigint, endpos: string): Promise<number> => {
    const names = (await store.list()).map((o) => o.name).filter((n) => /^[0-9A-F]{24}$/.test(n));
    const want: string[] = [];
    for (let s = firstLsn / BigInt(SEG); s < lsnOf(endpos) / BigInt(SEG); s++) want.push(segName(1, s * BigInt(SEG), SEG));
    expect(names).toEqual(want);
    for (const n of names) {
      const got = await store.get(n);
      expect(got.data.equals(readFileSync(join(primary.walDir, n))), n).toBe(true);
      expect(got.info.checksum).toMatch(/^[0-9a-f]{64}$/);
    }
    return names.length;
  };
  const slot = async (name: string): Promise<bigint> => {
    const [row] = await primary.query<{ lsn: string }>('select lsn::text from pg_create_physical_replication_slot($1, true)', [name]);
    return lsnOf(row!.lsn);
  };
  const receiver = (dir: string, archive: string, args: string[]): CliProcess =>
    startCli(['receive', '-D', dir, '-d', primary.connectionString(), '--archive', archive, '--s3-endpoint', s3.endpoint, '-v', ...args], { env: s3Env() });

  beforeAll(async () => {
    [primary, s3] = await Promise.all([PgCluster.create({ name: 'archive' }), startS3({ builtIn: true })]);
  });
  afterAll(async () => {
    for (const st of stores) await st.close();
    await primary?.destroy();
    await s3?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("archives every finished segment into S3, identical to the server's, up to --endpos", async () => {
    const first = await slot('to_s3');
    await primary.generateWal(4 * SEG);
    const endpos = await primary.currentLsn();
    const spool = newDir('spool');
    const res = await runCli(['receive', '-D', spool, '-d', primary.connectionString(), '-S', 'to_s3', '-E', endpos, '-n', '--archive', s3Url('plain'), '--s3-endpoint', s3.endpoint], { env: s3Env() });
    expect(res.code, res.stderr).toBe(0);
    const store = await open(s3Url('plain'));
    expect(await expectArchived(store, first, endpos)).toBeGreaterThanOrEqual(4);
    // The spool keeps only the newest segment (its resume marker) and the .partial.
    const left = readdirSync(spool).sort();
    expect(left).toEqual([segName(1, lsnOf(endpos) - BigInt(SEG), SEG), `${segName(1, lsnOf(endpos), SEG)}.partial`]);
    expect(res.stderr).not.toContain(s3.secretAccessKey);
  });

  it("keeps each segment in a local directory on the spool's file system as a second name of the spool's file, recorded with the SHA-256 of the server's bytes", async () => {
    const first = await slot('to_dir_linked');
    await primary.generateWal(3 * SEG);
    const endpos = await primary.currentLsn();
    const archiveDir = newDir('archive');
    const spool = newDir('spool');
    const res = await runCli(['receive', '-D', spool, '-d', primary.connectionString(), '-S', 'to_dir_linked', '-E', endpos, '-n', '--archive', archiveDir]);
    expect(res.code, res.stderr).toBe(0);
    const store = await open(archiveDir);
    expect(await expectArchived(store, first, endpos)).toBeGreaterThanOrEqual(3);
    for (const o of await store.list()) {
      if (!/^[0-9A-F]{24}$/.test(o.name)) continue;
      expect(o.checksum, o.name).toBe(
        createHash('sha256')
          .update(readFileSync(join(primary.walDir, o.name)))
          .digest('hex'),
      );
    }
    // The segment the spool keeps (its resume marker) is the archive's object itself.
    const kept = readdirSync(spool).filter((n) => /^[0-9A-F]{24}$/.test(n));
    expect(kept).toHaveLength(1);
    expect(statSync(join(archiveDir, kept[0]!)).ino).toBe(statSync(join(spool, kept[0]!)).ino);
  });

  it('archives into a local directory with gzip, readable back to the same bytes', async () => {
    const first = await slot('to_dir');
    await primary.generateWal(2 * SEG);
    const endpos = await primary.currentLsn();
    const archiveDir = newDir('archive');
    const res = await runCli(['receive', '-D', newDir('spool'), '-d', primary.connectionString(), '-S', 'to_dir', '-E', endpos, '-n', '--archive', archiveDir, '-Z', 'gzip']);
    expect(res.code, res.stderr).toBe(0);
    expect(readdirSync(archiveDir).filter((n) => n.endsWith('.gz')).length).toBeGreaterThanOrEqual(2);
    await expectArchived(await open(archiveDir), first, endpos);
  });

  it('keeps streaming through an S3 outage, pauses at --spool-max, and catches up when S3 is back', async () => {
    const first = await slot('outage');
    const spool = newDir('spool');
    const proc = receiver(spool, s3Url('outage'), ['-S', 'outage', '--spool-max', '2MB', '--synchronous']);
    try {
      await proc.waitForOutput(/starting log streaming/);
      await s3.pause('refuse');
      await primary.generateWal(5 * SEG);
      await proc.waitForOutput(/could not archive/);
      await proc.waitForOutput(/pausing the stream/);
      // While paused, walstream reads nothing more, so the slot stays put and holds the new WAL on the server.
      const slotPos = async (): Promise<bigint> => lsnOf((await primary.query<{ lsn: string }>("select restart_lsn::text as lsn from pg_replication_slots where slot_name = 'outage'"))[0]!.lsn);
      await new Promise((r) => setTimeout(r, 1000));
      const held = await slotPos();
      await primary.generateWal(3 * SEG);
      await new Promise((r) => setTimeout(r, 1000));
      expect(await slotPos()).toBe(held);
      expect(lsnOf(await primary.currentLsn()) - held).toBeGreaterThanOrEqual(BigInt(3 * SEG));
      await s3.resume();
      await proc.waitForOutput(/resuming the stream/, 60_000);
      const endpos = await primary.currentLsn();
      const store = await open(s3Url('outage'));
      const deadline = Date.now() + 60_000;
      const lastSeg = segName(1, lsnOf(endpos) - BigInt(SEG), SEG);
      while (!(await store.head(lastSeg)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      proc.kill('SIGTERM');
      const res = await proc.done;
      expect(res.code, res.stderr).toBe(0);
      await expectArchived(store, first, endpos);
    } finally {
      proc.kill('SIGKILL');
      await s3.resume().catch(() => undefined);
    }
  });

  it('loses nothing when killed with -9 while uploads hang, then restarted', async () => {
    const first = await slot('kill_upload');
    const spool = newDir('spool');
    const proc = receiver(spool, s3Url('kill9'), ['-S', 'kill_upload']);
    await proc.waitForOutput(/starting log streaming/);
    await s3.pause('hang');
    await primary.generateWal(3 * SEG);
    await proc.waitForOutput(/finished segment/);
    await new Promise((r) => setTimeout(r, 300));
    proc.kill('SIGKILL');
    await proc.done;
    await s3.resume();
    await primary.generateWal(SEG);
    const endpos = await primary.currentLsn();
    const res = await runCli(['receive', '-D', spool, '-d', primary.connectionString(), '-S', 'kill_upload', '-E', endpos, '-n', '--archive', s3Url('kill9'), '--s3-endpoint', s3.endpoint], { env: s3Env() });
    expect(res.code, res.stderr).toBe(0);
    await expectArchived(await open(s3Url('kill9')), first, endpos);
  });

  it("ships the segment in progress as pieces that add up to the server's bytes, removed once the segment is archived", async () => {
    await slot('pieces');
    const url = s3Url('pieces');
    const proc = receiver(newDir('spool'), url, ['-S', 'pieces', '--partial-interval', '1']);
    try {
      await proc.waitForOutput(/starting log streaming/);
      await primary.query('create table if not exists pieces (id int)');
      await primary.query('insert into pieces select generate_series(1, 1000)');
      const lsn = lsnOf(await primary.currentLsn());
      const seg = segName(1, lsn, SEG);
      const offset = Number(lsn % BigInt(SEG));
      const store = await open(url);
      let assembled: Buffer = Buffer.alloc(0);
      const deadline = Date.now() + 20_000;
      while (assembled.length < offset && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 250));
        assembled = await assemblePieces(store, seg);
      }
      expect(assembled.length).toBeGreaterThanOrEqual(offset);
      expect(assembled.equals(readFileSync(join(primary.walDir, seg)).subarray(0, assembled.length))).toBe(true);
      expect((await listPieces(store, seg)).length).toBeGreaterThanOrEqual(1);
      // The segment completes: the whole object arrives and its pieces go.
      await primary.generateWal(2 * SEG);
      const done = Date.now() + 30_000;
      while (((await store.head(seg)) === undefined || (await listPieces(store, seg)).length > 0) && Date.now() < done) {
        await new Promise((r) => setTimeout(r, 250));
      }
      expect((await store.get(seg)).data.equals(readFileSync(join(primary.walDir, seg)))).toBe(true);
      expect(await listPieces(store, seg)).toEqual([]);
      proc.kill('SIGTERM');
      expect((await proc.done).code).toBe(0);
    } finally {
      proc.kill('SIGKILL');
    }
  });

  it('ships the last durable bytes of the segment in progress when the stream ends, whatever the piece interval', async () => {
    await slot('pieces_end');
    const url = s3Url('pieces-end');
    // No tick in the test's time: only the end of the stream can ship a piece.
    const proc = receiver(newDir('spool'), url, ['-S', 'pieces_end', '--partial-interval', '3600', '--synchronous']);
    try {
      await proc.waitForOutput(/starting log streaming/);
      await primary.query('create table if not exists pieces_end (id int)');
      await primary.query('insert into pieces_end select generate_series(1, 1000)');
      const lsn = lsnOf(await primary.currentLsn());
      const seg = segName(1, lsn, SEG);
      const offset = Number(lsn % BigInt(SEG));
      await primary.waitFor(
        async () => {
          const [r] = await primary.query<{ f: string | null }>("select flush_lsn::text as f from pg_replication_slots s join pg_stat_replication r on r.pid = s.active_pid where slot_name = 'pieces_end'");
          return r?.f != null && lsnOf(r.f) >= lsn;
        },
        30_000,
        'the receiver to report the insert durable',
      );
      const store = await open(url);
      expect(await listPieces(store, seg)).toEqual([]);
      proc.kill('SIGTERM');
      expect((await proc.done).code).toBe(0);
      const assembled = await assemblePieces(store, seg);
      expect(assembled.length).toBeGreaterThanOrEqual(offset);
      expect(assembled.equals(readFileSync(join(primary.walDir, seg)).subarray(0, assembled.length))).toBe(true);
    } finally {
      proc.kill('SIGKILL');
    }
  });

  it('archives the segments it finished before the stream failed, then reports the failure', async () => {
    const first = await slot('fail_drain');
    const url = s3Url('fail-drain');
    // One upload at a time: when the stream ends, one segment is being uploaded and the others wait.
    const proc = receiver(newDir('spool'), url, ['-S', 'fail_drain', '-n', '--partial-interval', '0', '--upload-concurrency', '1']);
    try {
      await proc.waitForOutput(/starting log streaming/);
      // Every request to S3 waits 3 s: the uploads are still under way when the stream ends.
      s3.setLatency(3000);
      await primary.generateWal(3 * SEG);
      const lsn = lsnOf(await primary.currentLsn());
      await proc.waitForOutput(new RegExp(`finished segment ${segName(1, lsn - BigInt(SEG), SEG)}`), 30_000);
      await primary.query("select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = 'fail_drain'");
      const res = await proc.done;
      expect(res.code, res.stderr).not.toBe(0);
      expect(res.stderr).toMatch(/archiving the [1-9]\d* files? received before exiting/);
      s3.setLatency(0);
      const store = await open(url);
      const names = (await store.list()).map((o) => o.name).filter((n) => /^[0-9A-F]{24}$/.test(n));
      const want: string[] = [];
      for (let s = first / BigInt(SEG); s < lsn / BigInt(SEG); s++) want.push(segName(1, s * BigInt(SEG), SEG));
      expect(want.length).toBeGreaterThanOrEqual(3);
      expect(names).toEqual(want);
      for (const n of names) expect((await store.get(n)).data.equals(readFileSync(join(primary.walDir, n))), n).toBe(true);
    } finally {
      s3.setLatency(0);
      proc.kill('SIGKILL');
    }
  });

  it('archives the history file and both timelines across a promotion', async () => {
    const standby = await primary.createStandby({ name: 'archive-tl' });
    try {
      const url = s3Url('timeline');
      const spool = newDir('spool');
      const proc = startCli(['receive', '-D', spool, '-d', standby.connectionString(), '--archive', url, '--s3-endpoint', s3.endpoint, '-v'], { env: s3Env() });
      await proc.waitForOutput(/starting log streaming/);
      await standby.waitForReplay(await primary.generateWal(SEG + SEG / 4));
      await standby.promote();
      await standby.generateWal(2 * SEG);
      const endpos = await standby.currentLsn();
      await proc.waitForOutput(/archived 00000002\.history/, 30_000);
      proc.kill('SIGINT');
      expect((await proc.done).code).toBe(0);
      const res = await runCli(['receive', '-D', spool, '-d', standby.connectionString(), '-E', endpos, '-n', '--archive', url, '--s3-endpoint', s3.endpoint], { env: s3Env() });
      expect(res.code, res.stderr).toBe(0);
      const store = await open(url);
      const names = (await store.list()).map((o) => o.name);
      expect(names).toContain('00000002.history');
      expect((await store.get('00000002.history')).data.equals(readFileSync(join(standby.walDir, '00000002.history')))).toBe(true);
      const tl2 = names.filter((n) => /^00000002[0-9A-F]{16}$/.test(n));
      expect(tl2.length).toBeGreaterThanOrEqual(1);
      for (const n of tl2) expect((await store.get(n)).data.equals(readFileSync(join(standby.walDir, n))), n).toBe(true);
      expect(names.some((n) => /^00000001[0-9A-F]{16}$/.test(n))).toBe(true);
    } finally {
      await standby.destroy();
    }
  });

  it("resumes after the archive's newest segment when the spool is empty (a new host)", async () => {
    const first = await slot('newhost');
    await primary.generateWal(2 * SEG);
    const mid = await primary.currentLsn();
    const url = s3Url('newhost');
    const a = await runCli(['receive', '-D', newDir('spool'), '-d', primary.connectionString(), '-S', 'newhost', '-E', mid, '-n', '--archive', url, '--s3-endpoint', s3.endpoint], { env: s3Env() });
    expect(a.code, a.stderr).toBe(0);
    await primary.generateWal(2 * SEG);
    const endpos = await primary.currentLsn();
    const b = await runCli(['receive', '-D', newDir('spool'), '-d', primary.connectionString(), '-S', 'newhost', '-E', endpos, '-n', '-v', '--archive', url, '--s3-endpoint', s3.endpoint], { env: s3Env() });
    expect(b.code, b.stderr).toBe(0);
    expect(b.stderr).toMatch(/spool is empty: resuming after the archive's newest segment/);
    await expectArchived(await open(url), first, endpos);
  });
});
