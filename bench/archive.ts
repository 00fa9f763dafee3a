// npm run bench:archive — walstream receive into an archive: S3 (s3rver on loopback in a child
// process, or WALSTREAM_TEST_S3_ENDPOINT) and a local directory, compressed and not, against
// pg_receivewal into a directory as the baseline. A PostgreSQL 15 primary holds BENCH_WAL_MB
// (default 1024) of WAL; each run streams it from the first retained segment to --endpos with
// fsync on and, with --archive, until every finished segment is archived. Prints medians of
// BENCH_RUNS runs: throughput, walstream's CPU (and per GB), the S3 server's CPU, peak RSS and
// the stored/raw size, then S3 against the local-directory receive (target 0.8x) and against
// the most the S3 server takes on this machine (raw SDK PUTs of 16 MB objects, 4 at a time).
// Knobs: BENCH_WAL_MB, BENCH_RUNS, BENCH_UPLOAD_CONCURRENCY (default: walstream's own),
// BENCH_S3_CONCURRENCY (e.g. "2,4,8": extra S3 cases with those upload concurrencies),
// BENCH_COMPARE_BIN (another build's bin/walstream: its archive cases, interleaved with these),
// BENCH_CASES (a regular expression choosing cases by name), BENCH_CPU_PROF (a directory: run
// walstream under node --cpu-prof, one profile per run there). The Azure cases ("walstream ->
// Azure", when BENCH_CASES names them) receive into Azurite in a child process against the most
// that Azurite takes here (raw SDK uploads of 16 MB block blobs, 4 at a time), in the same run.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import zlib from 'node:zlib';
import { PgCluster, toolBinDir } from '../test/harness/pg.js';
import { startS3 } from '../test/harness/s3.js';
import { startAzurite, type AzuriteServer } from '../test/harness/azure.js';
import { BIN } from '../test/support/cli.js';
import { lsnOf, segName as walSegName } from '../test/support/walfiles.js';
import { openArchive } from '../src/storage/open.js';
import { measure, median, rawPutCeiling, requireGnuTime, startS3Process, type Measurement } from './common.js';

const WAL_MB = Number(process.env['BENCH_WAL_MB'] ?? 1024);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 3);
const SEG_MB = 16;
const UPLOADS = process.env['BENCH_UPLOAD_CONCURRENCY'];
const CASES = new RegExp(process.env['BENCH_CASES'] ?? '.');
/** Azure cases only when asked for by name (they start Azurite). */
const AZURE = /azure/i.test(process.env['BENCH_CASES'] ?? '');
/** Another build's bin/walstream (e.g. a checkout of an older commit): its archive cases run alternated with this one's. */
const COMPARE_BIN = process.env['BENCH_COMPARE_BIN'];
/** Extra S3 cases with these --upload-concurrency values (comma-separated), alternated with the others. */
const SWEEP = (process.env['BENCH_S3_CONCURRENCY'] ?? '')
  .split(',')
  .filter((x) => x.trim() !== '')
  .map(Number);
const CPU_PROF = process.env['BENCH_CPU_PROF'];
/** The issue's targets: S3 at least this share of the local-directory receive's throughput, and this peak RSS. */
const TARGET_RATIO = 0.8;
const TARGET_RSS_MB = 200;
const CEILING = { count: 64, bytes: SEG_MB * 1024 * 1024, parallel: 4 };

/** Segment holding `lsn` on timeline 1. */
function segName(lsn: string, segBytes: number): string {
  return walSegName(1, lsnOf(lsn), segBytes);
}

interface S3Endpoint {
  endpoint: string;
  bucket: string;
  region: string;
  prefix: string;
  accessKeyId: string;
  secretAccessKey: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** CPU seconds of the server so far, when it runs here. */
  cpuSeconds?: () => number;
  stop(): Promise<void>;
}

