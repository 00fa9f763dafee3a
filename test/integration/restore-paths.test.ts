// The faster and fuller restore paths, run by real PostgreSQL servers: push --parallel as the
// archive_command under load, the archive's system check, a standby catching up from S3 through
// fetch --prefetch, and point-in-time recovery up to the last WAL the receiver got (fetch --partial).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, toolBinDir } from '../harness/pg.js';
import { run } from '../harness/exec.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { runCli, startCli } from '../support/cli.js';
import { pgOwnedDir, walstreamCommand } from '../support/pgcommand.js';
import { waitArchived, waitStreaming } from '../support/standby.js';
import { SEG_RE } from '../support/walfiles.js';
import { LocalStore } from '../../src/storage/local.js';
import { openArchive } from '../../src/storage/open.js';
import { listPieces } from '../../src/archive/partial.js';

async function currentWalFile(c: PgCluster): Promise<string> {
  return (await c.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
}

describe('push --parallel as archive_command', () => {
  let primary: PgCluster;
  let archive: string;
  beforeAll(async () => {
    archive = pgOwnedDir('parallel');
    primary = await PgCluster.create({
      name: 'parallel',
      conf: { archive_mode: 'on', archive_command: walstreamCommand(['push', '%p', '--archive', archive, '--parallel', '4', '-v']), wal_keep_size: '64MB' },
    });
  });
  afterAll(async () => {
    await primary?.destroy();
    rmSync(archive, { recursive: true, force: true });
  });

  it('keeps up under pgbench: every segment archived once, byte-identical, later calls answered by the look-ahead', async () => {
    const conn = ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', 'postgres'];
    await run([join(toolBinDir(), 'pgbench'), '-i', '-s', '1', '-q', ...conn], { timeoutMs: 120_000 });
    await run([join(toolBinDir(), 'pgbench'), '-t', '200', '-c', '2', '-n', ...conn], { timeoutMs: 120_000 });
    await primary.generateWal(20 * 1024 * 1024);
    const last = await currentWalFile(primary);
    await primary.switchWal();
    await waitArchived(primary, last);
    const [stats] = await primary.query<{ failed: string }>('select failed_count::text as failed from pg_stat_archiver');
    expect(stats!.failed).toBe('0');
    const archived = readdirSync(archive).filter((n) => SEG_RE.test(n));
    expect(archived.length).toBeGreaterThanOrEqual(20);
    let compared = 0;
    for (const n of archived) {
      if (existsSync(join(primary.walDir, n))) {
        expect(readFileSync(join(archive, n)).equals(readFileSync(join(primary.walDir, n))), n).toBe(true);
        compared++;
      }
    }
    expect(compared).toBeGreaterThanOrEqual(15);
    // Most calls found their file already pushed by an earlier call's look-ahead.
    const log = readFileSync(primary.logFile, 'utf8');
    const answered = log.match(/archived by an earlier call's look-ahead/g)?.length ?? 0;
    expect(answered).toBeGreaterThanOrEqual(10);
    // Markers are consumed: at most the last look-ahead's are left.
    expect(readdirSync(join(primary.dataDir, '.walstream-push')).length).toBeLessThanOrEqual(3);
    // Nothing is marked archived that the archive does not hold.
    for (const f of readdirSync(join(primary.walDir, 'archive_status'))) {
      if (f.endsWith('.done') && SEG_RE.test(f.slice(0, -5))) expect(readdirSync(archive), f).toContain(f.slice(0, -5));
    }
  });

  it('refuses a segment of another database system, naming both', async () => {
    const name = readdirSync(archive)
      .filter((n) => SEG_RE.test(n))
      .pop()!;
    const scratch = mkdtempSync(join(tmpdir(), 'walstream-foreign-'));
    try {
      const bytes = readFileSync(join(archive, name));
      bytes.writeBigUInt64LE(bytes.readBigUInt64LE(24) ^ 0x5a5an, 24); // another cluster's system identifier
      const other = `${name.slice(0, 16)}${(parseInt(name.slice(16), 16) + 0x40).toString(16).toUpperCase().padStart(8, '0')}`;
      // Page addresses must fit the name: rewrite them for the new segment number.
      const segSize = 1024 * 1024;
      const delta = BigInt(parseInt(other.slice(16), 16) - parseInt(name.slice(16), 16)) * BigInt(segSize);
      for (let off = 0; off < segSize; off += 8192) {
        const addr = bytes.readBigUInt64LE(off + 8);
        if (addr !== 0n) bytes.writeBigUInt64LE(addr + delta, off + 8);
      }
      writeFileSync(join(scratch, other), bytes);
      const res = await runCli(['push', join(scratch, other), '--archive', archive]);
      expect(res.code).toBe(1);
      expect(res.stderr.trim().split('\n')).toHaveLength(1);
      expect(res.stderr).toMatch(/database system \d+, but the archive .* holds WAL of system \d+/);
      expect(await new LocalStore(archive).head(other)).toBeUndefined();
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
  });
});

describe('a standby catching up from S3 through fetch --prefetch', () => {
  let primary: PgCluster;
  let standby: PgCluster;
  let s3: S3TestServer;
  const dirs: string[] = [];
  beforeAll(async () => {
    [primary, s3] = await Promise.all([PgCluster.create({ name: 's3-catchup', conf: { min_wal_size: '2MB', max_wal_size: '8MB', wal_keep_size: 0 } }), startS3({ builtIn: true })]);
  });
  afterAll(async () => {
    await standby?.destroy();
    await primary?.destroy();
    await s3?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('replays what walstream receive put in S3, served from the prefetch spool, then streams again', async () => {
    const url = `s3://${s3.bucket}/${s3.prefix}catchup/`;
    const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    const spool = pgOwnedDir('prefetch-spool');
    const recvSpool = mkdtempSync(join(tmpdir(), 'walstream-recv-'));
    dirs.push(spool, recvSpool);
    const envPrefix = Object.entries(env).map(([k, v]) => `${k}=${v}`);
    const fetchCmd = `env ${envPrefix.join(' ')} ${walstreamCommand(['fetch', '%f', '%p', '--archive', url, '--s3-endpoint', s3.endpoint, '--prefetch', '4', '--spool', spool, '-v'])}`;
    standby = await primary.createStandby({ name: 's3-catchup-standby', restoreCommand: fetchCmd });
    await primary.query("select pg_create_physical_replication_slot('receiver', true)");
    await primary.query('create table caught (id int)');
    await standby.waitForReplay(await primary.currentLsn());
    await standby.stop();
    await primary.query('insert into caught select generate_series(1, 1000)');
    await primary.generateWal(14 * 1024 * 1024);
    await primary.switchWal();
    const endpos = await primary.currentLsn();
    const res = await runCli(['receive', '-D', recvSpool, '-d', primary.connectionString(), '-S', 'receiver', '-E', endpos, '-n', '--archive', url, '--s3-endpoint', s3.endpoint], { env });
    expect(res.code, res.stderr).toBe(0);
    await primary.query("select pg_drop_replication_slot('receiver')");
    await primary.checkpoint();
    await primary.checkpoint();
    await standby.start();
    await standby.waitForReplay(endpos, 180_000);
    await waitStreaming(standby);
    const log = readFileSync(standby.logFile, 'utf8');
    const restored = log.match(/restored log file "[0-9A-F]{24}" from archive/g)?.length ?? 0;
    expect(restored).toBeGreaterThanOrEqual(12);
    const fromSpool = log.match(/from the prefetch spool/g)?.length ?? 0;
    expect(fromSpool).toBeGreaterThanOrEqual(6);
    expect(readFileSync(join(spool, 'prefetch.log'), 'utf8')).toMatch(/prefetched [0-9A-F]{24}/);
    await primary.query('insert into caught values (0)');
    await standby.waitForReplay(await primary.currentLsn(), 60_000);
    const q = 'select count(*)::text as n, sum(id)::text as s from caught';
    expect(await standby.query(q)).toEqual(await primary.query(q));
    // The spool keeps nothing recovery has passed (the worker may still be finishing: wait for its lock).
    await standby.waitFor(async () => !existsSync(join(spool, '.lock')), 30_000, 'the prefetch worker to finish');
    const lastRestored = [...log.matchAll(/restored log file "([0-9A-F]{24})" from archive/g)]
      .map((m) => m[1]!)
      .sort()
      .pop()!;
    for (const f of readdirSync(spool).filter((n) => SEG_RE.test(n))) expect(f > lastRestored, f).toBe(true);
  });
});

describe('point-in-time recovery to the last WAL received (fetch --partial)', () => {
  let primary: PgCluster;
  const restored: PgCluster[] = [];
  const dirs: string[] = [];
  afterAll(async () => {
    for (const c of restored) await c.destroy();
    await primary?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  async function recover(base: PgCluster, archive: string, extra: string[]): Promise<number> {
    unlinkSync(join(base.dataDir, 'standby.signal'));
    writeFileSync(join(base.dataDir, 'recovery.signal'), '');
    base.configure({ primary_conninfo: '', restore_command: walstreamCommand(['fetch', '%f', '%p', '--archive', archive, ...extra]), recovery_target_action: 'promote' });
    await base.start();
    await base.waitFor(async () => !(await base.isInRecovery()), 120_000, 'the end of recovery');
    return Number((await base.query<{ n: string }>('select count(*)::text as n from pitr'))[0]!.n);
  }

  it('replays the pieces of the segment in progress: every transaction the receiver got', async () => {
    primary = await PgCluster.create({ name: 'partial' });
    const archive = pgOwnedDir('partial-archive');
    const spool = mkdtempSync(join(tmpdir(), 'walstream-partial-spool-'));
    dirs.push(archive, spool);
    await primary.query("select pg_create_physical_replication_slot('recv', true)");
    await primary.query('create table pitr (id int primary key)');
    const receiver = startCli(['receive', '-D', spool, '-d', primary.connectionString(), '-S', 'recv', '--archive', archive, '--partial-interval', '1', '--synchronous']);
    try {
      await primary.waitFor(
        async () => (await primary.query<{ n: string }>("select count(*)::text as n from pg_stat_replication where application_name = 'walstream'"))[0]!.n === '1',
        30_000,
        'the receiver to stream',
      );
      // Two base backups taken while the receiver streams: one recovers with --partial, one without.
      restored.push(await primary.createStandby({ name: 'partial-with', start: false }));
      restored.push(await primary.createStandby({ name: 'partial-without', start: false }));
      await primary.query('insert into pitr select generate_series(1, 100)');
      await primary.switchWal();
      await primary.query('insert into pitr select generate_series(101, 150)');
      const lastCommit = await primary.currentLsn();
      const inProgress = await currentWalFile(primary);
      // Wait until the archive holds the segment in progress up to the last commit, in pieces.
      const store = new LocalStore(archive);
      const offset = Number(BigInt(`0x${lastCommit.split('/')[1]}`) % BigInt(1024 * 1024));
      await primary.waitFor(
        async () => {
          let end = 0;
          for (const p of await listPieces(store, inProgress)) if (p.offset === end) end += p.size;
          return end >= offset;
        },
        60_000,
        `pieces of ${inProgress} up to ${lastCommit}`,
      );
    } finally {
      receiver.child.kill('SIGKILL');
      await receiver.done;
    }
    // The primary and the receiver's host are lost: only the archive is left.
    await primary.stop('immediate');
    expect(await new LocalStore(archive).head(inProgressName(await listNames(archive)))).toBeUndefined();
    await run(['chown', '-R', 'postgres:postgres', archive]).catch(() => undefined);
    expect(await recover(restored[1]!, archive, [])).toBe(100);
    expect(await recover(restored[0]!, archive, ['--partial'])).toBe(150);
  });
});

async function listNames(archive: string): Promise<string[]> {
  const st = await openArchive(archive);
  try {
    return (await st.list()).map((o) => o.name);
  } finally {
    await st.close();
  }
}

/** The segment whose pieces the archive holds (the one that was in progress). */
function inProgressName(names: string[]): string {
  const piece = names
    .filter((n) => /\.partial\.[0-9A-F]{8}$/.test(n))
    .sort()
    .pop();
  if (!piece) throw new Error(`no pieces in the archive: ${names.join(' ')}`);
  return piece.slice(0, 24);
}
