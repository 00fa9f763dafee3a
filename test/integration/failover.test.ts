// walstream receive through failovers and switchovers, with a primary, an asynchronous standby and
// the receiver reaching "the primary" through a TCP forwarder that the test moves, as a VIP or
// HAProxy would: a fork behind the archive's position (the old primary's last WAL kept, the range
// lost named, the new timeline followed), a clean switchover (nothing lost, nothing said), two
// failovers in a row, the archive behind the fork, and the slot missing on the new primary.
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, toolBinDir } from '../harness/pg.js';
import { run, pgOsUser } from '../harness/exec.js';
import { execFileSync } from 'node:child_process';
import { TcpProxy } from '../harness/proxy.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { runCli, startCli, type CliProcess } from '../support/cli.js';
import { pgOwnedDir, walstreamCommand } from '../support/pgcommand.js';
import { lsnOf, segName } from '../support/walfiles.js';

const SEG = 1024 * 1024;

function tmp(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `walstream-${prefix}-`));
}

/** Segment number of a 1 MB segment's name. */
function segNoOf(name: string): bigint {
  return BigInt(`0x${name.slice(8, 16)}`) * 4096n + BigInt(`0x${name.slice(16)}`);
}

function fmt(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** Name → SHA-256 of every file of `tli` in a directory (the archive's objects as stored). */
function timelineFiles(dir: string, tli: number): Map<string, string> {
  const prefix = tli.toString(16).toUpperCase().padStart(8, '0');
  const out = new Map<string, string>();
  for (const n of readdirSync(dir).sort()) {
    if (!n.startsWith(prefix)) continue;
    out.set(
      n,
      createHash('sha256')
        .update(readFileSync(join(dir, n)))
        .digest('hex'),
    );
  }
  return out;
}

interface Setup {
  a: PgCluster;
  b: PgCluster;
  proxy: TcpProxy;
  archive: string;
  spool: string;
  /** A base backup of A, for restoring from the archive at the end. */
  base: PgCluster;
}

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!().catch(() => undefined);
});

/** A primary with an asynchronous standby, a forwarder to the primary, and a base backup for restoring. */
async function setup(name: string): Promise<Setup> {
  const a = await PgCluster.create({ name: `${name}-a`, conf: { wal_keep_size: '64MB', wal_sender_timeout: '10s' } });
  cleanup.push(() => a.destroy());
  await a.query('create table rows (id int primary key, what text)');
  const b = await a.createStandby({ name: `${name}-b` });
  cleanup.push(() => b.destroy());
  const base = await a.createStandby({ name: `${name}-restore`, start: false });
  cleanup.push(() => base.destroy());
  const proxy = await TcpProxy.start(a.port);
  cleanup.push(() => proxy.stop());
  const archive = pgOwnedDir(`${name}-archive`);
  const spool = tmp(`${name}-spool`);
  cleanup.push(async () => {
    rmSync(archive, { recursive: true, force: true });
    rmSync(spool, { recursive: true, force: true });
  });
  return { a, b, proxy, archive, spool, base };
}

/** The receiver, reaching "the primary" through the forwarder. */
function receiver(s: Setup, extra: string[] = [], opts: { env?: Record<string, string>; archive?: string; conninfo?: string } = {}): CliProcess {
  const p = startCli(
    ['receive', '-D', s.spool, '--archive', opts.archive ?? s.archive, '-d', opts.conninfo ?? `host=127.0.0.1 port=${s.proxy.port} user=postgres`, '-S', 'ws', '--partial-interval', '1', '-v', ...extra],
    { env: opts.env, timeoutMs: 600_000 },
  );
  cleanup.push(async () => {
    p.kill('SIGTERM');
    await p.done;
  });
  return p;
}

/** Wait until the server sees the receiver's flush position at or past its current WAL position. */
async function receiverHasAll(server: PgCluster): Promise<void> {
  const [{ lsn }] = (await server.query<{ lsn: string }>('select pg_current_wal_lsn()::text as lsn')) as [{ lsn: string }];
  await server.waitFor(
    async () => {
      const [r] = await server.query<{ f: string | null }>("select flush_lsn::text as f from pg_stat_replication where application_name = 'walstream'");
      return r?.f != null && lsnOf(r.f) >= lsnOf(lsn);
    },
    60_000,
    `the receiver to have ${lsn} durable`,
  );
}

