// walstream restore against real PostgreSQL 15 servers: a base backup in a local archive (put
// there as walstream backup stores one: test/support/backup-fixture.ts), WAL archived by walstream
// push; restored directories started with pg_ctl and nothing else recover to the end of the
// archive, to a target LSN and to a target time with exactly the rows before it, or (from a backup
// walstream backup made) come up as a standby that streams from the primary. Refusals leave one-line errors and nothing that starts.
import { existsSync, mkdirSync, readFileSync, readlinkSync, writeFileSync, chownSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupRecord } from '../../src/backup/layout.js';
import { findBackup } from '../../src/backup/layout.js';
import { LocalStore } from '../../src/storage/local.js';
import { openArchive } from '../../src/storage/open.js';
import { PG_OS_USER, pgOsUser, run, runAsPg } from '../harness/exec.js';
import { PgCluster } from '../harness/pg.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { putBasebackup } from '../support/backup-fixture.js';
import { pgOwnedDir, walstreamCommand, walstreamProgram } from '../support/pgcommand.js';
import { runCli } from '../support/cli.js';
import { waitArchived, waitStreaming } from '../support/standby.js';

describe('walstream restore', () => {
  let primary: PgCluster;
  let archive: string;
  let tsLocation: string;
  let backup: BackupRecord;
  let lsnB: string;
  let timeB: string;
  const clusters: PgCluster[] = [];
  const dirs: string[] = [];

  async function walFile(): Promise<string> {
    return (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
  }

  beforeAll(async () => {
    archive = pgOwnedDir('restore-archive');
    const tsParent = pgOwnedDir('restore-ts');
    tsLocation = join(tsParent, 'space');
    dirs.push(archive, tsParent);
    primary = await PgCluster.create({ name: 'restore-primary', conf: { archive_mode: 'on', archive_command: walstreamCommand(['push', '%p', '--archive', archive]) } });
    mkdirSync(tsLocation);
    const user = pgOsUser();
    if (user) chownSync(tsLocation, user.uid, user.gid);
    await primary.query(`create tablespace space location '${tsLocation}'`);
    await primary.query('create table t (id int primary key)');
    await primary.query('create table in_space (id int) tablespace space');
    await primary.query('insert into t select generate_series(1, 100)');
    await primary.query('insert into in_space select generate_series(1, 50)');
    const store = new LocalStore(archive);
    backup = await putBasebackup(primary, store);
    await run(['chown', '-R', `${PG_OS_USER}:`, archive]).catch(() => undefined);
    await primary.query('insert into t select generate_series(101, 200)');
    lsnB = await primary.currentLsn();
    await new Promise((r) => setTimeout(r, 1100));
    timeB = (await primary.query<{ t: string }>('select clock_timestamp()::text as t'))[0]!.t;
    await new Promise((r) => setTimeout(r, 1100));
    await primary.query('insert into t select generate_series(201, 300)');
    const last = await walFile();
    await primary.switchWal();
    await waitArchived(primary, last);
  }, 240_000);

  afterAll(async () => {
    for (const c of clusters) await c.destroy();
    await primary?.destroy();
    const { rmSync } = await import('node:fs');
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  /** Run walstream restore as the server's OS user (as an operator would), into `dir`. */
  async function restoreCli(dir: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const { node, bin } = walstreamProgram();
    const r = await runAsPg(node, [bin, 'restore', '--archive', archive, '-D', dir, ...args], { check: false, timeoutMs: 120_000 });
    return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr };
  }

  /** A new cluster restored from the backup (its tablespace mapped to a new place), started with pg_ctl. */
  async function restored(name: string, args: string[], waitPromoted = true): Promise<PgCluster> {
    const c = await PgCluster.forNewDataDir({ name });
    clusters.push(c);
    const newTs = join(c.baseDir, 'space');
    const r = await restoreCli(c.dataDir, ['-T', `${tsLocation}=${newTs}`, ...args]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`next: pg_ctl -D ${c.dataDir} start`));
    // The port and socket directory of this test cluster (the restored harness.conf was the primary's).
    c.configure({});
    await c.start();
    if (waitPromoted) await c.waitFor(async () => !(await c.isInRecovery()), 120_000, 'the end of recovery');
    return c;
  }

  async function count(c: PgCluster, table = 't'): Promise<number> {
    return Number((await c.query<{ n: string }>(`select count(*)::text as n from ${table}`))[0]!.n);
  }

  it('restores the latest backup and recovers to the end of the archived WAL: every row, the tablespace at its new place', async () => {
    const c = await restored('restore-end', []);
    expect(await count(c)).toBe(300);
    expect(await count(c, 'in_space')).toBe(50);
    const oid = backup.objects.find((o) => o.kind === 'tablespace')!.oid!;
    expect(readlinkSync(join(c.dataDir, 'pg_tblspc', String(oid)))).toBe(join(c.baseDir, 'space'));
    expect(existsSync(join(c.dataDir, 'WALSTREAM_RESTORE_INCOMPLETE'))).toBe(false);
    expect(readFileSync(join(c.dataDir, 'postgresql.auto.conf'), 'utf8')).toMatch(/^restore_command = '.* fetch %f %p --archive /m);
  });

  it('recovers to a target LSN, and to a target time, with exactly the rows before it', async () => {
    const byLsn = await restored('restore-lsn', ['--backup', backup.name, '--target-lsn', lsnB, '--target-action', 'promote']);
    expect(await count(byLsn)).toBe(200);
    const byTime = await restored('restore-time', ['--backup', backup.name, '--target-time', timeB, '--target-action', 'promote']);
    expect(await count(byTime)).toBe(200);
  });

  it('restores what walstream backup stored as a standby that streams from the primary', async () => {
    const made = await runCli(['backup', '--archive', archive, '-d', primary.connectionString(), '-c', 'fast']);
    expect(made.code, made.stderr).toBe(0);
    await run(['chown', '-R', `${PG_OS_USER}:`, archive]).catch(() => undefined);
    const conninfo = `host=${primary.host} port=${primary.port} user=postgres application_name=restored`;
    const sb = await restored('restore-standby', ['--backup', 'latest', '--standby', '--primary-conninfo', conninfo], false);
    const latest = (await findBackup(new LocalStore(archive), 'latest')).name;
    expect(latest).not.toBe(backup.name);
    expect(existsSync(join(sb.dataDir, 'standby.signal'))).toBe(true);
    await waitStreaming(sb);
    await primary.query('insert into t values (1000)');
    await sb.waitForReplay(await primary.currentLsn());
    expect(await count(sb)).toBe(301);
  });

  it('refuses a non-empty directory, a target before the end of the backup, and a tablespace left unmapped onto a location in use', async () => {
    const parent = pgOwnedDir('restore-refused');
    const dir = join(parent, 'data');
    dirs.push(parent);
    mkdirSync(dir);
    writeFileSync(join(dir, 'something'), 'x');
    const user = pgOsUser();
    if (user) chownSync(dir, user.uid, user.gid);
    let r = await restoreCli(dir, []);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/data directory .* is not empty/);

    const freshParent = pgOwnedDir('restore-refused');
    const fresh = join(freshParent, 'data');
    dirs.push(freshParent);
    r = await restoreCli(fresh, ['--target-lsn', '0/10']);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/target LSN 0\/10 is before the end of backup/);
    r = await restoreCli(fresh, ['--target-time', '2000-01-01 00:00:00+00']);
    expect(r.stderr).toMatch(/target time .* is before the end of backup/);
    expect(existsSync(fresh)).toBe(false);
    r = await restoreCli(fresh, []);
    expect(r.stderr).toMatch(/tablespace \d+'s location .* is not an empty directory/);
    expect(existsSync(fresh)).toBe(false);
  });

  it('refuses a tampered stored tar naming it, and leaves a directory that cannot start', async () => {
    const c = await PgCluster.forNewDataDir({ name: 'restore-tampered' });
    clusters.push(c);
    const file = join(archive, backup.objects.find((o) => o.kind === 'base')!.name);
    const original = readFileSync(file);
    const damaged = Buffer.from(original);
    damaged[Math.floor(damaged.length / 2)] ^= 0x01;
    writeFileSync(file, damaged);
    try {
      const r = await restoreCli(c.dataDir, ['--backup', backup.name, '-T', `${tsLocation}=${join(c.baseDir, 'space')}`]);
      expect(r.code).toBe(1);
      expect(
        r.stderr.split('\n').filter((l) => l.startsWith('walstream: error')),
        r.stderr,
      ).toHaveLength(1);
      expect(r.stderr).toMatch(/base\.tar (?:does not match the backup's manifest|.*corrupt)/);
      expect(r.stderr).toMatch(/cannot start: delete it/);
      expect(existsSync(join(c.dataDir, 'WALSTREAM_RESTORE_INCOMPLETE'))).toBe(true);
      expect(existsSync(join(c.dataDir, 'recovery.signal'))).toBe(false);
      expect(existsSync(join(c.dataDir, 'global', 'pg_control'))).toBe(false);
    } finally {
      writeFileSync(file, original);
    }
  });

  it("refuses another system's backup in the archive", async () => {
    const foreign = await PgCluster.create({ name: 'restore-foreign' });
    clusters.push(foreign);
    const other = await putBasebackup(foreign, new LocalStore(archive));
    await run(['chown', '-R', `${PG_OS_USER}:`, archive]).catch(() => undefined);
    const parent = pgOwnedDir('restore-foreign');
    const dir = join(parent, 'data');
    dirs.push(parent);
    const r = await restoreCli(dir, ['--backup', other.name]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(new RegExp(`backup ${other.name} is of database system ${other.systemId}, but .* holds WAL of system ${backup.systemId}`));
    expect(existsSync(dir)).toBe(false);
  });
});

describe('walstream restore from S3', () => {
  let primary: PgCluster;
  let s3: S3TestServer;
  const clusters: PgCluster[] = [];
  const saved: Record<string, string | undefined> = {};
  afterAll(async () => {
    for (const c of clusters) await c.destroy();
    await primary?.destroy();
    await s3?.stop();
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });

  it('restores a backup stored in S3; the restored server fetches its WAL from S3 with the credentials of its environment', async () => {
    s3 = await startS3({ builtIn: true });
    const url = `s3://${s3.bucket}/${s3.prefix}restore/`;
    const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    const envPrefix = Object.entries(env).map(([k, v]) => `${k}=${v}`);
    primary = await PgCluster.create({
      name: 'restore-s3-primary',
      conf: { archive_mode: 'on', archive_command: `env ${envPrefix.join(' ')} ${walstreamCommand(['push', '%p', '--archive', url, '--s3-endpoint', s3.endpoint])}` },
    });
    await primary.query('create table t (id int)');
    await primary.query('insert into t select generate_series(1, 10)');
    // The test's own process (and so the servers it starts) gets the credentials, as a server's environment would.
    for (const [k, v] of Object.entries(env)) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
    const store = await openArchive(url, { s3Endpoint: s3.endpoint });
    try {
      await putBasebackup(primary, store);
    } finally {
      await store.close();
    }
    await primary.query('insert into t select generate_series(11, 25)');
    const last = (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
    await primary.switchWal();
    await waitArchived(primary, last);

    const c = await PgCluster.forNewDataDir({ name: 'restore-s3' });
    clusters.push(c);
    const { node, bin } = walstreamProgram();
    const r = await runAsPg(node, [bin, 'restore', '--archive', url, '--s3-endpoint', s3.endpoint, '-D', c.dataDir], { check: false, env, timeoutMs: 120_000 });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/note: restore_command runs in PostgreSQL's environment, which must provide S3 credentials/);
    const conf = readFileSync(join(c.dataDir, 'postgresql.auto.conf'), 'utf8');
    expect(conf).toContain(`--s3-endpoint ${s3.endpoint}`);
    expect(conf).not.toContain(s3.secretAccessKey);
    c.configure({});
    await c.start();
    await c.waitFor(async () => !(await c.isInRecovery()), 120_000, 'the end of recovery');
    expect((await c.query<{ n: string }>('select count(*)::text as n from t'))[0]!.n).toBe('25');
  });
});

describe.each([
  { version: 14, encrypted: false },
  { version: 17, encrypted: true },
])('walstream restore of a PostgreSQL $version backup made by walstream backup (encrypted and compressed: $encrypted)', ({ version, encrypted }) => {
  let primary: PgCluster;
  const clusters: PgCluster[] = [];
  const dirs: string[] = [];
  afterAll(async () => {
    for (const c of clusters) await c.destroy();
    await primary?.destroy();
    const { rmSync } = await import('node:fs');
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('recovers to the end of the archive with every row, its tablespace mapped', async () => {
    const archive = pgOwnedDir(`restore-pg${version}`);
    const spaceParent = pgOwnedDir(`restore-pg${version}-ts`);
    const space = join(spaceParent, 'space');
    dirs.push(archive, spaceParent);
    // 17: the WAL and the backup encrypted with a key file and compressed; restore_command carries the file's path.
    const keys: string[] = [];
    if (encrypted) {
      const keyDir = pgOwnedDir('restore-keys');
      dirs.push(keyDir);
      const keyFile = join(keyDir, 'walstream.keys');
      writeFileSync(keyFile, `k1=${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
      const user = pgOsUser();
      if (user) chownSync(keyFile, user.uid, user.gid);
      keys.push('--encryption-key-file', keyFile);
    }
    const compress = encrypted ? ['-Z', 'gzip'] : [];
    primary = await PgCluster.create({ name: `restore-pg${version}`, version, conf: { archive_mode: 'on', archive_command: walstreamCommand(['push', '%p', '--archive', archive, ...keys, ...compress]) } });
    mkdirSync(space);
    const user = pgOsUser();
    if (user) chownSync(space, user.uid, user.gid);
    await primary.query(`create tablespace space location '${space}'`);
    await primary.query('create table t (id int) tablespace space');
    await primary.query('insert into t select generate_series(1, 10)');
    // The archive's identity comes from the first segment pushed.
    const first = (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
    await primary.switchWal();
    await waitArchived(primary, first);
    const made = await runCli(['backup', '--archive', archive, '-d', primary.connectionString(), '-c', 'fast', ...keys, ...compress]);
    expect(made.code, made.stderr).toBe(0);
    await run(['chown', '-R', `${PG_OS_USER}:`, archive]).catch(() => undefined);
    await primary.query('insert into t select generate_series(11, 30)');
    const last = (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
    await primary.switchWal();
    await waitArchived(primary, last);

    const c = await PgCluster.forNewDataDir({ name: `restored-pg${version}`, version });
    clusters.push(c);
    const { node, bin } = walstreamProgram();
    const r = await runAsPg(node, [bin, 'restore', '--archive', archive, ...keys, '-D', c.dataDir, '-T', `${space}=${join(c.baseDir, 'space')}`], { check: false, timeoutMs: 120_000 });
    expect(r.exitCode, r.stderr).toBe(0);
    if (encrypted) expect(readFileSync(join(c.dataDir, 'postgresql.auto.conf'), 'utf8')).toContain(`--encryption-key-file ${keys[1]}`);
    c.configure({});
    await c.start();
    await c.waitFor(async () => !(await c.isInRecovery()), 120_000, 'the end of recovery');
    expect((await c.query<{ n: string }>('select count(*)::text as n from t'))[0]!.n).toBe('30');
    expect((await c.query<{ l: string }>("select pg_tablespace_location(oid) as l from pg_tablespace where spcname = 'space'"))[0]!.l).toBe(join(c.baseDir, 'space'));
  });
});
