// npm run bench:backup — base backups of one PostgreSQL 15 database of BENCH_DB_MB (default 1024)
// MB, side by side in one run, BENCH_RUNS (default 3) runs alternating:
//   local: walstream backup into a local archive vs pg_basebackup -Ft -X none into a directory;
//   S3:    walstream backup into s3rver (its own process) vs pgbackrest backup into the same
//          server (through a TLS proxy: pgBackRest speaks only HTTPS), when pgBackRest is installed;
//   restore: walstream restore from the local archive vs tar -x of pg_basebackup's base.tar, both
//          followed by a sync of the target file system, so that both have made the files durable.
// Every tool copies the same uncompressed bytes. Prints medians (wall, CPU, peak RSS) and ratios.
// BENCH_CASES (a regular expression over the case names) narrows the run; without an S3 case
// selected, no S3 server is started and the WAL goes only to the local archive. A pattern that
// selects no backup case (e.g. BENCH_CASES=restore) times only the restores, from one untimed
// pg_basebackup and one untimed walstream backup.
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { PgCluster, toolBinDir } from '../test/harness/pg.js';
import { BIN } from '../test/support/cli.js';
import { walstreamCommand } from '../test/support/pgcommand.js';
import { measure, median, printTable, requireGnuTime, selectCases, startS3Process, summarize, type Measurement } from './common.js';
import { havePgBackRest, pgBackRestRepo, pgDir, tlsProxy, type PgBackRestRepo, type TlsProxy } from './peers.js';

const DB_MB = Number(process.env['BENCH_DB_MB'] ?? 1024);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 3);
/** pgBackRest's parallel processes (process-max); walstream backup uses one connection. */
const PGBR_PROCESSES = Number(process.env['BENCH_PGBR_PROCESSES'] ?? 1);

interface Case {
  name: string;
  /** The command to time, given a fresh scratch directory; returns argv. */
  argv(scratch: string, run: number): string[];
  /** Run before each timed run, untimed. */
  prepare?(scratch: string, run: number): Promise<void>;
}

