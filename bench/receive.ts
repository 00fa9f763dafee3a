// npm run bench:receive — walstream receive against pg_receivewal draining the same backlog.
// A PostgreSQL 15 primary holds BENCH_WAL_MB (default 1024) of WAL with a slot; each case
// streams it from the first retained segment to --endpos into a fresh directory with fsync on,
// the order of the cases turning from one run to the next. Prints every run, the medians with
// their spread, and each walstream case against pg_receivewal and issue 13's targets (wall at most
// 0.9 and CPU at most 1.5 times pg_receivewal's, peak RSS at most 100 MB).
// walstream runs as users run it: the installed command (bin/walstream.sh), on this Node.
// Knobs: BENCH_WAL_MB, BENCH_RUNS (default 5), BENCH_ARCHIVE=1 (also walstream receive --archive
// DIR into a fresh archive directory), BENCH_COMPARE_BIN (another build's bin/walstream: its
// cases run alternated with this one's), BENCH_CPU_PROF (a directory: walstream runs under
// node --cpu-prof, one profile per run there), BENCH_NODE_VARIANTS (node options, sets separated by
// ';': each set adds walstream's cases run under those options through NODE_OPTIONS, e.g.
// '--single-threaded-gc').
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, toolBinDir } from '../test/harness/pg.js';
import { BIN } from '../test/support/cli.js';
import { lsnOf, segName as walSegName } from '../test/support/walfiles.js';
import { measure, median, requireGnuTime, type Measurement } from './common.js';

const WAL_MB = Number(process.env['BENCH_WAL_MB'] ?? 1024);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 5);
const SEG_MB = Number(process.env['BENCH_SEG_MB'] ?? 16);
const ARCHIVE = /^(1|true|yes)$/i.test(process.env['BENCH_ARCHIVE'] ?? '');
const COMPARE_BIN = process.env['BENCH_COMPARE_BIN'];
const CPU_PROF = process.env['BENCH_CPU_PROF'];
const NODE_VARIANTS = (process.env['BENCH_NODE_VARIANTS'] ?? '')
  .split(';')
  .map((v) => v.trim())
  .filter((v) => v !== '');
/** Issue 13's targets, against pg_receivewal in the same run. */
const TARGET = { wall: 0.9, cpu: 1.5, rssMb: 100 };

/** Segment holding `lsn` on timeline 1. */
function segName(lsn: string, segBytes: number): string {
  return walSegName(1, lsnOf(lsn), segBytes);
}

interface Case {
  name: string;
  /** The command for a fresh directory (and a fresh archive directory, for --archive cases). */
  argv: (dir: string, archive: string) => string[];
  archive: boolean;
}

