/**
 * Throw-away PostgreSQL clusters for integration tests.
 *
 *   const primary = await PgCluster.create({ version: 15, walSegmentSizeMB: 1 });
 *   const standby = await primary.createStandby();
 *   ...
 *   await standby.destroy(); await primary.destroy();
 *
 * Every cluster lives in its own temp directory (data dir, unix socket, server
 * log). Clusters still alive when the process exits (or gets SIGINT/SIGTERM)
 * are stopped and removed by an exit handler.
 */
import { chmodSync, copyFileSync, existsSync, lchownSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, realpathSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { confValue, freePort, initdbArgs, lowLevelBackup, pgCtlStartArgs, pgCtlStopArgs, startOnFreePort } from '../../src/demo/postgres.js';
import { binDir, SYSTEM_PG_VERSION, toolBinDir } from './bins.js';
import { fileTail, harnessTmpRoot, pgOsUser, runAsPg, runAsPgSyncQuiet, type OsUser, type RunOptions, type RunResult } from './exec.js';

export { binDir, pgVersionsUnderTest, toolBinDir } from './bins.js';
export { CommandError, runAsPg, type RunOptions, type RunResult } from './exec.js';
// Servers start as walstream demo starts them (src/demo/postgres.ts): initdb's and pg_ctl's
// arguments, postgresql.conf values and the start on a free port come from there.
/** A currently free TCP port on 127.0.0.1. */
export { freePort };

export type ConfValue = string | number | boolean;
export type ConfMap = Record<string, ConfValue>;

export interface CreateClusterOptions {
  /** Major version (default 15). */
  version?: number;
  /** initdb --wal-segsize, in MB (default 1). */
  walSegmentSizeMB?: number;
  /** Extra postgresql.conf settings (override the harness defaults). */
  conf?: ConfMap;
  /** Extra pg_hba.conf lines, placed before the harness defaults. */
  hba?: string[];
  /** Used in the temp dir name and as application_name of standbys. */
  name?: string;
  /** Start the server (default true). */
  start?: boolean;
}

export interface StandbyOptions {
  name?: string;
  /** Extra settings on top of the primary's. */
  conf?: ConfMap;
  /** Physical replication slot on the primary (created if missing) used as primary_slot_name. */
  slot?: string;
  restoreCommand?: string;
  /** Start the standby (default true). */
  start?: boolean;
}

export interface ConnectionOptions {
  user?: string;
  database?: string;
  password?: string;
  /** Add replication=true (physical replication connection). */
  replication?: boolean;
  applicationName?: string;
}

export interface RoleOptions {
  replication?: boolean;
  password?: string;
  /** Default true. */
  login?: boolean;
  superuser?: boolean;
}

export type StopMode = 'fast' | 'immediate' | 'smart';

const HOST = '127.0.0.1';
const HARNESS_CONF = 'walstream_harness.conf';
const DEFAULT_HBA = [
  'local all all trust',
  'host replication postgres 127.0.0.1/32 trust',
  'host all postgres 127.0.0.1/32 trust',
  'host replication nohba_user 127.0.0.1/32 reject',
  'host replication all 127.0.0.1/32 scram-sha-256',
  'host all all 127.0.0.1/32 scram-sha-256',
];

// ---------------------------------------------------------------------------
// Cleanup registry: the only module-level state.
// ---------------------------------------------------------------------------
const live = new Set<PgCluster>();
let exitHandlersInstalled = false;

function cleanupAllSync(): void {
  for (const c of [...live]) c.destroySync();
}

function installExitHandlers(): void {
  if (exitHandlersInstalled) return;
  exitHandlersInstalled = true;
  process.on('exit', cleanupAllSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      cleanupAllSync();
      process.kill(process.pid, sig); // default action now that our listener is gone
    });
  }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

export function quoteIdent(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}

