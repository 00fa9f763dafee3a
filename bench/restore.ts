// npm run bench:restore — a standby catching up BENCH_SEGMENTS (default 64) 16 MB segments through
// restore_command, from a local archive and from S3 (s3rver on loopback, or
// WALSTREAM_TEST_S3_ENDPOINT): walstream fetch with and without --prefetch, against `cp` from a
// plain directory and pgBackRest's archive-get, synchronous and asynchronous (when installed).
// Every case starts from its own copy of one base backup, in standby mode without a primary, and
// is timed from server start until it has replayed the last record. Then the fixed cost of one
// call (one segment from the local archive) per tool. Medians of BENCH_RUNS runs.
import { chownSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { PgCluster } from '../test/harness/pg.js';
import { pgOsUser, runAsPg } from '../test/harness/exec.js';
import { startS3 } from '../test/harness/s3.js';
import { walstreamCommand, walstreamProgram } from '../test/support/pgcommand.js';
import { median, selectCases } from './common.js';
import { havePgBackRest, pgBackRestRepo, pgDir, tlsProxy, type PgBackRestRepo, type TlsProxy } from './peers.js';

const SEGMENTS = Number(process.env['BENCH_SEGMENTS'] ?? 64);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 3);
const SEG_MB = 16;
const PREFETCH = process.env['BENCH_PREFETCH'] ?? '8';
const SEG_RE = /^[0-9A-F]{24}$/;

interface Case {
  name: string;
  /** restore_command for a standby with this data directory. */
  command(dataDir: string, spool: string): string;
}

