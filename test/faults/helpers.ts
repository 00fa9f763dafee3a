// What the fault scenarios share: the servers of a test file (a primary configured to keep its WAL
// for the comparison, S3, a proxy in front of the primary) with the archives it opens, a receiver's
// run on a new slot from its start to its SIGTERM, a background WAL writer (generateWal bursts, WAL
// switches, optionally pgbench), the receiver as a child process, slot positions, and the
// temporary directories and processes to clean up.
import { afterAll, beforeAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, toolBinDir, type ConfMap } from '../harness/pg.js';
import { cleanEnv, run } from '../harness/exec.js';
import { TcpProxy } from '../harness/proxy.js';
import { startS3, type S3TestServer } from '../harness/s3.js';
import { runCli, startCli, type CliProcess } from '../support/cli.js';
import { lsnOf } from '../support/walfiles.js';
import { openArchive } from '../../src/storage/open.js';
import type { ArchiveStore } from '../../src/storage/types.js';
import { fileRng, type Rng } from './report.js';
import { formatLsn, pgWalReference, type WalReference } from './verify.js';

export const SEG = 1024 * 1024;

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A primary that keeps every segment in pg_wal for the comparison (1 MB segments). */
export function createFaultPrimary(name: string, conf: ConfMap = {}): Promise<PgCluster> {
  return PgCluster.create({
    name,
    conf: { wal_keep_size: '4GB', max_wal_size: '256MB', checkpoint_timeout: '1h', ...conf },
  });
}

export async function slotRestartLsn(pg: PgCluster, slot: string): Promise<bigint> {
  const [row] = await pg.query<{ lsn: string | null }>('select restart_lsn::text as lsn from pg_replication_slots where slot_name = $1', [slot]);
  if (!row) throw new Error(`slot ${slot} does not exist`);
  return row.lsn === null ? 0n : lsnOf(row.lsn);
}

/** What the receiver streaming on `slot` reported as written (received), or 0 when none is connected. */
export async function receivedLsn(pg: PgCluster, slot: string): Promise<bigint> {
  const [row] = await pg.query<{ lsn: string | null }>('select r.write_lsn::text as lsn from pg_stat_replication r join pg_replication_slots s on s.active_pid = r.pid where s.slot_name = $1', [slot]);
  return row?.lsn ? lsnOf(row.lsn) : 0n;
}

/**
 * Create a physical slot that holds WAL from now on; returns its restart_lsn. (A physical slot
 * reserves from the last checkpoint's redo position: a checkpoint first makes that "now", so a
 * receiver starting from the slot does not stream everything since an old checkpoint.)
 */
export async function createSlot(pg: PgCluster, slot: string, reserve = true): Promise<bigint> {
  if (reserve) await pg.checkpoint();
  await pg.query('select pg_create_physical_replication_slot($1, $2)', [slot, reserve]);
  return reserve ? slotRestartLsn(pg, slot) : 0n;
}

/**
 * The primary's flush position, at the end of a record. The WAL writer flushes whole pages, so
 * a background record (running transactions, every 15 s) crossing a page boundary can leave the
 * flush position inside that record until the next commit, where a receiver, which counts bytes
 * durable only up to the start of the record in progress, cannot reach it: a transaction of its
 * own commits first, flushing everything before its commit record.
 */
export async function flushLsn(pg: PgCluster): Promise<bigint> {
  // Again while more was inserted than flushed (a record in progress may straddle the position).
  for (let attempt = 0; ; attempt++) {
    await pg.query('select txid_current()');
    const [row] = await pg.query<{ flush: string; insert: string }>('select pg_current_wal_flush_lsn()::text as flush, pg_current_wal_insert_lsn()::text as insert');
    if (lsnOf(row!.insert) - lsnOf(row!.flush) <= 24n || attempt >= 20) return lsnOf(row!.flush);
  }
}