export function quoteLiteral(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

/** Quote a libpq keyword/value conninfo value. */
function conninfoQuote(s: string): string {
  return `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function parseLsn(lsn: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn.trim());
  if (!m || m[1] === undefined || m[2] === undefined) throw new Error(`invalid LSN "${lsn}"`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/** The 16 hex digits after the timeline in a WAL segment file name. */
function segmentPosition(lsn: string, segSizeBytes: number): string {
  const segno = parseLsn(lsn) / BigInt(segSizeBytes);
  const perId = 0x1_0000_0000n / BigInt(segSizeBytes);
  const hex8 = (n: bigint): string => n.toString(16).toUpperCase().padStart(8, '0');
  return hex8(segno / perId) + hex8(segno % perId);
}

/** Process state letter from /proc/<pid>/stat ('R', 'S', 'Z', ...), or null if there is no such process. */
function procState(pid: number): string | null {
  try {
    // "pid (comm) S ...": comm may contain spaces and parentheses.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const i = stat.lastIndexOf(')');
    return stat.slice(i + 2, i + 3);
  } catch {
    return null;
  }
}

function chownTo(p: string, user: OsUser | null): void {
  if (user !== null) lchownSync(p, user.uid, user.gid);
}

/** Write a file owned by the server user, mode 0600. */
function writeServerFile(file: string, content: string, user: OsUser | null): void {
  writeFileSync(file, content, { mode: 0o600 });
  chmodSync(file, 0o600);
  chownTo(file, user);
}

function safeName(name: string): string {
  return name.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 24) || 'pg';
}

interface ClusterInit {
  version: number;
  name: string;
  baseDir: string;
  port: number;
  walSegmentSizeMB: number;
  conf: ConfMap;
  bin: string;
}

// ---------------------------------------------------------------------------
// PgCluster
// ---------------------------------------------------------------------------

export class PgCluster {
  readonly version: number;
  readonly name: string;
  readonly host = HOST;
  /** Temp directory owning everything below (also the unix socket directory). */
  readonly baseDir: string;
  readonly dataDir: string;
  readonly walDir: string;
  readonly logFile: string;
  readonly walSegmentSizeMB: number;
  /** Directory of this version's initdb/pg_ctl/postgres. */
  readonly binDir: string;
  #port: number;
  #conf: ConfMap;
  #everStarted = false;
  #destroyed = false;

  private constructor(init: ClusterInit) {
    this.version = init.version;
    this.name = init.name;
    this.baseDir = init.baseDir;
    this.dataDir = path.join(init.baseDir, 'data');
    this.walDir = path.join(this.dataDir, 'pg_wal');
    this.logFile = path.join(init.baseDir, 'postgres.log');
    this.walSegmentSizeMB = init.walSegmentSizeMB;
    this.binDir = init.bin;
    this.#port = init.port;
    this.#conf = { ...init.conf };
    live.add(this);
    installExitHandlers();
  }

  get port(): number {
    return this.#port;
  }

  get walSegmentSizeBytes(): number {
    return this.walSegmentSizeMB * 1024 * 1024;
  }

  /** Settings written to the harness conf file (harness defaults + user conf). */
  get conf(): Readonly<ConfMap> {
    return this.#conf;
  }

  private static async allocate(name: string, version: number, walSegmentSizeMB: number, conf: ConfMap): Promise<PgCluster> {
    const bin = binDir(version);
    const user = pgOsUser();
    const baseDir = mkdtempSync(path.join(harnessTmpRoot(true), `wspg-${safeName(name)}-`));
    chmodSync(baseDir, 0o700);
    chownTo(baseDir, user);
    return new PgCluster({ version, name, baseDir, port: await freePort(), walSegmentSizeMB, conf, bin });
  }

  /** initdb + configure (+ start) a new primary. */
  static async create(opts: CreateClusterOptions = {}): Promise<PgCluster> {
    const version = opts.version ?? SYSTEM_PG_VERSION;
    const seg = opts.walSegmentSizeMB ?? 1;
    const c = await PgCluster.allocate(opts.name ?? `pg${version}`, version, seg, opts.conf ?? {});
    try {
      await c.pg('initdb', initdbArgs(c.dataDir, [`--wal-segsize=${seg}`]), 'initdb');
      const user = pgOsUser();
      writeServerFile(path.join(c.dataDir, 'pg_hba.conf'), [...(opts.hba ?? []), ...DEFAULT_HBA].join('\n') + '\n', user);
      const mainConf = path.join(c.dataDir, 'postgresql.conf');
      writeServerFile(mainConf, `${readFileSync(mainConf, 'utf8')}\ninclude '${HARNESS_CONF}'\n`, user);
      c.writeHarnessConf();
      if (opts.start ?? true) await c.start();
      return c;
    } catch (e) {
      await c.destroy();
      throw e;
    }
  }

  /**
   * A cluster whose data directory does not exist yet (`dataDir`, in a directory the server's OS
   * user owns), for a tool that makes one (walstream restore). Write it, then configure() (its own
   * port and socket directory in the harness conf) and start().
   */
  static async forNewDataDir(opts: { name: string; version?: number; walSegmentSizeMB?: number; conf?: ConfMap }): Promise<PgCluster> {
    return PgCluster.allocate(opts.name, opts.version ?? SYSTEM_PG_VERSION, opts.walSegmentSizeMB ?? 1, opts.conf ?? {});
  }

  // -- configuration --------------------------------------------------------

  private writeHarnessConf(): void {
    const settings: ConfMap = {
      listen_addresses: HOST,
      port: this.#port,
      unix_socket_directories: this.baseDir,
      wal_level: 'replica',
      max_wal_senders: 10,
      max_replication_slots: 10,
      wal_keep_size: 0,
      fsync: true,
      logging_collector: false,
      log_replication_commands: true,
      // Standbys reconnect quickly after the primary restarts (default 5s).
      wal_retrieve_retry_interval: '200ms',
      // Dynamic shared memory in the data directory (pg_dynshmem/), not /dev/shm/PostgreSQL.*:
      // destroy() stops the server with -m immediate, which leaves those segments behind, and
      // removes the data directory with whatever is in it.
      dynamic_shared_memory_type: 'mmap',
      ...this.#conf,
    };
    const lines = Object.entries(settings).map(([k, v]) => `${k} = ${confValue(v)}`);
    writeServerFile(path.join(this.dataDir, HARNESS_CONF), `# written by the walstream test harness\n${lines.join('\n')}\n`, pgOsUser());
  }

  /**
   * Merge settings into the harness conf file. Takes effect on reload() or
   * restart() depending on the setting.
   */
  configure(conf: ConfMap): void {
    this.#conf = { ...this.#conf, ...conf };
    this.writeHarnessConf();
  }

  // -- commands -------------------------------------------------------------

  /** Run one of this version's binaries as the server user; errors include the server log tail. */
  private pg(tool: string, args: string[], what: string, extra: RunOptions = {}): Promise<RunResult> {
    return runAsPg(path.join(this.binDir, tool), args, { cwd: this.baseDir, logFile: this.logFile, what: `${this.name}: ${what}`, ...extra });
  }

  private logTail(lines = 40): string {
    return `--- server log tail (${this.logFile}) ---\n${fileTail(this.logFile, lines) || '(empty or missing)'}`;
  }

  /** Postmaster PID from postmaster.pid, or null. */
  postmasterPid(): number | null {
    try {
      const pid = Number(readFileSync(path.join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      return Number.isInteger(pid) && pid > 0 ? pid : null;
    } catch {
      return null;
    }
  }

  /** Is a postmaster process for this data directory alive? */
  isRunning(): boolean {
    return this.serverProcesses().length > 0;
  }

  /** PIDs of live (non-zombie) processes whose cwd is this data directory: postmaster and children. */
  private serverProcesses(): number[] {
    let data: string;
    try {
      data = realpathSync(this.dataDir);
    } catch {
      return [];
    }
    const pids: number[] = [];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        if (readlinkSync(`/proc/${entry}/cwd`) === data) pids.push(Number(entry));
      } catch {
        // gone, zombie or not ours
      }
    }
    return pids;
  }

  async start(): Promise<void> {
    if (this.#destroyed) throw new Error(`${this.name}: cluster was destroyed`);
    // Port grabbed between freePort() and bind: retry with another port, only before the first
    // successful start (nobody can know the port yet).
    await startOnFreePort({
      logFile: this.logFile,
      port: this.#port,
      attempts: this.#everStarted ? 1 : 4,
      setPort: (port) => {
        this.#port = port;
        this.writeHarnessConf();
      },
      start: async () => {
        await this.pg('pg_ctl', pgCtlStartArgs(this.dataDir, this.logFile, 90), 'start', { timeoutMs: 120_000 });
      },
    });
    this.#everStarted = true;
  }

  /** pg_ctl stop; a no-op when not running. */
  async stop(mode: StopMode = 'fast'): Promise<void> {
    if (this.postmasterPid() === null) return;
    await this.pg('pg_ctl', pgCtlStopArgs(this.dataDir, mode, 90), `stop -m ${mode}`, { timeoutMs: 120_000 });
  }

  async restart(): Promise<void> {
    await this.stop('fast');
    await this.start();
  }

  async reload(): Promise<void> {
    await this.query('select pg_reload_conf()');
  }

  /**
   * Simulated crash: SIGKILL the postmaster, then every remaining server
   * process of this cluster (so the shared memory segment is released), and
   * wait until they are gone. postmaster.pid stays behind like after a real
   * crash; start() then performs crash recovery.
   */
  async kill9(): Promise<void> {
    const pid = this.postmasterPid();
    if (pid === null) throw new Error(`${this.name}: kill9: no postmaster.pid, server not running`);
    try {
      process.kill(pid, 'SIGKILL');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
    const deadline = Date.now() + 15_000;
    for (;;) {
      const pids = this.serverProcesses();
      if (pids.length === 0) break;
      if (Date.now() > deadline) throw new Error(`${this.name}: kill9: processes ${pids.join(', ')} did not exit`);
      for (const p of pids) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      await sleep(20);
    }
    // Wait until the postmaster is fully dead (a process in the middle of
    // exiting has no cwd any more but is not a zombie yet).
    for (;;) {
      const state = procState(pid);
      if (state === null || state === 'Z' || state === 'X') break;
      if (Date.now() > deadline) throw new Error(`${this.name}: kill9: postmaster ${pid} did not die (state ${state})`);
      await sleep(5);
    }
    // The dead postmaster was reparented to PID 1; until that reaps it (which
    // may take a second or never happen, depending on what PID 1 is), the
    // zombie keeps the PID "alive" for kill(pid, 0) and a new postmaster would
    // refuse to start because of the stale postmaster.pid / socket lock files
    // naming it. The process is verifiably dead, so remove those lock files.
    if (procState(pid) !== null) {
      const locks = [
        path.join(this.dataDir, 'postmaster.pid'),
        ...readdirSync(this.baseDir)
          .filter((f) => /^\.s\.PGSQL\.\d+\.lock$/.test(f))
          .map((f) => path.join(this.baseDir, f)),
      ];
      for (const f of locks) {
        try {
          unlinkSync(f);
        } catch {
          // ignore
        }
      }
    }
  }

  /** pg_ctl promote and wait until the server is out of recovery. */
  async promote(): Promise<void> {
    await this.pg('pg_ctl', ['-D', this.dataDir, '-w', '-t', '90', 'promote'], 'promote', { timeoutMs: 120_000 });
    await this.waitFor(async () => !(await this.isInRecovery()), 60_000, 'end of recovery after promote');
  }

  async isInRecovery(): Promise<boolean> {
    const [row] = await this.query<{ r: boolean }>('select pg_is_in_recovery() as r');
    return row?.r === true;
  }

  // -- SQL ------------------------------------------------------------------

  /** postgresql:// URI usable by the pg client and by libpq tools (pg_receivewal -d). */
  connectionString(opts: ConnectionOptions = {}): string {
    const user = encodeURIComponent(opts.user ?? 'postgres');
    const auth = opts.password !== undefined ? `${user}:${encodeURIComponent(opts.password)}` : user;
    const db = encodeURIComponent(opts.database ?? 'postgres');
    // encodeURIComponent, not URLSearchParams: libpq does not decode '+' as a space.
    const params: string[] = [];
    if (opts.replication) params.push('replication=true');
    if (opts.applicationName !== undefined) params.push(`application_name=${encodeURIComponent(opts.applicationName)}`);
    const qs = params.join('&');
    return `postgresql://${auth}@${HOST}:${this.#port}/${db}${qs ? `?${qs}` : ''}`;
  }

  /** A connected pg.Client (caller must end() it). */
  async connect(opts: ConnectionOptions = {}): Promise<pg.Client> {
    const client = new pg.Client({ connectionString: this.connectionString(opts), connectionTimeoutMillis: 15_000 });
    client.on('error', () => {}); // server going away under an idle client must not crash the worker
    await client.connect();
    return client;
  }

  /** Run one statement on a short-lived connection as the postgres superuser. */
  async query<T = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<T[]> {
    let client: pg.Client | undefined;
    try {
      client = await this.connect();
      const res = await client.query(sql, params);
      return res.rows as T[];
    } catch (e) {
      const err = e as Error & { code?: string };
      const wrapped = new Error(`${this.name} (port ${this.#port}): query failed: ${err.message}\nSQL: ${sql}`, { cause: e });
      Object.assign(wrapped, { code: err.code });
      throw wrapped;
    } finally {
      await client?.end().catch(() => {});
    }
  }

  async createRole(name: string, opts: RoleOptions = {}): Promise<void> {
    const attrs = [(opts.login ?? true) ? 'LOGIN' : 'NOLOGIN', opts.replication ? 'REPLICATION' : 'NOREPLICATION', opts.superuser ? 'SUPERUSER' : 'NOSUPERUSER'];
    if (opts.password !== undefined) attrs.push(`PASSWORD ${quoteLiteral(opts.password)}`);
    // Make sure the password is hashed with SCRAM whatever the server default.
    const client = await this.connect();
    try {
      await client.query("set password_encryption = 'scram-sha-256'");
      await client.query(`create role ${quoteIdent(name)} with ${attrs.join(' ')}`);
    } finally {
      await client.end().catch(() => {});
    }
  }

  async checkpoint(): Promise<void> {
    await this.query('checkpoint');
  }

  /** Current WAL position: insert/write LSN on a primary, replay LSN on a standby. */
  async currentLsn(): Promise<string> {
    const [row] = await this.query<{ lsn: string }>('select (case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end)::text as lsn');
    if (!row?.lsn) throw new Error(`${this.name}: no current LSN`);
    return row.lsn;
  }

  /** Write a tiny WAL record, then pg_switch_wal(); returns the LSN it reports. */
  async switchWal(): Promise<string> {
    const client = await this.connect();
    try {
      await client.query("select pg_logical_emit_message(false, 'walstream-harness', 'switch')");
      const res = await client.query<{ lsn: string }>('select pg_switch_wal()::text as lsn');
      const lsn = res.rows[0]?.lsn;
      if (!lsn) throw new Error('pg_switch_wal returned nothing');
      return lsn;
    } finally {
      await client.end().catch(() => {});
    }
  }

  /** Generate at least `bytes` of WAL (inserting ~1 kB rows); returns the end LSN. */
  async generateWal(bytes: number): Promise<string> {
    const client = await this.connect();
    try {
      await client.query('create table if not exists walstream_filler (id bigint, pad text)');
      const start = (await client.query<{ lsn: string }>('select pg_current_wal_lsn()::text as lsn')).rows[0]?.lsn ?? '0/0';
      for (;;) {
        const res = await client.query<{ done: string; lsn: string }>('select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint::text as done, pg_current_wal_lsn()::text as lsn', [start]);
        const row = res.rows[0];
        if (!row) throw new Error('generateWal: no row');
        const remaining = bytes - Number(row.done);
        if (remaining <= 0) return row.lsn;
        const rows = Math.min(Math.ceil(remaining / 1000) + 1, 100_000);
        await client.query("insert into walstream_filler select g, repeat('x', 1000) from generate_series(1, $1::int) g", [rows]);
      }
    } finally {
      await client.end().catch(() => {});
    }
  }

  async waitFor(cond: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown;
    for (;;) {
      try {
        if (await cond()) return;
      } catch (e) {
        lastError = e;
      }
      if (Date.now() > deadline) {
        const detail = lastError instanceof Error ? `\nlast error: ${lastError.message}` : '';
        throw new Error(`${this.name}: timed out after ${timeoutMs} ms waiting for ${what}${detail}\n${this.logTail()}`);
      }
      await sleep(50);
    }
  }

  /** Wait until this server has replayed (standby) or written (primary) WAL up to `lsn`. */
  async waitForReplay(lsn: string, timeoutMs = 60_000): Promise<void> {
    parseLsn(lsn);
    let current = '';
    await this.waitFor(
      async () => {
        current = await this.currentLsn();
        return parseLsn(current) >= parseLsn(lsn);
      },
      timeoutMs,
      `replay of ${lsn} (at ${current || 'unknown'})`,
    );
  }

  // -- standbys -------------------------------------------------------------

  /** A streaming standby of this (running) cluster on a new port. */
  async createStandby(opts: StandbyOptions = {}): Promise<PgCluster> {
    const name = opts.name ?? `${this.name}-standby`;
    const sb = await PgCluster.allocate(name, this.version, this.walSegmentSizeMB, { ...this.#conf, ...(opts.conf ?? {}) });
    try {
      if (opts.slot !== undefined) {
        await this.query('select pg_create_physical_replication_slot($1, true) where not exists (select 1 from pg_replication_slots where slot_name = $1)', [opts.slot]);
      }
      const useBasebackup = this.version === SYSTEM_PG_VERSION;
      let release: () => Promise<void> = async () => {};
      if (useBasebackup) {
        await runAsPg(
          path.join(toolBinDir(), 'pg_basebackup'),
          [
            '-h',
            HOST,
            '-p',
            String(this.#port),
            '-U',
            'postgres',
            '-D',
            sb.dataDir,
            '-X',
            'stream',
            '-c',
            'fast',
            '--no-sync',
            '-l',
            `walstream harness ${name}`,
            ...(opts.slot !== undefined ? ['-S', opts.slot] : []),
          ],
          { cwd: sb.baseDir, logFile: this.logFile, what: `${name}: pg_basebackup`, timeoutMs: 180_000 },
        );
      } else {
        release = await this.lowLevelBackup(sb);
      }
      try {
        const conninfo = `host=${HOST} port=${this.#port} user=postgres application_name=${conninfoQuote(name)}`;
        const standbyConf: ConfMap = { primary_conninfo: conninfo };
        if (opts.slot !== undefined) standbyConf['primary_slot_name'] = opts.slot;
        if (opts.restoreCommand !== undefined) standbyConf['restore_command'] = opts.restoreCommand;
        sb.configure(standbyConf);
        writeServerFile(path.join(sb.dataDir, 'standby.signal'), '', pgOsUser());
        if (opts.start ?? true) await sb.start();
      } finally {
        await release();
      }
      return sb;
    } catch (e) {
      await sb.destroy();
      throw e;
    }
  }

  /**
   * Base backup through the low-level API (for versions without a matching
   * pg_basebackup). A temporary physical slot on the backup connection keeps
   * the WAL from the backup start on; the returned function ends that session
   * (call it once the standby is up and streaming).
   */
  private async lowLevelBackup(sb: PgCluster): Promise<() => Promise<void>> {
    const user = pgOsUser();
    const client = await this.connect({ applicationName: `walstream-backup-${sb.name}` });
    const release = async (): Promise<void> => {
      await client.end().catch(() => {});
    };
    try {
      const slot = `walstream_bk_${process.pid}_${Date.now()}`;
      await client.query('select pg_create_physical_replication_slot($1, true, true)', [slot]);
      // The data directory as walstream demo backs it up (src/demo/postgres.ts), without WAL.
      const { startLsn, stopLsn } = await lowLevelBackup(client, { version: this.version, label: `walstream harness ${sb.name}`, from: this.dataDir, to: sb.dataDir, user });

      // WAL needed to reach consistency: segments from the backup start to the
      // backup end (complete: the stop function switched WAL), plus history files.
      const from = segmentPosition(startLsn, this.walSegmentSizeBytes);
      const to = segmentPosition(stopLsn, this.walSegmentSizeBytes);
      for (const f of readdirSync(this.walDir)) {
        const isSegment = /^[0-9A-F]{24}$/.test(f) && f.slice(8) >= from && f.slice(8) <= to;
        if (isSegment || /^[0-9A-F]{8}\.history$/.test(f)) {
          const dst = path.join(sb.walDir, f);
          copyFileSync(path.join(this.walDir, f), dst);
          chmodSync(dst, 0o600);
          chownTo(dst, user);
        }
      }
      const archiveStatus = path.join(sb.walDir, 'archive_status');
      if (!existsSync(archiveStatus)) {
        mkdirSync(archiveStatus, { mode: 0o700 });
        chownTo(archiveStatus, user);
      }
      return release;
    } catch (e) {
      await release();
      throw e;
    }
  }

  // -- teardown -------------------------------------------------------------

  /** Stop (immediate) and remove the temp directory. Idempotent; never throws for a dead server. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    try {
      if (this.postmasterPid() !== null) {
        await this.stop('immediate').catch(async () => {
          if (this.isRunning()) await this.kill9().catch(() => {});
        });
      }
    } finally {
      this.removeFiles();
      live.delete(this);
    }
  }

  /** Synchronous destroy, for exit handlers. */
  destroySync(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    if (this.postmasterPid() !== null) {
      runAsPgSyncQuiet(path.join(this.binDir, 'pg_ctl'), pgCtlStopArgs(this.dataDir, 'immediate', 20));
    }
    this.removeFiles();
    live.delete(this);
  }

  private removeFiles(): void {
    if (process.env['WALSTREAM_TEST_KEEP_TMP']) {
      process.stderr.write(`[walstream harness] keeping ${this.baseDir}\n`);
      return;
    }
    rmSync(this.baseDir, { recursive: true, force: true });
  }
}

/** Create a role on `cluster` (LOGIN by default). */
export function createRole(cluster: PgCluster, name: string, opts: RoleOptions = {}): Promise<void> {
  return cluster.createRole(name, opts);
}

/** Remaining live clusters (for diagnostics). */
export function liveClusters(): readonly PgCluster[] {
  return [...live];
}