async function main(): Promise<void> {
  requireGnuTime();
  const primary = await PgCluster.create({
    name: 'bench-receive',
    walSegmentSizeMB: SEG_MB,
    conf: { max_wal_size: `${Math.max(4, Math.ceil((2 * WAL_MB) / 1024))}GB`, checkpoint_timeout: '30min', wal_keep_size: 0 },
  });
  const dirs: string[] = [];
  try {
    const [slot] = await primary.query<{ lsn: string }>("select lsn::text from pg_create_physical_replication_slot('bench_a', true)");
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

    // Every case starts at the first retained segment: an empty .partial there is where each resumes.
    const fresh = (): string => {
      const d = mkdtempSync(join(tmpdir(), 'walstream-bench-recv-'));
      dirs.push(d);
      writeFileSync(join(d, `${first}.partial`), '');
      return d;
    };
    const freshArchive = (): string => {
      const d = mkdtempSync(join(tmpdir(), 'walstream-bench-archive-'));
      dirs.push(d);
      return d;
    };
    let profiles = 0;
    const profile = (): string[] => (CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', CPU_PROF, '--cpu-prof-name', `receive-${++profiles}.cpuprofile`] : []);
    // The walstream command as users run it (bin/walstream.sh, which picks receive's node options), on this Node.
    const installed = (bin: string, nodeArgs: string[]): string[] => ['env', `WALSTREAM_NODE=${process.execPath}`, `NODE_OPTIONS=${[...profile(), ...nodeArgs].join(' ')}`, `${bin}.sh`];
    const walstream = (bin: string, label: string, nodeArgs: string[] = []): Case[] => {
      const base = (dir: string): string[] => [...installed(bin, nodeArgs), 'receive', '-D', dir, '-d', conn, '-E', endpos, '-n'];
      const cases: Case[] = [{ name: `walstream${label}`, argv: base, archive: false }];
      if (ARCHIVE) cases.push({ name: `walstream --archive${label}`, argv: (dir, archive) => [...base(dir), '--archive', archive], archive: true });
      return cases;
    };
    const cases: Case[] = [
      ...walstream(BIN, ''),
      ...(COMPARE_BIN ? walstream(COMPARE_BIN, ' (compare)') : []),
      ...NODE_VARIANTS.flatMap((v) => walstream(BIN, ` [${v}]`, v.split(/\s+/))),
      { name: 'pg_receivewal', argv: (dir) => [join(toolBinDir(), 'pg_receivewal'), '-D', dir, '-d', conn, '-E', endpos, '-n'], archive: false },
    ];
    const runCase = async (c: Case): Promise<{ m: Measurement; files: number }> => {
      const dir = fresh();
      const archive = c.archive ? freshArchive() : '';
      try {
        const m = await measure(c.argv(dir, archive));
        return { m, files: readdirSync(dir).length };
      } finally {
        rmSync(dir, { recursive: true, force: true });
        if (archive) rmSync(archive, { recursive: true, force: true });
      }
    };
    // One unmeasured pass so every case reads the server's WAL from a warm page cache.
    await runCase(cases[cases.length - 1]!);
    const results = new Map<string, Measurement[]>(cases.map((c) => [c.name, []]));
    const files = new Map<string, number>();
    for (let i = 0; i < RUNS; i++) {
      // Each case takes each place in the order in turn.
      const order = cases.map((_, k) => cases[(k + i) % cases.length]!);
      for (const c of order) {
        const { m, files: n } = await runCase(c);
        files.set(c.name, n);
        results.get(c.name)!.push(m);
        console.log(`run ${i + 1} ${c.name}: wall ${m.wallS.toFixed(2)} s, CPU ${m.cpuS.toFixed(2)} s, peak RSS ${m.maxRssMb.toFixed(1)} MB`);
      }
    }

    const stats = (runs: Measurement[]) => ({
      wall: median(runs.map((r) => r.wallS)),
      cpu: median(runs.map((r) => r.cpuS)),
      rss: Math.max(...runs.map((r) => r.maxRssMb)),
      spread: (f: (r: Measurement) => number) => `${Math.min(...runs.map(f)).toFixed(2)}-${Math.max(...runs.map(f)).toFixed(2)}`,
    });
    const pg = stats(results.get('pg_receivewal')!);
    console.log('');
    const pad = (s: string, n: number): string => s.padEnd(n);
    const width = Math.max(30, ...cases.map((c) => c.name.length + 2));
    console.log(`${pad('case', width)}${pad('wall s median (range)', 24)}${pad('CPU s median (range)', 24)}${pad('peak RSS MB', 13)}${pad('wall ratio', 12)}${pad('CPU ratio', 11)}files`);
    for (const c of cases) {
      const s = stats(results.get(c.name)!);
      const ratios = c.name === 'pg_receivewal' ? ['', ''] : [(s.wall / pg.wall).toFixed(3), (s.cpu / pg.cpu).toFixed(3)];
      console.log(
        `${pad(c.name, width)}${pad(`${s.wall.toFixed(2)} (${s.spread((r) => r.wallS)})`, 24)}${pad(`${s.cpu.toFixed(2)} (${s.spread((r) => r.cpuS)})`, 24)}${pad(s.rss.toFixed(1), 13)}${pad(ratios[0]!, 12)}${pad(ratios[1]!, 11)}${files.get(c.name)}`,
      );
    }
    console.log('');
    for (const c of cases) {
      if (c.name === 'pg_receivewal') continue;
      const s = stats(results.get(c.name)!);
      const verdict = (ok: boolean): string => (ok ? 'met' : 'NOT met');
      console.log(
        `${c.name}: wall ratio ${(s.wall / pg.wall).toFixed(3)} (target <= ${TARGET.wall}: ${verdict(s.wall / pg.wall <= TARGET.wall)}), ` +
          `CPU ratio ${(s.cpu / pg.cpu).toFixed(3)} (target <= ${TARGET.cpu}: ${verdict(s.cpu / pg.cpu <= TARGET.cpu)}), ` +
          `peak RSS ${s.rss.toFixed(1)} MB (target <= ${TARGET.rssMb}: ${verdict(s.rss <= TARGET.rssMb)}), ` +
          `${(WAL_MB / s.wall).toFixed(1)} MB/s, ${((s.cpu * 1024) / WAL_MB).toFixed(2)} CPU s per GB`,
      );
    }
  } finally {
    await primary.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
