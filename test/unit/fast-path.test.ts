// The command line's fast path (cli/fast-path.ts): it reads a fetch or push exactly as commander
// does (compared here over a grid of command lines and environments) or leaves it to the full
// command line; it runs fetch and push on a local archive as the full command line would, serves
// a segment the prefetch spool holds, and leaves every other call untouched; the bundle it comes
// in loads nothing but built-in modules and the full command line.
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { buildProgram } from '../../src/cli/main.js';
import { KEY_VARIABLE } from '../../src/cli/keys.js';
import { KEY_VARIABLE_NAME, parseFastCommand, runFastPath, type FastFetch, type FastPush } from '../../src/cli/fast-path.js';
import { LocalStore } from '../../src/storage/local.js';
import { FIXTURE_NAME, FIXTURE_SEG_SIZE, fixtureSegment } from './fixture.js';

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'walstream-fetch-spool-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** What commander hands the command's action (its arguments and options), or undefined when it refuses the command line (or prints help). */
function commanderParse(args: string[], env: NodeJS.ProcessEnv): { positional: string[]; opts: Record<string, unknown>; logFormat: unknown } | undefined {
  const saved = process.env;
  process.env = { ...env };
  try {
    const program = buildProgram();
    let got: { positional: string[]; opts: Record<string, unknown>; logFormat: unknown } | undefined;
    const quiet = { writeOut: () => undefined, writeErr: () => undefined, outputError: () => undefined };
    const all: Command[] = [program, ...program.commands];
    for (const c of all) c.exitOverride().configureOutput(quiet);
    for (const name of ['fetch', 'push']) {
      program.commands
        .find((c) => c.name() === name)!
        .action((...a: unknown[]) => {
          got = { positional: a.slice(0, name === 'fetch' ? 2 : 1) as string[], opts: a[name === 'fetch' ? 2 : 1] as Record<string, unknown>, logFormat: program.opts()['logFormat'] };
        });
    }
    try {
      program.parse(['node', 'walstream', ...args]);
    } catch {
      return undefined;
    }
    return got;
  } finally {
    process.env = saved;
  }
}

/** What the fast path should make of what commander gave. */
function expectedFrom(command: 'fetch' | 'push', full: { positional: string[]; opts: Record<string, unknown> }): FastFetch | FastPush {
  const o = full.opts;
  const common = {
    archive: o['archive'] as string,
    ...(o['s3Endpoint'] !== undefined ? { s3Endpoint: o['s3Endpoint'] as string } : {}),
    ...(o['encryptionKeyFile'] !== undefined ? { encryptionKeyFile: o['encryptionKeyFile'] as string } : {}),
    encryptionRequired: o['encryptionRequired'] === true,
    ...(o['spool'] !== undefined ? { spool: o['spool'] as string } : {}),
    verbose: o['verbose'] === true,
  };
  if (command === 'fetch') {
    return {
      command,
      name: full.positional[0]!,
      dest: full.positional[1]!,
      ...common,
      ...(o['prefetch'] !== undefined ? { prefetch: o['prefetch'] as number } : {}),
      partial: o['partial'] === true,
    };
  }
  expect(o['compress']).toEqual({ method: 'none' });
  return { command, path: full.positional[0]!, ...common, sync: o['sync'] as boolean, parallel: o['parallel'] as number };
}

