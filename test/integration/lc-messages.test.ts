// walstream receive against PostgreSQL 15 speaking German (lc_messages = 'de_DE.UTF-8', the
// translations Debian's postgresql-15 ships): the permanent conditions are still told from passing
// ones, by SQLSTATE, command and state, not by English words. Each receiver runs without -n, so a
// condition taken for a passing one would be retried until the test gives up: a removed segment
// and a logical slot end the run with one clear line, a missing slot too, a failover fork
// (START_REPLICATION refused as "nicht in der History dieses Servers") is followed onto the new
// timeline from the server's own history, and the old timeline's WAL gone from the new primary is
// named as the range up to the fork. The locale must be installed: the test fails (never
// skips) without it.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster } from '../harness/pg.js';
import { TcpProxy } from '../harness/proxy.js';
import { runCli, startCli, type CliProcess, type CliResult } from '../support/cli.js';
import { lsnOf, segName } from '../support/walfiles.js';

const SEG = 1024 * 1024;
const GERMAN = { lc_messages: 'de_DE.UTF-8' };
/** Long enough for a permanent error to be reported; a passing one is retried past it. */
const GIVE_UP_MS = 45_000;

/** The locale PostgreSQL needs for lc_messages = 'de_DE.UTF-8' (glibc lists it as de_DE.utf8). */
function requireGermanLocale(): void {
  let locales = '';
  try {
    locales = execFileSync('locale', ['-a'], { encoding: 'utf8' });
  } catch (err) {
    throw new Error(`cannot list the installed locales (locale -a): ${(err as Error).message}`);
  }
  if (!/^de_DE\.utf-?8$/im.test(locales)) {
    throw new Error(
      'the de_DE.UTF-8 locale is not installed, and this test needs a server with lc_messages = de_DE.UTF-8. ' +
        'Run (as root): apt-get install -y locales && sed -i "s/^# *de_DE.UTF-8 UTF-8/de_DE.UTF-8 UTF-8/" /etc/locale.gen && locale-gen ' +
        '(CI does this in .ci/run install_postgres)',
    );
  }
}

/** A German-speaking PostgreSQL 15; fails clearly when it does not speak German after all. */
async function germanCluster(name: string, conf: Record<string, string | number> = {}): Promise<PgCluster> {
  const pg = await PgCluster.create({ name, version: 15, conf: { ...GERMAN, ...conf } });
  try {
    await pg.query('select 1/0');
    throw new Error('select 1/0 did not fail');
  } catch (err) {
    if (!/Division durch Null/.test((err as Error).message)) {
      await pg.destroy();
      throw new Error(`the server does not speak German with lc_messages = de_DE.UTF-8 (its postgres-15.mo missing?): "select 1/0" said "${(err as Error).message}"`);
    }
  }
  return pg;
}

function tmp(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `walstream-lc-${prefix}-`));
}

/** One line on stderr, exit status 1, within GIVE_UP_MS (a retried error never exits). */
function permanent(res: CliResult): string {
  expect(res.signal, `walstream was still retrying after ${GIVE_UP_MS / 1000} s:\n${res.stderr}`).toBeNull();
  expect(res.code, res.stderr).toBe(1);
  const lines = res.stderr.trim().split('\n');
  expect(lines, res.stderr).toHaveLength(1);
  return lines[0]!;
}

