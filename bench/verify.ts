// npm run bench:verify — throughput of the WAL record decoder (src/wal/records.ts), which is what
// walstream verify --records spends its CPU on, on one core, against issue 15's target of 1 GB/s.
// A PostgreSQL 15 primary (16 MB segments) writes BENCH_WAL_MB (default 512) of real WAL with
// pgbench (its initial load: bulk rows and full-page images; then its transactions: many small
// records); the segments are read into memory once, then decoded BENCH_RUNS times (default 5)
// after a warm-up. Prints every run, the median, CPU seconds and peak RSS, and the decoder's
// throughput against the target.
// Then the CRC-32C choice: over the same records, per-record CRCs all in JavaScript (read through
// a DataView, as the decoder reads them), all through the native @node-rs/crc32, and split at
// several sizes (the decoder's is NATIVE_CRC_MIN_BYTES), to show what a call into the native code
// costs for small records.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { PgCluster, toolBinDir } from '../test/harness/pg.js';
import { lsnOf } from '../test/support/walfiles.js';
import { WalRecordDecoder } from '../src/wal/records.js';
import { NATIVE_CRC_MIN_BYTES, crc32c, crc32cImplementation, crc32cJsView } from '../src/util/crc32c.js';
import { median } from './common.js';

const WAL_MB = Number(process.env['BENCH_WAL_MB'] ?? 512);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 5);
const SEG = 16 * 1024 * 1024;
const TARGET_MB_S = 1024;