const N = '000000010000000000000003';
const D = 'pg_wal/RECOVERYXLOG';
const A = '/srv/archive';
const ARGVS: string[][] = [
  ['fetch', N, D, '--archive', A],
  ['fetch', N, D, '--archive', A, '--prefetch'],
  ['fetch', N, D, '--archive', A, '--prefetch', '4'],
  ['fetch', '--prefetch', '4', N, D, `--archive=${A}`],
  ['fetch', N, D, '--prefetch=16', '--archive', A, '--spool', '/s'],
  ['fetch', N, D, '--archive', A, '--spool=', '--prefetch'],
  ['fetch', '--prefetch', N, D, '--archive', A],
  ['fetch', N, D, '--archive', A, '--prefetch', '65'],
  ['fetch', N, D, '--archive', A, '--prefetch', '0'],
  ['fetch', N, D, '--archive', A, '--prefetch', '-v'],
  ['fetch', N, D, '--archive', A, '--prefetch', '--partial', '--encryption-required', '--encryption-key-file', '/k', '--s3-endpoint', 'http://x'],
  ['fetch', N, D, '--archive', A, '-v', '--prefetch', '2', '--verbose'],
  ['fetch', N, D, '--archive', A, '--archive', '/other', '--prefetch'],
  ['fetch', N, D, '--archive', '--prefetch'],
  ['fetch', N, '--archive', A, '--prefetch'],
  ['fetch', N, D, 'extra', '--archive', A, '--prefetch'],
  ['fetch', N, D, '--prefetch'],
  ['fetch', N, D],
  ['fetch', N, D, '--archive', A, '--prefetch', '--log-format', 'json'],
  ['fetch', N, D, '--archive', A, '--prefetch', '--help'],
  ['--log-format', 'text', 'fetch', N, D, '--archive', A, '--prefetch'],
  ['fetch', N, D, '--archive', A, '--prefetch', '--'],
  ['fetch', '-', D, '--archive', A, '--prefetch'],
  ['fetch', N, D, '--archive=', '--prefetch'],
  ['fetch', N, D, '--archive', A, '--prefetch', '--unknown'],
  ['fetch', N, D, '--archive', A, '--prefetch', '-x'],
  ['fetch', N, D, '--archive', A, '--prefetch', '--partial=yes'],
  ['fetch', 'RECOVERYHISTORY', '00000002.history', '--archive', A, '--prefetch'],
  ['fetch', N, D, '--archive', 's3://bucket/wal', '--s3-endpoint', 'http://127.0.0.1:9000'],
  ['push', 'pg_wal/' + N, '--archive', A],
  ['push', `--archive=${A}`, 'pg_wal/' + N, '--no-sync', '-v'],
  ['push', 'pg_wal/' + N, '--archive', A, '--parallel', '4', '--spool', '/m'],
  ['push', 'pg_wal/' + N, '--archive', A, '--parallel=64', '--verbose', '--encryption-required'],
  ['push', 'pg_wal/' + N, '--archive', A, '--parallel', '0'],
  ['push', 'pg_wal/' + N, '--archive', A, '--parallel'],
  ['push', 'pg_wal/' + N, '--archive', A, '-Z', 'gzip'],
  ['push', 'pg_wal/' + N, '--archive', A, '--compress=none'],
  ['push', 'pg_wal/' + N, '--archive', A, '--no-sync', '--no-sync'],
  ['push', 'pg_wal/' + N, 'pg_wal/other', '--archive', A],
  ['push', '--archive', A],
  ['push', 'pg_wal/' + N, '--archive', A, '--sync'],
  ['push', 'pg_wal/' + N, '--archive', A, '--prefetch'],
  ['push', 'pg_wal/' + N, '--archive', A, '--encryption-key-file=/k', '--s3-endpoint', 'http://x'],
  ['status', '--archive', A],
];
const ENVS: NodeJS.ProcessEnv[] = [
  {},
  { WALSTREAM_ARCHIVE: '/env-archive' },
  { WALSTREAM_ARCHIVE: '' },
  { WALSTREAM_PREFETCH: '3', WALSTREAM_PARALLEL: '2' },
  { WALSTREAM_PREFETCH: '', WALSTREAM_PARALLEL: '' },
  { WALSTREAM_PREFETCH: 'x', WALSTREAM_PARALLEL: '99' },
  { WALSTREAM_SPOOL: '/env-spool', AWS_ENDPOINT_URL: 'http://e', WALSTREAM_ENCRYPTION_KEY_FILE: '/ek' },
  { WALSTREAM_VERBOSE: '1', WALSTREAM_PARTIAL: 'off', WALSTREAM_ENCRYPTION_REQUIRED: 'yes', WALSTREAM_NO_SYNC: 'true' },
  { WALSTREAM_VERBOSE: '', WALSTREAM_PARTIAL: 'No', WALSTREAM_ENCRYPTION_REQUIRED: ' 0 ', WALSTREAM_NO_SYNC: 'off' },
  { WALSTREAM_COMPRESS: 'none' },
  { WALSTREAM_LOG_FORMAT: 'json' },
  { WALSTREAM_LOG_FORMAT: 'text' },
  { WALSTREAM_LOG_FORMAT: 'xml' },
];

/** This process's environment without anything that configures walstream or AWS. */
function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WALSTREAM_') && !k.startsWith('AWS_')));
}

