// walstream push as archive_command and walstream fetch as restore_command, run by real
// PostgreSQL servers: the archiver under pgbench load, a standby that fell behind the primary's
// pg_wal catching up from the archive and returning to streaming, and PostgreSQL's exit-status
// contract for every kind of bad input.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, freePort, toolBinDir } from '../harness/pg.js';
import { run } from '../harness/exec.js';
import { runCli } from '../support/cli.js';
import { pgOwnedDir, walstreamCommand } from '../support/pgcommand.js';
import { waitArchived, waitStreaming } from '../support/standby.js';
import { LocalStore } from '../../src/storage/local.js';

const SEG_RE = /^[0-9A-F]{24}$/;

describe('push and fetch with a real archiver and a real standby', () => {
  let primary: PgCluster;
  let standby: PgCluster;
  let archive: string;
  const dirs: string[] = [];

  beforeAll(async () => {
    archive = pgOwnedDir('archive');
    dirs.push(archive);
    primary = await PgCluster.create({
      name: 'pushfetch',
      conf: {
        archive_mode: 'on',
        archive_command: walstreamCommand(['push', '%p', '--archive', archive]),
        min_wal_size: '2MB',
        max_wal_size: '8MB',
        wal_keep_size: 0,
      },
    });
    standby = await primary.createStandby({ name: 'pushfetch-standby', restoreCommand: walstreamCommand(['fetch', '%f', '%p', '--archive', archive]) });
  });
  afterAll(async () => {
    await standby?.destroy();
    await primary?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('archives every segment under pgbench load, byte-identical, with no archiver failures', async () => {
    await standby.stop();
    const conn = ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', 'postgres'];
    await run([join(toolBinDir(), 'pgbench'), '-i', '-s', '1', '-q', ...conn], { timeoutMs: 120_000 });
    await run([join(toolBinDir(), 'pgbench'), '-t', '300', '-c', '2', '-n', ...conn], { timeoutMs: 120_000 });
    await primary.generateWal(30 * 1024 * 1024);
    const last = (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
    await primary.switchWal();
    await primary.waitFor(
      async () => {
        const [a] = await primary.query<{ last: string | null }>('select last_archived_wal as last from pg_stat_archiver');
        return (a?.last ?? '') >= last;
      },
      120_000,
      `archiving up to ${last}`,
    );
    const [stats] = await primary.query<{ failed: string; archived: string }>('select failed_count::text as failed, archived_count::text as archived from pg_stat_archiver');
    expect(stats!.failed).toBe('0');
    expect(Number(stats!.archived)).toBeGreaterThanOrEqual(30);
    const archived = readdirSync(archive).filter((n) => SEG_RE.test(n));
    expect(archived.length).toBeGreaterThanOrEqual(30);
    // Every segment still in pg_wal and in the archive is the same file (its .done says it is archived).
    let compared = 0;
    for (const n of archived) {
      if (existsSync(join(primary.walDir, 'archive_status', `${n}.done`)) && existsSync(join(primary.walDir, n))) {
        expect(readFileSync(join(archive, n)).equals(readFileSync(join(primary.walDir, n))), n).toBe(true);
        compared++;
      }
    }
    expect(compared).toBeGreaterThanOrEqual(1);
    // Every archived segment carries its checksum and reads back verified.
    const store = new LocalStore(archive);
    for (const n of archived) {
      const got = await store.get(n);
      expect(got.info.checksum, n).toMatch(/^[0-9a-f]{64}$/);
      expect(got.data.length, n).toBe(1024 * 1024);
    }
  });

  it("a standby behind the primary's pg_wal catches up from the archive, then streams again", async () => {
    // The WAL the standby needs is gone from the primary: it must come through restore_command.
    await primary.checkpoint();
    await primary.switchWal();
    await primary.checkpoint();
    const [{ oldest }] = (await primary.query<{ oldest: string }>("select min(name) as oldest from pg_ls_waldir() where name ~ '^[0-9A-F]{24}$'")) as [{ oldest: string }];
    const target = await primary.currentLsn();
    await standby.start();
    await standby.waitForReplay(target, 120_000);
    await waitStreaming(standby);
    const log = readFileSync(standby.logFile, 'utf8');
    expect(log).toMatch(/restored log file "[0-9A-F]{24}" from archive/);
    expect(oldest > '000000010000000000000003').toBe(true);
    const sum = 'select count(*)::text as n, sum(abalance)::text as s from pgbench_accounts';
    await primary.query('insert into pgbench_history (tid, bid, aid, delta, mtime) values (1, 1, 1, 1, now())');
    await standby.waitForReplay(await primary.currentLsn(), 60_000);
    expect(await standby.query(sum)).toEqual(await primary.query(sum));
  });

  it('push: refuses what is not a WAL file, keeps what is archived, and accepts an identical copy', async () => {
    const store = new LocalStore(archive);
    const existing = readdirSync(archive).filter((n) => SEG_RE.test(n))[0]!;
    const scratch = mkdtempSync(join(tmpdir(), 'walstream-push-'));
    dirs.push(scratch);
    const push = (path: string): ReturnType<typeof runCli> => runCli(['push', path, '--archive', archive]);
    // Same name, same bytes: success.
    writeFileSync(join(scratch, existing), readFileSync(join(archive, existing)));
    expect((await push(join(scratch, existing))).code).toBe(0);
    // Same name, different bytes: refused, one line naming it, the archived copy untouched.
    const other = Buffer.from(readFileSync(join(archive, existing)));
    other[100] = other[100]! ^ 0xff;
    writeFileSync(join(scratch, existing), other);
    const conflict = await push(join(scratch, existing));
    expect(conflict.code).toBe(1);
    expect(conflict.stderr.trim().split('\n')).toHaveLength(1);
    expect(conflict.stderr).toContain(existing);
    expect((await store.get(existing)).data.equals(readFileSync(join(archive, existing)))).toBe(true);
    // Not WAL: a wrong name, a wrong size, a file that is not there.
    writeFileSync(join(scratch, 'notwal'), 'x');
    expect((await push(join(scratch, 'notwal'))).code).toBe(1);
    writeFileSync(join(scratch, '0000000100000005000000FE'), Buffer.alloc(4096, 1));
    const small = await push(join(scratch, '0000000100000005000000FE'));
    expect(small.code).toBe(1);
    expect(small.stderr).toMatch(/0000000100000005000000FE/);
    expect((await push(join(scratch, '0000000100000005000000FD'))).code).toBe(1);
    expect(await store.head('0000000100000005000000FE')).toBeUndefined();
  });

  it('fetch: exit 1 for names that are not WAL and for misses, nothing written', async () => {
    const dest = mkdtempSync(join(tmpdir(), 'walstream-fetch-'));
    dirs.push(dest);
    for (const name of ['../../etc/passwd', 'junk', '00000001000000000000000G', '0000000A.history.x']) {
      const res = await runCli(['fetch', name, join(dest, 'RECOVERYXLOG'), '--archive', archive]);
      expect(res.code, name).toBe(1);
    }
    const miss = await runCli(['fetch', '0000000100000005000000EE', join(dest, 'RECOVERYXLOG'), '--archive', archive]);
    expect(miss.code).toBe(1);
    expect((await runCli(['fetch', '00000009.history', join(dest, 'RECOVERYHISTORY'), '--archive', archive])).code).toBe(1);
    expect(readdirSync(dest)).toEqual([]);
  });

  it('fetch: a corrupt object is refused; a standby is told "not available", any other recovery is stopped (exit 126)', async () => {
    const copy = pgOwnedDir('corrupt');
    dirs.push(copy);
    const store = new LocalStore(copy);
    const name = '000000010000000000000042';
    const data = Buffer.alloc(1024 * 1024, 7);
    await store.put(name, data);
    const file = join(copy, name);
    const bytes = readFileSync(file);
    bytes[10] = bytes[10]! ^ 1;
    writeFileSync(file, bytes);
    const cwd = mkdtempSync(join(tmpdir(), 'walstream-datadir-'));
    dirs.push(cwd);
    const dest = join(cwd, 'RECOVERYXLOG');
    const pitr = await runCli(['fetch', name, dest, '--archive', copy], { cwd });
    expect(pitr.code).toBe(126);
    expect(pitr.stderr).toMatch(/corrupt/);
    writeFileSync(join(cwd, 'standby.signal'), '');
    const sb = await runCli(['fetch', name, dest, '--archive', copy], { cwd });
    expect(sb.code).toBe(1);
    expect(existsSync(dest)).toBe(false);
  });

  it('fetch: an unreachable S3 endpoint stops a point-in-time recovery instead of ending it', async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'walstream-datadir-'));
    dirs.push(cwd);
    const port = await freePort();
    const res = await runCli(['fetch', '000000010000000000000001', join(cwd, 'RECOVERYXLOG'), '--archive', 's3://bucket/wal', '--s3-endpoint', `http://127.0.0.1:${port}`], {
      cwd,
      env: { AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE', AWS_SECRET_ACCESS_KEY: 'not-a-real-secret', AWS_REGION: 'us-east-1' },
    });
    expect(res.code).toBe(126);
    expect(res.stderr).not.toContain('not-a-real-secret');
    expect(readdirSync(cwd)).toEqual([]);
  });
});

describe('point-in-time recovery through walstream fetch', () => {
  let primary: PgCluster;
  let restored: PgCluster | undefined;
  let archive: string;

  beforeAll(async () => {
    archive = pgOwnedDir('pitr');
    primary = await PgCluster.create({
      name: 'pitr',
      conf: { archive_mode: 'on', archive_command: walstreamCommand(['push', '%p', '--archive', archive]) },
    });
  });
  afterAll(async () => {
    await restored?.destroy();
    await primary?.destroy();
    rmSync(archive, { recursive: true, force: true });
  });

  it('recovers a base backup to a target LSN: exactly the rows committed before it', async () => {
    await primary.query('create table pitr (id int primary key)');
    // The base backup: a copy of the data directory that will not stream.
    restored = await primary.createStandby({ name: 'pitr-restored', start: false });
    await primary.query('insert into pitr select generate_series(1, 100)');
    await primary.generateWal(3 * 1024 * 1024);
    const [{ target }] = (await primary.query<{ target: string }>('select pg_current_wal_lsn()::text as target')) as [{ target: string }];
    await primary.query('insert into pitr select generate_series(101, 200)');
    const last = (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
    await primary.switchWal();
    await waitArchived(primary, last, 60_000);
    // Archive recovery, not standby mode: WAL only from the archive, stop at the target, promote.
    unlinkSync(join(restored.dataDir, 'standby.signal'));
    writeFileSync(join(restored.dataDir, 'recovery.signal'), '');
    restored.configure({
      primary_conninfo: '',
      restore_command: walstreamCommand(['fetch', '%f', '%p', '--archive', archive]),
      recovery_target_lsn: target,
      recovery_target_action: 'promote',
    });
    await restored.start();
    await restored.waitFor(async () => !(await restored!.isInRecovery()), 120_000, 'the end of recovery');
    const [{ n, max }] = (await restored.query<{ n: string; max: number }>('select count(*)::text as n, max(id) as max from pitr')) as [{ n: string; max: number }];
    expect(n).toBe('100');
    expect(max).toBe(100);
    expect(readFileSync(restored.logFile, 'utf8')).toMatch(/recovery stopping (after|before) WAL location \(LSN\)|reached recovery target|recovery stopping/);
  });
});

describe('timelines through the archive', () => {
  const clusters: PgCluster[] = [];
  let archive: string;
  afterAll(async () => {
    for (const c of clusters.reverse()) await c.destroy();
    if (archive) rmSync(archive, { recursive: true, force: true });
  });

  it('a promoted standby archives its history file, and another standby follows the new timeline through fetch', async () => {
    archive = pgOwnedDir('timeline');
    const fetchCmd = walstreamCommand(['fetch', '%f', '%p', '--archive', archive]);
    const primary = await PgCluster.create({
      name: 'tl-primary',
      conf: { archive_mode: 'on', archive_command: walstreamCommand(['push', '%p', '--archive', archive]) },
    });
    clusters.push(primary);
    await primary.query('create table tl (id int)');
    const promoted = await primary.createStandby({ name: 'tl-promoted', restoreCommand: fetchCmd });
    clusters.push(promoted);
    const follower = await primary.createStandby({ name: 'tl-follower', restoreCommand: fetchCmd, conf: { recovery_target_timeline: 'latest' } });
    clusters.push(follower);
    await primary.query('insert into tl values (1)');
    const lsn = await primary.currentLsn();
    await promoted.waitForReplay(lsn);
    await follower.waitForReplay(lsn);
    // The primary is lost; one standby becomes the new primary on timeline 2.
    await primary.stop('immediate');
    await promoted.promote();
    await promoted.query('insert into tl values (2)');
    await promoted.switchWal();
    await promoted.waitFor(
      async () => existsSync(join(archive, '00000002.history')) && ((await promoted.query<{ l: string | null }>('select last_archived_wal as l from pg_stat_archiver'))[0]?.l ?? '').startsWith('00000002'),
      60_000,
      'the new timeline to be archived',
    );
    expect(readFileSync(join(archive, '00000002.history')).equals(readFileSync(join(promoted.walDir, '00000002.history')))).toBe(true);
    // The other standby, whose primary is gone, finds timeline 2 in the archive and replays it.
    await follower.waitFor(async () => (await follower.query<{ n: string }>('select count(*)::text as n from tl'))[0]?.n === '2', 120_000, 'the follower to replay timeline 2 from the archive');
    expect(readFileSync(follower.logFile, 'utf8')).toMatch(/restored log file "00000002\.history" from archive|new target timeline is 2/);
  });
});

describe('a standby catching up from what walstream receive archived', () => {
  let primary: PgCluster;
  let standby: PgCluster;
  let dir: string;
  afterAll(async () => {
    await standby?.destroy();
    await primary?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("replays the receiver's directory through fetch, then streams from the primary", async () => {
    dir = pgOwnedDir('received');
    primary = await PgCluster.create({ name: 'recv-catchup', conf: { min_wal_size: '2MB', max_wal_size: '8MB', wal_keep_size: 0 } });
    standby = await primary.createStandby({ name: 'recv-catchup-standby', restoreCommand: walstreamCommand(['fetch', '%f', '%p', '--archive', dir]) });
    await primary.query("select pg_create_physical_replication_slot('receiver', true)");
    await primary.query('create table caught (id int)');
    await standby.waitForReplay(await primary.currentLsn());
    await standby.stop();
    await primary.query('insert into caught select generate_series(1, 1000)');
    await primary.generateWal(30 * 1024 * 1024);
    // Everything up to here goes into complete segments the receiver holds.
    await primary.switchWal();
    const endpos = await primary.currentLsn();
    const res = await runCli(['receive', '-D', dir, '-d', primary.connectionString(), '-S', 'receiver', '-E', endpos, '-n']);
    expect(res.code, res.stderr).toBe(0);
    expect(readdirSync(dir).filter((n) => SEG_RE.test(n)).length).toBeGreaterThanOrEqual(30);
    // PostgreSQL runs restore_command as its own OS user: let it read what root received.
    await run(['chown', '-R', 'postgres:postgres', dir]);
    // Without the slot, checkpoints remove the old segments: the standby can only get them from the receiver.
    await primary.query("select pg_drop_replication_slot('receiver')");
    await primary.checkpoint();
    await primary.checkpoint();
    await standby.start();
    await standby.waitForReplay(endpos, 120_000);
    await waitStreaming(standby);
    expect(readFileSync(standby.logFile, 'utf8')).toMatch(/restored log file "[0-9A-F]{24}" from archive/);
    await primary.query('insert into caught values (0)');
    await standby.waitForReplay(await primary.currentLsn(), 60_000);
    const q = 'select count(*)::text as n, sum(id)::text as s from caught';
    expect(await standby.query(q)).toEqual(await primary.query(q));
  });
});

describe('the prefetch worker', () => {
  it('gives back the spool lock its fetch took for it when it cannot open the archive', async () => {
    const { spawn } = await import('node:child_process');
    const { BIN } = await import('../support/cli.js');
    const spool = mkdtempSync(join(tmpdir(), 'walstream-spool-'));
    try {
      const child = spawn(process.execPath, [BIN, 'fetch-prefetch', '--spool', spool, '--archive', 's3://x'], { stdio: ['ignore', 'ignore', 'pipe'] });
      // As fetch does right after starting it: the lock names the worker's process id.
      writeFileSync(join(spool, '.lock'), `${child.pid}\n`, { flag: 'wx', mode: 0o600 });
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      expect(code).toBe(1);
      expect(stderr).toMatch(/bucket/i);
      expect(existsSync(join(spool, '.lock'))).toBe(false);
    } finally {
      rmSync(spool, { recursive: true, force: true });
    }
  });
});
