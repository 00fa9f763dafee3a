// What the fault scenarios share: a primary configured to keep its WAL for the comparison, a
// background WAL writer (generateWal bursts, WAL switches, optionally pgbench), the receiver as a
// child process, slot positions, and the temporary directories and processes to clean up.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgCluster, toolBinDir, type ConfMap } from '../harness/pg.js';
import { cleanEnv, run } from '../harness/exec.js';
import { startCli, type CliProcess } from '../support/cli.js';
import { lsnOf } from '../support/walfiles.js';
import type { Rng } from './report.js';

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

export async function flushLsn(pg: PgCluster): Promise<bigint> {
  const [row] = await pg.query<{ lsn: string }>('select pg_current_wal_flush_lsn()::text as lsn');
  return lsnOf(row!.lsn);
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
