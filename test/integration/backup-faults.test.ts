// walstream backup when things go wrong (issue 14): wrong credentials and a role without the
// REPLICATION attribute (one clear line, nothing written); the server restarting during the
// backup; SIGKILL at random points (never a backup that looks usable but is not); S3 failing
// mid-upload (brief failures retried, a lasting one a clean failure that records nothing), with a
// good backup afterwards each time.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster } from '../harness/pg.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { runCli, startCli, type CliProcess } from '../support/cli.js';
import { LocalStore } from '../../src/storage/local.js';
import { S3Store } from '../../src/storage/s3.js';
import { listBackups } from '../../src/backup/layout.js';
import type { ArchiveStore } from '../../src/storage/types.js';

/** Every backup listed complete has every object it names, with the recorded SHA-256. */
async function completeOnesAreWhole(store: ArchiveStore): Promise<number> {
  const { complete } = await listBackups(store);
  for (const r of complete) for (const o of r.objects) expect((await store.head(o.name))?.checksum, `${r.name}: ${o.name}`).toBe(o.sha256);
  return complete.length;
}

describe('walstream backup under faults', () => {
  let primary: PgCluster;
  let archive: string;
  let s3: S3TestServer;
  let receiver: CliProcess | undefined;
  const dirs: string[] = [];
  const newDir = (p: string): string => {
    const d = mkdtempSync(join(tmpdir(), `walstream-${p}-`));
    dirs.push(d);
    return d;
  };
  const conn = (): string[] => ['-d', primary.connectionString()];
  /** Until the server reports the backup streaming its files (pg_stat_progress_basebackup). */
  const waitStreaming = async (proc: CliProcess): Promise<void> => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const rows = await primary.query<{ phase: string }>('select phase from pg_stat_progress_basebackup');
      if (rows.some((r) => r.phase === 'streaming database files')) return;
      if (proc.child.exitCode !== null) throw new Error(`the backup ended before streaming: ${proc.stderr}`);
      if (Date.now() > deadline) throw new Error(`the backup never streamed:\n${proc.stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  beforeAll(async () => {
    [primary, s3] = await Promise.all([PgCluster.create({ name: 'backup-faults', conf: { max_wal_senders: 10 } }), startS3({ builtIn: true })]);
    // About 20 MB: at -r 4M the backup streams for a few seconds.
    await primary.query("create table data as select g as id, md5(g::text) || repeat('x', 150) as pad from generate_series(1, 100000) g");
    await primary.checkpoint();
    archive = newDir('faults-archive');
    await primary.query("select pg_create_physical_replication_slot('feed', true)");
    receiver = startCli(['receive', '-D', newDir('faults-spool'), ...conn(), '-S', 'feed', '--archive', archive, '--partial-interval', '0']);
    const deadline = Date.now() + 30_000;
    while (!existsSync(join(archive, 'walstream.json'))) {
      if (Date.now() > deadline) throw new Error(`the receiver did not claim the archive:\n${receiver.stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await primary.switchWal();
  }, 180_000);

  afterAll(async () => {
    receiver?.kill('SIGTERM');
    await receiver?.done;
    await primary?.destroy();
    await s3?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('gives one clear line for a wrong password and for a role without REPLICATION, and writes nothing', async () => {
    await primary.createRole('bk_repl', { replication: true, password: 'right-secret-1' });
    await primary.createRole('bk_norepl', { replication: false, password: 'right-secret-2' });
    // (The receiver feeding the archive may update its own record meanwhile.)
    const held = (): string[] =>
      readdirSync(archive)
        .filter((n) => !n.startsWith('walstream.writer.'))
        .sort();
    const before = held();
    const wrong = await runCli(['backup', '-d', `host=127.0.0.1 port=${primary.port} user=bk_repl password=wrong-secret-9`, '--archive', archive]);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr.trim().split('\n')).toHaveLength(1);
    expect(wrong.stderr).toMatch(/password authentication failed for user "bk_repl"/);
    expect(wrong.stderr).not.toContain('wrong-secret-9');
    const norepl = await runCli(['backup', '-d', `host=127.0.0.1 port=${primary.port} user=bk_norepl password=right-secret-2`, '--archive', archive]);
    expect(norepl.code).toBe(1);
    expect(norepl.stderr.trim().split('\n')).toHaveLength(1);
    expect(norepl.stderr).toMatch(/replication/i);
    expect(norepl.stderr).not.toContain('right-secret-2');
    expect(held()).toEqual(before);
  });

  it('fails cleanly when the server restarts during the backup, records nothing, and the next backup is good', async () => {
    const store = new LocalStore(archive);
    const complete = await completeOnesAreWhole(store);
    const proc = startCli(['backup', ...conn(), '--archive', archive, '-c', 'fast', '-r', '4M']);
    await waitStreaming(proc);
    await primary.restart();
    expect((await proc.done).code).toBe(1);
    expect(proc.stderr.trim().split('\n')).toHaveLength(1);
    expect(proc.stderr).toMatch(/walstream: error: the server ended the backup while sending base\.tar: .*(connection|terminat|shut).*; nothing was recorded/i);
    expect(await listBackups(store)).toMatchObject({ incomplete: [] });
    expect(await completeOnesAreWhole(store)).toBe(complete);
    const next = await runCli(['backup', ...conn(), '--archive', archive, '-c', 'fast']);
    expect(next.stderr).toBe('');
    expect(next.code).toBe(0);
    expect(await completeOnesAreWhole(store)).toBe(complete + 1);
  }, 120_000);

  it('never leaves a usable-looking backup when killed with -9 at random points', async () => {
    const store = new LocalStore(archive);
    let complete = await completeOnesAreWhole(store);
    // A throttled backup lasts a few seconds here: kill it somewhere in its first 3.
    const delays = [0, 1, 2].map((i) => Math.round(200 + ((i * 997 + Date.now()) % 2800)));
    for (const ms of delays) {
      const proc = startCli(['backup', ...conn(), '--archive', archive, '-c', 'fast', '-r', '8M']);
      await new Promise((r) => setTimeout(r, ms));
      proc.kill('SIGKILL');
      await proc.done;
      // Complete (killed after its record) or not listed as usable: never half of one.
      const now = await completeOnesAreWhole(store);
      expect(now === complete || now === complete + 1, `killed after ${ms} ms`).toBe(true);
      complete = now;
    }
    // The next run removes what the killed ones left.
    await new Promise((r) => setTimeout(r, 1100));
    const next = await runCli(['backup', ...conn(), '--archive', archive, '-c', 'fast', '--leftover-age', '1s']);
    expect(next.code).toBe(0);
    expect((await listBackups(store)).incomplete).toEqual([]);
    expect(await completeOnesAreWhole(store)).toBe(complete + 1);
  }, 180_000);

  it('into S3: retries brief failures and completes; a lasting failure mid-upload fails cleanly and records nothing', async () => {
    const url = `s3://${s3.bucket}/${s3.prefix}faults/`;
    const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    const args = ['backup', ...conn(), '--archive', url, '--s3-endpoint', s3.endpoint, '-c', 'fast', '--wal', 'stream'];
    const store = new S3Store({ bucket: s3.bucket, prefix: `${s3.prefix}faults/`, endpoint: s3.endpoint, region: s3.region, credentials: s3.credentials });
    try {
      // Brief: the next few requests answered 503, then served.
      s3.failNext(3);
      const ok = await runCli(args, { env });
      expect(ok.stderr).toBe('');
      expect(ok.code).toBe(0);
      expect(await completeOnesAreWhole(store)).toBe(1);

      // Lasting: from the first part uploaded on, every request fails.
      s3.requests.length = 0;
      const proc = startCli([...args, '-r', '4M'], { env });
      const deadline = Date.now() + 60_000;
      while (!s3.requests.some((r) => r.method === 'PUT' && /partNumber=/.test(r.query))) {
        if (proc.child.exitCode !== null) throw new Error(`the backup ended before uploading a part: ${proc.stderr}`);
        if (Date.now() > deadline) throw new Error('no part was uploaded');
        await new Promise((r) => setTimeout(r, 50));
      }
      s3.failFor(60_000, 500);
      const res = await proc.done;
      s3.failFor(0);
      expect(res.code).toBe(1);
      expect(
        proc.stderr
          .trim()
          .split('\n')
          .filter((l) => l.includes('error')).length,
      ).toBe(1);
      expect(proc.stderr).toMatch(/walstream: error: /);
      expect(await completeOnesAreWhole(store)).toBe(1);
    } finally {
      s3.failFor(0);
      await store.close();
    }
  }, 180_000);
});
