// walstream as PostgreSQL runs it: archive_command and restore_command execute as the server's OS
// user (postgres, when the tests run as root), which may not reach this checkout (e.g. under
// /root, mode 0700) or the Node binary. Then the package and Node are hard-linked (or copied) once
// into a directory that user can reach.
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { harnessTmpRoot, pgOsUser, traversable } from '../harness/exec.js';
import { BIN, ROOT } from './cli.js';

let staged: { node: string; bin: string } | undefined;

/** A staged copy's directory: walstream-pkg-<pid of the test process that made it>-XXXXXX. */
const STAGE_PREFIX = 'walstream-pkg-';
const STAGE_RE = /^walstream-pkg-(\d+)-[A-Za-z0-9]{6}$/;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Remove the staged copies whose test process is gone. Each process removes its own at exit, but
 * a test worker stopped by its pool can be cut short in the middle of that (the copy holds a few
 * thousand links): the test run's global teardown sweeps what is left (test/support/stage-setup.ts).
 */
export function removeDeadStages(): void {
  const root = harnessTmpRoot();
  let names: string[];
  try {
    names = readdirSync(root);
  } catch {
    return;
  }
  for (const n of names) {
    const m = STAGE_RE.exec(n);
    if (m && !alive(Number(m[1]))) rmSync(join(root, n), { recursive: true, force: true });
  }
}

function copyTree(src: string, dst: string): void {
  try {
    execFileSync('cp', ['-al', src, dst], { stdio: 'ignore' });
  } catch {
    execFileSync('cp', ['-a', src, dst], { stdio: 'ignore' });
  }
}

function stage(): { node: string; bin: string } {
  const user = pgOsUser();
  const reachable = (p: string): boolean => user === null || traversable(dirname(p), user);
  if (reachable(process.execPath) && reachable(BIN)) return { node: process.execPath, bin: BIN };
  if (staged && existsSync(staged.bin)) return staged;
  const base = mkdtempSync(join(harnessTmpRoot(), `${STAGE_PREFIX}${process.pid}-`));
  chmodSync(base, 0o755);
  for (const part of ['bin', 'dist', 'node_modules', 'package.json']) copyTree(join(ROOT, part), join(base, part));
  let node = process.execPath;
  if (!reachable(node)) {
    mkdirSync(join(base, 'node-bin'), { mode: 0o755 });
    node = join(base, 'node-bin', 'node');
    copyTree(process.execPath, node);
  }
  process.once('exit', () => rmSync(base, { recursive: true, force: true }));
  staged = { node, bin: join(base, 'bin', 'walstream') };
  return staged;
}

/** node and walstream's bin as the PostgreSQL OS user can run them (`walstream restore` writes these into restore_command). */
export function walstreamProgram(): { node: string; bin: string } {
  return stage();
}

/**
 * A shell command line running walstream with `args`, for postgresql.conf (args are shell-quoted):
 * the walstream command as users install it (bin/walstream.sh, which answers a prefetched fetch
 * or a push already archived without Node), on this Node.
 */
export function walstreamCommand(args: string[]): string {
  const { node, bin } = stage();
  return [`WALSTREAM_NODE=${q(node)}`, ...[`${bin}.sh`, ...args].map(q)].join(' ');
}

function q(s: string): string {
  return /^[A-Za-z0-9_%./:=-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A directory the PostgreSQL OS user owns (an archive that archive_command writes to). */
export function pgOwnedDir(prefix: string): string {
  const dir = mkdtempSync(join(harnessTmpRoot(), `walstream-${prefix}-`));
  const user = pgOsUser();
  if (user) chownSync(dir, user.uid, user.gid);
  chmodSync(dir, 0o755);
  return dir;
}
