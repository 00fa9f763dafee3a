// bin/walstream.sh, the walstream command: it answers a fetch the prefetch spool holds and a push an
// earlier look-ahead archived without starting Node, and hands everything else to bin/walstream
// on Node untouched. Over random command lines and environments, a call the script answers must
// be one the command line reads (cli/fast-path.ts parseFastCommand, itself held to commander) as
// the same fetch or push with the same spool, archive, file and destination; a call it does not
// answer must reach Node with its arguments as given, having changed nothing.
import { afterEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { parseFastCommand } from '../../src/cli/fast-path.js';
import { ROOT } from '../support/cli.js';
import { rng } from './fixture.js';

const SCRIPT = join(ROOT, 'bin', 'walstream.sh');
const SEG = '000000010000000000000003';
const SEG_SIZE = 1024 * 1024;
const NODE_CALLED = 99;

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A data directory with a prefetch spool holding SEG for archive /arch, a push marker for SEG, and a stand-in for Node that records its arguments. */
function setUp(): { cwd: string; fakeNode: string; argsFile: string } {
  const cwd = mkdtempSync(join(tmpdir(), 'walstream-sh-'));
  dirs.push(cwd);
  mkdirSync(join(cwd, 'pg_wal'));
  for (const spool of ['.walstream-prefetch', 'spool']) {
    mkdirSync(join(cwd, spool), { mode: 0o700 });
    writeFileSync(join(cwd, spool, '.archive'), '/arch ');
    writeFileSync(join(cwd, spool, SEG), segment(SEG_SIZE));
  }
  for (const markers of ['.walstream-push', 'spool']) {
    mkdirSync(join(cwd, markers), { recursive: true, mode: 0o700 });
    writeFileSync(join(cwd, markers, '.archive'), '/arch ');
    writeFileSync(join(cwd, markers, `${SEG}.pushed`), '');
  }
  writeFileSync(join(cwd, 'pg_wal', SEG), segment(SEG_SIZE));
  const argsFile = join(cwd, 'node-args');
  const fakeNode = join(cwd, 'fake-node');
  writeFileSync(fakeNode, `#!/bin/sh\nprintf '%s\\n' "$@" > ${argsFile}\nexit ${NODE_CALLED}\n`, { mode: 0o755 });
  return { cwd, fakeNode, argsFile };
}

/** A segment file whose first page header gives `size` as its segment size. */
function segment(size: number): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt32LE(size, 32);
  return b;
}

