// walstream backup and walstream restore as users run them (bin/walstream) with the archive in S3
// (s3rver) and in Azure Blob Storage (Azurite): one small PostgreSQL 15 primary whose WAL two
// walstream receive processes archive into both; a backup into each, rows written after it, a
// restore from each started with pg_ctl alone, which must reach the end of the archive with
// exactly the primary's rows. Also -w and -W of walstream backup against a password-only role.
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAzurite, type AzuriteServer } from '../harness/azure.js';
import { harnessTmpRoot, run, runAsPg } from '../harness/exec.js';
import { PgCluster } from '../harness/pg.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { BIN, startCli, type CliProcess } from '../support/cli.js';
import { walstreamProgram } from '../support/pgcommand.js';
import { openArchive } from '../../src/storage/open.js';

const PASSWORD = 'backup-cloud-pw-4711';

describe('walstream backup and restore through the command line, into S3 and Azure', () => {
  let primary: PgCluster;
  let s3: S3TestServer;
  let az: AzuriteServer;
  let s3Url: string;
  let azUrl: string;
  const clusters: PgCluster[] = [];
  const dirs: string[] = [];
  const saved: Record<string, string | undefined> = {};
  const receivers: CliProcess[] = [];
  /** The credentials of both stores, as the servers' environment and the commands get them. */
  let env: Record<string, string>;
  let next = 1;

  async function summary(c: PgCluster): Promise<{ n: string; sum: string }> {
    const [r] = await c.query<{ n: string; sum: string }>("select count(*)::text as n, coalesce(md5(string_agg(id::text || ':' || payload, ',' order by id)), '') as sum from t");
    return r!;
  }

  /** Wait until both archives hold WAL file `name` (the receivers archive each segment once it is complete). */
  async function archived(name: string): Promise<void> {
    for (const [url, opts] of [
      [s3Url, { s3Endpoint: s3.endpoint }],
      [azUrl, {}],
    ] as const) {
      const store = await openArchive(url, opts);
      try {
        const deadline = Date.now() + 60_000;
        while ((await store.head(name)) === undefined) {
          if (Date.now() > deadline) throw new Error(`${name} did not reach ${url}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      } finally {
        await store.close();
      }
    }
  }

  /** Rows the restored server must have, in WAL that is then archived into both stores. */
  async function writeRows(n: number): Promise<void> {
    await primary.query('insert into t select g, md5(g::text) from generate_series($1::int, $2::int) g', [next, next + n - 1]);
    next += n;
    const [{ f }] = (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f')) as [{ f: string }];
    await primary.switchWal();
    await archived(f);
  }

  /** walstream (as root, as an operator would run it) with `input` on its standard input. */
  function walstream(args: string[], input = ''): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const home = mkdtempSync(join(harnessTmpRoot(), 'walstream-home-'));
    dirs.push(home);
    // No ~/.pgpass and no PG* variable (run() never passes those on): the password comes from -W or nowhere.
    return run([process.execPath, BIN, ...args], { env: { ...env, HOME: home }, input, check: false, timeoutMs: 120_000 }).then((r) => ({ code: r.exitCode, stdout: r.stdout, stderr: r.stderr }));
  }

  beforeAll(async () => {
    [s3, az] = await Promise.all([startS3(), startAzurite()]);
    s3Url = `s3://${s3.bucket}/${s3.prefix}backup-cli/`;
    azUrl = `azure://${az.container}/backup-cli/`;
    env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region, AZURE_STORAGE_CONNECTION_STRING: az.connectionString };
    // The receivers and the servers started below (restore_command) get the credentials from their environment.
    for (const [k, v] of Object.entries(env)) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
    primary = await PgCluster.create({ name: 'backup-cloud' });
    // The WAL of the primary into both archives, as walstream receive does it in production (through slots: none is missed).
    for (const [slot, url, options] of [
      ['feed_s3', s3Url, ['--s3-endpoint', s3.endpoint]],
      ['feed_azure', azUrl, []],
    ] as const) {
      await primary.query('select pg_create_physical_replication_slot($1, true)', [slot]);
      const spool = mkdtempSync(join(harnessTmpRoot(), 'walstream-spool-'));
      dirs.push(spool);
      receivers.push(startCli(['receive', '-D', spool, '-d', primary.connectionString(), '-S', slot, '--archive', url, ...options, '--partial-interval', '0']));
    }
    await primary.createRole('pw_user', { replication: true, password: PASSWORD });
    await primary.query('create table t (id int primary key, payload text not null)');
    // Both archives hold this server's WAL (and its identity) before the first backup.
    await writeRows(100);
  }, 180_000);

  afterAll(async () => {
    for (const r of receivers) r.kill('SIGTERM');
    await Promise.all(receivers.map((r) => r.done));
    for (const c of clusters) await c.destroy();
    await primary?.destroy();
    await Promise.all([s3?.stop(), az?.stop()]);
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });

  it('backs up into S3 and into Azure, restores from each, and both restored servers reach the end of the archive with exactly the rows', async () => {
    const stores = [
      { store: 's3', url: s3Url, options: ['--s3-endpoint', s3.endpoint], password: false },
      // As a role that needs a password, typed at -W's prompt (here on standard input).
      { store: 'azure', url: azUrl, options: [], password: true },
    ];
    // Both backups at once (one small server), then rows both must replay, then both restores.
    const names = await Promise.all(
      stores.map(async ({ store, url, options, password }) => {
        const conn = password ? ['-d', `host=${primary.host} port=${primary.port} user=pw_user dbname=postgres`, '-W'] : ['-d', primary.connectionString()];
        const made = await walstream(['backup', '--archive', url, ...options, ...conn, '-c', 'fast'], password ? `${PASSWORD}\n` : '');
        expect(made.code, `${store}: ${made.stderr}`).toBe(0);
        expect(made.stdout).toMatch(/^backup \d{8}T\d{6}Z(?:-\d+)?: start [0-9A-F]+\/[0-9A-F]+, end [0-9A-F]+\/[0-9A-F]+, timeline 1, /);
        const name = /^backup (\S+):/.exec(made.stdout)![1]!;
        const listed = await walstream(['backup', 'list', '--archive', url, ...options]);
        expect(listed.code, `${store}: ${listed.stderr}`).toBe(0);
        expect(listed.stdout).toMatch(new RegExp(`^${name} {2}start .* WAL complete to now$`, 'm'));
        return name;
      }),
    );

    await writeRows(50);
    const expected = await summary(primary);
    expect(expected.n).toBe(String(next - 1));

    await Promise.all(
      stores.map(async ({ store, url, options }, i) => {
        const c = await PgCluster.forNewDataDir({ name: `backup-cloud-${store}` });
        clusters.push(c);
        const { node, bin } = walstreamProgram();
        const r = await runAsPg(node, [bin, 'restore', '--archive', url, ...options, '-D', c.dataDir], { env, check: false, timeoutMs: 120_000 });
        expect(r.exitCode, `${store}: ${r.stderr}`).toBe(0);
        expect(r.stdout).toMatch(new RegExp(`^restored backup ${names[i]} .* verified against its manifest$`, 'm'));
        c.configure({});
        await c.start();
        await c.waitFor(async () => !(await c.isInRecovery()), 120_000, 'the end of recovery');
        expect(await summary(c), store).toEqual(expected);
      }),
    );
  }, 240_000);

  it('-w: a server that wants a password gets a one-line error, and nothing is prompted for or read', async () => {
    // The password on standard input would let it in, if -w read it.
    const r = await walstream(['backup', '--archive', s3Url, '--s3-endpoint', s3.endpoint, '-d', `host=${primary.host} port=${primary.port} user=pw_user`, '-w', '-c', 'fast'], `${PASSWORD}\n`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^walstream: error: could not connect to 127\.0\.0\.1:\d+ as pw_user: fe_sendauth: no password supplied\n$/);
    expect(r.stderr).not.toContain('Password');
    expect(r.stdout).toBe('');
  });
});