/** A fails while B lags: B has the rows up to `kept`, the receiver has more. Returns B's fork point. */
async function failoverLosingWal(s: Setup): Promise<bigint> {
  await s.a.query("insert into rows select g, 'kept' from generate_series(1, 1000) g");
  await s.b.waitForReplay(await s.a.currentLsn());
  await s.b.stop('fast');
  // What only the old primary and walstream get: more than a segment, so whole segments are lost too.
  await s.a.query("insert into rows select g, 'lost' from generate_series(1001, 3000) g");
  await s.a.generateWal(2 * SEG);
  await receiverHasAll(s.a);
  await s.a.kill9();
  await s.b.start();
  await s.b.promote();
  const history = readFileSync(join(s.b.walDir, '00000002.history'), 'utf8');
  return lsnOf(/^1\t(\S+)/.exec(history)![1]!);
}

async function restoreFromArchive(s: Setup): Promise<number> {
  // The receiver wrote the archive as this test's user; restore_command runs as the server's.
  execFileSync('chown', ['-R', `${pgOsUser()?.uid ?? process.getuid!()}:${pgOsUser()?.gid ?? process.getgid!()}`, s.archive]);
  const base = s.base;
  unlinkSync(join(base.dataDir, 'standby.signal'));
  writeFileSync(join(base.dataDir, 'recovery.signal'), '');
  base.configure({ primary_conninfo: '', restore_command: walstreamCommand(['fetch', '%f', '%p', '--archive', s.archive]), recovery_target_timeline: 'latest', recovery_target_action: 'promote' });
  await base.start();
  await base.waitFor(async () => !(await base.isInRecovery()), 120_000, 'the end of recovery from the archive');
  return Number((await base.query<{ n: string }>('select count(*)::text as n from rows'))[0]!.n);
}