/** Poll `cond` every 100 ms until it holds; throws with `what` (and `detail()`) after `timeoutMs`. */
export async function waitUntil(cond: () => Promise<boolean> | boolean, timeoutMs: number, what: string, detail?: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      if (await cond()) return;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const extra = [last instanceof Error ? `last error: ${last.message}` : '', detail?.() ?? ''].filter((s) => s !== '').join('\n');
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${extra ? `\n${extra}` : ''}`);
    }
    await sleep(100);
  }
}

/** Until `receivedLsn` on `slot` reaches `target` (throws after `timeoutMs`, naming `what`). */
export function waitForReceived(pg: PgCluster, slot: string, target: bigint, timeoutMs: number, what: string): Promise<void> {
  return waitUntil(async () => (await receivedLsn(pg, slot)) >= target, timeoutMs, what);
}

/** How many streams a receiver started so far, from its verbose output. */
export function streamStarts(stderr: string): number {
  return stderr.match(/starting log streaming/g)?.length ?? 0;
}

/** Temporary directories and child processes of one test file. */
export class Cleanup {
  private readonly dirs: string[] = [];
  private readonly procs = new Set<CliProcess>();
  private readonly tasks: (() => Promise<unknown>)[] = [];

  dir(prefix: string): string {
    const d = mkdtempSync(join(tmpdir(), `walstream-fault-${prefix}-`));
    this.dirs.push(d);
    return d;
  }

  track(p: CliProcess): CliProcess {
    this.procs.add(p);
    void p.done.then(() => this.procs.delete(p));
    return p;
  }

  /** Run at cleanup, before the directories go (latest first). */
  defer(fn: () => Promise<unknown>): void {
    this.tasks.unshift(fn);
  }

  async run(): Promise<void> {
    for (const p of this.procs) p.kill('SIGKILL');
    await Promise.all([...this.procs].map((p) => p.done));
    for (const t of this.tasks) await t().catch(() => undefined);
    for (const d of this.dirs) rmSync(d, { recursive: true, force: true });
  }
}

export interface ReceiverArgs {
  dir: string;
  /** Connection string (the primary's, or one through a proxy). */
  conn: string;
  slot?: string;
  archive?: string;
  s3Endpoint?: string;
  extra?: string[];
  env?: Record<string, string>;
}

export function receiverArgs(a: ReceiverArgs): string[] {
  const args = ['receive', '-D', a.dir, '-d', a.conn, '-v'];
  if (a.slot) args.push('-S', a.slot);
  if (a.archive) args.push('--archive', a.archive);
  if (a.s3Endpoint) args.push('--s3-endpoint', a.s3Endpoint);
  return [...args, ...(a.extra ?? [])];
}

export function startReceiver(cleanup: Cleanup, a: ReceiverArgs, timeoutMs = 600_000): CliProcess {
  return cleanup.track(startCli(receiverArgs(a), { env: a.env, timeoutMs }));
}

/** A last receiver run to `endpos` (-E, --no-loop): it must exit 0 (once everything finished is archived). */
export async function receiveTo(a: ReceiverArgs, endpos: bigint, losses: string[]): Promise<void> {
  const res = await runCli(receiverArgs({ ...a, extra: [...(a.extra ?? []), '-E', formatLsn(endpos), '-n'] }), { env: a.env, timeoutMs: 180_000 });
  if (res.code !== 0) losses.push(`final run to ${formatLsn(endpos)} exited with ${res.code}:\n${tail(res.stderr)}`);
}

/**
 * The servers one fault test file shares, started in its beforeAll and stopped in its afterAll
 * (call it inside the file's describe): a primary (createFaultPrimary), S3 (the built-in server),
 * a TCP proxy in front of the primary, as asked; the file's seeded Rng, its Cleanup, and the
 * archives it opens (closed at the end).
 */
export interface FaultSuite {
  readonly cleanup: Cleanup;
  readonly rng: Rng;
  readonly primary: PgCluster;
  readonly s3: S3TestServer;
  readonly proxy: TcpProxy;
  /** The environment a walstream process needs to reach the suite's S3 server. */
  s3Env(): Record<string, string>;
  /** Open an archive, closed with the suite (an s3:// one on the suite's S3 server, its credentials put in this process's environment). */
  openStore(url: string): Promise<ArchiveStore>;
}

export function faultSuite(file: string, o: { primary?: { name: string; conf?: ConfMap }; s3?: boolean; proxy?: boolean }): FaultSuite {
  const cleanup = new Cleanup();
  const stores: ArchiveStore[] = [];
  let rng: Rng | undefined;
  let primary: PgCluster | undefined;
  let s3: S3TestServer | undefined;
  let proxy: TcpProxy | undefined;
  beforeAll(async () => {
    rng = fileRng(file);
    [primary, s3] = await Promise.all([o.primary ? createFaultPrimary(o.primary.name, o.primary.conf) : undefined, o.s3 ? startS3({ builtIn: true }) : undefined]);
    if (o.proxy && primary) proxy = await TcpProxy.start(primary.port);
  });
  afterAll(async () => {
    await cleanup.run();
    for (const st of stores) await st.close();
    await proxy?.stop();
    await primary?.destroy();
    await s3?.stop();
  });
  const started = <T>(v: T | undefined, what: string): T => {
    if (v === undefined) throw new Error(`the fault suite of ${file} has no ${what} (not asked for, or beforeAll failed)`);
    return v;
  };
  const suite: FaultSuite = {
    cleanup,
    get rng() {
      return started(rng, 'Rng');
    },
    get primary() {
      return started(primary, 'primary');
    },
    get s3() {
      return started(s3, 'S3 server');
    },
    get proxy() {
      return started(proxy, 'proxy');
    },
    s3Env() {
      const s = suite.s3;
      return { AWS_ACCESS_KEY_ID: s.accessKeyId, AWS_SECRET_ACCESS_KEY: s.secretAccessKey, AWS_REGION: s.region };
    },
    async openStore(url) {
      if (url.startsWith('s3://')) Object.assign(process.env, suite.s3Env());
      const st = await openArchive(url, s3 ? { s3Endpoint: s3.endpoint } : {});
      stores.push(st);
      return st;
    },
  };
  return suite;
}

/** A receiver's run on a new slot: where its WAL goes, what it is compared with, and the losses found. */
export interface SlotRun {
  slot: string;
  /** The slot's restart_lsn when created. */
  created: bigint;
  /** The start of that segment: the first WAL the receiver owes. */
  first: bigint;
  /** The receiver's directory (-D). */
  dir: string;
  reference: WalReference;
  /** verifyWal's record of what was checked already. */
  cache: Map<string, number>;
  losses: string[];
}

/** A new slot on `pg` holding WAL from now on, and a directory for the receiver streaming through it. */
export async function slotRun(pg: PgCluster, cleanup: Cleanup, slot: string, dirPrefix: string): Promise<SlotRun> {
  const created = await createSlot(pg, slot);
  const first = (created / BigInt(SEG)) * BigInt(SEG);
  const dir = cleanup.dir(dirPrefix);
  return { slot, created, first, dir, reference: pgWalReference(pg.walDir), cache: new Map(), losses: [] };
}

/**
 * The end of a run: the receiver reaches `pg`'s flush position, stops on SIGTERM with status 0,
 * and the slot then holds everything it received (SIGTERM: what was received is fsynced and
 * reported in a last status update). Returns that position and where the slot is.
 */
export async function stopReceiver(pg: PgCluster, proc: CliProcess, slot: string, losses: string[]): Promise<{ endpos: bigint; reported: bigint }> {
  const endpos = await flushLsn(pg);
  await waitForReceived(pg, slot, endpos, 60_000, `the receiver to reach ${formatLsn(endpos)}`).catch((err: Error) => losses.push(err.message));
  proc.kill('SIGTERM');
  const res = await proc.done;
  if (res.code !== 0) losses.push(`the receiver exited with ${res.code} / ${res.signal} on SIGTERM:\n${tail(res.stderr)}`);
  const reported = await slotRestartLsn(pg, slot);
  if (reported < endpos) losses.push(`after SIGTERM the slot is at ${formatLsn(reported)}, short of ${formatLsn(endpos)} received:\n${tail(res.stderr)}`);
  return { endpos, reported };
}

/** The last lines of a receiver's output, for failure messages. */
export function tail(text: string, lines = 25): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

/**
 * Writes WAL on a primary until stopped: generateWal bursts of random size, now and then a WAL
 * switch, short random pauses. Errors (a server that is down) are counted and waited out.
 */
export class WalWriter {
  private stopped = false;
  private paused = false;
  private loop: Promise<void> | undefined;
  errors = 0;
  bursts = 0;

  constructor(
    private readonly target: () => PgCluster,
    private readonly rng: Rng,
    private readonly burstBytes: [number, number] = [32 * 1024, 768 * 1024],
  ) {}

  start(): this {
    this.loop = (async () => {
      while (!this.stopped) {
        if (this.paused) {
          await sleep(50);
          continue;
        }
        try {
          const pg = this.target();
          const bytes = this.rng.int(this.burstBytes[0], this.burstBytes[1]);
          // Half the bursts are rows of random hex, which compress about as badly as real data
          // (the harness filler compresses some fifty times, so compressed files would race ahead).
          if (this.rng() < 0.5) await pg.generateWal(bytes);
          else await randomRows(pg, bytes);
          if (this.rng() < 0.2) await pg.switchWal();
          this.bursts++;
        } catch {
          this.errors++;
          await sleep(200);
        }
        await sleep(this.rng.int(20, 300));
      }
    })();
    return this;
  }

  /** Stop writing (the burst in flight finishes). */
  async pause(): Promise<void> {
    this.paused = true;
    await sleep(0);
  }

  resume(): void {
    this.paused = false;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }
}

/** Insert about `bytes` of rows of random hex (roughly as much WAL). */
async function randomRows(pg: PgCluster, bytes: number): Promise<void> {
  await pg.query('create table if not exists walstream_fault_random (id bigint, pad text)');
  const rows = Math.max(1, Math.ceil(bytes / 1000));
  await pg.query("insert into walstream_fault_random select g, (select string_agg(md5(random()::text || g::text || i::text), '') from generate_series(1, 28) i) from generate_series(1, $1::int) g", [rows]);
}

/** pgbench running against `pg` at a modest rate until stop(). */
export class Pgbench {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(private readonly pg: PgCluster) {}

  private connArgs(): string[] {
    return ['-h', '127.0.0.1', '-p', String(this.pg.port), '-U', 'postgres', 'postgres'];
  }

  async init(): Promise<void> {
    await run([join(toolBinDir(), 'pgbench'), '-i', '-s', '1', '-q', ...this.connArgs()], { timeoutMs: 120_000 });
  }

  /** Start `clients` clients at `rate` transactions per second in total. */
  start(rate: number, clients = 2): void {
    const child = spawn(join(toolBinDir(), 'pgbench'), ['-n', '-T', '3600', '-R', String(rate), '-c', String(clients), '-j', '1', ...this.connArgs()], {
      env: cleanEnv(),
      stdio: 'ignore',
    });
    this.child = child;
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  async stop(): Promise<void> {
    this.child?.kill('SIGINT');
    const t = setTimeout(() => this.child?.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }
}