async function main(): Promise<void> {
  const s3 = await startS3();
  const primary = await PgCluster.create({
    name: 'bench-restore',
    walSegmentSizeMB: SEG_MB,
    conf: { archive_mode: 'on', max_wal_size: '4GB', checkpoint_timeout: '30min', wal_keep_size: '2GB' },
  });
  const raw = pgDir('raw');
  const local = pgDir('archive');
  const dirs = [raw, local];
  const repos: PgBackRestRepo[] = [];
  let proxy: TlsProxy | undefined;
  const standbys: PgCluster[] = [];
  try {
    primary.configure({ archive_command: `cp %p ${raw}/%f` });
    await primary.reload();
    const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    const envPrefix = `env ${Object.entries(env)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}`;
    const s3Url = `s3://${s3.bucket}/${s3.prefix}restore/`;

    let cases: Case[] = [
      { name: 'cp', command: () => `cp ${raw}/%f %p` },
      { name: 'walstream fetch', command: () => walstreamCommand(['fetch', '%f', '%p', '--archive', local]) },
      { name: `walstream fetch --prefetch ${PREFETCH}`, command: (_d, spool) => walstreamCommand(['fetch', '%f', '%p', '--archive', local, '--prefetch', PREFETCH, '--spool', spool]) },
      { name: 'walstream fetch S3', command: () => `${envPrefix} ${walstreamCommand(['fetch', '%f', '%p', '--archive', s3Url, '--s3-endpoint', s3.endpoint])}` },
      {
        name: `walstream fetch --prefetch ${PREFETCH}, mv first`,
        command: (_d, spool) => `mv ${spool}/%f %p 2>/dev/null || ${walstreamCommand(['fetch', '%f', '%p', '--archive', local, '--prefetch', PREFETCH, '--spool', spool])}`,
      },
      {
        name: `walstream fetch S3 --prefetch ${PREFETCH}, mv first`,
        command: (_d, spool) =>
          `mv ${spool}/%f %p 2>/dev/null || ${envPrefix} ${walstreamCommand(['fetch', '%f', '%p', '--archive', s3Url, '--s3-endpoint', s3.endpoint, '--prefetch', PREFETCH, '--spool', spool])}`,
      },
      {
        name: `walstream fetch S3 --prefetch ${PREFETCH}`,
        command: (_d, spool) => `${envPrefix} ${walstreamCommand(['fetch', '%f', '%p', '--archive', s3Url, '--s3-endpoint', s3.endpoint, '--prefetch', PREFETCH, '--spool', spool])}`,
      },
    ];
    if (havePgBackRest()) {
      const repo = await pgBackRestRepo({ primary, processMax: Number(PREFETCH) });
      repos.push(repo);
      cases.push({ name: 'pgbackrest archive-get', command: (d) => repo.getCommand(d) });
      cases.push({ name: 'pgbackrest archive-get async', command: (d, spool) => repo.getCommand(d, { spool }) });
      if (!s3.external) {
        try {
          proxy = await tlsProxy(Number(new URL(s3.endpoint).port));
          const s3repo = await pgBackRestRepo({ primary, processMax: Number(PREFETCH), s3: { server: s3, tlsPort: proxy.port, prefix: `${s3.prefix}pgbr-restore` } });
          repos.push(s3repo);
          cases.push({ name: 'pgbackrest archive-get S3', command: (d) => s3repo.getCommand(d) });
          cases.push({ name: 'pgbackrest archive-get S3 async', command: (d, spool) => s3repo.getCommand(d, { spool }) });
        } catch (err) {
          console.log(`pgBackRest on S3 left out: ${(err as Error).message.split('\n')[0]}`);
        }
      }
    } else {
      console.log('pgBackRest is not installed (apt-get install pgbackrest): its cases are left out');
    }

    cases = selectCases(cases, 'cp');
    // One base backup per run and case, all before the WAL they will replay.
    console.log(`taking ${cases.length * RUNS} base backups...`);
    const bases = new Map<string, PgCluster[]>();
    for (const c of cases) {
      const list: PgCluster[] = [];
      for (let i = 0; i < RUNS; i++) {
        const sb = await primary.createStandby({ name: 'bench-restore-sb', start: false });
        standbys.push(sb);
        list.push(sb);
      }
      bases.set(c.name, list);
    }

    process.stdout.write(`generating ${SEGMENTS} segments of WAL... `);
    await primary.generateWal(SEGMENTS * SEG_MB * 1024 * 1024);
    const target = await primary.currentLsn();
    const last = (await primary.query<{ f: string }>('select pg_walfile_name(pg_current_wal_lsn()) as f'))[0]!.f;
    await primary.switchWal();
    await primary.waitFor(async () => readdirSync(raw).includes(last), 300_000, `archiving up to ${last}`);
    const names = readdirSync(raw)
      .filter((n) => SEG_RE.test(n))
      .sort();
    console.log(`${names.length} segments archived, replaying up to ${target}`);

    // The same segments into walstream's local and S3 archives and the pgBackRest repositories.
    const filler = [
      (n: string) => runAsPg(walstreamArgv()[0], [walstreamArgv()[1], 'push', join(raw, n), '--archive', local]),
      (n: string) => runAsPg('env', [...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...walstreamArgv(), 'push', join(raw, n), '--archive', s3Url, '--s3-endpoint', s3.endpoint]),
      ...repos.map((r) => (n: string) => runAsPg('/usr/bin/pgbackrest', [`--config=${r.config}`, `--stanza=${r.stanza}`, 'archive-push', join(raw, n)])),
    ];
    for (const n of names) await Promise.all(filler.map((f) => f(n)));

    const times = new Map<string, number[]>();
    for (let i = 0; i < RUNS; i++) {
      const order = i % 2 === 0 ? cases : [...cases].reverse();
      for (const c of order) {
        const sb = bases.get(c.name)![i]!;
        // Beside the data directory, on its file system, as docs/fetch.md asks (a spool
        // elsewhere costs every case a copy instead of a rename); removed with the standby.
        const spool = join(sb.baseDir, 'spool');
        mkdirSync(spool, { mode: 0o700 });
        const user = pgOsUser();
        if (user) chownSync(spool, user.uid, user.gid);
        sb.configure({ primary_conninfo: '', restore_command: c.command(sb.dataDir, join(spool, 'prefetch')) });
        const t0 = performance.now();
        await sb.start();
        await sb.waitFor(async () => (await sb.query<{ ok: boolean }>('select pg_last_wal_replay_lsn() >= $1::pg_lsn as ok', [target]))[0]?.ok === true, 600_000, `${c.name} to replay up to ${target}`);
        const s = (performance.now() - t0) / 1000;
        times.set(c.name, [...(times.get(c.name) ?? []), s]);
        console.log(`run ${i + 1} ${c.name}: ${s.toFixed(2)} s`);
        await sb.destroy();
      }
    }

    // The fixed cost of one call: one segment from the local archive, 10 calls each.
    const seg = names[Math.floor(names.length / 2)]!;
    const out = pgDir('out');
    dirs.push(out);
    const [node, bin] = walstreamArgv();
    const perCall: [string, string[]][] = [
      ['cp', ['cp', join(raw, seg), join(out, 'X')]],
      ['walstream fetch (on Node)', [node, bin, 'fetch', seg, join(out, 'X'), '--archive', local]],
      ['walstream fetch (installed command)', ['env', `WALSTREAM_NODE=${node}`, `${bin}.sh`, 'fetch', seg, join(out, 'X'), '--archive', local]],
    ];
    if (repos[0])
      perCall.push(['pgbackrest archive-get', ['/usr/bin/pgbackrest', `--config=${repos[0].config}`, `--stanza=${repos[0].stanza}`, `--pg1-path=${primary.dataDir}`, 'archive-get', seg, join(out, 'X')]]);
    const callMs = new Map<string, number[]>();
    for (let i = 0; i < 10; i++) {
      for (const [name, argv] of perCall) {
        const t0 = performance.now();
        await runAsPg(argv[0]!, argv.slice(1));
        callMs.set(name, [...(callMs.get(name) ?? []), performance.now() - t0]);
        rmSync(join(out, 'X'), { force: true });
      }
    }

    const pad = (s: string, n: number): string => s.padEnd(n);
    const cpTime = median(times.get('cp')!);
    console.log(`\ncatching up ${names.length} x ${SEG_MB} MB segments (median of ${RUNS} runs)`);
    console.log(`${pad('restore_command', 40)}${pad('seconds', 10)}${pad('MB/s', 8)}vs cp`);
    for (const c of cases) {
      const t = median(times.get(c.name)!);
      console.log(`${pad(c.name, 40)}${pad(t.toFixed(2), 10)}${pad(((names.length * SEG_MB) / t).toFixed(0), 8)}${(t / cpTime).toFixed(2)}x`);
    }
    const ratio = (a: string, b: string): string => (times.has(a) && times.has(b) ? (median(times.get(a)!) / median(times.get(b)!)).toFixed(2) : 'n/a');
    console.log(`\nwalstream fetch --prefetch ${PREFETCH}, mv first (local) / cp: ${ratio(`walstream fetch --prefetch ${PREFETCH}, mv first`, 'cp')}`);
    console.log(`walstream fetch S3 --prefetch ${PREFETCH}, mv first / pgbackrest archive-get S3 async: ${ratio(`walstream fetch S3 --prefetch ${PREFETCH}, mv first`, 'pgbackrest archive-get S3 async')}`);
    console.log(`walstream fetch --prefetch ${PREFETCH} (local) / cp: ${ratio(`walstream fetch --prefetch ${PREFETCH}`, 'cp')}`);
    console.log(`walstream fetch (local) / cp: ${ratio('walstream fetch', 'cp')}`);
    console.log(`walstream fetch S3 --prefetch ${PREFETCH} / pgbackrest archive-get S3 async: ${ratio(`walstream fetch S3 --prefetch ${PREFETCH}`, 'pgbackrest archive-get S3 async')}`);
    console.log(`walstream fetch --prefetch ${PREFETCH} / pgbackrest archive-get async (local): ${ratio(`walstream fetch --prefetch ${PREFETCH}`, 'pgbackrest archive-get async')}`);
    console.log(`\nfixed cost of one call (one ${SEG_MB} MB segment from the local archive, median of 10, as the PostgreSQL OS user)`);
    for (const [name, ms] of callMs) console.log(`${pad(name, 40)}${median(ms).toFixed(0)} ms`);
  } finally {
    for (const sb of standbys) await sb.destroy().catch(() => undefined);
    await primary.destroy();
    await proxy?.close();
    await s3.stop();
    for (const r of repos) r.cleanup();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

/** Node and bin/walstream as the PostgreSQL OS user can reach them (walstreamCommand stages them when needed). */
function walstreamArgv(): [string, string] {
  const { node, bin } = walstreamProgram();
  return [node, bin];
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
