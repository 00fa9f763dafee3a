// npm run bench:archive — walstream receive into an archive: S3 (s3rver on loopback, or
// WALSTREAM_TEST_S3_ENDPOINT) and a local directory, compressed and not, against pg_receivewal
// into a directory as the baseline. A PostgreSQL 15 primary holds BENCH_WAL_MB (default 1024)
// of WAL; each run streams it from the first retained segment to --endpos with fsync on and,
// with --archive, until every finished segment is archived. Prints medians of BENCH_RUNS runs.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import zlib from 'node:zlib';
import { PgCluster, toolBinDir } from '../test/harness/pg.js';
import { startS3 } from '../test/harness/s3.js';
import { BIN } from '../test/support/cli.js';
import { lsnOf, segName as walSegName } from '../test/support/walfiles.js';
import { openArchive } from '../src/storage/open.js';
import { measure, median, requireGnuTime, type Measurement } from './common.js';

const WAL_MB = Number(process.env['BENCH_WAL_MB'] ?? 1024);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 3);
const SEG_MB = 16;
const UPLOADS = process.env['BENCH_UPLOAD_CONCURRENCY'] ?? '2';

/** Segment holding `lsn` on timeline 1. */
function segName(lsn: string, segBytes: number): string {
  return walSegName(1, lsnOf(lsn), segBytes);
}

async function main(): Promise<void> {
  requireGnuTime();
  const s3 = await startS3();
  const primary = await PgCluster.create({ name: 'bench-archive', walSegmentSizeMB: SEG_MB, conf: { max_wal_size: '4GB', checkpoint_timeout: '30min' } });
  const dirs: string[] = [];
  const tmp = (p: string): string => {
    const d = mkdtempSync(join(tmpdir(), `walstream-bench-${p}-`));
    dirs.push(d);
    return d;
  };
  try {
    const [slot] = await primary.query<{ lsn: string }>("select lsn::text from pg_create_physical_replication_slot('bench', true)");
    process.stdout.write(`generating ${WAL_MB} MB of WAL... `);
    await primary.generateWal(WAL_MB * 1024 * 1024);
    await primary.switchWal();
    const endpos = await primary.currentLsn();
    await primary.query('create table bench_after_endpos as select g from generate_series(1, 1000) g');
    console.log(`streaming ${slot!.lsn} .. ${endpos}`);
    const first = segName(slot!.lsn, SEG_MB * 1024 * 1024);
    const conn = `host=127.0.0.1 port=${primary.port} user=postgres`;
    const env = { ...process.env, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    const spool = (): string => {
      const d = tmp('spool');
      writeFileSync(join(d, `${first}.partial`), '');
      return d;
    };
    let seq = 0;
    type Case = { name: string; argv: () => { argv: string[]; archive?: string } };
    const walstream = (extra: string[], archive?: string): { argv: string[]; archive?: string } => ({
      argv: [
        process.execPath, BIN, 'receive', '-D', spool(), '-d', conn, '-E', endpos, '-n',
        ...(archive ? ['--archive', archive, '--s3-endpoint', s3.endpoint, '--upload-concurrency', UPLOADS] : []),
        ...extra,
      ],
      archive,
    });
    const cases: Case[] = [
      { name: 'pg_receivewal -> dir', argv: () => ({ argv: [join(toolBinDir(), 'pg_receivewal'), '-D', spool(), '-d', conn, '-E', endpos, '-n'] }) },
      { name: 'walstream -> dir', argv: () => walstream([]) },
      { name: 'walstream -> local archive', argv: () => walstream([], tmp('archive')) },
      { name: 'walstream -> local archive gzip', argv: () => walstream(['-Z', 'gzip:1'], tmp('archive')) },
      { name: 'walstream -> S3', argv: () => walstream([], `s3://${s3.bucket}/${s3.prefix}run${seq++}/`) },
      { name: 'walstream -> S3 gzip', argv: () => walstream(['-Z', 'gzip:1'], `s3://${s3.bucket}/${s3.prefix}run${seq++}/`) },
    ];
    if (typeof (zlib as unknown as { zstdCompressSync?: unknown }).zstdCompressSync === 'function') {
      cases.push({ name: 'walstream -> S3 zstd', argv: () => walstream(['-Z', 'zstd:1'], `s3://${s3.bucket}/${s3.prefix}run${seq++}/`) });
    }
    const results = new Map<string, { m: Measurement[]; ratio: number[] }>();
    await measure(cases[0]!.argv().argv); // warm the server's page cache
    for (let i = 0; i < RUNS; i++) {
      const order = i % 2 === 0 ? cases : [...cases].reverse();
      for (const c of order) {
        const { argv, archive } = c.argv();
        const m = await measure(argv, env);
        const r = results.get(c.name) ?? { m: [], ratio: [] };
        r.m.push(m);
        if (archive) {
          const store = await openArchive(archive, { s3Endpoint: s3.endpoint, s3: { credentials: s3.credentials } });
          // A listing carries no object metadata on S3: ask each object for its sizes.
          const names = (await store.list()).map((o) => o.name).filter((n) => /^[0-9A-F]{24}$/.test(n));
          const infos = await Promise.all(names.map((n) => store.head(n)));
          r.ratio.push(infos.reduce((a, o) => a + (o?.storedSize ?? 0), 0) / infos.reduce((a, o) => a + (o?.size ?? 0), 0));
          await store.close();
        }
        results.set(c.name, r);
        console.log(`run ${i + 1} ${c.name}: ${m.wallS.toFixed(2)} s, CPU ${m.cpuS.toFixed(2)} s, RSS ${m.maxRssMb.toFixed(0)} MB`);
        for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
      }
    }
    const pad = (s: string, n: number): string => s.padEnd(n);
    console.log(`\n${pad('case', 34)}${pad('MB/s', 9)}${pad('wall s', 9)}${pad('CPU s', 9)}${pad('RSS MB', 9)}stored/raw`);
    const base = median(results.get('walstream -> dir')!.m.map((x) => x.wallS));
    for (const [name, r] of results) {
      const wall = median(r.m.map((x) => x.wallS));
      console.log(
        `${pad(name, 34)}${pad((WAL_MB / wall).toFixed(0), 9)}${pad(wall.toFixed(2), 9)}${pad(median(r.m.map((x) => x.cpuS)).toFixed(2), 9)}${pad(Math.max(...r.m.map((x) => x.maxRssMb)).toFixed(0), 9)}${r.ratio.length ? median(r.ratio).toFixed(3) : '-'}`,
      );
    }
    const s3wall = median(results.get('walstream -> S3')!.m.map((x) => x.wallS));
    console.log(`\nS3 throughput / local-directory receive throughput: ${(base / s3wall).toFixed(3)}`);
  } finally {
    await primary.destroy();
    await s3.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
