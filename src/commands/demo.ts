// walstream demo: a newcomer's first run, start to finish, on this machine only. A throwaway
// PostgreSQL primary on a free loopback port; a replication slot; the primary's WAL received into a
// local archive by walstream's own receive code, running all along; a base backup taken into that
// archive by walstream backup; some rows; then a new server made from the archive alone by
// walstream restore --standby (the backup's files, restore_command = walstream fetch and no
// primary_conninfo, so everything it replays comes from the archive), and its rows compared with
// the primary's.
// Every step is printed with where its files are; everything is removed afterwards unless --keep.
import { chmodSync, copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import {
  DemoServer,
  chownTree,
  confString,
  copyTreeReadable,
  findPostgres,
  packageRoot,
  reachableBy,
  serverDir,
  serverOsUser,
  waitForProcessesMentioning,
  writeOwned,
  type OsUser,
  type PostgresInstall,
} from '../demo/postgres.js';
import { BACKGROUND_RECEIVER, receive } from './receive.js';
import { backup } from './backup.js';
import { restore } from './restore.js';
import { recordName } from '../backup/layout.js';
import { openArchive } from '../storage/open.js';
import type { ArchiveStore } from '../storage/types.js';
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
  const run = new DemoRun(o);
  try {
    const primary = await run.startPrimary();
    const slotLsn = await run.createSlot(primary);
    const receiver = await run.startReceiver(primary, slotLsn);
    await run.takeBackup(receiver);
    const rows = await run.writeRows(primary, receiver);
    const restored = await run.restoreServer(receiver.archive, rows);
    await run.check(restored, rows.expected);
  } catch (err) {
    run.showServerLog(err);
    throw err;
  } finally {
    await run.finish();
  }
}

/** The receiver running in the background from step 4 to step 6. */
interface DemoReceiver {
  connection: { dbname: string; applicationName: string };
  spool: string;
  archive: string;
  segSize: number;
  metrics: ReceiverMetrics;
  /** Until the receiver has archived the segment holding the byte before `lsn`: its name. */
  archived(lsn: Lsn): Promise<string>;
}

/** What step 6 wrote on the primary: where its WAL ends, in which segment, and the table's summary. */
interface DemoRows {
  dataEnd: Lsn;
  lastSegment: string;
  expected: { rows: number; checksum: string };
}

/** One run of the demo: its workspace and servers, each step a method, printed as it goes. */
class DemoRun {
  private readonly t0 = Date.now();
  private readonly out: (line: string) => void;
  private interrupted = false;
  private readonly stopped: Promise<never>;
  private readonly user: OsUser | null;
  private readonly found: ReturnType<typeof findPostgres>;
  private readonly ws: ReturnType<typeof makeWorkspace>;
  private install: PostgresInstall | undefined;
  private readonly servers: DemoServer[] = [];
  /** The server whose log is shown when a step fails. */
  private current: DemoServer | undefined;
  /** Stops what runs in the background (the receiver) and waits for it. */
  private stopBackground: (() => Promise<void>) | undefined;
  private ok = false;

  constructor(private readonly o: DemoOptions) {
    this.out = o.out;
    void o.stop.then(() => {
      this.interrupted = true;
    });
    this.stopped = o.stop.then(() => {
      throw new Interrupted();
    });
    this.stopped.catch(() => undefined);
    this.user = serverOsUser();
    this.found = findPostgres(o.pgBinDir);
    this.ws = makeWorkspace(o.dir, this.user);
  }

  private get dir(): string {
    return this.ws.dir;
  }

  /** Wait for a step, unless a signal comes first. */
  private step<T>(p: Promise<T>): Promise<T> {
    return Promise.race([p, this.stopped]);
  }

  /** Steps 1 and 2: the PostgreSQL found, and a primary made with initdb and started. */
  async startPrimary(): Promise<DemoServer> {
    const { out, found, user, dir } = this;
    const install = reachableInstall(found, dir, user);
    this.install = install;
    out(`walstream demo: a throwaway PostgreSQL primary, its WAL received into an archive by walstream, a base backup`);
    out(`taken into that archive by walstream backup, and a new server made from the archive alone by walstream restore.`);
    out(`Everything is under ${dir}`);
    out('');
    out(`1. PostgreSQL ${found.versionText} from ${found.source}: ${found.binDir}`);
    if (install.binDir !== found.binDir) out(`   (copied to ${install.binDir}, where the "${user!.name}" OS user can run it)`);
    if (user) out(`   walstream runs as root and PostgreSQL refuses to: the servers run as the "${user.name}" OS user`);

    const t = Date.now();
    const primary = new DemoServer(install, join(dir, 'primary'), user);
    this.servers.push(primary);
    this.current = primary;
    await this.step(primary.initdb());
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
    await this.step(primary.start());
    out(`2. primary: initdb and start on 127.0.0.1:${primary.port} (${seconds(Date.now() - t)})`);
    out(`   data directory  ${primary.dataDir}`);
    out(`   server log      ${primary.logFile}`);
    return primary;
  }

