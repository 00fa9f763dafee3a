// npm run bench:receive — walstream receive against pg_receivewal draining the same backlog.
// A PostgreSQL 15 primary holds BENCH_WAL_MB (default 1024) of WAL with two slots; each tool
// streams it from the first retained segment to --endpos into a fresh directory with fsync on,
// the order alternating between runs. Prints medians and the walstream/pg_receivewal ratios.
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, toolBinDir } from '../test/harness/pg.js';
import { BIN } from '../test/support/cli.js';
import { lsnOf, segName as walSegName } from '../test/support/walfiles.js';
import { measure, printTable, requireGnuTime, summarize, type Measurement } from './common.js';

const WAL_MB = Number(process.env['BENCH_WAL_MB'] ?? 1024);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 3);
const SEG_MB = Number(process.env['BENCH_SEG_MB'] ?? 16);

/** Segment holding `lsn` on timeline 1. */
function segName(lsn: string, segBytes: number): string {
  return walSegName(1, lsnOf(lsn), segBytes);
}

async function main(): Promise<void> {
  requireGnuTime();
  const primary = await PgCluster.create({
    name: 'bench-receive',
    walSegmentSizeMB: SEG_MB,
    conf: { max_wal_size: '4GB', checkpoint_timeout: '30min', wal_keep_size: 0 },
  });
  const dirs: string[] = [];
  try {
    const [slot] = await primary.query<{ lsn: string }>("select lsn::text from pg_create_physical_replication_slot('bench_a', true)");
    await primary.query("select pg_create_physical_replication_slot('bench_b', true)");
    process.stdout.write(`generating ${WAL_MB} MB of WAL... `);
    const t0 = Date.now();
    await primary.generateWal(WAL_MB * 1024 * 1024);
    await primary.switchWal();
    const endpos = await primary.currentLsn();
    // pg_receivewal checks --endpos only when more WAL arrives: commit a little past the end.
    await primary.query('create table bench_after_endpos as select g from generate_series(1, 1000) g');
    console.log(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s; streaming ${slot!.lsn} .. ${endpos}`);
    const first = segName(slot!.lsn, SEG_MB * 1024 * 1024);
    const conn = `host=127.0.0.1 port=${primary.port} user=postgres`;

    // Both start at the first retained segment: an empty .partial there is where each resumes.
    const fresh = (): string => {
      const d = mkdtempSync(join(tmpdir(), 'walstream-bench-recv-'));
      dirs.push(d);
      writeFileSync(join(d, `${first}.partial`), '');
      return d;
    };
    const tools: Record<string, (dir: string) => string[]> = {
      walstream: (dir) => [process.execPath, BIN, 'receive', '-D', dir, '-d', conn, '-E', endpos, '-n'],
      pg_receivewal: (dir) => [join(toolBinDir(), 'pg_receivewal'), '-D', dir, '-d', conn, '-E', endpos, '-n'],
    };
    // One unmeasured pass so both tools read the server's WAL from a warm page cache.
    await measure(tools['pg_receivewal']!(fresh()));
    const results: Record<string, Measurement[]> = { walstream: [], pg_receivewal: [] };
    let segments = 0;
    for (let i = 0; i < RUNS; i++) {
      const order = i % 2 === 0 ? ['walstream', 'pg_receivewal'] : ['pg_receivewal', 'walstream'];
      for (const name of order) {
        const dir = fresh();
        const m = await measure(tools[name]!(dir));
        segments = readdirSync(dir).length;
        results[name]!.push(m);
        console.log(`run ${i + 1} ${name}: wall ${m.wallS.toFixed(2)} s, CPU ${m.cpuS.toFixed(2)} s, peak RSS ${m.maxRssMb.toFixed(1)} MB`);
        rmSync(dir, { recursive: true, force: true });
      }
    }
    const w = summarize('walstream receive', results['walstream']!);
    const p = summarize('pg_receivewal', results['pg_receivewal']!);
    console.log('');
    printTable([w, p], {
      'files per run': String(segments),
      'wall ratio walstream/pg_receivewal (median)': (w.wall / p.wall).toFixed(3),
      'CPU ratio walstream/pg_receivewal (median)': (w.cpu / p.cpu).toFixed(3),
      'throughput walstream MB/s (median)': (WAL_MB / w.wall).toFixed(1),
    });
  } finally {
    await primary.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