describe('failover with the archive ahead of the fork', () => {
  it("keeps the old timeline, names the range lost, follows timeline 2 as pg_receivewal writes it, and restores to the new primary's rows", async () => {
    const s = await setup('fo-ahead');
    await s.a.query("select pg_create_physical_replication_slot('ws', true)");
    const r = receiver(s, ['--create-slot-if-missing', '--metrics-listen', '127.0.0.1:0']);
    await r.waitForOutput(/starting log streaming at/);
    const fork = await failoverLosingWal(s);
    // Everything of timeline 1 as it stands before the receiver meets the new primary.
    const before = timelineFiles(s.archive, 1);
    const spoolBefore = timelineFiles(s.spool, 1);
    expect(before.size).toBeGreaterThan(0);
    s.proxy.setUpstream(s.b.port);
    s.proxy.drop();
    await r.waitForOutput(
      /timeline 1 continues past the fork to timeline 2 at [0-9A-F]+\/[0-9A-F]+ by .* \(to [0-9A-F]+\/[0-9A-F]+\), WAL the new timeline does not have: transactions lost in the failover; kept as it is, following timeline 2/,
      120_000,
    );
    expect(r.stderr).toContain(`at ${fmt(fork)} by`);
    expect(r.stderr).toMatch(/replication slot "ws" did not exist on the server .*: created it \(--create-slot-if-missing\)/);
    await s.b.query("insert into rows select g, 'new primary' from generate_series(5001, 6000) g");
    await s.b.generateWal(2 * SEG);
    const last = segName(2, lsnOf(await s.b.switchWal()) - 1n, SEG);
    await s.b.waitFor(async () => existsSync(join(s.archive, last)), 60_000, `${last} in the archive`);
    // Timeline 1 is untouched: every object as it was (its pieces of the segment in progress too).
    const after = timelineFiles(s.archive, 1);
    for (const [n, h] of before) expect(after.get(n), n).toBe(h);
    for (const [n, h] of spoolBefore) if (n.endsWith('.partial')) expect(timelineFiles(s.spool, 1).get(n), n).toBe(h);
    // The metric says how much was lost.
    const url = /serving metrics at (http:\/\/\S+)\/metrics/.exec(r.stderr)![1]!;
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/^walstream_timeline_fork_lost_bytes\{timeline="1",next_timeline="2"\} [1-9]\d*$/m);
    // Timeline 2's segments and history are what pg_receivewal writes from the new primary.
    const prw = tmp('fo-prw');
    cleanup.push(async () => rmSync(prw, { recursive: true, force: true }));
    // It resumes after the newest complete segment it has: the last one before the fork's.
    const beforeFork = segName(1, fork - BigInt(SEG), SEG);
    writeFileSync(join(prw, beforeFork), readFileSync(join(s.archive, beforeFork)));
    // It stops once past --endpos: one byte before the end of the archive's last segment.
    const lastEnd = (segNoOf(last) + 1n) * BigInt(SEG) - 1n;
    const res = await run([join(toolBinDir(), 'pg_receivewal'), '-D', prw, '-d', `host=127.0.0.1 port=${s.b.port} user=postgres`, '-E', fmt(lastEnd), '-n', '--no-sync'], { check: false, timeoutMs: 120_000 });
    expect(res.exitCode, res.stderr).toBe(0);
    expect(readFileSync(join(prw, '00000002.history')).equals(readFileSync(join(s.archive, '00000002.history')))).toBe(true);
    const tl2 = readdirSync(prw).filter((n) => /^00000002[0-9A-F]{16}$/.test(n));
    expect(tl2.length).toBeGreaterThanOrEqual(2);
    for (const n of tl2) expect(readFileSync(join(prw, n)).equals(readFileSync(join(s.archive, n))), n).toBe(true);
    // status says what the archive holds of timeline 1 past the fork.
    const st = await runCli(['status', '--archive', s.archive]);
    expect(st.stdout).toMatch(new RegExp(`timeline 1 continues past the fork to timeline 2 at ${fmt(fork).replace('/', '\\/')} by [0-9.]+ [kM]B \\(to [0-9A-F]+\\/[0-9A-F]+\\), lost in the failover; kept`));
    // The archive verifies, and a server restored from it reaches the new primary's rows.
    const v = await runCli(['verify', '--archive', s.archive]);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    r.kill('SIGTERM');
    await r.done;
    expect(await restoreFromArchive(s)).toBe(Number((await s.b.query<{ n: string }>('select count(*)::text as n from rows'))[0]!.n));
  });

  it('does the same through a multi-host connection string that asks for the read-write server', async () => {
    const s = await setup('fo-multi');
    await s.a.query("select pg_create_physical_replication_slot('ws', true)");
    const conninfo = `host=127.0.0.1,127.0.0.1 port=${s.a.port},${s.b.port} user=postgres target_session_attrs=read-write`;
    const r = receiver(s, ['--create-slot-if-missing'], { conninfo });
    await r.waitForOutput(/starting log streaming at/);
    const fork = await failoverLosingWal(s);
    await r.waitForOutput(new RegExp(`timeline 1 continues past the fork to timeline 2 at ${fmt(fork).replace('/', '\\/')} by .*following timeline 2`), 120_000);
    await s.b.query("insert into rows select g, 'new primary' from generate_series(5001, 5500) g");
    const last = segName(2, lsnOf(await s.b.switchWal()) - 1n, SEG);
    await s.b.waitFor(async () => existsSync(join(s.archive, last)), 60_000, `${last} in the archive`);
    r.kill('SIGTERM');
    await r.done;
    expect(await restoreFromArchive(s)).toBe(Number((await s.b.query<{ n: string }>('select count(*)::text as n from rows'))[0]!.n));
  });

  it('stops instead with --on-fork=stop, changing nothing', async () => {
    const s = await setup('fo-stop');
    await s.a.query("select pg_create_physical_replication_slot('ws', true)");
    const r = receiver(s, ['--on-fork', 'stop']);
    await r.waitForOutput(/starting log streaming at/);
    const fork = await failoverLosingWal(s);
    await s.b.query("select pg_create_physical_replication_slot('ws', true)");
    const before = [...timelineFiles(s.archive, 1)];
    s.proxy.setUpstream(s.b.port);
    s.proxy.drop();
    const done = await r.done;
    expect(done.code).toBe(1);
    expect(done.stderr.trim().split('\n').pop()).toMatch(new RegExp(`timeline 1 continues past the fork to timeline 2 at ${fmt(fork).replace('/', '\\/')} by .*; stopped \\(--on-fork=stop\\)`));
    expect([...timelineFiles(s.archive, 1)]).toEqual(before);
    expect(readdirSync(s.archive).some((n) => n.startsWith('00000002'))).toBe(false);
  });
});

