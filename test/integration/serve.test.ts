// walstream serve and receive --serve against real PostgreSQL: a standby whose WAL the primary has
// removed catches up from walstream alone (local archive, S3), reaches streaming, has the
// primary's rows, and follows new commits live through receive --serve; pg_receivewal writes the
// primary's bytes from walstream; a standby on timeline 1 follows a promotion onto timeline 2
// through serve; passwords, TLS, and what a client can and cannot do.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort, PgCluster, pgVersionsUnderTest, toolBinDir } from '../harness/pg.js';
import { run } from '../harness/exec.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { runCli, startCli, type CliProcess } from '../support/cli.js';
import { pgOwnedDir } from '../support/pgcommand.js';
import { completeSegments, lsnOf, segName } from '../support/walfiles.js';

const SEG = 1024 * 1024;

function tmp(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `walstream-${prefix}-`));
}

interface Running {
  proc: CliProcess;
  port: number;
}

/** `walstream serve` on a free port, once it says it is serving. */
async function startServe(args: string[], env?: Record<string, string>): Promise<Running> {
  const port = await freePort();
  const proc = startCli(['serve', '--listen', String(port), '--poll-interval', '0.2', ...args], { env, timeoutMs: 600_000 });
  await proc.waitForOutput(/serving .* on 127\.0\.0\.1:\d+/);
  return { proc, port };
}

/** `walstream receive --serve` on a free port, once its server listens. */
async function startReceiver(args: string[], env?: Record<string, string>): Promise<Running> {
  const port = await freePort();
  const proc = startCli(['receive', '--serve', String(port), ...args], { env, timeoutMs: 600_000 });
  await proc.waitForOutput(/serving the WAL received on 127\.0\.0\.1:\d+/);
  return { proc, port };
}

async function stop(r: Running | undefined): Promise<void> {
  if (!r) return;
  r.proc.kill('SIGTERM');
  await r.proc.done;
}

/** The WAL segment the standby's backup starts in (backup_label's START WAL LOCATION). */
function backupStartSegment(standby: PgCluster): string {
  const label = readFileSync(join(standby.dataDir, 'backup_label'), 'utf8');
  const m = /START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)/.exec(label);
  if (!m) throw new Error(`no start segment in backup_label:\n${label}`);
  return m[1]!;
}

async function walReceiver(standby: PgCluster): Promise<{ status: string; port: number } | undefined> {
  const [row] = await standby.query<{ status: string; port: number }>('select status, sender_port as port from pg_stat_wal_receiver');
  return row;
}

async function waitStreamingFrom(standby: PgCluster, port: number): Promise<void> {
  await standby.waitFor(
    async () => {
      const r = await walReceiver(standby);
      return r?.status === 'streaming' && Number(r.port) === port;
    },
    60_000,
    `the standby to stream from port ${port}`,
  );
}

async function rowCount(c: PgCluster): Promise<number> {
  return Number((await c.query<{ n: string }>('select count(*)::text as n from serve_rows'))[0]!.n);
}