  /** Step 3: the replication slot; returns where it starts. */
  async createSlot(primary: DemoServer): Promise<{ lsn: Lsn; segSize: number }> {
    const [slot] = await this.step(
      primary.query<{ lsn: string; seg: number }>(
        "select lsn::text as lsn, (select setting::integer from pg_settings where name = 'wal_segment_size') as seg from pg_create_physical_replication_slot($1, true)",
        [SLOT],
      ),
    );
    const lsn = parseLsn(slot!.lsn);
    this.out(`3. replication slot "${SLOT}" created at ${formatLsn(lsn)}: the primary keeps its WAL from there until walstream has it`);
    return { lsn, segSize: Number(slot!.seg) };
  }

  /** Step 4: walstream receive in the background, until the archive holds its identity and a first segment. */
  async startReceiver(primary: DemoServer, slot: { lsn: Lsn; segSize: number }): Promise<DemoReceiver> {
    const { out, dir } = this;
    const t = Date.now();
    const { segSize } = slot;
    const spool = join(dir, 'spool');
    const archive = join(dir, 'archive');
    const connection = { dbname: `host=127.0.0.1 port=${primary.port} user=postgres sslmode=disable`, applicationName: 'walstream_demo' };
    mkdirSync(spool, { mode: 0o700 });
    if (this.install!.version < 15) {
      // No READ_REPLICATION_SLOT before 15: tell receive where to start the documented way, with
      // an empty .partial of the slot's first segment.
      writeOwned(join(spool, `${walFileName(1, lsnToSegNo(slot.lsn, segSize), segSize)}.partial`), '', null);
    }
    out(`4. $ walstream receive -D ${shellQuote(spool)} --archive ${shellQuote(archive)} -S ${SLOT} --partial-interval 0`);
    out('   (run in this process, in the background until step 6: the same code as the command)');
    const metrics = new ReceiverMetrics();
    let stopReceiver!: () => void;
    const receiverStop = Promise.race([this.o.stop, new Promise<void>((r) => (stopReceiver = r))]);
    const receiving = receive({
      directory: spool,
      slot: SLOT,
      ...BACKGROUND_RECEIVER,
      compression: 'none',
      connection,
      archive,
      partialIntervalMs: 0,
      log: this.o.log,
      stop: receiverStop,
      metrics,
    });
    receiving.catch(() => undefined);
    const receiverEnded = receiving.then(() => {
      throw new Error(this.interrupted ? 'interrupted' : 'walstream receive stopped early');
    });
    receiverEnded.catch(() => undefined);
    this.stopBackground = async () => {
      stopReceiver();
      await receiving.catch(() => undefined);
    };
    const archived = async (lsn: Lsn): Promise<string> => {
      const name = walFileName(1, lsnToSegNo(lsn - 1n, segSize), segSize);
      const deadline = Date.now() + STEP_TIMEOUT_MS;
      while (!existsSync(join(archive, name))) {
        if (Date.now() > deadline) throw new Error(`walstream receive did not archive ${name} within ${STEP_TIMEOUT_MS / 1000} s`);
        await this.step(Promise.race([sleep(100), receiverEnded]));
      }
      return name;
    };
    // A first complete segment in the archive: walstream backup checks that something archives this server's WAL.
    const [first] = await this.step(primary.query<{ lsn: string }>('select pg_switch_wal()::text as lsn'));
    const firstName = await archived(parseLsn(first!.lsn));
    out(`   the archive has the first segment, ${firstName}, and its identity (walstream.json: this server's system identifier) (${seconds(Date.now() - t)})`);
    return { connection, spool, archive, segSize, metrics, archived };
  }