describe('switchover and the archive behind the fork', () => {
  it('follows a clean switchover with nothing lost and nothing to warn about', async () => {
    const s = await setup('fo-switch');
    await s.a.query("select pg_create_physical_replication_slot('ws', true)");
    const r = receiver(s);
    await r.waitForOutput(/starting log streaming at/);
    await s.a.query("insert into rows select g, 'before' from generate_series(1, 500) g");
    await s.a.stop('fast');
    await s.b.waitForReplay(await s.b.currentLsn());
    await s.b.promote();
    await s.b.query("select pg_create_physical_replication_slot('ws', true)");
    s.proxy.setUpstream(s.b.port);
    s.proxy.drop();
    await s.b.query("insert into rows select g, 'after' from generate_series(501, 900) g");
    const last = segName(2, lsnOf(await s.b.switchWal()) - 1n, SEG);
    await s.b.waitFor(async () => existsSync(join(s.archive, last)), 60_000, `${last} in the archive`);
    expect(r.stderr).not.toMatch(/continues past the fork|lost/);
    expect(existsSync(join(s.archive, '00000002.history'))).toBe(true);
    r.kill('SIGTERM');
    await r.done;
    expect(await restoreFromArchive(s)).toBe(900);
  });

  it('streams the old timeline up to the fork from the new primary when the archive is behind it, and follows two failovers in a row', async () => {
    const s = await setup('fo-behind');
    await s.a.query("select pg_create_physical_replication_slot('ws', true)");
    const r0 = await runCli(['receive', '-D', s.spool, '--archive', s.archive, '-d', s.a.connectionString(), '-S', 'ws', '-E', await s.a.currentLsn(), '-n']);
    expect(r0.code, r0.stderr).toBe(0);
    // The receiver is not running while A writes: the archive stays behind B.
    await s.a.query("insert into rows select g, 'one' from generate_series(1, 800) g");
    await s.a.generateWal(2 * SEG);
    await s.b.waitForReplay(await s.a.currentLsn());
    await s.a.kill9();
    await s.b.promote();
    // B's own standby C, for the second failover.
    const c = await s.b.createStandby({ name: 'fo-behind-c' });
    cleanup.push(() => c.destroy());
    await s.b.query("select pg_create_physical_replication_slot('ws')");
    s.proxy.setUpstream(s.b.port);
    const r = receiver(s);
    await s.b.query("insert into rows select g, 'two' from generate_series(801, 1200) g");
    await s.b.switchWal();
    await c.waitForReplay(await s.b.currentLsn());
    await s.b.waitFor(async () => existsSync(join(s.archive, '00000002.history')), 60_000, 'timeline 2 in the archive');
    await receiverHasAll(s.b);
    // Second failover: B goes away, C takes over on timeline 3.
    await s.b.kill9();
    await c.promote();
    await c.query("select pg_create_physical_replication_slot('ws')");
    s.proxy.setUpstream(c.port);
    s.proxy.drop();
    await c.query("insert into rows select g, 'three' from generate_series(1201, 1500) g");
    const last = segName(3, lsnOf(await c.switchWal()) - 1n, SEG);
    await c.waitFor(async () => existsSync(join(s.archive, last)), 90_000, `${last} in the archive`);
    expect(existsSync(join(s.archive, '00000003.history'))).toBe(true);
    r.kill('SIGTERM');
    await r.done;
    expect(await restoreFromArchive(s)).toBe(1500);
  });

  it('says which range of the old timeline the new primary no longer has, and where to find it', async () => {
    const s = await setup('fo-gone');
    await s.a.query("select pg_create_physical_replication_slot('ws', true)");
    const r0 = await runCli(['receive', '-D', s.spool, '--archive', s.archive, '-d', s.a.connectionString(), '-S', 'ws', '-E', await s.a.currentLsn(), '-n']);
    expect(r0.code, r0.stderr).toBe(0);
    await s.a.query("insert into rows select g, 'x' from generate_series(1, 800) g");
    await s.a.generateWal(3 * SEG);
    await s.b.waitForReplay(await s.a.currentLsn());
    await s.a.kill9();
    await s.b.promote();
    // The new primary recycles the old timeline's WAL the archive still lacks (no slot holds it).
    s.b.configure({ wal_keep_size: 0 });
    await s.b.reload();
    await s.b.generateWal(3 * SEG);
    for (let i = 0; i < 3; i++) {
      await s.b.switchWal();
      await s.b.checkpoint();
    }
    s.proxy.setUpstream(s.b.port);
    const res = await runCli(['receive', '-D', s.spool, '--archive', s.archive, '-d', `host=127.0.0.1 port=${s.proxy.port} user=postgres`, '-n']);
    expect(res.code).toBe(1);
    expect(res.stderr.trim().split('\n')).toHaveLength(1);
    expect(res.stderr).toMatch(
      /the server no longer has timeline 1 from [0-9A-F]+\/[0-9A-F]+ to the fork at [0-9A-F]+\/[0-9A-F]+, which walstream does not hold yet\. Copy those segments from the old primary's pg_wal/,
    );
  });
});

