// walstream demo: a newcomer's first run, start to finish, on this machine only. A throwaway
// PostgreSQL primary on a free loopback port; a replication slot; a base backup without WAL; some
// rows; the primary's WAL received into a local archive by walstream's own receive code; a
// standby with `walstream fetch` as restore_command and no primary_conninfo, so everything it
// replays comes from that archive; then the standby's rows are compared with the primary's.
// Every step is printed with where its files are; everything is removed afterwards unless --keep.
import { chmodSync, copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type pg from 'pg';
import {
  DemoServer,
  chownTree,
  confString,
  copyTreeReadable,
  findPostgres,
  lowLevelBackup as backupThroughApi,
  packageRoot,
  reachableBy,
  runAs,
  serverDir,
  serverOsUser,
  waitForProcessesMentioning,
  writeOwned,
  type OsUser,
  type PostgresInstall,
} from '../demo/postgres.js';
import { receive } from './receive.js';
import { ReceiverMetrics } from '../observe/metrics.js';
import { formatLsn, parseLsn, type Lsn } from '../wal/lsn.js';
import { WAL_NAME_RE, lsnToSegNo, walFileName } from '../wal/segment.js';
import type { Logger } from '../util/log.js';

export interface DemoOptions {
  /** Rows written on the primary and looked for on the standby. */
  rows: number;
  /** Put everything here (created if missing, must be empty) instead of a new temporary directory. */
  dir?: string;
  /** Keep the files (servers stopped) instead of removing them. */
  keep: boolean;
  /** Use the server binaries in this directory instead of looking for them. */
  pgBinDir?: string;
  /** The receiver's messages and warnings (stderr). */
  log: Logger;
  /** The step-by-step account (stdout). */
  out: (line: string) => void;
  /** Resolves on SIGINT/SIGTERM: stop, clean up, fail. */
  stop: Promise<void>;
}

const SLOT = 'walstream_demo';
const TABLE = 'demo_rows';
/** Longest wait for any one server-side step. */
const STEP_TIMEOUT_MS = 60_000;

class Interrupted extends Error {
  constructor() {
    super('interrupted: stopped the demo');
    this.name = 'Interrupted';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./=:@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

/** A readable hard link of a file where the filesystem allows, else a copy. */
function linkOrCopy(from: string, to: string, mode: number): void {
  // A hard link shares the original's mode bits: link only what is readable already.
  if ((statSync(from).mode & mode) === mode) {
    try {
      linkSync(from, to);
      return;
    } catch {
      // another filesystem
    }
  }
  copyFileSync(from, to);
  chmodSync(to, mode);
}

/** The packages `walstream` needs at run time: its dependencies' closure in node_modules. */
function runtimePackages(root: string): string[] {
  const want = (dir: string): string[] => {
    try {
      const p = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { dependencies?: Record<string, string>; optionalDependencies?: Record<string, string> };
      return [...Object.keys(p.dependencies ?? {}), ...Object.keys(p.optionalDependencies ?? {})];
    } catch {
      return [];
    }
  };
  const found = new Set<string>();
  const queue = want(root);
  while (queue.length > 0) {
    const name = queue.shift()!;
    if (found.has(name) || !existsSync(join(root, 'node_modules', name))) continue;
    found.add(name);
    queue.push(...want(join(root, 'node_modules', name)));
  }
  return [...found];
}

/**
 * How PostgreSQL (as the server's OS user) runs walstream: this Node and this package, or, when
 * that user cannot reach them (a checkout under /root), a copy in the demo directory (hard links
 * where possible).
 */
function walstreamForServer(dir: string, user: OsUser | null): { node: string; bin: string; staged: boolean } {
  const root = packageRoot();
  let node = process.execPath;
  let bin = join(root, 'bin', 'walstream');
  let staged = false;
  if (!reachableBy(join(root, 'dist'), user) || !reachableBy(join(root, 'node_modules'), user) || !reachableBy(bin, user)) {
    const to = join(dir, 'walstream');
    copyTreeReadable(join(root, 'bin'), join(to, 'bin'));
    copyTreeReadable(join(root, 'dist'), join(to, 'dist'));
    linkOrCopy(join(root, 'package.json'), join(to, 'package.json'), 0o644);
    for (const name of runtimePackages(root)) copyTreeReadable(join(root, 'node_modules', name), join(to, 'node_modules', name));
    chmodSync(join(to, 'node_modules'), 0o755);
    bin = join(to, 'bin', 'walstream');
    staged = true;
  }
  if (!reachableBy(node, user)) {
    mkdirSync(join(dir, 'node'), { mode: 0o755 });
    const copy = join(dir, 'node', 'node');
    linkOrCopy(node, copy, 0o755);
    node = copy;
    staged = true;
  }
  return { node, bin, staged };
}

/** Server binaries the server's OS user can run: a readable copy of a package's tree if needed. */
function reachableInstall(install: PostgresInstall, dir: string, user: OsUser | null): PostgresInstall {
  if (reachableBy(install.binDir, user)) return install;
  const native = resolve(install.binDir, '..');
  const to = join(dir, 'pgbin');
  copyTreeReadable(native, to);
  return { ...install, binDir: join(to, 'bin'), basebackup: install.basebackup ? join(to, 'bin', 'pg_basebackup') : undefined };
}

interface Workspace {
  dir: string;
  /** Remove dir itself (we created it) or only what we put in it. */
  created: boolean;
}

function makeWorkspace(dirOpt: string | undefined, user: OsUser | null): Workspace {
  if (dirOpt !== undefined) {
    const dir = resolve(dirOpt);
    let created = false;
    if (existsSync(dir)) {
      if (!statSync(dir).isDirectory()) throw new Error(`--dir ${dir} is not a directory`);
      if (readdirSync(dir).length > 0) throw new Error(`--dir ${dir} is not empty: give a new or empty directory`);
    } else {
      mkdirSync(dir, { recursive: true, mode: 0o755 });
      created = true;
    }
    if (!reachableBy(dir, user)) {
      if (created) rmSync(dir, { recursive: true, force: true });
      throw new Error(`--dir ${dir} cannot be reached by the "${user!.name}" OS user the servers run as: choose a directory it can reach (e.g. under /tmp)`);
    }
    return { dir, created };
  }
  const base = reachableBy(tmpdir(), user) ? tmpdir() : '/tmp';
  const dir = mkdtempSync(join(base, 'walstream-demo-'));
  chmodSync(dir, 0o755);
  return { dir, created: true };
}

export async function demo(o: DemoOptions): Promise<void> {
  const t0 = Date.now();
  const out = o.out;
  let interrupted = false;
  void o.stop.then(() => {
    interrupted = true;
  });
  const stopped = o.stop.then(() => {
    throw new Interrupted();
  });
  stopped.catch(() => undefined);
  /** Wait for a step, unless a signal comes first. */
  const step = <T>(p: Promise<T>): Promise<T> => Promise.race([p, stopped]);

  const user = serverOsUser();
  const found = findPostgres(o.pgBinDir);
  const ws = makeWorkspace(o.dir, user);
  const dir = ws.dir;
  const servers: DemoServer[] = [];
  let ok = false;
  let current: DemoServer | undefined;
  try {
    const install = reachableInstall(found, dir, user);
    out(`walstream demo: a throwaway PostgreSQL primary, its WAL received into an archive by walstream,`);
    out(`and a standby built from that archive alone, through walstream fetch. Everything is under ${dir}`);
    out('');
    out(`1. PostgreSQL ${found.versionText} from ${found.source}: ${found.binDir}`);
    if (install.binDir !== found.binDir) out(`   (copied to ${install.binDir}, where the "${user!.name}" OS user can run it)`);
    if (user) out(`   walstream runs as root and PostgreSQL refuses to: the servers run as the "${user.name}" OS user`);

    // -- the primary ----------------------------------------------------------------------------
    let t = Date.now();
    const primary = new DemoServer(install, join(dir, 'primary'), user);
    servers.push(primary);
    current = primary;
    await step(primary.initdb());
    primary.configure({
      listen_addresses: '127.0.0.1',
      unix_socket_directories: '',
      wal_level: 'replica',
      max_wal_senders: 5,
      max_replication_slots: 5,
      max_connections: 20,
      shared_buffers: '32MB',
      logging_collector: 'off',
      wal_retrieve_retry_interval: '1s',
    });
    await step(primary.start());
    out(`2. primary: initdb and start on 127.0.0.1:${primary.port} (${seconds(Date.now() - t)})`);
    out(`   data directory  ${primary.dataDir}`);
    out(`   server log      ${primary.logFile}`);

    const [slot] = await step(primary.query<{ lsn: string }>('select lsn::text as lsn from pg_create_physical_replication_slot($1, true)', [SLOT]));
    const slotLsn = parseLsn(slot!.lsn);
    out(`3. replication slot "${SLOT}" created at ${formatLsn(slotLsn)}: the primary keeps its WAL from there until walstream has it`);

    // -- the base backup, without WAL -----------------------------------------------------------
    t = Date.now();
    const standby = new DemoServer(install, join(dir, 'standby'), user);
    servers.push(standby);
    serverDir(standby.baseDir, user);
    let how: string;
    if (install.basebackup) {
      current = primary;
      await step(
        runAs(user, install.basebackup, ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-D', standby.dataDir, '-X', 'none', '-c', 'fast', '--no-sync', '-l', 'walstream demo'], {
          cwd: standby.baseDir,
          timeoutMs: STEP_TIMEOUT_MS,
        }),
      );
      how = 'pg_basebackup -X none';
    } else {
      await step(lowLevelBackup(primary, standby, install.version, user));
      how = `the low-level backup API (${install.version >= 15 ? 'pg_backup_start/pg_backup_stop' : 'pg_start_backup/pg_stop_backup'}) and a file copy`;
    }
    out(`4. base backup with ${how}, without any WAL (${seconds(Date.now() - t)})`);
    out(`   ${standby.dataDir}: the standby will have to restore every WAL segment it needs from the archive`);

    // -- data ------------------------------------------------------------------------------------
    t = Date.now();
    await step(primary.query(`create table ${TABLE} (id integer primary key, payload text not null, created timestamptz not null default now())`));
    await step(primary.query(`insert into ${TABLE} (id, payload) select g, md5(g::text) from generate_series(1, $1::integer) g`, [o.rows]));
    const [dataEnd] = await step(primary.query<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn'));
    const expected = await step(tableSummary(primary));
    // Finish the segment holding the rows, so it is complete in the archive.
    await step(primary.query('select pg_switch_wal()'));
    const [end] = await step(primary.query<{ lsn: string; seg: number }>("select pg_current_wal_lsn()::text as lsn, (select setting::integer from pg_settings where name = 'wal_segment_size') as seg"));
    const endPos = parseLsn(end!.lsn);
    const segSize = Number(end!.seg);
    out(`5. wrote ${o.rows} rows into table ${TABLE} (checksum ${expected.checksum}) and switched to a new WAL segment (${seconds(Date.now() - t)})`);
    out(`   the rows' WAL ends at ${dataEnd!.lsn}; the primary's WAL at ${formatLsn(endPos)}`);

    // -- walstream receive --------------------------------------------------------------------------
    t = Date.now();
    const spool = join(dir, 'spool');
    const archive = join(dir, 'archive');
    mkdirSync(spool, { mode: 0o700 });
    if (install.version < 15) {
      // No READ_REPLICATION_SLOT before 15: tell receive where to start the documented way, with
      // an empty .partial of the slot's first segment.
      const name = walFileName(1, lsnToSegNo(slotLsn, segSize), segSize);
      mkdirSync(spool, { recursive: true });
      writeOwned(join(spool, `${name}.partial`), '', null);
    }
    out(`6. $ walstream receive -D ${shellQuote(spool)} --archive ${shellQuote(archive)} -S ${SLOT} -E ${formatLsn(endPos)} --partial-interval 0`);
    out('   (run in this process: the same code as the command)');
    const metrics = new ReceiverMetrics();
    await step(
      receive({
        directory: spool,
        slot: SLOT,
        createSlot: false,
        dropSlot: false,
        ifNotExists: false,
        endPos,
        noLoop: true,
        statusIntervalMs: 10_000,
        synchronous: false,
        noSync: false,
        compression: 'none',
        connection: { dbname: `host=127.0.0.1 port=${primary.port} user=postgres sslmode=disable`, applicationName: 'walstream_demo' },
        archive,
        partialIntervalMs: 0,
        log: o.log,
        stop: o.stop,
        metrics,
      }),
    );
    if (interrupted) throw new Interrupted();
    const snap = metrics.snapshot();
    const archived = readdirSync(archive)
      .filter((n) => WAL_NAME_RE.test(n))
      .sort();
    out(
      `   received ${formatLsn(snap.received - snap.receivedBytesTotal)} to ${formatLsn(snap.received)} (${(Number(snap.receivedBytesTotal) / 1048576).toFixed(0)} MB), ` +
        `${snap.segmentsCompleted} complete segments, ${snap.segmentsArchived} archived (${seconds(Date.now() - t)})`,
    );
    out(`   archive ${archive}: ${archived.length} segments${archived.length ? `, ${archived[0]} to ${archived[archived.length - 1]}` : ''}`);
    out(`   spool   ${spool}: where WAL lands first; it keeps the newest segment as its resume point`);
    // PostgreSQL runs restore_command as its own OS user: hand it the archive.
    chownTree(archive, user);

    // -- the standby ---------------------------------------------------------------------------
    t = Date.now();
    const ws2 = walstreamForServer(dir, user);
    const restoreCommand = [ws2.node, ws2.bin, 'fetch', '%f', '%p', '--archive', archive].map((a) => (a === '%f' || a === '%p' ? a : shellQuote(a).replace(/%/g, '%%'))).join(' ');
    standby.configure({ restore_command: restoreCommand, primary_conninfo: '', hot_standby: 'on' });
    writeOwned(join(standby.dataDir, 'standby.signal'), '', user);
    out(`7. standby: restore_command = ${confString(restoreCommand)}`);
    if (ws2.staged) out(`   (walstream copied to ${dir} so that the "${user!.name}" OS user can run it)`);
    out('   and no primary_conninfo: it cannot stream from the primary, only restore from the archive');
    current = standby;
    await step(standby.start());
    const target = parseLsn(dataEnd!.lsn);
    let replayed: Lsn = 0n;
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    for (;;) {
      const [r] = await step(standby.query<{ lsn: string | null }>('select pg_last_wal_replay_lsn()::text as lsn'));
      replayed = r?.lsn ? parseLsn(r.lsn) : 0n;
      if (replayed >= target) break;
      if (Date.now() > deadline) throw new Error(`the standby replayed only up to ${formatLsn(replayed)}, not ${formatLsn(target)}, in ${STEP_TIMEOUT_MS / 1000} s`);
      await step(sleep(200));
    }
    const restored = [...readFileSync(standby.logFile, 'utf8').matchAll(/restored log file "([0-9A-F]{24})" from archive/g)].map((m) => m[1]!);
    const [receiver] = await step(standby.query<{ n: string }>('select count(*)::text as n from pg_stat_wal_receiver'));
    out(`   started on 127.0.0.1:${standby.port}; replayed up to ${formatLsn(replayed)} (${seconds(Date.now() - t)})`);
    out(
      `   ${restored.length} segments restored by walstream fetch${restored.length ? ` (${restored[0]} to ${restored[restored.length - 1]})` : ''}, ` +
        `${receiver?.n === '0' ? 'no WAL receiver running' : 'a WAL receiver is running'}`,
    );
    out(`   data directory  ${standby.dataDir}`);
    out(`   server log      ${standby.logFile}`);
    if (restored.length === 0) throw new Error(`the standby's log shows no segment restored from the archive (see ${standby.logFile})`);

    // -- the check -----------------------------------------------------------------------------
    const got = await step(tableSummary(standby));
    if (got.rows !== expected.rows || got.checksum !== expected.checksum) {
      throw new Error(`the standby has ${got.rows} rows with checksum ${got.checksum}; the primary has ${expected.rows} with ${expected.checksum}`);
    }
    out(`8. check: the standby has all ${got.rows} rows of ${TABLE}, checksum ${got.checksum}, the same as the primary: OK`);
    ok = true;
  } catch (err) {
    if (current && !(err instanceof Interrupted)) {
      const tail = current.logTail();
      if (tail) for (const line of tail.split('\n')) o.log.info(line);
    }
    throw err;
  } finally {
    for (const s of [...servers].reverse()) await s.stop();
    // A restore_command started just before the standby stopped finishes on its own: wait for it.
    const left = await waitForProcessesMentioning(dir);
    if (left.length > 0) o.log.warn(`processes still running from ${dir}: ${left.join(', ')}`);
    if (o.keep) {
      out(`${ok ? '9. ' : ''}kept ${dir} (servers stopped). To start them again:`);
      const as = user ? `runuser -u ${user.name} -- ` : '';
      for (const s of servers) if (existsSync(s.dataDir)) out(`   ${as}${join(servers[0]!.install.binDir, 'pg_ctl')} -D ${s.dataDir} -l ${s.logFile} start`);
    } else {
      if (ws.created) rmSync(dir, { recursive: true, force: true });
      else for (const n of readdirSync(dir)) rmSync(join(dir, n), { recursive: true, force: true });
      out(`${ok ? '9. ' : ''}cleaned up: stopped both servers, removed ${ws.created ? dir : `everything in ${dir}`}`);
    }
    if (ok) out(`\ndone in ${seconds(Date.now() - t0)}. Next: walstream receive --help, walstream fetch --help, and the README.`);
  }
}

/** Row count and a checksum over every row, in id order. */
async function tableSummary(server: DemoServer): Promise<{ rows: number; checksum: string }> {
  const [r] = await server.query<{ n: string; sum: string | null }>(`select count(*)::text as n, md5(string_agg(md5(id::text || ':' || payload), '' order by id)) as sum from ${TABLE}`);
  return { rows: Number(r!.n), checksum: r!.sum ?? '' };
}

/** A base backup through the low-level API: start, copy the files, stop, write backup_label. */
async function lowLevelBackup(primary: DemoServer, standby: DemoServer, version: number, user: OsUser | null): Promise<void> {
  const client: pg.Client = await primary.connect();
  try {
    await backupThroughApi(client, { version, label: 'walstream demo', from: primary.dataDir, to: standby.dataDir, user });
    if (!existsSync(join(standby.dataDir, 'pg_wal', 'archive_status'))) serverDir(join(standby.dataDir, 'pg_wal', 'archive_status'), user);
  } finally {
    await client.end().catch(() => undefined);
  }
}