  /** Step 5: walstream backup into the archive. */
  async takeBackup(r: DemoReceiver): Promise<void> {
    const { out } = this;
    const t = Date.now();
    out(`5. $ walstream backup --archive ${shellQuote(r.archive)} -d ${shellQuote(r.connection.dbname)} -c fast -l ${shellQuote('walstream demo')}`);
    out('   (run in this process: BASE_BACKUP over a replication connection, each tar streamed into the archive)');
    const made = await this.step(
      backup({
        connection: { ...r.connection, applicationName: 'walstream backup' },
        archive: r.archive,
        compression: 'none',
        fastCheckpoint: true,
        label: 'walstream demo',
        wal: 'none',
        walTimeoutMs: STEP_TIMEOUT_MS,
        log: this.o.log,
        stop: this.o.stop,
      }),
    );
    const rec = made.record;
    out(`   backup ${rec.name}: start ${rec.startLsn}, end ${rec.endLsn}, timeline ${rec.timeline}, ${(rec.size / 1048576).toFixed(1)} MB (${seconds(Date.now() - t)})`);
    out(`   stored as ${rec.objects.map((x) => x.name).join(', ')} and the record ${recordName(rec.name)}, written last, once every file`);
    out(`   was checked against the server's backup_manifest as it was stored and the WAL ${rec.startWal} to ${rec.endWal} was in the archive`);
  }