describe('the slot on the new primary', () => {
  it('without --create-slot-if-missing: a clear error naming the slot and the server', async () => {
    const s = await setup('fo-noslot');
    await s.a.query("select pg_create_physical_replication_slot('ws', true)");
    const r0 = await runCli(['receive', '-D', s.spool, '--archive', s.archive, '-d', s.a.connectionString(), '-S', 'ws', '-E', await s.a.currentLsn(), '-n']);
    expect(r0.code, r0.stderr).toBe(0);
    await s.b.waitForReplay(await s.a.currentLsn());
    await s.a.stop('fast');
    await s.b.promote();
    s.proxy.setUpstream(s.b.port);
    const res = await runCli(['receive', '-D', s.spool, '--archive', s.archive, '-d', `host=127.0.0.1 port=${s.proxy.port} user=postgres`, '-S', 'ws', '-n']);
    expect(res.code).toBe(1);
    expect(res.stderr.trim().split('\n')).toHaveLength(1);
    expect(res.stderr).toMatch(new RegExp(`replication slot "ws" does not exist on the server \\(.*127\\.0\\.0\\.1.*${s.proxy.port}.*\\); create it with --create-slot, or give --create-slot-if-missing`));
  });
});

describe('failover into an S3 archive', () => {
  let s3: S3TestServer | undefined;
  afterEach(async () => {
    await s3?.stop();
    s3 = undefined;
  });

  it('keeps the pieces of timeline 1 and follows timeline 2 (with --synchronous)', async () => {
    s3 = await startS3({ builtIn: true });
    const s = await setup('fo-s3');
    const url = `s3://${s3.bucket}/${s3.prefix}fo/`;
    const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    await s.a.query("select pg_create_physical_replication_slot('ws', true)");
    const r = receiver(s, ['--s3-endpoint', s3.endpoint, '--create-slot-if-missing', '--synchronous'], { env, archive: url });
    await r.waitForOutput(/starting log streaming at/);
    await failoverLosingWal(s);
    s.proxy.setUpstream(s.b.port);
    s.proxy.drop();
    await r.waitForOutput(/continues past the fork to timeline 2 .* following timeline 2/, 120_000);
    await s.b.query("insert into rows select g, 'new' from generate_series(5001, 5100) g");
    const last = segName(2, lsnOf(await s.b.switchWal()) - 1n, SEG);
    const client = s3.client();
    try {
      const { ListObjectsV2Command } = await import('@aws-sdk/client-s3');
      await s.b.waitFor(async () => ((await client.send(new ListObjectsV2Command({ Bucket: s3!.bucket, Prefix: `${s3!.prefix}fo/${last}` }))).KeyCount ?? 0) > 0, 60_000, `${last} in S3`);
      const listed = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: `${s3.prefix}fo/00000001` }));
      // Timeline 1's pieces of its last segment in progress are kept, beside its complete segments.
      expect((listed.Contents ?? []).some((o) => /\.partial\.[0-9A-F]{8}$/.test(o.Key ?? ''))).toBe(true);
    } finally {
      client.destroy();
    }
    const v = await runCli(['verify', '--archive', url, '--s3-endpoint', s3.endpoint], { env });
    expect(v.code, v.stdout + v.stderr).toBe(0);
  });
});