function fmt(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

beforeAll(() => requireGermanLocale());

describe('receive against a server with lc_messages = de_DE.UTF-8', () => {
  let pg: PgCluster;
  const dirs: string[] = [];
  const dir = (p: string): string => {
    const d = tmp(p);
    dirs.push(d);
    return d;
  };
  /** receive without -n: a passing error would be retried until GIVE_UP_MS. */
  const recv = (args: string[]): Promise<CliResult> => runCli(['receive', '-d', pg.connectionString(), ...args], { timeoutMs: GIVE_UP_MS });

  beforeAll(async () => {
    pg = await germanCluster('lc-de', { wal_level: 'logical' });
  });
  afterAll(async () => {
    await pg?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('a segment removed on the server: the permanent error, with what to do, not retried', async () => {
    const d = dir('removed');
    const first = await runCli(['receive', '-D', d, '-d', pg.connectionString(), '-E', await pg.currentLsn(), '-n']);
    expect(first.code, first.stderr).toBe(0);
    const resumeFrom = readdirSync(d)
      .find((n) => n.endsWith('.partial'))!
      .slice(0, 24);
    // No slot and wal_keep_size = 0: the server recycles what walstream has not got yet.
    await pg.generateWal(3 * SEG);
    for (let i = 0; i < 3; i++) {
      await pg.switchWal();
      await pg.checkpoint();
    }
    expect(existsSync(join(pg.walDir, resumeFrom)), `${resumeFrom} still in the server's pg_wal`).toBe(false);
    const line = permanent(await recv(['-D', d]));
    expect(line).toMatch(
      new RegExp(
        `das angeforderte WAL-Segment ${resumeFrom} wurde schon entfernt \\(on the server\\): the WAL between this archive's end and the server's oldest segment is gone from the server\\. Fill the gap`,
      ),
    );
  });

  it('a slot that does not exist: the clear slot error (receive and --drop-slot)', async () => {
    const line = permanent(await recv(['-D', dir('noslot'), '-S', 'no_such_slot']));
    expect(line).toMatch(/replication slot "no_such_slot" does not exist on the server \(.*\); create it with --create-slot/);
    // DROP_REPLICATION_SLOT answers 42704 in German.
    const drop = permanent(await recv(['-S', 'no_such_slot', '--drop-slot']));
    expect(drop).toMatch(/replication slot "no_such_slot" does not exist; create it with --create-slot/);
  });

  it('a logical slot: refused clearly, not retried', async () => {
    await pg.query("select pg_create_logical_replication_slot('logical_slot', 'test_decoding')");
    const d = dir('logical');
    const line = permanent(await recv(['-D', d, '-S', 'logical_slot']));
    // The server's words (READ_REPLICATION_SLOT's refusal, in German), then walstream's.
    expect(line).toMatch(/READ_REPLICATION_SLOT kann nicht mit einem logischem Replikations-Slot verwendet werden: replication slot "logical_slot" is a logical slot; walstream needs a physical slot/);
    expect(readdirSync(d)).toEqual([]);
  });
});

describe('failover with a German-speaking new primary', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (cleanup.length) await cleanup.pop()!().catch(() => undefined);
  });

  /** A German-speaking primary A with an asynchronous standby B. */
  async function pair(name: string): Promise<{ a: PgCluster; b: PgCluster }> {
    const a = await germanCluster(`${name}-a`, { wal_keep_size: '64MB', wal_sender_timeout: '10s' });
    cleanup.push(() => a.destroy());
    await a.query('create table rows (id int primary key, what text)');
    const b = await a.createStandby({ name: `${name}-b` });
    cleanup.push(() => b.destroy());
    return { a, b };
  }

  it('follows the new timeline from the fork (the server refuses the old one with a German message and DETAIL)', async () => {
    const { a, b } = await pair('lc-fo');
    const proxy = await TcpProxy.start(a.port);
    cleanup.push(() => proxy.stop());
    const spool = tmp('fo-spool');
    cleanup.push(async () => rmSync(spool, { recursive: true, force: true }));
    await a.query("select pg_create_physical_replication_slot('ws', true)");
    const r: CliProcess = startCli(['receive', '-D', spool, '-d', `host=127.0.0.1 port=${proxy.port} user=postgres`, '-S', 'ws', '--create-slot-if-missing', '-v'], { timeoutMs: 300_000 });
    cleanup.push(async () => {
      r.kill('SIGTERM');
      await r.done;
    });
    await r.waitForOutput(/starting log streaming at/);

    // A fails while B lags: B has the rows up to here, the receiver has more (more than a segment).
    await a.query("insert into rows select g, 'kept' from generate_series(1, 1000) g");
    await b.waitForReplay(await a.currentLsn());
    await b.stop('fast');
    await a.query("insert into rows select g, 'lost' from generate_series(1001, 3000) g");
    const end = lsnOf(await a.generateWal(2 * SEG));
    await a.waitFor(
      async () => {
        const [row] = await a.query<{ f: string | null }>("select flush_lsn::text as f from pg_stat_replication where application_name = 'walstream'");
        return row?.f != null && lsnOf(row.f) >= end;
      },
      60_000,
      'the receiver to have all of timeline 1',
    );
    await a.kill9();
    await b.start();
    await b.promote();
    const fork = lsnOf(/^1\t(\S+)/.exec(readFileSync(join(b.walDir, '00000002.history'), 'utf8'))![1]!);

    const logFrom = existsSync(b.logFile) ? readFileSync(b.logFile).length : 0;
    proxy.setUpstream(b.port);
    proxy.drop();
    await r.waitForOutput(
      new RegExp(
        `timeline 1 continues past the fork to timeline 2 at ${fmt(fork).replace('/', '\\/')} by .* \\(to [0-9A-F]+\\/[0-9A-F]+\\), WAL the new timeline does not have: transactions lost in the failover; kept as it is, following timeline 2`,
      ),
      120_000,
    );
    // The server refused timeline 1 past the fork in German (its log has what it sent); the fork
    // was read from its history, not from that message or its DETAIL.
    const log = readFileSync(b.logFile).subarray(logFrom).toString('utf8');
    expect(log).toMatch(/angeforderter Startpunkt [0-9A-F]+\/[0-9A-F]+ auf Zeitleiste 1 ist nicht in der History dieses Servers/);
    expect(log).toMatch(new RegExp(`Die History dieses Servers zweigte von Zeitleiste 1 bei ${fmt(fork).replace('/', '\\/')} ab`));
    expect(r.stderr).not.toMatch(/nicht in der History dieses Servers/);
    // Timeline 2 is received: its history, and a segment written after the failover.
    await b.query("insert into rows select g, 'new primary' from generate_series(5001, 6000) g");
    const last = segName(2, lsnOf(await b.switchWal()) - 1n, SEG);
    await b.waitFor(async () => existsSync(join(spool, last)), 60_000, `${last} in the receiver's directory`);
    expect(readFileSync(join(spool, '00000002.history')).equals(readFileSync(join(b.walDir, '00000002.history')))).toBe(true);
  }, 300_000);

  it('names the range of the old timeline the new primary no longer has (its removed segment in German)', async () => {
    const { a, b } = await pair('lc-gone');
    const spool = tmp('gone-spool');
    cleanup.push(async () => rmSync(spool, { recursive: true, force: true }));
    const r0 = await runCli(['receive', '-D', spool, '-d', a.connectionString(), '-E', await a.currentLsn(), '-n']);
    expect(r0.code, r0.stderr).toBe(0);
    // The receiver is not running while A writes: it stays behind B.
    await a.query("insert into rows select g, 'x' from generate_series(1, 800) g");
    await a.generateWal(3 * SEG);
    await b.waitForReplay(await a.currentLsn());
    await a.kill9();
    await b.promote();
    // The new primary recycles the old timeline's WAL the receiver still lacks (no slot holds it).
    b.configure({ wal_keep_size: 0 });
    await b.reload();
    await b.generateWal(3 * SEG);
    for (let i = 0; i < 3; i++) {
      await b.switchWal();
      await b.checkpoint();
    }
    const fork = lsnOf(/^1\t(\S+)/.exec(readFileSync(join(b.walDir, '00000002.history'), 'utf8'))![1]!);
    const res = await runCli(['receive', '-D', spool, '-d', b.connectionString()], { timeoutMs: GIVE_UP_MS });
    const line = permanent(res);
    expect(line).toMatch(
      new RegExp(
        `das angeforderte WAL-Segment 00000001[0-9A-F]{16} wurde schon entfernt \\(on the server\\): the server no longer has timeline 1 from [0-9A-F]+\\/[0-9A-F]+ to the fork at ${fmt(fork).replace('/', '\\/')}, which walstream does not hold yet\\. Copy those segments from the old primary's pg_wal`,
      ),
    );
  }, 300_000);
});