  /** Step 6: rows written after the backup, their segment archived, the receiver stopped. */
  async writeRows(primary: DemoServer, r: DemoReceiver): Promise<DemoRows> {
    const { out, o } = this;
    const t = Date.now();
    await this.step(primary.query(`create table ${TABLE} (id integer primary key, payload text not null, created timestamptz not null default now())`));
    await this.step(primary.query(`insert into ${TABLE} (id, payload) select g, md5(g::text) from generate_series(1, $1::integer) g`, [o.rows]));
    const [dataEnd] = await this.step(primary.query<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn'));
    const expected = await this.step(tableSummary(primary));
    // Finish the segment holding the rows, so it is complete in the archive.
    const [end] = await this.step(primary.query<{ lsn: string }>('select pg_switch_wal()::text as lsn'));
    const lastSegment = await r.archived(parseLsn(end!.lsn));
    await this.stopBackground!();
    this.stopBackground = undefined;
    if (this.interrupted) throw new Interrupted();
    out(`6. wrote ${o.rows} rows into table ${TABLE} after the backup (checksum ${expected.checksum}) and switched to a new WAL segment`);
    out(`   the rows' WAL ends at ${dataEnd!.lsn}, in ${lastSegment}; walstream receive archived it, then was stopped (${seconds(Date.now() - t)})`);
    const snap = r.metrics.snapshot();
    const walArchived = readdirSync(r.archive)
      .filter((n) => WAL_NAME_RE.test(n))
      .sort();
    out(
      `   received ${formatLsn(snap.received - snap.receivedBytesTotal)} to ${formatLsn(snap.received)} (${(Number(snap.receivedBytesTotal) / 1048576).toFixed(0)} MB), ` +
        `${snap.segmentsCompleted} complete segments, ${snap.segmentsArchived} archived`,
    );
    out(`   archive ${r.archive}: the backup and ${walArchived.length} segments${walArchived.length ? `, ${walArchived[0]} to ${walArchived[walArchived.length - 1]}` : ''}`);
    out(`   spool   ${r.spool}: where WAL lands first; it keeps the newest segment as its resume point`);
    return { dataEnd: parseLsn(dataEnd!.lsn), lastSegment, expected };
  }

  /** Step 7: walstream restore --standby into a new data directory, started, replaying up to the rows' end. */
  async restoreServer(archive: string, rows: DemoRows): Promise<DemoServer> {
    const { out, dir, user } = this;
    const t = Date.now();
    const restored = new DemoServer(this.install!, join(dir, 'restored'), user);
    this.servers.push(restored);
    serverDir(restored.baseDir, user);
    const ws2 = walstreamForServer(dir, user);
    out(`7. $ walstream restore --archive ${shellQuote(archive)} -D ${shellQuote(restored.dataDir)} --standby --no-sync`);
    out('   (run in this process: the newest backup, its files checked against its manifest as they are written)');
    let store: ArchiveStore | undefined;
    const log = this.o.log;
    const result = await this.step(
      restore({
        archive,
        keyFromEnvironment: false,
        openStore: async () => (store = await openArchive(archive)),
        directory: restored.dataDir,
        backup: 'latest',
        standby: true,
        program: [ws2.node, ws2.bin],
        noSync: true,
        // Its account of what it restores is printed below; its progress messages are verbose here.
        log: { info: (m) => log.verbose(m), verbose: (m) => log.verbose(m), warn: (m) => log.warn(m), error: (m) => log.error(m) },
        // The command's own account, minus its advice to chown and start: the demo does both.
        out: (line) => {
          if (!/^(?:note: the files are root's|next: )/.test(line)) out(`   ${line}`);
        },
      }),
    );
    await store?.close();
    const restoreCommand = result.settings.find(([k]) => k === 'restore_command')?.[1] ?? '';
    out(`   restore_command = ${confString(restoreCommand)}`);
    if (ws2.staged) out(`   (walstream copied to ${dir} so that the "${user!.name}" OS user can run it)`);
    out('   and no primary_conninfo: it cannot stream from the primary, only restore from the archive');
    // PostgreSQL runs as its own OS user: hand it the data directory and the archive restore_command reads.
    chownTree(restored.dataDir, user);
    chownTree(archive, user);
    this.current = restored;
    await this.step(restored.start());
    let replayed: Lsn = 0n;
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    for (;;) {
      const [r] = await this.step(restored.query<{ lsn: string | null }>('select pg_last_wal_replay_lsn()::text as lsn'));
      replayed = r?.lsn ? parseLsn(r.lsn) : 0n;
      if (replayed >= rows.dataEnd) break;
      if (Date.now() > deadline) throw new Error(`the restored server replayed only up to ${formatLsn(replayed)}, not ${formatLsn(rows.dataEnd)}, in ${STEP_TIMEOUT_MS / 1000} s`);
      await this.step(sleep(200));
    }
    const fetched = [...readFileSync(restored.logFile, 'utf8').matchAll(/restored log file "([0-9A-F]{24})" from archive/g)].map((m) => m[1]!);
    const [receiver] = await this.step(restored.query<{ n: string }>('select count(*)::text as n from pg_stat_wal_receiver'));
    out(`   started on 127.0.0.1:${restored.port} as a standby; replayed up to ${formatLsn(replayed)} (${seconds(Date.now() - t)})`);
    out(
      `   ${fetched.length} segments restored by walstream fetch${fetched.length ? ` (${fetched[0]} to ${fetched[fetched.length - 1]})` : ''}, ` +
        `${receiver?.n === '0' ? 'no WAL receiver running' : 'a WAL receiver is running'}`,
    );
    out(`   data directory  ${restored.dataDir}`);
    out(`   server log      ${restored.logFile}`);
    if (!fetched.includes(rows.lastSegment)) throw new Error(`the restored server's log shows no ${rows.lastSegment} restored from the archive (see ${restored.logFile})`);
    return restored;
  }

  /** Step 8: the restored server's rows against the primary's. */
  async check(restored: DemoServer, expected: { rows: number; checksum: string }): Promise<void> {
    const got = await this.step(tableSummary(restored));
    if (got.rows !== expected.rows || got.checksum !== expected.checksum) {
      throw new Error(`the restored server has ${got.rows} rows with checksum ${got.checksum}; the primary has ${expected.rows} with ${expected.checksum}`);
    }
    this.out(`8. check: the restored server has all ${got.rows} rows of ${TABLE}, checksum ${got.checksum}, the same as the primary: OK`);
    this.ok = true;
  }

  /** After a failed step: the last lines of the server log it was working with. */
  showServerLog(err: unknown): void {
    if (!this.current || err instanceof Interrupted) return;
    const tail = this.current.logTail();
    if (tail) for (const line of tail.split('\n')) this.o.log.info(line);
  }

  /** Stop everything, then remove the workspace (or keep it with --keep) and say so. */
  async finish(): Promise<void> {
    const { out, dir, ws, user, servers, ok } = this;
    await this.stopBackground?.();
    for (const s of [...servers].reverse()) await s.stop();
    // A restore_command started just before the standby stopped finishes on its own: wait for it.
    const left = await waitForProcessesMentioning(dir);
    if (left.length > 0) this.o.log.warn(`processes still running from ${dir}: ${left.join(', ')}`);
    if (this.o.keep) {
      out(`${ok ? '9. ' : ''}kept ${dir} (servers stopped). To start them again:`);
      const as = user ? `runuser -u ${user.name} -- ` : '';
      for (const s of servers) if (existsSync(s.dataDir)) out(`   ${as}${join(servers[0]!.install.binDir, 'pg_ctl')} -D ${s.dataDir} -l ${s.logFile} start`);
    } else {
      if (ws.created) rmSync(dir, { recursive: true, force: true });
      else for (const n of readdirSync(dir)) rmSync(join(dir, n), { recursive: true, force: true });
      out(`${ok ? '9. ' : ''}cleaned up: stopped both servers, removed ${ws.created ? dir : `everything in ${dir}`}`);
    }
    if (ok) out(`\ndone in ${seconds(Date.now() - this.t0)}. Next: walstream receive --help, walstream backup --help, walstream restore --help, and the README.`);
  }
}

/** Row count and a checksum over every row, in id order. */
async function tableSummary(server: DemoServer): Promise<{ rows: number; checksum: string }> {
  const [r] = await server.query<{ n: string; sum: string | null }>(`select count(*)::text as n, md5(string_agg(md5(id::text || ':' || payload), '' order by id)) as sum from ${TABLE}`);
  return { rows: Number(r!.n), checksum: r!.sum ?? '' };
}