function run(args: string[], env: Record<string, string>, cwd: string, fakeNode: string): number | null {
  const r = spawnSync(SCRIPT, args, { cwd, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', WALSTREAM_NODE: fakeNode, ...env }, encoding: 'utf8' });
  if (r.error) throw r.error;
  if (r.status === 0) expect(r.stderr).toBe('');
  return r.status;
}

describe('bin/walstream.sh', () => {
  it('answers the usual forms itself', () => {
    const { cwd, fakeNode } = setUp();
    expect(run(['fetch', SEG, 'pg_wal/RECOVERYXLOG', '--archive', '/arch', '--prefetch', '8'], {}, cwd, fakeNode)).toBe(0);
    expect(readFileSync(join(cwd, 'pg_wal', 'RECOVERYXLOG')).equals(segment(SEG_SIZE))).toBe(true);
    expect(existsSync(join(cwd, '.walstream-prefetch', SEG))).toBe(false);
    expect(run(['push', `pg_wal/${SEG}`, '--archive', '/arch', '--parallel', '4'], {}, cwd, fakeNode)).toBe(0);
    expect(existsSync(join(cwd, '.walstream-push', `${SEG}.pushed`))).toBe(false);
    // And from the environment, with the other spool.
    expect(run(['fetch', SEG, 'pg_wal/X'], { WALSTREAM_ARCHIVE: '/arch', WALSTREAM_PREFETCH: '2', WALSTREAM_SPOOL: 'spool' }, cwd, fakeNode)).toBe(0);
    expect(run(['push', `pg_wal/${SEG}`], { WALSTREAM_ARCHIVE: '/arch', WALSTREAM_PARALLEL: '2', WALSTREAM_SPOOL: 'spool' }, cwd, fakeNode)).toBe(0);
  });

  it('hands to Node whatever it cannot vouch for, changing nothing', () => {
    const usual = ['fetch', SEG, 'pg_wal/RECOVERYXLOG', '--archive', '/arch', '--prefetch'];
    const cases: { why: string; args?: string[]; env?: Record<string, string>; prepare?: (cwd: string) => void }[] = [
      { why: 'a spool other users can write to', prepare: (cwd) => chmodSync(join(cwd, '.walstream-prefetch'), 0o770) },
      { why: 'a spool of another archive', args: ['fetch', SEG, 'pg_wal/R', '--archive', '/other', '--prefetch'] },
      { why: 'another endpoint', env: { AWS_ENDPOINT_URL: 'http://127.0.0.1:9' } },
      { why: 'an archive record with a newline', prepare: (cwd) => writeFileSync(join(cwd, '.walstream-prefetch', '.archive'), '/arch \nx') },
      { why: 'no archive record', prepare: (cwd) => rmSync(join(cwd, '.walstream-prefetch', '.archive')) },
      { why: 'a short segment', prepare: (cwd) => writeFileSync(join(cwd, '.walstream-prefetch', SEG), segment(SEG_SIZE).subarray(0, SEG_SIZE - 1)) },
      { why: 'a segment whose header gives another size', prepare: (cwd) => writeFileSync(join(cwd, '.walstream-prefetch', SEG), segment(2 * SEG_SIZE).subarray(0, SEG_SIZE)) },
      {
        why: 'a segment as a directory',
        prepare: (cwd) => {
          rmSync(join(cwd, '.walstream-prefetch', SEG));
          mkdirSync(join(cwd, '.walstream-prefetch', SEG));
        },
      },
      { why: '%p a directory', args: [...usual.slice(0, 2), 'pg_wal', ...usual.slice(3)] },
      { why: 'verbose', env: { WALSTREAM_VERBOSE: '1' } },
      { why: 'the record check', env: { WALSTREAM_VERIFY_RECORDS: 'on' } },
      { why: 'no --prefetch', args: usual.slice(0, -1) },
      { why: '--prefetch 0', args: [...usual, '0'] },
      { why: '--prefetch 08', args: [...usual, '08'] },
      { why: 'a repeated option', args: [...usual, '--archive', '/arch'] },
      { why: 'an option it does not read', args: [...usual, '-v'] },
      { why: 'a value like an option', args: ['fetch', SEG, 'pg_wal/R', '--prefetch', '--archive', '--arch'] },
      { why: 'a history file', args: ['fetch', '00000002.history', 'pg_wal/R', '--archive', '/arch', '--prefetch'] },
      { why: 'a third argument', args: [...usual, 'more'] },
      { why: 'push without --parallel', args: ['push', `pg_wal/${SEG}`, '--archive', '/arch'] },
      { why: 'push --parallel 1', args: ['push', `pg_wal/${SEG}`, '--archive', '/arch', '--parallel', '1'] },
      { why: 'push with compression', args: ['push', `pg_wal/${SEG}`, '--archive', '/arch', '--parallel', '4'], env: { WALSTREAM_COMPRESS: 'gzip' } },
      { why: 'push, markers other users can write to', args: ['push', `pg_wal/${SEG}`, '--archive', '/arch', '--parallel', '4'], prepare: (cwd) => chmodSync(join(cwd, '.walstream-push'), 0o777) },
      { why: 'push with no archive', args: ['push', `pg_wal/${SEG}`, '--parallel', '4'] },
      { why: 'push, markers left for another archive', args: ['push', `pg_wal/${SEG}`, '--archive', '/other', '--parallel', '4'] },
      { why: 'push, markers of no recorded archive', args: ['push', `pg_wal/${SEG}`, '--archive', '/arch', '--parallel', '4'], prepare: (cwd) => rmSync(join(cwd, '.walstream-push', '.archive')) },
      { why: 'push with an empty WALSTREAM_COMPRESS', args: ['push', `pg_wal/${SEG}`, '--archive', '/arch', '--parallel', '4'], env: { WALSTREAM_COMPRESS: '' } },
      { why: 'a log format the command line refuses', env: { WALSTREAM_LOG_FORMAT: 'bogus' } },
      { why: 'a spool path through ..', args: [...usual, '--spool', 'pg_wal/../spool'] },
      { why: 'a marker path through ..', args: ['push', `pg_wal/${SEG}`, '--archive', '/arch', '--parallel', '4', '--spool', 'pg_wal/../spool'] },
      { why: 'push -Z', args: ['push', `pg_wal/${SEG}`, '--archive', '/arch', '--parallel', '4', '-Z', 'gzip'] },
    ];
    // %p on another file system than the spool (a rename cannot do it: Node copies).
    const shm = '/dev/shm';
    if (existsSync(shm) && statSync(shm).dev !== statSync(tmpdir()).dev) {
      const other = mkdtempSync(join(shm, 'walstream-sh-'));
      dirs.push(other);
      cases.push({ why: '%p on another file system', args: ['fetch', SEG, join(other, 'RECOVERYXLOG'), ...usual.slice(3)] });
    }
    for (const c of cases) {
      const { cwd, fakeNode, argsFile } = setUp();
      c.prepare?.(cwd);
      const args = c.args ?? usual;
      const status = run(args, c.env ?? {}, cwd, fakeNode);
      expect({ why: c.why, status }).toEqual({ why: c.why, status: NODE_CALLED });
      expect(readFileSync(argsFile, 'utf8')).toBe(`${join(ROOT, 'bin', 'walstream')}\n${args.join('\n')}\n`);
      expect(existsSync(join(cwd, '.walstream-push', `${SEG}.pushed`)), c.why).toBe(true);
      expect(existsSync(join(cwd, 'pg_wal', 'RECOVERYXLOG')), c.why).toBe(false);
    }
  });

  it('answers only what the command line reads as the same call (random command lines)', () => {
    const rnd = rng(0x5eed5);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
    const words = [
      SEG,
      '00000001000000000000000A',
      'pg_wal/RECOVERYXLOG',
      `pg_wal/${SEG}`,
      '--archive',
      '--archive=/arch',
      '/arch',
      '/other',
      '--prefetch',
      '--prefetch=3',
      '8',
      '64',
      '65',
      '0',
      '--spool',
      '--spool=spool',
      'spool',
      '--parallel',
      '--parallel=4',
      '4',
      '1',
      '--s3-endpoint',
      'http://e',
      '--encryption-key-file',
      'k',
      '--encryption-required',
      '--partial',
      '--no-sync',
      '-v',
      '--',
      '-',
    ];
    const envs: Record<string, string>[] = [
      {},
      { WALSTREAM_ARCHIVE: '/arch' },
      { WALSTREAM_PREFETCH: '4', WALSTREAM_ARCHIVE: '/arch' },
      { WALSTREAM_SPOOL: 'spool' },
      { WALSTREAM_PARALLEL: '3' },
      { WALSTREAM_ARCHIVE: '' },
      { AWS_ENDPOINT_URL: '' },
    ];
    let answered = 0;
    const forms = {
      fetch: [[SEG, 'pg_wal/RECOVERYXLOG'], ['--archive', '/arch'], ['--prefetch'], ['--spool', 'spool'], ['--s3-endpoint', 'http://e'], ['--partial']],
      push: [[`pg_wal/${SEG}`], ['--archive', '/arch'], ['--parallel', '4'], ['--spool', 'spool'], ['--encryption-required'], ['--no-sync']],
    };
    for (let i = 0; i < 200; i++) {
      const command = rnd() < 0.5 ? 'fetch' : 'push';
      // A usual form with its parts in a random order, some left out, then up to two words changed.
      const parts = forms[command].filter((_, j) => j < 2 || rnd() < 0.6).sort(() => rnd() - 0.5);
      const args = [command, ...parts.flat()];
      for (let m = Math.floor(rnd() * 3); m > 0; m--) {
        const at = 1 + Math.floor(rnd() * args.length);
        const r = rnd();
        if (r < 0.4) args.splice(at, 0, pick(words));
        else if (r < 0.7) args.splice(at, 1);
        else args.splice(at, 1, pick(words));
      }
      const env = pick(envs);
      const { cwd, fakeNode } = setUp();
      const status = run(args, env, cwd, fakeNode);
      expect([0, NODE_CALLED], args.join(' ')).toContain(status);
      if (status !== 0) {
        expect(existsSync(join(cwd, '.walstream-prefetch', SEG)) && existsSync(join(cwd, 'spool', SEG)), args.join(' ')).toBe(true);
        expect(existsSync(join(cwd, '.walstream-push', `${SEG}.pushed`)) && existsSync(join(cwd, 'spool', `${SEG}.pushed`)), args.join(' ')).toBe(true);
        continue;
      }
      answered++;
      const c = parseFastCommand(args, env);
      expect(c, args.join(' ')).toBeDefined();
      if (c!.command === 'fetch') {
        expect(c!.prefetch, args.join(' ')).toBeDefined();
        const spool = resolve(cwd, c!.spool ?? '.walstream-prefetch');
        expect(`${c!.archive} ${c!.s3Endpoint ?? ''}`).toBe(readFileSync(join(spool, '.archive'), 'utf8'));
        expect(existsSync(join(spool, c!.name)), args.join(' ')).toBe(false);
        expect(readFileSync(resolve(cwd, c!.dest)).equals(segment(SEG_SIZE))).toBe(true);
      } else {
        expect(c!.parallel, args.join(' ')).toBeGreaterThan(1);
        expect(`${c!.archive} ${c!.s3Endpoint ?? ''}`).toBe(readFileSync(join(resolve(cwd, c!.spool ?? '.walstream-push'), '.archive'), 'utf8'));
        expect(existsSync(join(resolve(cwd, c!.spool ?? '.walstream-push'), `${basename(c!.path)}.pushed`)), args.join(' ')).toBe(false);
      }
    }
    // The grid reaches the answered forms too, not only the refusals.
    expect(answered).toBeGreaterThan(30);
  });

  it('runs receive and serve with a young generation of 2 MB a semi-space, unless NODE_OPTIONS sizes it', () => {
    const { cwd, fakeNode, argsFile } = setUp();
    const bin = join(ROOT, 'bin', 'walstream');
    const cases: [string[], Record<string, string>, string[]][] = [
      [['receive', '-D', 'spool'], {}, ['--max-semi-space-size=2', bin, 'receive', '-D', 'spool']],
      [['serve', '--listen', '127.0.0.1:5433'], {}, ['--max-semi-space-size=2', bin, 'serve', '--listen', '127.0.0.1:5433']],
      [['--log-format', 'json', 'receive'], {}, ['--max-semi-space-size=2', bin, '--log-format', 'json', 'receive']],
      [['--log-format=json', 'serve'], {}, ['--max-semi-space-size=2', bin, '--log-format=json', 'serve']],
      [['--log-format', 'receive', 'status'], {}, [bin, '--log-format', 'receive', 'status']],
      [['receive', '-D', 'spool'], { NODE_OPTIONS: '--max-semi-space-size=8' }, [bin, 'receive', '-D', 'spool']],
      [['status', '--archive', '/arch'], {}, [bin, 'status', '--archive', '/arch']],
      [['fetch', 'x', 'y'], {}, [bin, 'fetch', 'x', 'y']],
    ];
    for (const [args, env, want] of cases) {
      expect(run(args, env, cwd, fakeNode), args.join(' ')).toBe(NODE_CALLED);
      expect(readFileSync(argsFile, 'utf8').split('\n').slice(0, -1), args.join(' ')).toEqual(want);
    }
  });

  it('runs bin/walstream on Node, also through a symbolic link as npm installs it', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'walstream-sh-'));
    dirs.push(cwd);
    const link = join(cwd, 'walstream');
    symlinkSync(SCRIPT, link);
    const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    for (const [cmd, env] of [
      [link, { WALSTREAM_NODE: process.execPath }],
      ['walstream', { PATH: `${cwd}:${dirname(process.execPath)}:/usr/bin:/bin` }],
    ] as const) {
      const r = spawnSync(cmd, ['--version'], { cwd, env: { PATH: `${dirname(process.execPath)}:/usr/bin:/bin`, ...env }, encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe(version);
      expect(r.status).toBe(0);
    }
  });
});