async function makeWal(): Promise<Buffer[]> {
  const primary = await PgCluster.create({
    name: 'bench-verify',
    walSegmentSizeMB: SEG / (1024 * 1024),
    conf: { max_wal_size: `${Math.max(4, Math.ceil((2 * WAL_MB) / 1024))}GB`, checkpoint_timeout: '5min', wal_keep_size: 0 },
  });
  try {
    const [slot] = await primary.query<{ lsn: string }>("select lsn::text from pg_create_physical_replication_slot('bench_verify', true)");
    const start = lsnOf(slot!.lsn);
    const pgbench = (args: string[]): void => {
      execFileSync(join(toolBinDir(), 'pgbench'), ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', ...args, 'postgres'], { stdio: 'ignore' });
    };
    process.stdout.write(`generating ${WAL_MB} MB of WAL with pgbench... `);
    const t0 = Date.now();
    pgbench(['-i', '-s', String(Math.max(1, Math.round(WAL_MB / 40)))]);
    for (;;) {
      const [{ done }] = (await primary.query<{ done: string }>('select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint::text as done', [slot!.lsn])) as [{ done: string }];
      if (Number(done) >= WAL_MB * 1024 * 1024) break;
      pgbench(['-c', '4', '-j', '2', '-t', '2000', '-n']);
    }
    await primary.query('select pg_switch_wal()');
    await primary.query('checkpoint');
    const end = lsnOf(await primary.currentLsn());
    console.log(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const firstSeg = Number(start / BigInt(SEG));
    const lastSeg = Number(end / BigInt(SEG)) - 1;
    const names = readdirSync(primary.walDir)
      .filter((f) => /^[0-9A-F]{24}$/.test(f))
      .sort();
    const segs: Buffer[] = [];
    for (const f of names) {
      const n = Number.parseInt(f.slice(8, 16), 16) * 256 + Number.parseInt(f.slice(16, 24), 16);
      if (n >= firstSeg && n <= lastSeg) segs.push(readFileSync(join(primary.walDir, f)));
    }
    return segs.map((s, i) => Object.assign(s, { segNo: firstSeg + i }));
  } finally {
    await primary.destroy();
  }
}

function decodeAll(segs: Buffer[], firstSeg: number, lengths?: number[][]): { records: number; problems: number } {
  const d = new WalRecordDecoder({ segSize: SEG, ...(lengths ? { onRecord: (r) => lengths.push([Number(r.lsn), r.totLen]) } : {}) });
  for (let i = 0; i < segs.length; i++) {
    d.beginSegment(BigInt(firstSeg + i), 1);
    d.write(segs[i]!);
  }
  const s = d.summary();
  if (s.problems.length > 0) console.log(`decoder problems: ${s.problems.map((p) => `${p.segment}+${p.offset}: ${p.message}`).join('; ')}`);
  return { records: s.records, problems: s.problems.length };
}

function cpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

async function main(): Promise<void> {
  const segs = await makeWal();
  const firstSeg = (segs[0] as Buffer & { segNo: number }).segNo;
  const bytes = segs.length * SEG;
  const mb = bytes / (1024 * 1024);
  console.log(`${segs.length} segments (${mb.toFixed(0)} MB) of WAL; CRC-32C: ${crc32cImplementation()}, native from ${NATIVE_CRC_MIN_BYTES} bytes; node ${process.version}`);
  const lengths: number[][] = [];
  const warm = decodeAll(segs, firstSeg, lengths);
  console.log(`warm-up: ${warm.records} records (mean ${(bytes / warm.records).toFixed(0)} bytes of WAL per record), ${warm.problems} problems`);
  const speeds: number[] = [];
  const perCpu: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const c0 = cpuSeconds();
    const t0 = process.hrtime.bigint();
    decodeAll(segs, firstSeg);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = cpuSeconds() - c0;
    speeds.push(mb / wall);
    perCpu.push(mb / cpu);
    console.log(`run ${i + 1}: wall ${wall.toFixed(3)} s, CPU ${cpu.toFixed(3)} s, ${(mb / wall).toFixed(0)} MB/s, peak RSS ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MB`);
  }
  const med = median(speeds);
  // On a busy machine the process waits for a core: per CPU second says what one core does.
  console.log(`decoder: median ${median(perCpu).toFixed(0)} MB per CPU second (runs: ${perCpu.map((s) => s.toFixed(0)).join(', ')})`);
  console.log(
    `decoder: median ${med.toFixed(0)} MB/s on one core (runs: ${speeds.map((s) => s.toFixed(0)).join(', ')}); target ${TARGET_MB_S} MB/s: ${med >= TARGET_MB_S ? 'met' : `not met (${((100 * med) / TARGET_MB_S).toFixed(0)}%)`}`,
  );

  // The CRC choice, on the records themselves (data contiguous within a segment only).
  const views = segs.map((b) => new DataView(b.buffer, b.byteOffset, b.length));
  const ranges: [Buffer, DataView, number, number][] = [];
  for (const [lsn, len] of lengths) {
    const i = Math.floor(lsn! / SEG) - firstSeg;
    const off = lsn! % SEG;
    ranges.push([segs[i]!, views[i]!, off + 24, Math.min(SEG, off + len!)]);
  }
  type Strategy = (b: Buffer, v: DataView, s: number, e: number) => number;
  const strategies: [string, Strategy][] = [
    ['all JavaScript', (_b, v, s, e) => crc32cJsView(v, s, e)],
    ['all native', (b, _v, s, e) => crc32c(b.subarray(s, e))],
    ...[64, 128, 256, 448, 512, 1024].map((t): [string, Strategy] => [`native from ${t} bytes`, (b, v, s, e) => (e - s >= t ? crc32c(b.subarray(s, e)) : crc32cJsView(v, s, e))]),
  ];
  for (const [name, fn] of strategies) {
    const times: number[] = [];
    let sum = 0;
    for (let r = 0; r < 3; r++) {
      const t0 = process.hrtime.bigint();
      let x = 0;
      for (const [b, v, s, e] of ranges) x ^= fn(b, v, s, e);
      times.push(Number(process.hrtime.bigint() - t0) / 1e9);
      sum = x;
    }
    console.log(`CRC per record, ${name}: median ${(mb / median(times)).toFixed(0)} MB/s of WAL (xor of all CRCs ${sum.toString(16)})`);
  }
  console.log('(one machine, shared with other work: a rough figure, not a claim)');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