async function main(): Promise<void> {
  requireGnuTime();
  const pattern = process.env['BENCH_CASES'];
  const wantS3 = pattern === undefined || new RegExp(pattern).test('walstream backup (S3)') || new RegExp(pattern).test('pgbackrest backup (S3)');
  const s3 = await startS3Process();
  const primary = await PgCluster.create({
    name: 'bench-backup',
    // 16 MB segments, as a real server has: the load's WAL is archived by one to three commands per segment.
    walSegmentSizeMB: 16,
    conf: { archive_mode: 'on', max_wal_size: '4GB', checkpoint_timeout: '30min', wal_keep_size: '1GB' },
  });
  const local = pgDir('archive');
  const dirs = [local];
  const repos: PgBackRestRepo[] = [];
  let proxy: TlsProxy | undefined;
  try {
    const s3Env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    const s3Url = `s3://${s3.bucket}/${s3.prefix}backup/`;
    // WAL goes to walstream's archives (--wal none relies on it) and, when installed, to pgBackRest's repositories.
    const push = [walstreamCommand(['push', '%p', '--archive', local])];
    if (wantS3)
      push.push(
        `env ${Object.entries(s3Env)
          .map(([k, v]) => `${k}=${v}`)
          .join(' ')} ${walstreamCommand(['push', '%p', '--archive', s3Url, '--s3-endpoint', s3.endpoint])}`,
      );
    if (!wantS3) {
      // no S3 case selected
    } else if (havePgBackRest()) {
      try {
        proxy = await tlsProxy(Number(new URL(s3.endpoint).port));
        const repo = await pgBackRestRepo({ primary, processMax: PGBR_PROCESSES, s3: { server: s3, tlsPort: proxy.port, prefix: `${s3.prefix}pgbr-backup` } });
        repos.push(repo);
        push.push(repo.pushCommand());
      } catch (err) {
        console.log(`pgBackRest on S3 left out: ${(err as Error).message.split('\n')[0]}`);
      }
    } else {
      console.log('pgBackRest is not installed (apt-get install pgbackrest): its case is left out');
    }
    primary.configure({ archive_command: push.map((c) => `(${c})`).join(' && ') });
    await primary.reload();

    process.stdout.write(`loading ${DB_MB} MB of data... `);
    const t0 = Date.now();
    // About 1 KB per row, incompressible enough that no tool gains by compressing.
    await primary.query(`create table bench_data as select g, repeat(md5(g::text), 30) as v from generate_series(1, ${Math.round(DB_MB * 1024 * 0.85)}) g`);
    await primary.checkpoint();
    const [{ size }] = (await primary.query<{ size: string }>('select pg_size_pretty(pg_database_size(current_database())) as size')) as [{ size: string }];
    // BASE_BACKUP waits for its WAL to be archived: the load's backlog must be gone before the first
    // timed run, or that run (whichever tool it is) waits for it.
    const [{ last }] = (await primary.query<{ last: string }>('select pg_walfile_name(pg_switch_wal()) as last')) as [{ last: string }];
    for (const until = Date.now() + 1_800_000; ; ) {
      const [{ archived }] = (await primary.query<{ archived: string | null }>('select last_archived_wal as archived from pg_stat_archiver')) as [{ archived: string | null }];
      if (archived !== null && archived >= last) break;
      if (Date.now() > until) throw new Error(`the archiver did not reach ${last} in 30 minutes (at ${archived})`);
      await new Promise((r) => setTimeout(r, 200));
    }
    console.log(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s (database ${size}, its WAL archived)`);

    const conn = `host=127.0.0.1 port=${primary.port} user=postgres`;
    const walstream = [process.execPath, BIN];
    const s3Args = ['--s3-endpoint', s3.endpoint];
    const baseTars: string[] = [];
    let cases: Case[] = [
      { name: 'pg_basebackup -Ft -X none', argv: (d) => [join(toolBinDir(), 'pg_basebackup'), '-d', conn, '-D', join(d, 'pgbb'), '-Ft', '-X', 'none', '-c', 'fast'] },
      { name: 'walstream backup (local)', argv: () => [...walstream, 'backup', '-d', conn, '--archive', local, '-c', 'fast'] },
      { name: 'walstream backup (S3)', argv: () => ['env', ...Object.entries(s3Env).map(([k, v]) => `${k}=${v}`), ...walstream, 'backup', '-d', conn, '--archive', s3Url, ...s3Args, '-c', 'fast'] },
    ];
    const repo = repos[0];
    if (repo)
      cases.push({
        name: `pgbackrest backup (S3, process-max ${PGBR_PROCESSES})`,
        argv: () => ['runuser', '-u', 'postgres', '--', '/usr/bin/pgbackrest', `--config=${repo.config}`, `--stanza=${repo.stanza}`, '--type=full', 'backup'],
      });
    const restoreOnly = pattern !== undefined && !cases.some((c) => new RegExp(pattern).test(c.name));
    cases = selectCases(cases, 'pg_basebackup -Ft -X none');
    if (restoreOnly) {
      // The restores' sources, untimed: pg_basebackup's tar and a walstream backup in the local archive.
      const scratch = pgDir('scratch');
      dirs.push(scratch);
      await measure(cases[0]!.argv(scratch, 0));
      baseTars.push(join(scratch, 'pgbb', 'base.tar'));
      await measure([...walstream, 'backup', '-d', conn, '--archive', local, '-c', 'fast']);
      console.log('restore cases only: one untimed pg_basebackup and walstream backup made');
      cases = [];
    }

    const results = new Map<string, Measurement[]>();
    const record = (name: string, m: Measurement, run: number): void => {
      results.set(name, [...(results.get(name) ?? []), m]);
      console.log(`run ${run + 1} ${name}: wall ${m.wallS.toFixed(2)} s, CPU ${m.cpuS.toFixed(2)} s, peak RSS ${m.maxRssMb.toFixed(1)} MB`);
    };
    for (let i = 0; i < RUNS; i++) {
      const order = i % 2 === 0 ? cases : [...cases].reverse();
      for (const c of order) {
        const scratch = pgDir('scratch');
        dirs.push(scratch);
        record(c.name, await measure(c.argv(scratch, i)), i);
        if (c.name.startsWith('pg_basebackup')) baseTars.push(join(scratch, 'pgbb', 'base.tar'));
        else rmSync(scratch, { recursive: true, force: true });
      }
    }

    // Restore: the newest local backup vs tar -x of one pg_basebackup output, alternating.
    const restoreCases: Case[] = [
      { name: 'tar -x + sync', argv: (d) => ['sh', '-c', `mkdir -p ${d}/data && tar -xf ${baseTars[0]} -C ${d}/data && sync -f ${d}/data`] },
      { name: 'walstream restore (local)', argv: (d) => [...walstream, 'restore', '--archive', local, '-D', join(d, 'data')] },
    ];
    if (baseTars.length > 0) {
      for (let i = 0; i < RUNS; i++) {
        const order = i % 2 === 0 ? restoreCases : [...restoreCases].reverse();
        for (const c of order) {
          const scratch = pgDir('restore');
          mkdirSync(scratch, { recursive: true });
          record(c.name, await measure(c.argv(scratch, i)), i);
          rmSync(scratch, { recursive: true, force: true });
        }
      }
    }

    const rows = [...results].map(([name, runs]) => summarize(name, runs));
    const wall = (name: string): number | undefined => (results.has(name) ? median(results.get(name)!.map((m) => m.wallS)) : undefined);
    const ratio = (a: string, b: string): string => {
      const x = wall(a);
      const y = wall(b);
      return x !== undefined && y !== undefined ? (x / y).toFixed(2) : 'n/a';
    };
    console.log('');
    printTable(rows, {
      database: size,
      'walstream backup (local) / pg_basebackup -Ft -X none (target <= 1.1)': ratio('walstream backup (local)', 'pg_basebackup -Ft -X none'),
      [`walstream backup (S3) / pgbackrest backup (S3) (target <= 1.0)`]: repo ? ratio('walstream backup (S3)', `pgbackrest backup (S3, process-max ${PGBR_PROCESSES})`) : 'n/a',
      'walstream restore / tar -x + sync (target <= 1.3)': ratio('walstream restore (local)', 'tar -x + sync'),
      'objects in the local archive': String(readdirSync(join(local, 'backups')).length),
    });
  } finally {
    await primary.destroy();
    await proxy?.close();
    await s3.stop();
    for (const r of repos) r.cleanup();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
