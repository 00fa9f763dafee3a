/**
 * Process helpers for the PostgreSQL test harness.
 *
 * PostgreSQL refuses to run as root, so when the test process is root every
 * server-side binary (initdb, pg_ctl, postgres, pg_basebackup, ...) is run as
 * the `postgres` OS user through `runuser -u postgres -- ...`. When not root,
 * commands run directly as the current user.
 */
import { execFileSync, spawn } from 'node:child_process';
import { accessSync, closeSync, constants, fstatSync, openSync, readSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { reachableBy, SERVER_OS_USER, serverOsUser, type OsUser } from '../../src/demo/postgres.js';

// The OS user and the reachability test are walstream demo's (src/demo/postgres.ts): one way to
// run PostgreSQL as root, for the demo and the tests alike.
export type { OsUser };
/** Name of the OS account used to run PostgreSQL when the tests run as root. */
export const PG_OS_USER = SERVER_OS_USER;
/** The OS user PostgreSQL must run as, or null when we are not root. Throws if we are root and the user does not exist. */
export const pgOsUser = serverOsUser;
/** Can `user` traverse every directory down to and including `dir`? (mode bits only) */
export const traversable = reachableBy;

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

const TMPFS_MAGIC = 0x01021994;
const MIN_RAM_TMP_BYTES = 2 * 1024 ** 3;

function usableBy(dir: string, user: OsUser | null): boolean {
  try {
    return user === null || traversable(dir, user);
  } catch {
    return false;
  }
}

/**
 * Where the harness creates its temporary directories: WALSTREAM_TEST_TMPDIR
 * if set; else, with `preferRam`, /dev/shm when it is a tmpfs with at least
 * 2 GB free (initdb and base backups are 2-5x faster there); else
 * os.tmpdir(), falling back to /tmp when the postgres user could not reach it.
 */
export function harnessTmpRoot(preferRam = false): string {
  const user = pgOsUser();
  const explicit = process.env['WALSTREAM_TEST_TMPDIR'];
  if (explicit) return explicit;
  if (preferRam) {
    try {
      const st = statfsSync('/dev/shm');
      if (st.type === TMPFS_MAGIC && st.bavail * st.bsize >= MIN_RAM_TMP_BYTES && usableBy('/dev/shm', user)) {
        accessSync('/dev/shm', constants.W_OK);
        return '/dev/shm';
      }
    } catch {
      // no usable /dev/shm
    }
  }
  const dir = tmpdir();
  return usableBy(dir, user) ? dir : '/tmp';
}

/** Last `maxLines` lines (at most `maxBytes` bytes) of a file; '' if unreadable. */
export function fileTail(file: string, maxLines = 60, maxBytes = 16384): string {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const size = fstatSync(fd).size;
    const len = Math.min(size, maxBytes);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    const lines = buf.toString('utf8').split('\n');
    if (lines.at(-1) === '') lines.pop();
    return lines.slice(-maxLines).join('\n');
  } catch {
    return '';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function tail(text: string, maxLines = 40): string {
  const lines = text.trimEnd().split('\n');
  return lines.slice(-maxLines).join('\n');
}

function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

export function formatCommand(argv: readonly string[]): string {
  return argv.map(shellQuote).join(' ');
}

export interface CommandErrorDetails {
  argv: string[];
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  logFile?: string;
}

/** A failed external command; the message carries everything needed to debug a CI run. */
export class CommandError extends Error {
  readonly argv: string[];
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;

  constructor(d: CommandErrorDetails, what?: string) {
    const status = d.timedOut ? 'timed out' : d.signal ? `killed by ${d.signal}` : `exit code ${String(d.exitCode)}`;
    const parts = [`${what ? `${what}: ` : ''}command failed (${status}): ${formatCommand(d.argv)}`];
    if (d.stderr.trim()) parts.push(`--- stderr ---\n${tail(d.stderr)}`);
    if (d.stdout.trim()) parts.push(`--- stdout (tail) ---\n${tail(d.stdout, 20)}`);
    if (d.logFile) {
      parts.push(`--- server log tail (${d.logFile}) ---\n${fileTail(d.logFile) || '(empty or missing)'}`);
    }
    super(parts.join('\n'));
    this.name = 'CommandError';
    this.argv = d.argv;
    this.exitCode = d.exitCode;
    this.signal = d.signal;
    this.stdout = d.stdout;
    this.stderr = d.stderr;
    this.timedOut = d.timedOut;
  }
}

export interface RunOptions {
  /** Working directory (must be accessible to the postgres user when root). */
  cwd?: string;
  /** Extra environment variables (PG* variables of the test process are never inherited). */
  env?: Record<string, string>;
  /** Kill the command (and its process group) after this long. Default 120 s. */
  timeoutMs?: number;
  /** Data written to stdin. */
  input?: string;
  /** Server log whose tail is appended to the error message on failure. */
  logFile?: string;
  /** Throw CommandError on non-zero exit (default true). */
  check?: boolean;
  /** Short description prepended to error messages. */
  what?: string;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
}

/** process.env without libpq's PG* variables (they would redirect tools to other servers). */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('PG') && v !== undefined) env[k] = v;
  }
  return { ...env, ...extra };
}

/** argv to run `cmd args` as the postgres OS user (or directly when not root). */
export function pgArgv(cmd: string, args: readonly string[], env: Record<string, string> = {}): string[] {
  const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  if (pgOsUser() === null) return envArgs.length > 0 ? ['/usr/bin/env', ...envArgs, cmd, ...args] : [cmd, ...args];
  // `env` makes the variables explicit, whatever runuser/PAM does to the environment.
  return ['runuser', '-u', PG_OS_USER, '--', '/usr/bin/env', ...envArgs, cmd, ...args];
}

/** Run an arbitrary argv with a timeout, collecting output. */
export function run(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const [file, ...args] = argv;
  if (file === undefined) throw new Error('run: empty argv');
  const timeoutMs = opts.timeoutMs ?? 120_000;
  return new Promise<RunResult>((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: opts.cwd,
      env: cleanEnv(opts.env),
      stdio: ['pipe', 'pipe', 'pipe'],
      // Own process group, so a timeout can kill runuser and its child together.
      detached: true,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`failed to spawn ${formatCommand(argv)}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const result: RunResult = {
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        exitCode: code,
        signal,
      };
      if ((opts.check ?? true) && (code !== 0 || timedOut)) {
        reject(new CommandError({ argv: [...argv], exitCode: code, signal, stdout: result.stdout, stderr: result.stderr, timedOut, logFile: opts.logFile }, opts.what));
      } else {
        resolve(result);
      }
    });
  });
}

/**
 * Run `cmd args` as the postgres OS user when root (via runuser), directly
 * otherwise. Rejects with a CommandError (command line, exit code, stderr,
 * server log tail) on failure unless `check: false`.
 */
export function runAsPg(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return run(pgArgv(cmd, args, opts.env), { ...opts, env: {} });
}

/** Synchronous variant, for exit handlers only. Never throws. */
export function runAsPgSyncQuiet(cmd: string, args: readonly string[], timeoutMs = 30_000): boolean {
  const [file, ...rest] = pgArgv(cmd, args);
  if (file === undefined) return false;
  try {
    execFileSync(file, rest, { stdio: 'ignore', timeout: timeoutMs, env: cleanEnv() });
    return true;
  } catch {
    return false;
  }
}