async function main(): Promise<void> {
  requireGnuTime();
  const s3: S3Endpoint = process.env['WALSTREAM_TEST_S3_ENDPOINT'] ? await startS3() : await startS3Process();
  const primary = await PgCluster.create({ name: 'bench-archive', walSegmentSizeMB: SEG_MB, conf: { max_wal_size: '4GB', checkpoint_timeout: '30min' } });
  const azurite: AzuriteServer | undefined = AZURE ? await startAzurite() : undefined;
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
    const streamMb = Number(lsnOf(endpos) - lsnOf(slot!.lsn)) / 1048576;
    console.log(`streaming ${slot!.lsn} .. ${endpos} (${streamMb.toFixed(0)} MB); S3 server ${s3.cpuSeconds ? `in its own process at ${s3.endpoint}` : `outside, ${s3.endpoint}`}`);
    const first = segName(slot!.lsn, SEG_MB * 1024 * 1024);
    const conn = `host=127.0.0.1 port=${primary.port} user=postgres`;
    const env = {
      ...process.env,
      AWS_ACCESS_KEY_ID: s3.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
      AWS_REGION: s3.region,
      ...(azurite ? { AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString } : {}),
    };
    const spool = (): string => {
      const d = tmp('spool');
      writeFileSync(join(d, `${first}.partial`), '');
      return d;
    };
    let seq = 0;
    type Case = { name: string; argv: () => { argv: string[]; archive?: string } };
    const node = (bin = BIN): string[] => [process.execPath, ...(CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`] : []), bin];
    const walstream = (extra: string[], archive?: string, bin?: string): { argv: string[]; archive?: string } => ({
      argv: [
        ...node(bin),
        'receive',
        '-D',
        spool(),
        '-d',
        conn,
        '-E',
        endpos,
        '-n',
        ...(archive ? ['--archive', archive, '--s3-endpoint', s3.endpoint, ...(UPLOADS ? ['--upload-concurrency', UPLOADS] : [])] : []),
        ...extra,
      ],
      archive,
    });
    const s3Url = (): string => `s3://${s3.bucket}/${s3.prefix}run${seq++}/`;
    const all: Case[] = [
      { name: 'pg_receivewal -> dir', argv: () => ({ argv: [join(toolBinDir(), 'pg_receivewal'), '-D', spool(), '-d', conn, '-E', endpos, '-n'] }) },
      { name: 'walstream -> dir', argv: () => walstream([]) },
      { name: 'walstream -> local archive', argv: () => walstream([], tmp('archive')) },
      { name: 'walstream -> local archive gzip', argv: () => walstream(['-Z', 'gzip:1'], tmp('archive')) },
      { name: 'walstream -> S3', argv: () => walstream([], s3Url()) },
      { name: 'walstream -> S3 gzip', argv: () => walstream(['-Z', 'gzip:1'], s3Url()) },
    ];
    if (COMPARE_BIN) {
      all.push({ name: 'other walstream -> local archive', argv: () => walstream([], tmp('archive'), COMPARE_BIN) });
      all.push({ name: 'other walstream -> S3', argv: () => walstream([], s3Url(), COMPARE_BIN) });
      all.push({ name: 'other walstream -> S3 gzip', argv: () => walstream(['-Z', 'gzip:1'], s3Url(), COMPARE_BIN) });
    }
    for (const n of SWEEP) {
      all.push({ name: `walstream -> S3, ${n} uploads`, argv: () => walstream(['--upload-concurrency', String(n)], s3Url()) });
    }
    if (azurite) {
      all.push({ name: 'walstream -> Azure', argv: () => walstream([], `azure://${azurite.container}/run${seq++}/`) });
      all.push({ name: 'walstream -> Azure gzip', argv: () => walstream(['-Z', 'gzip:1'], `azure://${azurite.container}/run${seq++}/`) });
    }
    if (typeof (zlib as unknown as { zstdCompressSync?: unknown }).zstdCompressSync === 'function') {
      all.push({ name: 'walstream -> S3 zstd', argv: () => walstream(['-Z', 'zstd:1'], s3Url()) });
    }
    const cases = all.filter((c) => CASES.test(c.name));
    const results = new Map<string, { m: Measurement[]; serverCpu: number[]; ratio: number[] }>();
    const ceilings: { mbs: number; serverCpu: number }[] = [];
    const azureCeilings: number[] = [];
    const serverCpu = (): number => s3.cpuSeconds?.() ?? NaN;
    await measure(all[0]!.argv().argv); // warm the server's page cache
    for (let i = 0; i < RUNS; i++) {
      const order = i % 2 === 0 ? cases : [...cases].reverse();
      for (const c of order) {
        const { argv, archive } = c.argv();
        const cpu0 = serverCpu();
        const m = await measure(argv, env);
        const cpu = serverCpu() - cpu0;
        const r = results.get(c.name) ?? { m: [], serverCpu: [], ratio: [] };
        r.m.push(m);
        if (archive?.startsWith('s3://')) r.serverCpu.push(cpu);
        if (archive) {
          const store = await openArchive(archive, { s3Endpoint: s3.endpoint, s3: { credentials: s3.credentials }, ...(azurite ? { azure: { connectionString: azurite.connectionString } } : {}) });
          // A listing carries no object metadata on S3: ask each object for its sizes.
          const names = (await store.list()).map((o) => o.name).filter((n) => /^[0-9A-F]{24}$/.test(n));
          const infos = await Promise.all(names.map((n) => store.head(n)));
          r.ratio.push(infos.reduce((a, o) => a + (o?.storedSize ?? 0), 0) / infos.reduce((a, o) => a + (o?.size ?? 0), 0));
          await store.close();
        }
        results.set(c.name, r);
        console.log(
          `run ${i + 1} ${c.name}: ${m.wallS.toFixed(2)} s, CPU ${m.cpuS.toFixed(2)} s, RSS ${m.maxRssMb.toFixed(0)} MB${archive?.startsWith('s3://') && s3.cpuSeconds ? `, S3 server CPU ${cpu.toFixed(2)} s` : ''}`,
        );
        for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
      }
      if (cases.some((c) => c.name.includes('S3'))) {
        const cpu0 = serverCpu();
        const mbs = await rawPutCeiling(s3, `${s3.prefix}ceiling${i}/`, CEILING);
        ceilings.push({ mbs, serverCpu: serverCpu() - cpu0 });
        console.log(`run ${i + 1} raw PUT ceiling: ${mbs.toFixed(0)} MB/s`);
      }
      if (azurite && cases.some((c) => c.name.includes('Azure'))) {
        const mbs = await rawAzureCeiling(azurite, `ceiling${i}/`, CEILING);
        azureCeilings.push(mbs);
        console.log(`run ${i + 1} raw Azure upload ceiling: ${mbs.toFixed(0)} MB/s`);
      }
    }

    const gb = streamMb / 1024;
    const cols: [string, number][] = [
      ['case', 34],
      ['MB/s', 8],
      ['wall s', 8],
      ['CPU s', 8],
      ['CPU s/GB', 10],
      ['S3 srv CPU s', 14],
      ['RSS MB', 8],
      ['stored/raw', 10],
    ];
    const row = (cells: string[]): string =>
      cells
        .map((c, k) => c.padEnd(cols[k]![1]))
        .join('')
        .trimEnd();
    console.log(`\n${WAL_MB} MB of WAL, medians of ${RUNS} run(s); RSS is the peak over all runs; MB/s = streamed MB / median wall`);
    console.log(row(cols.map(([h]) => h)));
    const mbsOf = (name: string): number | undefined => {
      const r = results.get(name);
      return r ? streamMb / median(r.m.map((x) => x.wallS)) : undefined;
    };
    for (const c of cases) {
      const r = results.get(c.name)!;
      const wall = median(r.m.map((x) => x.wallS));
      const cpu = median(r.m.map((x) => x.cpuS));
      console.log(
        row([
          c.name,
          (streamMb / wall).toFixed(0),
          wall.toFixed(2),
          cpu.toFixed(2),
          (cpu / gb).toFixed(2),
          r.serverCpu.length && s3.cpuSeconds ? median(r.serverCpu).toFixed(2) : '-',
          Math.max(...r.m.map((x) => x.maxRssMb)).toFixed(0),
          r.ratio.length ? median(r.ratio).toFixed(3) : '-',
        ]),
      );
    }
    if (ceilings.length) {
      const mbs = median(ceilings.map((x) => x.mbs));
      console.log(row([`raw PUTs ${CEILING.parallel}x${CEILING.bytes / 1048576} MB (ceiling)`, mbs.toFixed(0), '', '', '', s3.cpuSeconds ? median(ceilings.map((x) => x.serverCpu)).toFixed(2) : '-', '', '']));
    }
    if (azureCeilings.length) console.log(row([`raw Azure uploads ${CEILING.parallel}x${CEILING.bytes / 1048576} MB`, median(azureCeilings).toFixed(0), '', '', '', '', '', '']));
    const local = mbsOf('walstream -> dir');
    const s3mbs = mbsOf('walstream -> S3');
    console.log('');
    if (local !== undefined && s3mbs !== undefined) {
      const ratio = s3mbs / local;
      console.log(`S3 / local-directory receive throughput: ${ratio.toFixed(3)} (target >= ${TARGET_RATIO}: ${ratio >= TARGET_RATIO ? 'met' : 'NOT met'})`);
    }
    const azmbs = mbsOf('walstream -> Azure');
    if (azmbs !== undefined && azureCeilings.length) console.log(`Azure / raw upload ceiling of this Azurite on this machine: ${(azmbs / median(azureCeilings)).toFixed(3)}`);
    if (s3mbs !== undefined && ceilings.length) {
      const ceil = median(ceilings.map((x) => x.mbs));
      console.log(`S3 / raw PUT ceiling of this S3 server on this machine: ${(s3mbs / ceil).toFixed(3)}`);
      if (local !== undefined) console.log(`raw PUT ceiling / local-directory receive: ${(ceil / local).toFixed(3)} (the best ratio this S3 server allows here)`);
    }
    for (const [mine, theirs] of [
      ['walstream -> local archive', 'other walstream -> local archive'],
      ['walstream -> S3', 'other walstream -> S3'],
      ['walstream -> S3 gzip', 'other walstream -> S3 gzip'],
    ] as const) {
      const a = results.get(mine);
      const b = results.get(theirs);
      if (!a || !b) continue;
      const cpu = (r: typeof a): number => median(r.m.map((x) => x.cpuS));
      console.log(`${mine}: throughput ${(mbsOf(mine)! / mbsOf(theirs)!).toFixed(2)}x, CPU ${(cpu(a) / cpu(b)).toFixed(2)}x the other build's`);
    }
    const s3cpu = results.get('walstream -> S3')?.serverCpu ?? [];
    if (s3cpu.length && s3.cpuSeconds) {
      // s3rver serves every request on one thread: its CPU per GB bounds what it can take.
      const perGb = median(s3cpu) / gb;
      console.log(
        `S3 server CPU in walstream -> S3: ${perGb.toFixed(2)} s/GB, so at most ${(1024 / perGb).toFixed(0)} MB/s with a core to itself` +
          (local !== undefined ? ` (0.8x the local-directory receive would need ${(TARGET_RATIO * local).toFixed(0)} MB/s)` : ''),
      );
    }
    const peak = Math.max(...[...results.entries()].filter(([n]) => n.startsWith('walstream')).flatMap(([, r]) => r.m.map((x) => x.maxRssMb)));
    if (Number.isFinite(peak)) console.log(`walstream peak RSS: ${peak.toFixed(0)} MB (target <= ${TARGET_RSS_MB}: ${peak <= TARGET_RSS_MB ? 'met' : 'NOT met'})`);
  } finally {
    await primary.destroy();
    await s3.stop();
    await azurite?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

/** MB/s of raw SDK uploads into Azurite: `count` block blobs of `bytes`, `parallel` at a time (what walstream's uploads compare with). */
async function rawAzureCeiling(az: AzuriteServer, prefix: string, opts: { count: number; bytes: number; parallel: number }): Promise<number> {
  const container = az.client().getContainerClient(az.container);
  const body = Buffer.from(randomFill(opts.bytes));
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: opts.parallel }, async () => {
      while (next < opts.count) {
        const i = next++;
        await container.getBlockBlobClient(`${prefix}${i}`).upload(body, body.length, { conditions: { ifNoneMatch: '*' } });
      }
    }),
  );
  return (opts.count * opts.bytes) / 1048576 / (Number(process.hrtime.bigint() - t0) / 1e9);
}

function randomFill(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE((Math.imul(i, 2654435761) ^ 0x9e3779b9) >>> 0, i);
  return b;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