describe('the fast path reads the command line as commander does', () => {
  it('takes a command line only when commander gives the same values, for every command line and environment of the grid', () => {
    const taken = { fetch: 0, push: 0 };
    for (const args of ARGVS) {
      for (const extra of ENVS) {
        const env = { ...cleanEnv(), ...extra };
        const fast = parseFastCommand(args, env);
        if (fast === undefined) continue;
        taken[fast.command]++;
        const what = `${args.join(' ')} with ${JSON.stringify(extra)}`;
        const full = commanderParse(args, env);
        expect(full, what).toBeDefined();
        expect(fast, what).toEqual(expectedFrom(fast.command, full!));
        expect(full!.logFormat, what).toBe('text');
      }
    }
    // The usual restore_command and archive_command forms are taken, not left to the full command line.
    expect(taken.fetch).toBeGreaterThan(60);
    expect(taken.push).toBeGreaterThan(30);
    expect(parseFastCommand(['fetch', N, D, '--archive', A, '--prefetch'], {})).toMatchObject({ name: N, dest: D, archive: A, prefetch: 8 });
    expect(parseFastCommand(['fetch', N, D], { WALSTREAM_ARCHIVE: A })).toMatchObject({ archive: A });
    expect(parseFastCommand(['push', `pg_wal/${N}`, '--archive', A], {})).toEqual({ command: 'push', path: `pg_wal/${N}`, archive: A, encryptionRequired: false, verbose: false, sync: true, parallel: 1 });
  });

  it('leaves alone what commander refuses or treats otherwise', () => {
    expect(parseFastCommand(['fetch', '--prefetch', N, D, '--archive', A], {})).toBeUndefined();
    expect(parseFastCommand(['fetch', N, D, '--archive', A, '--prefetch', '--help'], {})).toBeUndefined();
    expect(parseFastCommand(['fetch', N, D, '--archive', A], { WALSTREAM_PREFETCH: '' })).toBeUndefined();
    expect(parseFastCommand(['fetch', N, D, '--archive', A, '--prefetch'], { WALSTREAM_LOG_FORMAT: 'json' })).toBeUndefined();
    expect(parseFastCommand(['push', `pg_wal/${N}`, '--archive', A, '-Z', 'gzip'], {})).toBeUndefined();
    expect(parseFastCommand(['push', `pg_wal/${N}`, '--archive', A], { WALSTREAM_COMPRESS: 'none' })).toBeUndefined();
    expect(KEY_VARIABLE_NAME).toBe(KEY_VARIABLE);
  });

  it('a --no-... flag from its variable is on only for a value that is not "", 0, false, no or off, on the full command line too', () => {
    for (const [v, sync] of [
      ['0', true],
      ['off', true],
      ['', true],
      ['1', false],
      ['yes', false],
    ] as const) {
      const env = { ...cleanEnv(), WALSTREAM_NO_SYNC: v };
      expect(commanderParse(['push', `pg_wal/${N}`, '--archive', A], env)?.opts['sync'], v).toBe(sync);
      expect(parseFastCommand(['push', `pg_wal/${N}`, '--archive', A], env), v).toMatchObject({ sync });
    }
  });
});

/** A segment-shaped file: a long header naming a 1 MB segment size, then `fill`. */
function fakeSegment(fill: number): Buffer {
  const b = Buffer.alloc(FIXTURE_SEG_SIZE, fill);
  fixtureSegment().copy(b, 0, 0, 40);
  return b;
}

/** Standard error written during `fn`. */
async function stderrOf<T>(fn: () => Promise<T>): Promise<{ result: T; stderr: string }> {
  const write = process.stderr.write;
  let stderr = '';
  process.stderr.write = ((chunk: string | Uint8Array) => {
    stderr += chunk.toString();
    return true;
  }) as typeof process.stderr.write;
  try {
    return { result: await fn(), stderr };
  } finally {
    process.stderr.write = write;
  }
}