async function archivedUpTo(archive: string, segment: string, writer?: CliProcess): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!existsSync(join(archive, segment))) {
    if (Date.now() > deadline) {
      const said = writer ? `; the receiver said:\n${writer.stderr.split('\n').slice(-30).join('\n')}` : '';
      throw new Error(`${segment} never reached the archive ${archive} (it holds ${readdirSync(archive).sort().slice(-5).join(', ')})${said}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

for (const version of pgVersionsUnderTest()) {
  describe(`serve on PostgreSQL ${version}`, () => {
    let primary: PgCluster;
    let receiver: Running | undefined;
    let archiveServe: Running | undefined;
    const standbys: PgCluster[] = [];
    const dirs: string[] = [];
    let archive: string;
    let spool: string;

    beforeAll(async () => {
      primary = await PgCluster.create({ version, name: `serve${version}`, conf: { wal_keep_size: 0, max_wal_size: '32MB', min_wal_size: '2MB' } });
      archive = tmp('serve-archive');
      spool = tmp('serve-spool');
      dirs.push(archive, spool);
      await primary.query('create table serve_rows (id int primary key, v text)');
      const created = await runCli(['receive', '--create-slot', '-S', 'ws', '-d', primary.connectionString()]);
      expect(created.code, created.stderr).toBe(0);
      receiver = await startReceiver(['-D', spool, '--archive', archive, '-S', 'ws', '-d', primary.connectionString(), '--trust', '-v']);
    });
    afterAll(async () => {
      for (const s of standbys) await s.destroy();
      await stop(archiveServe);
      await stop(receiver);
      await primary?.destroy();
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    });

    it('catches a standby up from the archive alone after the primary removed its WAL, then streams live through receive --serve', async () => {
      const standby = await primary.createStandby({ name: `serve${version}-sb`, start: false });
      standbys.push(standby);
      const first = backupStartSegment(standby);
      // Many segments after the backup, then checkpoints: the primary no longer has the backup's WAL.
      await primary.query("insert into serve_rows select g, repeat('a', 500) from generate_series(1, 20000) g");
      await primary.generateWal(6 * SEG);
      const switched = await primary.switchWal();
      await primary.checkpoint();
      await primary.switchWal();
      await primary.checkpoint();
      expect(existsSync(join(primary.walDir, first)), `${first} is still in the primary's pg_wal`).toBe(false);
      await archivedUpTo(archive, segName(1, lsnOf(switched) - 1n, SEG), receiver!.proc);

      // walstream serve over the local archive only: no restore_command, no WAL from the primary.
      archiveServe = await startServe(['--archive', archive, '--trust', '--metrics-listen', '127.0.0.1:0']);
      standby.configure({ primary_conninfo: `host=127.0.0.1 port=${archiveServe.port} user=postgres application_name=from_archive`, restore_command: '' });
      await standby.start();
      await standby.waitForReplay(switched, 120_000);
      await waitStreamingFrom(standby, archiveServe.port);
      expect(await rowCount(standby)).toBe(20000);
      expect(archiveServe.proc.stderr).toMatch(/from_archive\) pid \d+ starts streaming at [0-9A-F]+\/[0-9A-F]+ \(timeline 1\)/);
      // Its metrics show the standby, where it is and how far behind.
      const metricsUrl = /serving metrics at (http:\/\/\S+)\/metrics/.exec(archiveServe.proc.stderr)![1]!;
      const metrics = await (await fetch(`${metricsUrl}/metrics`)).text();
      expect(metrics).toMatch(/^walstream_serve_clients 1$/m);
      expect(metrics).toMatch(/^walstream_serve_client_flush_lsn_bytes\{[^}]*application_name="from_archive"[^}]*\} [1-9]\d*$/m);
      expect(metrics).toMatch(/^walstream_serve_client_lag_bytes\{[^}]*application_name="from_archive"[^}]*\} \d+$/m);

      // Now the receiver's own server: new commits arrive as soon as the receiver has them durable.
      standby.configure({ primary_conninfo: `host=127.0.0.1 port=${receiver!.port} user=postgres application_name=live` });
      await standby.reload();
      await waitStreamingFrom(standby, receiver!.port);
      for (let i = 0; i < 3; i++) {
        await primary.query('insert into serve_rows values ($1, $2)', [100000 + i, 'live']);
        const t0 = Date.now();
        await standby.waitFor(async () => (await standby.query<{ n: string }>('select count(*)::text as n from serve_rows where id = $1', [100000 + i]))[0]!.n === '1', 30_000, 'a live row');
        expect(Date.now() - t0).toBeLessThan(10_000);
      }
      expect(await rowCount(standby)).toBe(await rowCount(primary));
      // The standby never got WAL the receiver could still lose: what it flushed, the receiver had durable.
      const [flushed] = await standby.query<{ lsn: string }>('select flushed_lsn::text as lsn from pg_stat_wal_receiver');
      expect(lsnOf(flushed!.lsn)).toBeLessThanOrEqual(lsnOf(await primary.currentLsn()));
    });

    it('reports the standby in its metrics and answers SHOW and IDENTIFY_SYSTEM like a walsender', async () => {
      const c = new pg.Client({ host: '127.0.0.1', port: archiveServe!.port, user: 'someone', replication: true, types: { getTypeParser: () => (v: string) => v } } as pg.ClientConfig);
      await c.connect();
      try {
        const id = (await c.query('IDENTIFY_SYSTEM')).rows[0] as { systemid: string; timeline: string; xlogpos: string };
        const [sys] = await primary.query<{ id: string }>('select system_identifier::text as id from pg_control_system()');
        expect(id.systemid).toBe(sys!.id);
        expect(id.timeline).toBe('1');
        expect((await c.query('SHOW wal_segment_size')).rows[0]).toEqual({ wal_segment_size: '1MB' });
        expect((await c.query('SHOW server_version_num')).rows[0]).toEqual({ server_version_num: String(version * 10000) });
        await expect(c.query('select 1')).rejects.toThrow(/cannot execute SQL commands in WAL sender for physical replication/);
        await expect(c.query('SHOW work_mem')).rejects.toThrow(/unrecognized configuration parameter "work_mem"/);
        // The session is still usable after errors, as with a real walsender.
        expect((await c.query('SHOW data_directory_mode')).rows[0]).toEqual({ data_directory_mode: '0700' });
      } finally {
        await c.end();
      }
      // walstream status asked of the receiver's server lists the standby streaming from it.
      const st = await runCli(['status', '--archive', archive, '-d', `host=127.0.0.1 port=${receiver!.port} user=postgres`]);
      expect(st.code, st.stderr).toBe(0);
      expect(st.stdout).toMatch(/^clients +1 client of this walstream serve$/m);
      expect(st.stdout).toMatch(/live 127\.0\.0\.1 pid \d+ (streaming|catchup) on timeline 1: sent [0-9A-F]+\/[0-9A-F]+, flushed [0-9A-F]+\/[0-9A-F]+/);
      const js = JSON.parse((await runCli(['status', '--archive', archive, '-d', `host=127.0.0.1 port=${receiver!.port} user=postgres`, '--json'])).stdout) as {
        server: { walstream: { clients: { application_name: string }[] } };
      };
      expect(js.server.walstream.clients.map((x) => x.application_name)).toEqual(['live']);
    });

    if (version === 15) {
      it("feeds pg_receivewal the primary's bytes, segment for segment", async () => {
        // A slot keeps the new segments in the primary's pg_wal to compare against.
        const [kept] = await primary.query<{ lsn: string }>("select lsn::text from pg_create_physical_replication_slot('keep_for_compare', true)");
        try {
          const from = segName(1, lsnOf(kept!.lsn), SEG);
          await primary.generateWal(4 * SEG);
          const switched = await primary.switchWal();
          const last = segName(1, lsnOf(switched) - 1n, SEG);
          await archivedUpTo(archive, last, receiver!.proc);
          // pg_receivewal resumes after the newest complete segment in its directory.
          const dir = tmp('serve-prw');
          dirs.push(dir);
          writeFileSync(join(dir, from), readFileSync(join(primary.walDir, from)));
          // Stop at the end of the last segment (past the switch: the rest of it is WAL too); it stops
          // once it has received past --endpos, so one byte before that end.
          const endLsn = (lsnOf(switched) / BigInt(SEG) + 1n) * BigInt(SEG) - 1n;
          const endpos = `${(endLsn >> 32n).toString(16).toUpperCase()}/${(endLsn & 0xffffffffn).toString(16).toUpperCase()}`;
          const res = await run([join(toolBinDir(), 'pg_receivewal'), '-D', dir, '-d', `host=127.0.0.1 port=${archiveServe!.port} user=postgres`, '-E', endpos, '-n', '--no-sync'], {
            timeoutMs: 120_000,
            check: false,
          });
          expect(res.exitCode, res.stderr).toBe(0);
          const got = completeSegments(dir).filter((n) => n > from && n <= last);
          expect(got.length).toBeGreaterThanOrEqual(4);
          for (const n of got) expect(readFileSync(join(dir, n)).equals(readFileSync(join(primary.walDir, n))), `${n} differs from the primary's`).toBe(true);
        } finally {
          await primary.query("select pg_drop_replication_slot('keep_for_compare')");
        }
      });
    }
  });
}

