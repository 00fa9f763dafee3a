// npm run bench:memory — walstream receive's memory over a long run at a steady WAL rate (issue
// 13: RSS must not grow). A PostgreSQL 15 primary runs pgbench at BENCH_TPS (default 800)
// transactions per second (or, with BENCH_WAL_MBPS set, writes that many MB of WAL every second
// in bulk inserts, for a higher rate than pgbench reaches on a small machine) for BENCH_MINUTES
// (default 10) while one walstream receive streams its WAL through a slot into a spool directory
// and, unless BENCH_ARCHIVE=0, a local archive directory (--archive DIR, the receiver's busiest
// form). pg_receivewal streams the same WAL through a slot of its own alongside, as the
// reference. Every 5 s the benchmark samples both processes' resident set size (/proc/PID/status
// VmRSS, and its two parts: RssAnon, the process's own memory, and RssFile, mapped files such as
// the node binary's code) and the WAL written; at the end it prints the median RSS of every minute
// (and of each part), the peak, and the growth: the median of the last two minutes against the
// median of minutes 2-3 (the first minute is warm-up). Verdict: steady when the growth is at most
// 5 MB. BENCH_NODE_ARGS: node options for the walstream process, through NODE_OPTIONS (e.g. --import FILE);
// BENCH_RECEIVE_ARGS: more options for walstream receive (e.g. --partial-interval 0).
import { readFileSync, rmSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { PgCluster, toolBinDir } from '../test/harness/pg.js';
import { BIN } from '../test/support/cli.js';
import { Pgbench } from '../test/faults/helpers.js';
import { median } from './common.js';
import { pgDir } from './peers.js';

const MINUTES = Number(process.env['BENCH_MINUTES'] ?? 10);
const TPS = Number(process.env['BENCH_TPS'] ?? 800);
const WAL_MBPS = Number(process.env['BENCH_WAL_MBPS'] ?? 0);
const ARCHIVE = !/^(0|false|no)$/i.test(process.env['BENCH_ARCHIVE'] ?? '1');
const SAMPLE_MS = 5000;
/** Node options for the walstream process only (e.g. "--trace-gc" to see whether the JS heap is what grows). */
const NODE_ARGS = (process.env['BENCH_NODE_ARGS'] ?? '').split(/\s+/).filter((a) => a !== '');
/** More options for walstream receive (e.g. "--partial-interval 0" to leave the shipping of the segment in progress out). */
const RECEIVE_ARGS = (process.env['BENCH_RECEIVE_ARGS'] ?? '').split(/\s+/).filter((a) => a !== '');
/** The growth allowed between minutes 2-3 and the last two minutes. */
const STEADY_MB = 5;

/** A field of /proc/PID/status in MB (VmRSS; RssAnon: the process's own memory; RssFile: mapped files, the node binary's code among them). */
function statusMb(pid: number, field: 'VmRSS' | 'RssAnon' | 'RssFile'): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

interface Sample {
  atS: number;
  walMb: number;
  rss: Map<string, number>;
}

async function main(): Promise<void> {
  if (!(MINUTES >= 4)) throw new Error('BENCH_MINUTES must be at least 4 (warm-up, two minutes to compare with, the last two)');
  const primary = await PgCluster.create({ name: 'bench-memory', conf: { max_wal_size: '1GB', checkpoint_timeout: '5min', max_wal_senders: 10 } });
  const dirs: string[] = [];
  const procs: { name: string; child: ChildProcess }[] = [];
  const pgbench = new Pgbench(primary);
  try {
    await pgbench.init();
    for (const slot of ['ws', 'pgrw']) await primary.query(`select pg_create_physical_replication_slot('${slot}', true)`);
    const conn = `host=127.0.0.1 port=${primary.port} user=postgres`;
    const spool = pgDir('mem-spool');
    const archive = pgDir('mem-archive');
    const pgrw = pgDir('mem-pgrw');
    dirs.push(spool, archive, pgrw);
    // The walstream command as users run it (bin/walstream.sh picks receive's node options), on this Node.
    const ws = spawn(`${BIN}.sh`, ['receive', '-D', spool, '-d', conn, '-S', 'ws', ...(ARCHIVE ? ['--archive', archive] : []), ...RECEIVE_ARGS], {
      env: { ...process.env, WALSTREAM_NODE: process.execPath, NODE_OPTIONS: NODE_ARGS.join(' ') },
      stdio: ['ignore', NODE_ARGS.length > 0 ? 'inherit' : 'ignore', 'inherit'],
    });
    const rw = spawn(join(toolBinDir(), 'pg_receivewal'), ['-D', pgrw, '-d', conn, '-S', 'pgrw', '-n'], { stdio: ['ignore', 'ignore', 'inherit'] });
    const wsName = `walstream receive${ARCHIVE ? ' --archive DIR' : ''}`;
    procs.push({ name: wsName, child: ws }, { name: 'pg_receivewal', child: rw });
    const [{ start }] = (await primary.query<{ start: string }>('select pg_current_wal_lsn()::text as start')) as [{ start: string }];
    let writing = true;
    let writer: Promise<void> = Promise.resolve();
    if (WAL_MBPS > 0) {
      // About 1.1 MB of WAL per 1000 rows of 1 kB; the table emptied now and then.
      await primary.query('create table filler (v text)');
      writer = (async () => {
        for (let i = 1; writing; i++) {
          const t = Date.now();
          await primary.query(`insert into filler select repeat(md5(g::text), 32) from generate_series(1, ${Math.round(WAL_MBPS * 900)}) g`);
          if (i % 60 === 0) await primary.query('truncate filler');
          await new Promise((r) => setTimeout(r, Math.max(0, 1000 - (Date.now() - t))));
        }
      })();
      console.log(`${MINUTES} minutes of about ${WAL_MBPS} MB/s of WAL; sampling every ${SAMPLE_MS / 1000} s`);
    } else {
      pgbench.start(TPS, 4);
      console.log(`${MINUTES} minutes of pgbench at ${TPS} tps; sampling every ${SAMPLE_MS / 1000} s`);
    }

    const samples: Sample[] = [];
    const t0 = Date.now();
    while (Date.now() - t0 < MINUTES * 60_000) {
      await new Promise((r) => setTimeout(r, SAMPLE_MS));
      for (const p of procs) if (p.child.exitCode !== null) throw new Error(`${p.name} exited (${p.child.exitCode}) during the run`);
      const [{ mb }] = (await primary.query<{ mb: string }>(`select (pg_current_wal_lsn() - '${start}'::pg_lsn)::text as mb`)) as [{ mb: string }];
      const rss = new Map<string, number>();
      for (const p of procs) {
        for (const field of ['VmRSS', 'RssAnon', 'RssFile'] as const) {
          const r = statusMb(p.child.pid!, field);
          if (r !== undefined) rss.set(field === 'VmRSS' ? p.name : `${p.name} ${field}`, r);
        }
      }
      samples.push({ atS: (Date.now() - t0) / 1000, walMb: Number(mb) / 1048576, rss });
      const s = samples.at(-1)!;
      if (samples.length % 12 === 0) console.log(`${(s.atS / 60).toFixed(0)} min: WAL ${s.walMb.toFixed(0)} MB; ${procs.map((p) => `${p.name} ${(s.rss.get(p.name) ?? Number.NaN).toFixed(1)} MB`).join(', ')}`);
    }
    writing = false;
    await writer;
    await pgbench.stop();

    const minute = (m: number, name: string): number[] => samples.filter((s) => s.atS > m * 60 && s.atS <= (m + 1) * 60).map((s) => s.rss.get(name) ?? Number.NaN);
    const wal = samples.at(-1)!.walMb;
    console.log('');
    console.log(`WAL written: ${wal.toFixed(0)} MB in ${MINUTES} min (${(wal / (MINUTES * 60)).toFixed(2)} MB/s)`);
    console.log(`median RSS per minute (MB): ${'minute'.padEnd(28)} ${Array.from({ length: MINUTES }, (_, m) => String(m + 1).padStart(6)).join('')}`);
    for (const p of procs) {
      for (const name of [p.name, `${p.name} RssAnon`, `${p.name} RssFile`]) {
        const perMinute = Array.from({ length: MINUTES }, (_, m) => median(minute(m, name)));
        console.log(`  ${name.padEnd(52)} ${perMinute.map((v) => v.toFixed(1).padStart(6)).join('')}`);
      }
    }
    console.log('');
    for (const p of procs) {
      const early = median([...minute(1, p.name), ...minute(2, p.name)]);
      const late = median([...minute(MINUTES - 2, p.name), ...minute(MINUTES - 1, p.name)]);
      const peak = Math.max(...samples.map((s) => s.rss.get(p.name) ?? 0));
      const growth = late - early;
      console.log(
        `${p.name}: minutes 2-3 ${early.toFixed(1)} MB, last two ${late.toFixed(1)} MB, growth ${growth >= 0 ? '+' : ''}${growth.toFixed(1)} MB, peak ${peak.toFixed(1)} MB` +
          (p.child === ws ? ` -> ${growth <= STEADY_MB ? 'steady (target: growth <= 5 MB): met' : 'GROWING (target: growth <= 5 MB): not met'}` : ''),
      );
    }
  } finally {
    await pgbench.stop().catch(() => undefined);
    for (const p of procs) p.child.kill('SIGTERM');
    await Promise.all(procs.map((p) => (p.child.exitCode !== null ? undefined : new Promise((r) => p.child.once('exit', r)))));
    await primary.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