describe('the fast path runs', () => {
  function setup(): { base: string; archive: string; spool: string; dest: string; spoolArgv: string[] } {
    const base = tmp();
    const archive = join(base, 'archive');
    const spool = join(base, 'spool');
    mkdirSync(archive);
    mkdirSync(join(base, 'pg_wal'));
    mkdirSync(spool, { mode: 0o700 });
    // A live worker holds the spool (this process): none is started.
    writeFileSync(join(spool, '.lock'), `${process.pid}\n`);
    const dest = join(base, 'pg_wal', 'RECOVERYXLOG');
    return { base, archive, spool, dest, spoolArgv: ['node', 'walstream', 'fetch', N, dest, '--archive', 's3://bucket/wal', '--prefetch', '2', '--spool', spool] };
  }

  it("fetch and push on a local archive, with the full command line's exit status and message", async () => {
    const s = setup();
    const seg = join(s.base, 'pg_wal', FIXTURE_NAME);
    writeFileSync(seg, fixtureSegment());
    expect(await runFastPath(['node', 'walstream', 'push', seg, '--archive', s.archive], cleanEnv())).toBe(0);
    expect((await new LocalStore(s.archive).get(FIXTURE_NAME)).data.equals(fixtureSegment())).toBe(true);
    expect(await runFastPath(['node', 'walstream', 'fetch', FIXTURE_NAME, s.dest, '--archive', s.archive], cleanEnv())).toBe(0);
    expect(readFileSync(s.dest).equals(fixtureSegment())).toBe(true);
    const miss = await stderrOf(() => runFastPath(['node', 'walstream', 'fetch', N, join(s.base, 'pg_wal', 'X'), '--archive', s.archive], cleanEnv()));
    expect(miss).toEqual({ result: 1, stderr: `walstream: error: ${N} is not in the archive\n` });
    expect(existsSync(join(s.base, 'pg_wal', 'X'))).toBe(false);
    // A different file under an archived name: refused, exit status 1, as the full command line.
    const other = fixtureSegment();
    other[other.length - 1] ^= 1;
    writeFileSync(seg, other);
    const conflict = await stderrOf(() => runFastPath(['node', 'walstream', 'push', seg, '--archive', s.archive], cleanEnv()));
    expect(conflict.result).toBe(1);
    expect(conflict.stderr).toMatch(/^walstream: error: .*different contents/);
  });

  it('serves a segment the spool holds for a remote archive: moved to %p, the next ones wanted', async () => {
    const s = setup();
    writeFileSync(join(s.spool, '.archive'), 's3://bucket/wal ');
    writeFileSync(join(s.spool, N), fakeSegment(7));
    expect(await runFastPath(s.spoolArgv, cleanEnv())).toBe(0);
    expect(readFileSync(s.dest).equals(fakeSegment(7))).toBe(true);
    expect(existsSync(join(s.spool, N))).toBe(false);
    expect(JSON.parse(readFileSync(join(s.spool, '.want'), 'utf8'))).toEqual({ name: N, segSize: FIXTURE_SEG_SIZE, count: 2 });
    expect(readdirSync(resolve(s.dest, '..'))).toEqual(['RECOVERYXLOG']);
  });

  it('leaves to the full command line a remote segment the spool lacks, a short copy, another archive, and what it does not take', async () => {
    const s = setup();
    writeFileSync(join(s.spool, '.archive'), 's3://bucket/wal ');
    expect(await runFastPath(s.spoolArgv, cleanEnv())).toBeUndefined();
    expect(existsSync(s.dest)).toBe(false);
    expect(existsSync(join(s.spool, '.want'))).toBe(false);
    writeFileSync(join(s.spool, N), fakeSegment(7).subarray(0, 8192));
    expect(await runFastPath(s.spoolArgv, cleanEnv())).toBeUndefined();
    expect(existsSync(s.dest)).toBe(false);
    writeFileSync(join(s.spool, N), fakeSegment(7));
    const other = s.spoolArgv.map((a) => (a === 's3://bucket/wal' ? 's3://bucket/other' : a));
    expect(await runFastPath(other, cleanEnv())).toBeUndefined();
    expect(existsSync(s.dest)).toBe(false);
    expect(await runFastPath(['node', 'walstream', 'fetch', N, s.dest, '--archive', 's3://bucket/wal'], cleanEnv())).toBeUndefined();
    expect(await runFastPath(['node', 'walstream', 'push', s.dest, '--archive', 's3://bucket/wal'], cleanEnv())).toBeUndefined();
    expect(await runFastPath(['node', 'walstream', 'push', s.dest, '--archive', s.archive], { ...cleanEnv(), [KEY_VARIABLE_NAME]: 'k' })).toBeUndefined();
    expect(await runFastPath(['node', 'walstream', 'status', '--archive', s.archive], cleanEnv())).toBeUndefined();
    expect(existsSync(s.dest)).toBe(false);
  });
});

describe('the bundle (dist/cli/run-bundle.js, made by npm run build and the test setup)', () => {
  it('imports nothing but built-in modules and the full command line', () => {
    const bundle = readFileSync(new URL('../../dist/cli/run-bundle.js', import.meta.url), 'utf8');
    const imports = [...bundle.matchAll(/^import\s[^'"]*['"]([^'"]+)['"]/gm)].map((m) => m[1]!);
    const dynamic = [...bundle.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => m[1]!);
    expect(imports.length).toBeGreaterThan(3);
    expect(imports.filter((i) => !i.startsWith('node:'))).toEqual([]);
    expect(dynamic).toEqual(['./main.js']);
    // None of the built-ins a prefetched fetch has no use for.
    expect(imports.filter((i) => ['node:crypto', 'node:zlib', 'node:stream', 'node:child_process', 'node:worker_threads', 'node:net'].includes(i))).toEqual([]);
    // node:fs and node:util come through require (util/lazy.ts): an import's view of either loads modules no call uses.
    expect(imports.filter((i) => i === 'node:fs' || i === 'node:util')).toEqual([]);
  });
});