/** A self-signed certificate and key for 127.0.0.1, made with openssl. */
function selfSignedCert(dir: string): { cert: string; key: string } {
  const cert = join(dir, 'server.crt');
  const key = join(dir, 'server.key');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1'], { stdio: 'ignore' });
  return { cert, key };
}

function replicationClient(port: number, extra: Partial<pg.ClientConfig> = {}): pg.Client {
  return new pg.Client({ host: '127.0.0.1', port, user: 'postgres', replication: true, types: { getTypeParser: () => (v: string) => v }, ...extra } as pg.ClientConfig);
}

/** Names, sizes and modification times of everything under `dir`. */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p, `${rel}${e.name}/`);
      else {
        const st = statSync(p);
        out.push(`${rel}${e.name} ${st.size} ${st.mtimeMs}`);
      }
    }
  };
  walk(dir, '');
  return out.sort();
}

describe('serve from S3', () => {
  let primary: PgCluster;
  let s3: S3TestServer;
  let served: Running | undefined;
  const standbys: PgCluster[] = [];
  const dirs: string[] = [];
  beforeAll(async () => {
    [primary, s3] = await Promise.all([PgCluster.create({ name: 'serve-s3', conf: { wal_keep_size: 0, max_wal_size: '32MB', min_wal_size: '2MB' } }), startS3({ builtIn: true })]);
  });
  afterAll(async () => {
    for (const sb of standbys) await sb.destroy();
    await stop(served);
    await primary?.destroy();
    await s3?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('catches a standby up from an S3 archive alone and streams from it', async () => {
    const url = `s3://${s3.bucket}/${s3.prefix}serve/`;
    const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    const spool = tmp('serve-s3-spool');
    dirs.push(spool);
    await primary.query("select pg_create_physical_replication_slot('ws', true)");
    await primary.query('create table serve_rows (id int primary key, v text)');
    const standby = await primary.createStandby({ name: 'serve-s3-sb', start: false });
    standbys.push(standby);
    await primary.query("insert into serve_rows select g, repeat('s', 300) from generate_series(1, 10000) g");
    await primary.generateWal(8 * SEG);
    await primary.switchWal();
    const endpos = await primary.currentLsn();
    const res = await runCli(['receive', '-D', spool, '-d', primary.connectionString(), '-S', 'ws', '-E', endpos, '-n', '--archive', url, '--s3-endpoint', s3.endpoint], { env });
    expect(res.code, res.stderr).toBe(0);
    await primary.query("select pg_drop_replication_slot('ws')");
    await primary.checkpoint();
    await primary.switchWal();
    await primary.checkpoint();
    expect(existsSync(join(primary.walDir, backupStartSegment(standby)))).toBe(false);

    served = await startServe(['--archive', url, '--s3-endpoint', s3.endpoint, '--trust'], env);
    standby.configure({ primary_conninfo: `host=127.0.0.1 port=${served.port} user=postgres application_name=from_s3`, restore_command: '' });
    await standby.start();
    await standby.waitForReplay(endpos, 120_000);
    await waitStreamingFrom(standby, served.port);
    expect(await rowCount(standby)).toBe(10000);
  });
});

for (const version of pgVersionsUnderTest()) {
  describe(`a promotion followed through serve on PostgreSQL ${version}`, () => {
    let primary: PgCluster;
    let promoted: PgCluster | undefined;
    let follower: PgCluster | undefined;
    let receiver: CliProcess | undefined;
    let served: Running | undefined;
    const dirs: string[] = [];
    afterAll(async () => {
      receiver?.kill('SIGTERM');
      await receiver?.done;
      await stop(served);
      await follower?.destroy();
      await promoted?.destroy();
      await primary?.destroy();
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    });

    it('takes a standby on timeline 1 behind walstream onto timeline 2', async () => {
      primary = await PgCluster.create({ version, name: `serve-tl${version}` });
      const archive = tmp('serve-tl-archive');
      const spool = tmp('serve-tl-spool');
      dirs.push(archive, spool);
      await primary.query('create table serve_rows (id int primary key, v text)');
      await primary.query("select pg_create_physical_replication_slot('ws', true)");
      receiver = startCli(['receive', '-D', spool, '--archive', archive, '-S', 'ws', '-d', primary.connectionString(), '--partial-interval', '1'], { timeoutMs: 600_000 });
      // The new primary-to-be streams from the primary; the follower only ever sees walstream.
      promoted = await primary.createStandby({ name: `serve-tl${version}-new` });
      follower = await primary.createStandby({ name: `serve-tl${version}-follower`, start: false });
      served = await startServe(['--archive', archive, '--trust']);
      follower.configure({ primary_conninfo: `host=127.0.0.1 port=${served.port} user=postgres application_name=follower`, restore_command: '' });
      await follower.start();
      await primary.query("insert into serve_rows select g, 'tl1' from generate_series(1, 5000) g");
      await primary.generateWal(2 * SEG);
      await promoted.waitForReplay(await primary.currentLsn());
      await primary.stop('fast');
      await promoted.waitForReplay(await promoted.currentLsn());
      receiver.kill('SIGTERM');
      await receiver.done;
      await promoted.promote();
      await promoted.waitFor(async () => !(await promoted!.isInRecovery()), 60_000, 'the promotion');
      await promoted.query("select pg_create_physical_replication_slot('ws', true)");
      // The receiver follows the new primary, as a fresh start after a failover would.
      receiver = startCli(['receive', '-D', spool, '--archive', archive, '-S', 'ws', '-d', promoted.connectionString(), '--partial-interval', '1'], { timeoutMs: 600_000 });
      await promoted.query("insert into serve_rows select g, 'tl2' from generate_series(5001, 8000) g");
      await promoted.switchWal();
      const target = await promoted.currentLsn();
      await follower.waitForReplay(target, 120_000);
      const [tli] = await follower.query<{ tli: number }>('select received_tli as tli from pg_stat_wal_receiver');
      expect(Number(tli!.tli)).toBe(2);
      expect(existsSync(join(follower.walDir, '00000002.history'))).toBe(true);
      expect(await rowCount(follower)).toBe(8000);
      expect(served.proc.stderr).toMatch(/follower\) pid \d+ reached the end of timeline 1 at [0-9A-F]+\/[0-9A-F]+; timeline 2 follows/);
    });
  });
}

describe('who may connect, and what a client can do', () => {
  let primary: PgCluster;
  const dirs: string[] = [];
  const procs: Running[] = [];
  let archive: string;
  afterAll(async () => {
    for (const p of procs) await stop(p);
    await primary?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  beforeAll(async () => {
    primary = await PgCluster.create({ name: 'serve-sec' });
    archive = tmp('serve-sec-archive');
    const spool = tmp('serve-sec-spool');
    dirs.push(archive, spool);
    await primary.query("select pg_create_physical_replication_slot('ws', true)");
    await primary.generateWal(3 * SEG);
    await primary.switchWal();
    const res = await runCli(['receive', '-D', spool, '-d', primary.connectionString(), '-S', 'ws', '-E', await primary.currentLsn(), '-n', '--archive', archive]);
    expect(res.code, res.stderr).toBe(0);
  });

  it('checks passwords by SCRAM against a verifier copied from pg_authid, and md5, never printing them', async () => {
    await primary.query("set password_encryption = 'scram-sha-256'; create role alice login replication password 'alice-secret'");
    await primary.query("set password_encryption = 'md5'; create role bob login replication password 'bob-secret'");
    const rows = await primary.query<{ rolname: string; rolpassword: string }>("select rolname, rolpassword from pg_authid where rolname in ('alice', 'bob') order by rolname");
    expect(rows[0]!.rolpassword).toMatch(/^SCRAM-SHA-256\$/);
    const dir = tmp('serve-pw');
    dirs.push(dir);
    const file = join(dir, 'passwords');
    writeFileSync(file, `# copied from pg_authid\n${rows.map((r) => `${r.rolname}:${r.rolpassword}`).join('\n')}\n`, { mode: 0o600 });
    const server = await startServe(['--archive', archive, '--password-file', file, '-v']);
    procs.push(server);
    for (const [user, password] of [
      ['alice', 'alice-secret'],
      ['bob', 'bob-secret'],
    ]) {
      const c = replicationClient(server.port, { user, password });
      await c.connect();
      expect((await c.query('IDENTIFY_SYSTEM')).rows).toHaveLength(1);
      await c.end();
    }
    for (const [user, password] of [
      ['alice', 'wrong-one'],
      ['bob', 'wrong-two'],
      ['mallory', 'alice-secret'],
    ]) {
      const c = replicationClient(server.port, { user, password });
      await expect(c.connect()).rejects.toThrow(new RegExp(`password authentication failed for user "${user}"`));
    }
    expect(server.proc.stderr).toMatch(/password authentication failed for user "alice"/);
    for (const secret of ['alice-secret', 'bob-secret', 'wrong-one', 'wrong-two']) expect(server.proc.stderr).not.toContain(secret);
    // A password file others can read is refused at start.
    chmodSync(file, 0o644);
    const refused = await runCli(['serve', '--listen', String(await freePort()), '--archive', archive, '--password-file', file]);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim().split('\n')).toHaveLength(1);
    expect(refused.stderr).toMatch(/group or world access/);
  });

  it('serves TLS with channel binding, refuses clients without TLS when it is required, and tells pg_receivewal when it has none', async () => {
    const dir = tmp('serve-tls');
    dirs.push(dir);
    const { cert, key } = selfSignedCert(dir);
    const server = await startServe(['--archive', archive, '--tls-cert', cert, '--tls-key', key, '--tls-required'], { WALSTREAM_SERVE_PASSWORD: 'tls-pass' });
    procs.push(server);
    const plain = replicationClient(server.port, { password: 'tls-pass', ssl: false });
    await expect(plain.connect()).rejects.toThrow(/no pg_hba\.conf entry for replication connection .* no encryption/);
    const secure = replicationClient(server.port, { password: 'tls-pass', ssl: { rejectUnauthorized: false }, enableChannelBinding: true } as Partial<pg.ClientConfig>);
    await secure.connect();
    expect((await secure.query('SHOW wal_block_size')).rows[0]).toEqual({ wal_block_size: '8192' });
    await secure.end();
    // Without a certificate walstream says it has no SSL: a client that requires it gives up.
    const noTls = await startServe(['--archive', archive, '--trust']);
    procs.push(noTls);
    const prw = tmp('serve-prw-ssl');
    dirs.push(prw);
    const res = await run([join(toolBinDir(), 'pg_receivewal'), '-D', prw, '-d', `host=127.0.0.1 port=${noTls.port} user=postgres sslmode=require`, '-n'], { check: false });
    expect(res.exitCode).not.toBe(0);
    expect(res.stderr).toMatch(/server does not support SSL/);
  });

  it('lets clients name positions only, never writes to the archive, and will not serve two systems at once', async () => {
    const server = await startServe(['--archive', archive, '--trust']);
    procs.push(server);
    const before = snapshot(archive);
    const c = replicationClient(server.port);
    await c.connect();
    await expect(c.query('TIMELINE_HISTORY 4294967295')).rejects.toThrow(/could not open file "pg_wal\/FFFFFFFF\.history"/);
    await expect(c.query("START_REPLICATION '../../etc/passwd'")).rejects.toThrow(/syntax error/);
    await expect(c.query('START_REPLICATION 0/0 TIMELINE 7')).rejects.toThrow(/requested timeline 7 is not in this server's history/);
    await expect(c.query('BASE_BACKUP')).rejects.toThrow(/does not take base backups/);
    await expect(c.query('CREATE_REPLICATION_SLOT "x" LOGICAL pgoutput')).rejects.toThrow(/does not serve logical replication/);
    await c.query('CREATE_REPLICATION_SLOT "tmp_slot" TEMPORARY PHYSICAL');
    expect((await c.query('READ_REPLICATION_SLOT tmp_slot')).rows[0]).toEqual({ slot_type: 'physical', restart_lsn: null, restart_tli: null });
    await c.end();
    expect(snapshot(archive)).toEqual(before);
    // A directory of another database system beside the archive: refused, naming both.
    const other = tmp('serve-other');
    dirs.push(other);
    writeFileSync(join(other, '000000010000000000000007.gz'), readFileSync(new URL('../../fixtures/pg15-1mb/000000010000000000000007.gz', import.meta.url)));
    const both = await runCli(['serve', '--listen', String(await freePort()), '--archive', archive, '-D', other, '--trust']);
    expect(both.code).toBe(1);
    expect(both.stderr.trim().split('\n')).toHaveLength(1);
    expect(both.stderr).toMatch(/system \d+ .* system \d+.*cannot be served together/);
  });
});

describe('a damaged or missing archived segment', () => {
  let primary: PgCluster;
  let standby: PgCluster | undefined;
  let served: Running | undefined;
  const dirs: string[] = [];
  afterAll(async () => {
    await standby?.destroy();
    await stop(served);
    await primary?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('is never sent: the stream ends with an error naming it, and the standby takes it from its restore_command', async () => {
    primary = await PgCluster.create({ name: 'serve-bad', conf: { wal_keep_size: 0, max_wal_size: '32MB', min_wal_size: '2MB' } });
    const archive = tmp('serve-bad-archive');
    const spool = tmp('serve-bad-spool');
    const rescue = pgOwnedDir('serve-rescue');
    dirs.push(archive, spool, rescue);
    await primary.query("select pg_create_physical_replication_slot('ws', true)");
    await primary.query('create table serve_rows (id int primary key, v text)');
    standby = await primary.createStandby({ name: 'serve-bad-sb', start: false });
    await primary.query("insert into serve_rows select g, repeat('b', 400) from generate_series(1, 12000) g");
    await primary.generateWal(6 * SEG);
    await primary.switchWal();
    const endpos = await primary.currentLsn();
    const res = await runCli(['receive', '-D', spool, '-d', primary.connectionString(), '-S', 'ws', '-E', endpos, '-n', '--archive', archive]);
    expect(res.code, res.stderr).toBe(0);
    await primary.query("select pg_drop_replication_slot('ws')");
    await primary.checkpoint();
    await primary.switchWal();
    await primary.checkpoint();
    // One segment damaged on disk (a flipped byte: it fails its checksum), the one after next gone;
    // good copies of just those two wait behind the standby's restore_command.
    const first = backupStartSegment(standby);
    const names = completeSegments(archive).filter((n) => n > first);
    const damaged = names[1]!;
    const missing = names[3]!;
    for (const n of [damaged, missing]) {
      writeFileSync(join(rescue, n), readFileSync(join(archive, n)));
      chmodSync(join(rescue, n), 0o644);
    }
    const bytes = readFileSync(join(archive, damaged));
    bytes[SEG / 2] = bytes[SEG / 2]! ^ 0xff;
    writeFileSync(join(archive, damaged), bytes);
    rmSync(join(archive, missing));
    served = await startServe(['--archive', archive, '--trust']);
    standby.configure({ primary_conninfo: `host=127.0.0.1 port=${served.port} user=postgres application_name=damaged`, restore_command: `cp ${rescue}/%f %p`, wal_retrieve_retry_interval: '200ms' });
    await standby.start();
    await standby.waitForReplay(endpos, 120_000);
    expect(await rowCount(standby)).toBe(12000);
    const log = readFileSync(standby.logFile, 'utf8');
    expect(log).toMatch(new RegExp(`archived WAL segment ${damaged} failed verification and is not sent`));
    expect(log).toMatch(new RegExp(`requested WAL segment ${missing} has already been removed`));
    expect(log).toMatch(new RegExp(`restored log file "${damaged}" from archive`));
    expect(log).toMatch(new RegExp(`restored log file "${missing}" from archive`));
  });
});

describe('slots of walstream serve hold back cleanup', () => {
  let primary: PgCluster;
  let served: Running | undefined;
  const dirs: string[] = [];
  afterAll(async () => {
    await stop(served);
    await primary?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('a client streaming with a slot moves its restart_lsn, the slot file keeps it, and cleanup --keep-slots keeps what it needs', async () => {
    primary = await PgCluster.create({ name: 'serve-slots' });
    const archive = tmp('serve-slots-archive');
    const spool = tmp('serve-slots-spool');
    const state = tmp('serve-slots-state');
    const prw = tmp('serve-slots-prw');
    dirs.push(archive, spool, state, prw);
    await primary.query("select pg_create_physical_replication_slot('ws', true)");
    await primary.generateWal(8 * SEG);
    await primary.switchWal();
    const res = await runCli(['receive', '-D', spool, '-d', primary.connectionString(), '-S', 'ws', '-E', await primary.currentLsn(), '-n', '--archive', archive]);
    expect(res.code, res.stderr).toBe(0);
    const names = completeSegments(archive);
    const slotFile = join(state, 'slots.json');
    served = await startServe(['--archive', archive, '--trust', '--slot-file', slotFile, '--client-slot', 'standby_a']);
    // pg_receivewal streams with the slot from the archive's third segment through its fifth.
    writeFileSync(join(prw, names[1]!), readFileSync(join(archive, names[1]!)));
    const fifth = names[4]!;
    const endLsn = (BigInt(`0x${fifth.slice(8, 16)}`) * 4096n + BigInt(`0x${fifth.slice(16)}`) + 1n) * BigInt(SEG) - 1n;
    const endpos = `${(endLsn >> 32n).toString(16).toUpperCase()}/${(endLsn & 0xffffffffn).toString(16).toUpperCase()}`;
    const got = await run([join(toolBinDir(), 'pg_receivewal'), '-D', prw, '-d', `host=127.0.0.1 port=${served.port} user=postgres`, '-S', 'standby_a', '-E', endpos, '-n', '--no-sync'], { check: false });
    expect(got.exitCode, got.stderr).toBe(0);
    await stop(served);
    served = undefined;
    const saved = JSON.parse(readFileSync(slotFile, 'utf8')) as { slots: { name: string; restart_lsn: string | null }[] };
    const slot = saved.slots.find((x) => x.name === 'standby_a')!;
    expect(slot.restart_lsn).not.toBeNull();
    const keepSeg = segName(1, lsnOf(slot.restart_lsn!), SEG);
    // Everything before the newest segment would go; the slot keeps its segment and what follows.
    const last = names[names.length - 1]!;
    const dry = await runCli(['cleanup', '--archive', archive, '--before', last, '--keep-slots', slotFile, '--dry-run', '--json']);
    expect(dry.code, dry.stderr).toBe(0);
    const removed = (JSON.parse(dry.stdout) as { removed: string[] }).removed;
    expect(removed.length).toBeGreaterThan(0);
    for (const n of removed) expect(n < keepSeg, `${n} would go though the slot needs ${keepSeg} on`).toBe(true);
    expect(removed).toContain(names[0]);
    expect(dry.stderr).toMatch(/kept for replication slot "standby_a" \(WAL from [0-9A-F]+\/[0-9A-F]+ on\)/);
    // Without the slot file the same rule removes more.
    const plain = await runCli(['cleanup', '--archive', archive, '--before', last, '--dry-run', '--json']);
    expect((JSON.parse(plain.stdout) as { removed: string[] }).removed.length).toBeGreaterThan(removed.length);
  });
});
