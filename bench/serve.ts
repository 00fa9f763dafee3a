// npm run bench:serve — walstream serve as the primary of a standby that is far behind, and of
// many pg_receivewal clients at once, against what users run today. One PostgreSQL 15 primary
// (16 MB segments) archives through `walstream push` into a local archive; a base backup taken
// with `pg_basebackup -X none` before BENCH_SEGMENTS (default 48) segments of WAL is copied
// afresh for every run. Three groups, one after the other; within a group the cases alternate,
// the order reversed every other round, after one unrecorded warm-up round, BENCH_RUNS (default 5)
// recorded rounds:
//   local:   standby with primary_conninfo -> `walstream serve --archive <dir>` and no
//            restore_command, against restore_command = 'cp <archive>/%f %p' and no primary;
//   S3:      the same archive in S3 (s3rver in a child process): `walstream serve --archive s3://`
//            against pgBackRest archive-get --archive-async (BENCH_PREFETCH, default 8, processes),
//            which speaks S3 only over TLS, so through a TLS proxy (a child process too); and
//            walstream through that same proxy, so that both sides pay for TLS; then the most
//            s3rver gives (raw GETs through the SDK);
//   fan-out: BENCH_CLIENTS (default 8) pg_receivewal at once streaming the whole archive from one
//            `walstream serve`, against the same clients streaming it from the primary itself;
//            every file they write is compared with the archive's.
// A catch-up is timed from the standby's start until it has replayed the last record written.
// walstream serve runs as the PostgreSQL OS user, a fresh process per run; its CPU (user+sys),
// peak RSS and bytes read come from /proc, as do the standby's CPU, the restore_command
// processes' (what the startup process reaped, plus pgBackRest's detached async workers, sampled)
// and the whole machine's. BENCH_CASES (a regular expression) keeps the cases it matches.
// Diagnostics: BENCH_CPU_PROF=<dir> runs walstream serve under node --cpu-prof (one profile per
// run there), BENCH_SERVE_NODE_ARGS adds node options (e.g. --trace-gc), BENCH_SERVE_LOG=<dir>
// keeps each serve's output there, BENCH_SERVE_BIN=<file> serves with another build's
// bin/walstream.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { freePort, PgCluster, toolBinDir } from '../test/harness/pg.js';
import { cleanEnv, harnessTmpRoot, pgOsUser, runAsPg } from '../test/harness/exec.js';
import { walstreamCommand, walstreamProgram } from '../test/support/pgcommand.js';
import { lsnOf, segName, SEG_RE } from '../test/support/walfiles.js';
import { measure, median, processCpuSeconds, requireGnuTime, startS3Process, type Measurement, type S3Process } from './common.js';
import { havePgBackRest, pgBackRestRepo, pgDir, tlsProxy, type PgBackRestRepo } from './peers.js';

const SEG_MB = 16;
const SEG_BYTES = SEG_MB * 1024 * 1024;
const SEGMENTS = Number(process.env['BENCH_SEGMENTS'] ?? 48);
const RUNS = Number(process.env['BENCH_RUNS'] ?? 5);
const CLIENTS = Number(process.env['BENCH_CLIENTS'] ?? 8);
const PREFETCH = Number(process.env['BENCH_PREFETCH'] ?? 8);
const CPU_PROF = process.env['BENCH_CPU_PROF'];
/** Diagnostics: more node options for walstream serve (e.g. --trace-gc), and a directory to keep each serve's stderr in. */
const SERVE_NODE_ARGS = (process.env['BENCH_SERVE_NODE_ARGS'] ?? '').split(' ').filter((x) => x !== '');
const SERVE_LOG = process.env['BENCH_SERVE_LOG'];
/** Another build's bin/walstream (or anything taking `serve` and its options) in place of this one's. */
const SERVE_BIN = process.env['BENCH_SERVE_BIN'];
let serveSeq = 0;
const CASES = process.env['BENCH_CASES'] ? new RegExp(process.env['BENCH_CASES']) : undefined;
const POLL_MS = 20;
const CEILING = { count: 32, parallel: 4 };
/** The brief's targets. */
const TARGET_LOCAL = 1.0;
const TARGET_S3 = 0.7;
const TARGET_RSS_MB = 250;
// The SDK's advice to move to Node 22 would be printed by every process that loads it.
process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const fmtLsn = (x: bigint): string => `${(x >> 32n).toString(16).toUpperCase()}/${(x & 0xffffffffn).toString(16).toUpperCase()}`;

// --- /proc -------------------------------------------------------------------------------------

interface ProcStat {
  pid: number;
  ppid: number;
  comm: string;
  /** Own user+system CPU seconds. */
  own: number;
  /** User+system CPU seconds of the children it has waited for. */
  children: number;
}

function procStat(pid: number): ProcStat | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const comm = s.slice(s.indexOf('(') + 1, s.lastIndexOf(')'));
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
    return { pid, ppid: Number(f[1]), comm, own: (Number(f[11]) + Number(f[12])) / CLK_TCK, children: (Number(f[13]) + Number(f[14])) / CLK_TCK };
  } catch {
    return undefined;
  }
}

