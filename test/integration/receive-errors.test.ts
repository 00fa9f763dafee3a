// Bad input to walstream receive: one clear line on stderr, exit status 1, nothing written.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { run } from '../harness/exec.js';
import { gunzipSync } from 'node:zlib';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, freePort } from '../harness/pg.js';
import { ROOT, runCli, type CliResult } from '../support/cli.js';

function oneLineError(res: CliResult, pattern: RegExp): void {
  expect(res.code, res.stderr).toBe(1);
  const lines = res.stderr.trim().split('\n');
  expect(lines, res.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(pattern);
}

describe('receive rejects bad input', () => {
  let pg: PgCluster;
  const dirs: string[] = [];
  const emptyDir = (): string => {
    const d = mkdtempSync(join(tmpdir(), 'walstream-bad-'));
    dirs.push(d);
    return d;
  };
  const recv = (dir: string, args: string[], env: Record<string, string | undefined> = {}): Promise<CliResult> =>
    runCli(['receive', '-D', dir, '-n', ...args], { env: { PGPASSWORD: undefined, PGPASSFILE: '/nonexistent', ...env } });

  beforeAll(async () => {
    pg = await PgCluster.create({ name: 'badinput', conf: { wal_level: 'logical' } });
    await pg.createRole('pw_user', { replication: true, password: 'right-secret' });
    await pg.createRole('norepl_user', { password: 'norepl-secret' });
    await pg.createRole('nohba_user', { replication: true, password: 'nohba-secret' });
  });
  afterAll(async () => {
    await pg?.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('unreachable host', async () => {
    const dir = emptyDir();
    const port = await freePort();
    oneLineError(await recv(dir, ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres']), /could not connect.*ECONNREFUSED/);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('wrong password, without echoing it', async () => {
    const dir = emptyDir();
    const res = await recv(dir, ['-h', '127.0.0.1', '-p', String(pg.port), '-U', 'pw_user'], { PGPASSWORD: 'wrong-secret' });
    oneLineError(res, /password authentication failed for user "pw_user"/);
    expect(res.stderr).not.toContain('wrong-secret');
    expect(readdirSync(dir)).toEqual([]);
  });

  it('the right password from PGPASSWORD works', async () => {
    const dir = emptyDir();
    const res = await recv(dir, ['-h', '127.0.0.1', '-p', String(pg.port), '-U', 'pw_user', '-E', '0/1'], { PGPASSWORD: 'right-secret' });
    expect(res.code, res.stderr).toBe(0);
  });

  it('role without REPLICATION', async () => {
    const dir = emptyDir();
    const res = await recv(dir, ['-d', pg.connectionString({ user: 'norepl_user', password: 'norepl-secret' })]);
    oneLineError(res, /permission denied|must be superuser or replication role/);
    expect(res.stderr).not.toContain('norepl-secret');
    expect(readdirSync(dir)).toEqual([]);
  });

  it('no pg_hba.conf entry for replication', async () => {
    const dir = emptyDir();
    oneLineError(await recv(dir, ['-d', pg.connectionString({ user: 'nohba_user', password: 'nohba-secret' })]), /pg_hba\.conf rejects replication connection/);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a slot that does not exist', async () => {
    const dir = emptyDir();
    oneLineError(await recv(dir, ['-d', pg.connectionString(), '-S', 'no_such_slot']), /replication slot "no_such_slot" does not exist/);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a logical slot', async () => {
    await pg.query("select pg_create_logical_replication_slot('logical_slot', 'test_decoding')");
    const dir = emptyDir();
    oneLineError(await recv(dir, ['-d', pg.connectionString(), '-S', 'logical_slot']), /logical replication slot/);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a malformed --endpos', async () => {
    const dir = emptyDir();
    oneLineError(await recv(dir, ['-d', pg.connectionString(), '-E', '12345']), /end position "12345"/);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('an interval too long for a timer (it would fire at once)', async () => {
    const dir = emptyDir();
    oneLineError(await recv(dir, ['-d', pg.connectionString(), '--receive-timeout', '2147484']), /interval "2147484" is too long \(at most 2147483 seconds\)/);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a missing directory', async () => {
    const dir = join(emptyDir(), 'missing');
    oneLineError(await recv(dir, ['-d', pg.connectionString()]), /does not exist/);
  });

  it('a directory walstream cannot write', async () => {
    const dir = join(emptyDir(), 'readonly');
    mkdirSync(dir);
    // Root may write anywhere the mode bits forbid: make it a read-only mount instead.
    const root = process.getuid?.() === 0;
    if (root) await run(['mount', '--bind', '-o', 'ro', dir, dir]);
    else chmodSync(dir, 0o555);
    try {
      const res = await recv(dir, ['-d', pg.connectionString()]);
      oneLineError(res, /not writable/);
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      if (root) await run(['umount', dir]);
    }
  });

  it('a file where the directory should be', async () => {
    const file = join(emptyDir(), 'file');
    writeFileSync(file, 'x');
    oneLineError(await recv(file, ['-d', pg.connectionString()]), /is not a directory/);
  });

  it('--create-slot with --drop-slot', async () => {
    oneLineError(await recv(emptyDir(), ['-d', pg.connectionString(), '-S', 'x', '--create-slot', '--drop-slot']), /--create-slot together with --drop-slot/);
  });

  it('--synchronous with --no-sync', async () => {
    oneLineError(await recv(emptyDir(), ['-d', pg.connectionString(), '--synchronous', '--no-sync']), /--synchronous together with --no-sync/);
  });

  it('a directory holding WAL of another system', async () => {
    const dir = emptyDir();
    const seg = gunzipSync(readFileSync(join(ROOT, 'fixtures/pg15-1mb/000000010000000000000007.gz')));
    writeFileSync(join(dir, '000000010000000000000007'), seg);
    oneLineError(await recv(dir, ['-d', pg.connectionString()]), /holds WAL of database system \d+, but the server is system \d+/);
    expect(readdirSync(dir)).toEqual(['000000010000000000000007']);
  });

  it('creates, refuses to re-create, tolerates with --if-not-exists, and drops a slot', async () => {
    const dir = emptyDir();
    const base = ['receive', '-d', pg.connectionString(), '-S', 'made_by_walstream'];
    expect((await runCli([...base, '--create-slot'])).code).toBe(0);
    const slots = await pg.query<{ slot_type: string }>("select slot_type from pg_replication_slots where slot_name = 'made_by_walstream'");
    expect(slots).toEqual([{ slot_type: 'physical' }]);
    oneLineError(await runCli([...base, '--create-slot']), /already exists/);
    expect((await runCli([...base, '--create-slot', '--if-not-exists'])).code).toBe(0);
    expect((await runCli([...base, '--drop-slot'])).code).toBe(0);
    expect(await pg.query("select 1 from pg_replication_slots where slot_name = 'made_by_walstream'")).toEqual([]);
    oneLineError(await runCli([...base, '--drop-slot']), /does not exist/);
    expect(readdirSync(dir)).toEqual([]);
  });
});