function peakRssMb(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Bytes a process has read and written through system calls so far (files and sockets alike). */
function processIo(pid: number): { rchar: number; wchar: number } {
  const io = readFileSync(`/proc/${pid}/io`, 'utf8');
  return { rchar: Number(/rchar: (\d+)/.exec(io)![1]), wchar: Number(/wchar: (\d+)/.exec(io)![1]) };
}

function pids(): number[] {
  return readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .map(Number);
}

/**
 * CPU seconds used so far by the processes descended from `roots` (these included): the live
 * ones' own and what they reaped of their exited children. A process orphaned on the way (a
 * daemon's double fork) drops out: count it apart.
 */
function treeCpu(roots: number[]): number {
  const all = new Map<number, ProcStat>();
  for (const pid of pids()) {
    const st = procStat(pid);
    if (st) all.set(pid, st);
  }
  const kids = new Map<number, number[]>();
  for (const st of all.values()) kids.set(st.ppid, [...(kids.get(st.ppid) ?? []), st.pid]);
  const seen = new Set<number>();
  const todo = roots.filter((r) => all.has(r));
  let cpu = 0;
  while (todo.length) {
    const pid = todo.pop()!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    const st = all.get(pid)!;
    cpu += st.own + st.children;
    todo.push(...(kids.get(pid) ?? []));
  }
  return cpu;
}

interface CpuMark {
  /** Busy CPU seconds of the machine (user, nice, system, irq, softirq). */
  machine: number;
  /** The part charged to processes (user, nice, system). */
  tasks: number;
  /** The part this benchmark's processes used: it, its children, the PostgreSQL clusters. */
  mine: number;
}

function cpuMark(roots: number[]): CpuMark {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return { machine: (f[0]! + f[1]! + f[2]! + f[5]! + f[6]!) / CLK_TCK, tasks: (f[0]! + f[1]! + f[2]!) / CLK_TCK, mine: treeCpu([process.pid, ...roots]) };
}

/** Machine CPU between two marks, and what processes other than the benchmark's (a neighbour, kernel threads) used of it. */
function cpuBetween(a: CpuMark, b: CpuMark, alsoMine = 0): { machineCpuS: number; otherCpuS: number } {
  return { machineCpuS: b.machine - a.machine, otherCpuS: Math.max(0, b.tasks - a.tasks - (b.mine - a.mine) - alsoMine) };
}

/** PostgreSQL processes of a cluster (their working directory is its data directory). */
function clusterProcesses(dataDir: string): { stat: ProcStat; cmdline: string }[] {
  let data: string;
  try {
    data = realpathSync(dataDir);
  } catch {
    return [];
  }
  const out: { stat: ProcStat; cmdline: string }[] = [];
  for (const pid of pids()) {
    try {
      if (readlinkSync(`/proc/${pid}/cwd`) !== data) continue;
      const stat = procStat(pid);
      if (stat?.comm !== 'postgres') continue;
      out.push({ stat, cmdline: readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim() });
    } catch {
      // gone, or not ours
    }
  }
  return out;
}

/**
 * CPU of a cluster so far: its live processes' own, plus what the postmaster reaped (exited
 * backends, walsenders); and, apart, what the startup process reaped: every restore_command run.
 */
function clusterCpu(dataDir: string): { server: number; restoreCommand: number } {
  let server = 0;
  let restoreCommand = 0;
  const procs = clusterProcesses(dataDir);
  const pidsOf = new Set(procs.map((p) => p.stat.pid));
  for (const { stat, cmdline } of procs) {
    server += stat.own;
    if (!pidsOf.has(stat.ppid)) server += stat.children; // the postmaster
    if (/^postgres: startup/.test(cmdline)) restoreCommand += stat.children;
  }
  return { server, restoreCommand };
}

/**
 * pgBackRest's async archive-get worker detaches (setsid, a second fork): neither the standby nor
 * anything here waits for it, so its CPU (and its local workers') is sampled from /proc while it
 * runs. Front-end archive-get calls are reaped by the startup process and counted there.
 */
class DetachedSampler {
  private readonly seen = new Map<number, { cpu: number; rss: number }>();
  private readonly timer: NodeJS.Timeout;
  constructor(private readonly comm: string) {
    this.timer = setInterval(() => this.sample(), 100);
  }
  private sample(): void {
    for (const pid of pids()) {
      const s = procStat(pid);
      if (!s || s.comm !== this.comm) continue;
      const parent = procStat(s.ppid);
      // A front end runs under sh (restore_command) or is the first fork of one.
      if (parent && (parent.comm === 'sh' || parent.comm === 'postgres')) continue;
      if (parent?.comm === this.comm) {
        const grand = procStat(parent.ppid);
        if (grand && (grand.comm === 'sh' || grand.comm === 'postgres')) continue;
      }
      const prev = this.seen.get(pid);
      this.seen.set(pid, { cpu: Math.max(prev?.cpu ?? 0, s.own), rss: Math.max(prev?.rss ?? 0, peakRssMb(pid) || 0) });
    }
  }
  stop(): { cpu: number; rss: number; processes: number } {
    this.sample();
    clearInterval(this.timer);
    const v = [...this.seen.values()];
    return { cpu: v.reduce((a, x) => a + x.cpu, 0), rss: Math.max(0, ...v.map((x) => x.rss)), processes: v.length };
  }
}

// --- child processes ---------------------------------------------------------------------------

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** Node and bin/walstream as the PostgreSQL OS user can reach them. */
function walstreamArgv(): [string, string] {
  const { node, bin } = walstreamProgram();
  return [node, bin];
}

interface Served {
  port: number;
  pid: number;
  stderr(): string;
  cpu(): number;
  peakRssMb(): number;
  io(): { rchar: number; wchar: number };
  stop(): Promise<void>;
}

/** `walstream serve --trust` as the PostgreSQL OS user, once it says it is serving. */
async function startServe(archive: string, extra: string[], env: Record<string, string>): Promise<Served> {
  const port = await freePort();
  const [node, ownBin] = walstreamArgv();
  const bin = SERVE_BIN ?? ownBin;
  const u = pgOsUser();
  const argv = [...(CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`] : []), ...SERVE_NODE_ARGS, bin, 'serve', '--listen', String(port), '--archive', archive, '--trust', ...extra];
  const child = spawn(node, argv, {
    env: { ...cleanEnv(env), ...(u ? { HOME: u.home, USER: u.name } : {}) },
    cwd: '/',
    stdio: ['ignore', SERVE_LOG ? 'pipe' : 'ignore', 'pipe'],
    ...(u ? { uid: u.uid, gid: u.gid } : {}),
  });
  children.add(child);
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  let out = '';
  child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + 60_000;
  while (!/serving .* on 127\.0\.0\.1:\d+/.test(err)) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`walstream serve exited before serving:\n${err}`);
    if (Date.now() > deadline) throw new Error(`walstream serve did not start:\n${err}`);
    await sleep(20);
  }
  const pid = child.pid!;
  return {
    port,
    pid,
    stderr: () => err,
    cpu: () => processCpuSeconds(pid),
    peakRssMb: () => peakRssMb(pid),
    io: () => processIo(pid),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
      children.delete(child);
      if (SERVE_LOG) {
        mkdirSync(SERVE_LOG, { recursive: true });
        writeFileSync(join(SERVE_LOG, `serve-${++serveSeq}.log`), `${err}--- stdout ---\n${out}`);
      }
    },
  };
}

/** tlsProxy (peers.ts) in a child process of its own (this file run with --tls-proxy PORT): its CPU apart. */
async function startTlsProxyProcess(targetPort: number): Promise<{ port: number; pid: number; stop(): Promise<void> }> {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--tls-proxy', String(targetPort)], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.add(child);
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(Number(out.slice(0, nl)));
    });
    child.once('exit', (code) => reject(new Error(`the TLS proxy exited with ${code} before it was ready`)));
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    port,
    pid: child.pid!,
    async stop() {
      child.stdin!.end();
      child.kill('SIGTERM');
      await exited;
      children.delete(child);
    },
  };
}

async function tlsProxyMain(targetPort: number): Promise<void> {
  const proxy = await tlsProxy(targetPort);
  const stop = (): void => void proxy.close().finally(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.stdin.on('end', stop);
  process.stdin.resume();
  process.stdout.write(`${proxy.port}\n`);
}

// --- the S3 GET ceiling --------------------------------------------------------------------------

/** MB/s of GETs of whole segment objects under `prefix`, `parallel` at a time, through the SDK from this process. */
async function rawGetCeiling(s3: S3Process, prefix: string): Promise<number> {
  const client = new S3Client({ endpoint: s3.endpoint, region: s3.region, forcePathStyle: true, credentials: s3.credentials });
  try {
    const listed = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }));
    const keys = (listed.Contents ?? []).filter((o) => (o.Size ?? 0) >= SEG_BYTES).map((o) => o.Key!);
    if (keys.length === 0) throw new Error(`no segment objects under ${prefix}`);
    let next = 0;
    let bytes = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: CEILING.parallel }, async () => {
        while (next < CEILING.count) {
          const key = keys[next++ % keys.length]!;
          const res = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
          for await (const chunk of res.Body as AsyncIterable<Buffer>) bytes += chunk.length;
        }
      }),
    );
    return bytes / 1048576 / ((performance.now() - t0) / 1000);
  } finally {
    client.destroy();
  }
}

// --- cases -------------------------------------------------------------------------------------

interface CatchUpRun {
  wallS: number;
  /** walstream serve, or the restore_command processes. */
  toolCpuS: number;
  toolRssMb: number;
  standbyCpuS: number;
  s3CpuS: number;
  proxyCpuS: number;
  machineCpuS: number;
  /** CPU used meanwhile by processes that are not the benchmark's: a neighbour's, kernel threads'. */
  otherCpuS: number;
  /** Streaming only: median MB received ahead of replay over the polls, and the share of polls with less than 1 MB ahead. */
  leadMb?: number;
  starved?: number;
  /** walstream serve only: bytes it read through system calls / the bytes of WAL replayed (1.0: each segment read once). */
  readX?: number;
}

interface FanOutRun {
  wallS: number;
  serverCpuS: number;
  serverRssMb: number;
  clientCpuS: number;
  clientRssMb: number;
  machineCpuS: number;
  otherCpuS: number;
  mbs: number;
  /** walstream serve only: bytes it read / the WAL one client streams (1.0: each segment read once for all clients). */
  readX?: number;
}

type Group = 'local' | 'S3' | 'fan-out';

interface Case {
  name: string;
  group: Group;
  run(): Promise<CatchUpRun | FanOutRun>;
}

async function main(): Promise<void> {
  if (process.argv[2] === '--tls-proxy') return tlsProxyMain(Number(process.argv[3]));
  requireGnuTime();
  if (CPU_PROF) {
    // walstream serve runs as the PostgreSQL OS user: it must be able to write its profiles there.
    mkdirSync(CPU_PROF, { recursive: true, mode: 0o777 });
    chmodSync(CPU_PROF, 0o777);
  }
  if (!havePgBackRest()) console.log('pgBackRest is not installed (apt-get install -y pgbackrest): its case is left out');
  const s3 = await startS3Process();
  const primary = await PgCluster.create({
    name: 'bench-serve',
    walSegmentSizeMB: SEG_MB,
    conf: { archive_mode: 'on', max_wal_size: '4GB', checkpoint_timeout: '30min', wal_keep_size: '2GB' },
  });
  const local = pgDir('archive');
  const dirs: string[] = [local];
  const repos: PgBackRestRepo[] = [];
  let proxy: Awaited<ReturnType<typeof startTlsProxyProcess>> | undefined;
  let standby: PgCluster | undefined;
  try {
    primary.configure({ archive_command: walstreamCommand(['push', '%p', '--archive', local]) });
    await primary.reload();
    const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
    const s3Prefix = `${s3.prefix}serve/`;
    const s3Url = `s3://${s3.bucket}/${s3Prefix}`;

    // The standby: one PgCluster (its port, log, settings) whose data directory is replaced by a
    // fresh copy of one `-X none` base backup before every run.
    standby = await primary.createStandby({ name: 'bench-serve-sb', start: false, conf: { archive_mode: 'off' } });
    const sb = standby;
    const template = join(sb.baseDir, 'base');
    await runAsPg(
      join(toolBinDir(), 'pg_basebackup'),
      ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-D', template, '-X', 'none', '-c', 'fast', '--no-sync', '-l', 'walstream bench serve'],
      { timeoutMs: 300_000 },
    );
    const u = pgOsUser();
    writeFileSync(join(template, 'standby.signal'), '', { mode: 0o600 });
    if (u) chownSync(join(template, 'standby.signal'), u.uid, u.gid);
    const label = readFileSync(join(template, 'backup_label'), 'utf8');
    const startLsn = /START WAL LOCATION: (\S+)/.exec(label)![1]!;
    const startSeg = /START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)/.exec(label)![1]!;

    process.stdout.write(`generating ${SEGMENTS} segments of WAL... `);
    await primary.generateWal(SEGMENTS * SEG_BYTES);
    const target = await primary.currentLsn();
    const last = segName(1, lsnOf(target), SEG_BYTES);
    await primary.switchWal();
    await primary.waitFor(async () => existsSync(join(local, last)), 600_000, `archiving up to ${last}`);
    const names = readdirSync(local)
      .filter((n) => SEG_RE.test(n) && n <= last)
      .sort();
    const catchUpSegs = names.filter((n) => n >= startSeg).length;
    const catchUpMb = Number(lsnOf(target) - lsnOf(startLsn)) / 1048576;
    console.log(`${names.length} segments archived (${names[0]} .. ${last}); a standby from the backup at ${startLsn} replays ${catchUpSegs} segments (${catchUpMb.toFixed(0)} MB) up to ${target}`);

    // The same segments into walstream's S3 archive and pgBackRest's S3 repository.
    let pgbr: PgBackRestRepo | undefined;
    if (havePgBackRest()) {
      try {
        proxy = await startTlsProxyProcess(Number(new URL(s3.endpoint).port));
        pgbr = await pgBackRestRepo({ primary, processMax: PREFETCH, s3: { server: s3, tlsPort: proxy.port, prefix: `${s3.prefix}pgbr-serve` } });
        repos.push(pgbr);
      } catch (err) {
        console.log(`pgBackRest on S3 left out: ${(err as Error).message.split('\n')[0]}`);
      }
    }
    const t0fill = Date.now();
    const [node, bin] = walstreamArgv();
    const fill = async (n: string): Promise<void> => {
      await Promise.all([
        runAsPg('/usr/bin/env', [...Object.entries(env).map(([k, v]) => `${k}=${v}`), node, bin, 'push', join(local, n), '--archive', s3Url, '--s3-endpoint', s3.endpoint]),
        pgbr ? runAsPg('/usr/bin/pgbackrest', [`--config=${pgbr.config}`, `--stanza=${pgbr.stanza}`, 'archive-push', join(local, n)]) : Promise.resolve(),
      ]);
    };
    for (let i = 0; i < names.length; i += 4) await Promise.all(names.slice(i, i + 4).map(fill));
    console.log(`S3 archives filled in ${((Date.now() - t0fill) / 1000).toFixed(0)} s`);

    // -- catch-up ------------------------------------------------------------------------------
    const resetStandby = (): void => {
      rmSync(sb.dataDir, { recursive: true, force: true });
      execFileSync('cp', ['-a', template, sb.dataDir]);
    };

    const catchUp = async (o: {
      conf: { primary_conninfo: string; restore_command: string };
      served?: Served;
      s3?: boolean;
      proxied?: boolean;
      sampler?: string;
      check(log: string): void;
    }): Promise<CatchUpRun> => {
      resetStandby();
      sb.configure(o.conf);
      const logFrom = existsSync(sb.logFile) ? readFileSync(sb.logFile).length : 0;
      const sampler = o.sampler ? new DetachedSampler(o.sampler) : undefined;
      const toolCpu0 = o.served?.cpu() ?? 0;
      const io0 = o.served?.io();
      const s3Cpu0 = s3.cpuSeconds();
      const proxyCpu0 = proxy ? (procStat(proxy.pid)?.own ?? 0) : 0;
      const roots = (): number[] => [primary.postmasterPid(), sb.postmasterPid()].filter((x): x is number => x !== null);
      const m0 = cpuMark(roots());
      const t0 = performance.now();
      await sb.start();
      const client = new pg.Client({ host: '127.0.0.1', port: sb.port, user: 'postgres', database: 'postgres' });
      client.on('error', () => undefined);
      await client.connect();
      const leads: number[] = [];
      try {
        const deadline = Date.now() + 600_000;
        for (;;) {
          // How far WAL received (flushed by the walreceiver) leads WAL replayed: near zero, replay waits for WAL.
          const r = await client.query<{ ok: boolean; lead: string | null }>(
            'select pg_last_wal_replay_lsn() >= $1::pg_lsn as ok, pg_wal_lsn_diff((select flushed_lsn from pg_stat_wal_receiver), pg_last_wal_replay_lsn())::bigint::text as lead',
            [target],
          );
          if (r.rows[0]?.lead != null) leads.push(Number(r.rows[0].lead) / 1048576);
          if (r.rows[0]?.ok === true) break;
          if (Date.now() > deadline) throw new Error(`the standby did not replay up to ${target} in 600 s:\n${readFileSync(sb.logFile, 'utf8').slice(logFrom).slice(-4000)}`);
          await sleep(POLL_MS);
        }
      } finally {
        await client.end().catch(() => undefined);
      }
      const wallS = (performance.now() - t0) / 1000;
      const m1 = cpuMark(roots());
      const cpu = clusterCpu(sb.dataDir);
      const detached = sampler?.stop();
      const run: CatchUpRun = {
        wallS,
        toolCpuS: o.served ? o.served.cpu() - toolCpu0 : cpu.restoreCommand + (detached?.cpu ?? 0),
        toolRssMb: o.served ? o.served.peakRssMb() : (detached?.rss ?? NaN),
        standbyCpuS: cpu.server,
        s3CpuS: o.s3 ? s3.cpuSeconds() - s3Cpu0 : NaN,
        proxyCpuS: o.proxied && proxy ? (procStat(proxy.pid)?.own ?? 0) - proxyCpu0 : NaN,
        ...cpuBetween(m0, m1, detached?.cpu ?? 0),
        ...(o.served && io0 && !o.s3 ? { readX: (o.served.io().rchar - io0.rchar) / (catchUpSegs * SEG_BYTES) } : {}),
        ...(leads.length ? { leadMb: median(leads), starved: leads.filter((x) => x < 1).length / leads.length } : {}),
      };
      await sb.stop('immediate');
      o.check(readFileSync(sb.logFile, 'utf8').slice(logFrom));
      return run;
    };

    const viaServe = async (archive: string, extra: string[], s3run: boolean, proxied = false): Promise<CatchUpRun> => {
      const served = await startServe(archive, extra, s3run ? env : {});
      try {
        const r = await catchUp({
          conf: { primary_conninfo: `host=127.0.0.1 port=${served.port} user=postgres application_name=bench`, restore_command: '' },
          served,
          s3: s3run,
          proxied,
          check: (log) => {
            if (!/started streaming WAL from primary/.test(log)) throw new Error(`the standby never streamed from walstream:\n${log.slice(-3000)}`);
          },
        });
        return r;
      } finally {
        await served.stop();
        if (served.stderr().match(/\b(error|ERROR)\b/)) console.log(`walstream serve said:\n${served.stderr().trim().split('\n').slice(-10).join('\n')}`);
      }
    };

    const restoredCheck = (log: string): void => {
      if (!/restored log file/.test(log)) throw new Error(`restore_command restored nothing:\n${log.slice(-3000)}`);
    };

    // -- fan-out -------------------------------------------------------------------------------
    const seed = names[0]!;
    const streamed = names.slice(1);
    // pg_receivewal stops once it has received past --endpos: one byte before the end of the last segment.
    const endLsn = segEnd(last) - 1n;
    const endpos = fmtLsn(endLsn);
    const bytesPerClient = Number(segEnd(last) - segStart(streamed[0]!));
    const primaryHasAll = streamed.every((n) => existsSync(join(primary.walDir, n)));
    const fanOut = async (conn: string, server: { cpu(): number; rss(): number; io?: () => { rchar: number } }): Promise<FanOutRun> => {
      const root = harnessTmpRoot(true);
      const clientDirs = Array.from({ length: CLIENTS }, () => {
        const d = mkdtempSync(join(root, 'walstream-bench-fan-'));
        copyFileSync(join(local, seed), join(d, seed));
        return d;
      });
      dirs.push(...clientDirs);
      try {
        const cpu0 = server.cpu();
        const io0 = server.io?.();
        const roots = (): number[] => [primary.postmasterPid()].filter((x): x is number => x !== null);
        const m0 = cpuMark(roots());
        const t0 = performance.now();
        const ms: Measurement[] = await Promise.all(clientDirs.map((d) => measure([join(toolBinDir(), 'pg_receivewal'), '-D', d, '-d', conn, '-E', endpos, '-n', '--no-sync'], cleanEnv())));
        const wallS = (performance.now() - t0) / 1000;
        const m1 = cpuMark(roots());
        // A walsender's CPU reaches the postmaster once it is reaped: give it a moment.
        await sleep(300);
        const serverCpuS = server.cpu() - cpu0;
        const readX = io0 ? (server.io!().rchar - io0.rchar) / bytesPerClient : undefined;
        // Every client wrote every segment, byte for byte as archived.
        for (const n of streamed) {
          const want = readFileSync(join(local, n));
          for (const d of clientDirs) {
            const p = join(d, n);
            if (!existsSync(p)) throw new Error(`${p} is missing (the client wrote: ${readdirSync(d).join(' ')})`);
            if (!readFileSync(p).equals(want)) throw new Error(`${p} differs from the archive's ${n}`);
          }
        }
        return {
          wallS,
          serverCpuS,
          serverRssMb: server.rss(),
          clientCpuS: ms.reduce((a, m) => a + m.cpuS, 0),
          clientRssMb: Math.max(...ms.map((m) => m.maxRssMb)),
          ...cpuBetween(m0, m1),
          mbs: (CLIENTS * bytesPerClient) / 1048576 / wallS,
          ...(readX !== undefined ? { readX } : {}),
        };
      } finally {
        for (const d of clientDirs) rmSync(d, { recursive: true, force: true });
      }
    };
    const primaryCpu = (): number => {
      const c = clusterCpu(primary.dataDir);
      return c.server;
    };

    const all: Case[] = [
      { name: 'local: walstream serve', group: 'local', run: () => viaServe(local, [], false) },
      {
        name: 'local: cp',
        group: 'local',
        run: () => catchUp({ conf: { primary_conninfo: '', restore_command: `cp ${local}/%f %p` }, check: restoredCheck }),
      },
      { name: 'S3: walstream serve', group: 'S3', run: () => viaServe(s3Url, ['--s3-endpoint', s3.endpoint], true) },
    ];
    if (pgbr && proxy) {
      const repo = pgbr;
      const tls = proxy;
      all.push({
        name: 'S3: pgbackrest archive-get async',
        group: 'S3',
        run: async () => {
          const spool = pgDir('spool');
          dirs.push(spool);
          try {
            return await catchUp({ conf: { primary_conninfo: '', restore_command: repo.getCommand(sb.dataDir, { spool }) }, s3: true, proxied: true, sampler: 'pgbackrest', check: restoredCheck });
          } finally {
            rmSync(spool, { recursive: true, force: true });
          }
        },
      });
      all.push({
        name: 'S3 over TLS: walstream serve',
        group: 'S3',
        run: () => viaServe(s3Url, ['--s3-endpoint', `https://127.0.0.1:${tls.port}`], true, true),
      });
    }
    all.push({
      name: 'fan-out: walstream serve',
      group: 'fan-out',
      run: async () => {
        const served = await startServe(local, [], {});
        try {
          return await fanOut(`host=127.0.0.1 port=${served.port} user=postgres`, { cpu: served.cpu, rss: served.peakRssMb, io: served.io });
        } finally {
          await served.stop();
        }
      },
    });
    if (primaryHasAll) {
      all.push({
        name: 'fan-out: postgres walsender',
        group: 'fan-out',
        run: () => fanOut(`host=127.0.0.1 port=${primary.port} user=postgres`, { cpu: primaryCpu, rss: () => NaN }),
      });
    } else {
      console.log("the primary's pg_wal no longer holds the archived segments: fan-out from the primary left out");
    }
    const cases = all.filter((c) => !CASES || CASES.test(c.name));
    if (CASES) console.log(`BENCH_CASES=${CASES.source}: ${cases.map((c) => c.name).join(', ')}`);

    // The TLS variant of walstream needs Node to accept the proxy's self-signed certificate.
    if (cases.some((c) => c.name.startsWith('S3 over TLS'))) Object.assign(env, { NODE_TLS_REJECT_UNAUTHORIZED: '0' });

    const results = new Map<string, (CatchUpRun | FanOutRun)[]>();
    const ceilings: { mbs: number; s3CpuS: number }[] = [];
    // One group after another, each with its own warm-up round, so that a recorded run follows a
    // run of its own group: the first fan-out after the catch-ups (6 GB written into fresh tmpfs
    // pages) cost its clients twice the CPU of the next ones on the machine this was written on.
    for (const group of ['local', 'S3', 'fan-out'] as const) {
      const inGroup = cases.filter((c) => c.group === group);
      if (inGroup.length === 0) continue;
      for (let round = 0; round <= RUNS; round++) {
        const order = round % 2 === 0 ? inGroup : [...inGroup].reverse();
        const tag = round === 0 ? 'warm-up' : `run ${round}`;
        for (const c of order) {
          const r = await c.run();
          if (round > 0) results.set(c.name, [...(results.get(c.name) ?? []), r]);
          console.log(`${tag} ${c.name}: ${describe(r)}`);
        }
        if (round > 0 && group === 'S3') {
          const cpu0 = s3.cpuSeconds();
          const mbs = await rawGetCeiling(s3, s3Prefix);
          ceilings.push({ mbs, s3CpuS: s3.cpuSeconds() - cpu0 });
          console.log(`${tag} s3rver raw GET ceiling (${CEILING.count} x 16 MB, ${CEILING.parallel} at a time): ${mbs.toFixed(0)} MB/s`);
        }
      }
    }

    // -- summary --------------------------------------------------------------------------------
    const list = (xs: number[], d = 2): string => xs.map((x) => (Number.isFinite(x) ? x.toFixed(d) : '-')).join(' ');
    const med = (xs: number[], d = 2): string => (xs.some((x) => Number.isFinite(x)) ? median(xs.filter((x) => Number.isFinite(x))).toFixed(d) : '-');
    console.log(`\n== catch-up of a standby: ${catchUpSegs} x ${SEG_MB} MB segments (${catchUpMb.toFixed(0)} MB) from a -X none base backup; medians of ${RUNS} runs, every run listed`);
    console.log('tool CPU/RSS: walstream serve, or the restore_command processes (pgBackRest: plus its detached async workers, sampled every 100 ms)');
    console.log("others' CPU: used meanwhile by processes that are not this benchmark's (another workload on the machine, kernel threads)");
    for (const c of cases.filter((x) => x.group !== 'fan-out')) {
      const rs = results.get(c.name) as CatchUpRun[];
      console.log(`${c.name}`);
      console.log(`  wall s        median ${med(rs.map((r) => r.wallS))}  runs ${list(rs.map((r) => r.wallS))}  (${(catchUpMb / median(rs.map((r) => r.wallS))).toFixed(0)} MB/s)`);
      console.log(`  tool CPU s    median ${med(rs.map((r) => r.toolCpuS))}  runs ${list(rs.map((r) => r.toolCpuS))}`);
      console.log(
        `  tool RSS MB   peak ${Math.max(...rs.map((r) => r.toolRssMb).filter(Number.isFinite), 0).toFixed(0)}  runs ${list(
          rs.map((r) => r.toolRssMb),
          0,
        )}`,
      );
      console.log(`  standby CPU s median ${med(rs.map((r) => r.standbyCpuS))}  runs ${list(rs.map((r) => r.standbyCpuS))}`);
      if (c.group === 'S3') {
        console.log(`  s3rver CPU s  median ${med(rs.map((r) => r.s3CpuS))}  runs ${list(rs.map((r) => r.s3CpuS))}`);
        if (rs.some((r) => Number.isFinite(r.proxyCpuS))) console.log(`  TLS proxy CPU s median ${med(rs.map((r) => r.proxyCpuS))}  runs ${list(rs.map((r) => r.proxyCpuS))}`);
      }
      console.log(`  machine CPU s median ${med(rs.map((r) => r.machineCpuS))}  runs ${list(rs.map((r) => r.machineCpuS))}`);
      console.log(`  others' CPU s median ${med(rs.map((r) => r.otherCpuS))}  runs ${list(rs.map((r) => r.otherCpuS))}`);
    }
    const wallOf = (name: string): number | undefined => {
      const rs = results.get(name);
      return rs ? median(rs.map((r) => r.wallS)) : undefined;
    };
    const ratioLine = (a: string, b: string, targetMax: number): void => {
      const x = wallOf(a);
      const y = wallOf(b);
      if (x === undefined || y === undefined) return;
      const ratio = x / y;
      console.log(`${a} / ${b}: ${ratio.toFixed(2)} (target <= ${targetMax.toFixed(1)}: ${ratio <= targetMax ? 'met' : 'NOT met'})`);
    };
    console.log('');
    ratioLine('local: walstream serve', 'local: cp', TARGET_LOCAL);
    ratioLine('S3: walstream serve', 'S3: pgbackrest archive-get async', TARGET_S3);
    ratioLine('S3 over TLS: walstream serve', 'S3: pgbackrest archive-get async', TARGET_S3);
    if (ceilings.length) {
      const c = median(ceilings.map((x) => x.mbs));
      console.log(
        `s3rver raw GET ceiling: median ${c.toFixed(0)} MB/s (runs ${list(
          ceilings.map((x) => x.mbs),
          0,
        )}), s3rver CPU ${(median(ceilings.map((x) => x.s3CpuS)) / ((CEILING.count * SEG_MB) / 1024)).toFixed(2)} s/GB`,
      );
      const w = wallOf('S3: walstream serve');
      if (w !== undefined) console.log(`S3: walstream serve catch-up rate ${(catchUpMb / w).toFixed(0)} MB/s = ${(catchUpMb / w / c).toFixed(2)} of that ceiling`);
    }

    const fan = cases.filter((x) => x.group === 'fan-out');
    if (fan.length) {
      const gb = (CLIENTS * bytesPerClient) / 2 ** 30;
      console.log(
        `\n== fan-out: ${CLIENTS} pg_receivewal at once, each ${streamed.length} segments (${(bytesPerClient / 1048576).toFixed(0)} MB) from ${streamed[0]} to ${endpos}, --no-sync into tmpfs; ${gb.toFixed(2)} GB sent per run; every file checked byte for byte`,
      );
      for (const c of fan) {
        const rs = results.get(c.name) as FanOutRun[];
        console.log(`${c.name}`);
        console.log(
          `  aggregate MB/s   median ${med(
            rs.map((r) => r.mbs),
            0,
          )}  runs ${list(
            rs.map((r) => r.mbs),
            0,
          )}`,
        );
        console.log(`  wall s           median ${med(rs.map((r) => r.wallS))}  runs ${list(rs.map((r) => r.wallS))}`);
        console.log(`  server CPU s     median ${med(rs.map((r) => r.serverCpuS))}  runs ${list(rs.map((r) => r.serverCpuS))}  (${(median(rs.map((r) => r.serverCpuS)) / gb).toFixed(2)} s per GB sent)`);
        if (rs.some((r) => Number.isFinite(r.serverRssMb)))
          console.log(
            `  server peak RSS MB peak ${Math.max(...rs.map((r) => r.serverRssMb)).toFixed(0)}  runs ${list(
              rs.map((r) => r.serverRssMb),
              0,
            )}  (target <= ${TARGET_RSS_MB}: ${Math.max(...rs.map((r) => r.serverRssMb)) <= TARGET_RSS_MB ? 'met' : 'NOT met'})`,
          );
        console.log(`  clients CPU s    median ${med(rs.map((r) => r.clientCpuS))}  runs ${list(rs.map((r) => r.clientCpuS))}; client peak RSS ${Math.max(...rs.map((r) => r.clientRssMb)).toFixed(0)} MB`);
        console.log(`  machine CPU s    median ${med(rs.map((r) => r.machineCpuS))}  runs ${list(rs.map((r) => r.machineCpuS))}`);
        console.log(`  others' CPU s    median ${med(rs.map((r) => r.otherCpuS))}  runs ${list(rs.map((r) => r.otherCpuS))}`);
        if (rs.some((r) => r.readX !== undefined))
          console.log(
            `  read / WAL sent per client  runs ${list(
              rs.map((r) => r.readX ?? NaN),
              1,
            )}`,
          );
      }
      const a = results.get('fan-out: walstream serve') as FanOutRun[] | undefined;
      const b = results.get('fan-out: postgres walsender') as FanOutRun[] | undefined;
      if (a && b)
        console.log(
          `fan-out walstream / walsender: wall ${(median(a.map((r) => r.wallS)) / median(b.map((r) => r.wallS))).toFixed(2)}, server CPU ${(median(a.map((r) => r.serverCpuS)) / median(b.map((r) => r.serverCpuS))).toFixed(2)}`,
        );
    }
  } finally {
    await standby?.destroy().catch(() => undefined);
    await primary.destroy();
    await proxy?.stop();
    await s3.stop();
    for (const r of repos) r.cleanup();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

/** LSN where segment `name` (timeline 1, 16 MB) starts / ends. */
function segStart(name: string): bigint {
  const hi = BigInt(`0x${name.slice(8, 16)}`);
  const lo = BigInt(`0x${name.slice(16, 24)}`);
  return hi * 0x100000000n + lo * BigInt(SEG_BYTES);
}
function segEnd(name: string): bigint {
  return segStart(name) + BigInt(SEG_BYTES);
}

function describe(r: CatchUpRun | FanOutRun): string {
  const f = (x: number, d = 2): string => (Number.isFinite(x) ? x.toFixed(d) : '-');
  if ('mbs' in r) {
    return `wall ${f(r.wallS)} s, ${f(r.mbs, 0)} MB/s, server CPU ${f(r.serverCpuS)} s, server peak RSS ${f(r.serverRssMb, 0)} MB, clients CPU ${f(r.clientCpuS)} s, machine CPU ${f(r.machineCpuS)} s (others ${f(r.otherCpuS)} s)${r.readX !== undefined ? `, read ${f(r.readX, 1)}x the WAL` : ''}`;
  }
  return `wall ${f(r.wallS)} s, tool CPU ${f(r.toolCpuS)} s, tool peak RSS ${f(r.toolRssMb, 0)} MB, standby CPU ${f(r.standbyCpuS)} s${Number.isFinite(r.s3CpuS) ? `, s3rver CPU ${f(r.s3CpuS)} s` : ''}${Number.isFinite(r.proxyCpuS) ? `, TLS proxy CPU ${f(r.proxyCpuS)} s` : ''}, machine CPU ${f(r.machineCpuS)} s (others ${f(r.otherCpuS)} s)${r.readX !== undefined ? `, read ${f(r.readX, 1)}x the WAL` : ''}${r.leadMb !== undefined ? `; received ahead of replay: median ${f(r.leadMb, 1)} MB, < 1 MB in ${f(100 * r.starved!, 0)}% of polls` : ''}`;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
