// The fetch fast path (cli/fetch-spool.ts): it reads a command line exactly as commander does
// (compared here over a grid of command lines and environments) or leaves it to the full command
// line; it serves a segment the prefetch spool holds and leaves every other call untouched.
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { buildProgram } from '../../src/cli/main.js';
import { fetchFromSpool, parseSpoolFetch, type SpoolFetchArgs } from '../../src/cli/fetch-spool.js';
import { FIXTURE_SEG_SIZE, fixtureSegment } from './fixture.js';

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'walstream-fetch-spool-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** What commander hands fetch's action, or undefined when it refuses the command line (or prints help). */
function commanderFetch(args: string[], env: NodeJS.ProcessEnv): { name: string; dest: string; opts: Record<string, unknown>; logFormat: unknown } | undefined {
  const saved = process.env;
  process.env = { ...env };
  try {
    const program = buildProgram();
    let got: { name: string; dest: string; opts: Record<string, unknown>; logFormat: unknown } | undefined;
    const quiet = { writeOut: () => undefined, writeErr: () => undefined, outputError: () => undefined };
    const all: Command[] = [program, ...program.commands];
    for (const c of all) c.exitOverride().configureOutput(quiet);
    program.commands
      .find((c) => c.name() === 'fetch')!
      .action((name: string, dest: string, opts: Record<string, unknown>) => {
        got = { name, dest, opts, logFormat: program.opts()['logFormat'] };
      });
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

const N = '000000010000000000000003';
const D = 'pg_wal/RECOVERYXLOG';
const A = '/srv/archive';
const ARGVS: string[][] = [
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
  ['fetch', N, D, '--archive', A],
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
  ['push', N, '--archive', A],
];
const ENVS: NodeJS.ProcessEnv[] = [
  {},
  { WALSTREAM_ARCHIVE: '/env-archive' },
  { WALSTREAM_ARCHIVE: '' },
  { WALSTREAM_PREFETCH: '3' },
  { WALSTREAM_PREFETCH: '' },
  { WALSTREAM_PREFETCH: 'x' },
  { WALSTREAM_SPOOL: '/env-spool', AWS_ENDPOINT_URL: 'http://e', WALSTREAM_ENCRYPTION_KEY_FILE: '/ek' },
  { WALSTREAM_VERBOSE: '1', WALSTREAM_PARTIAL: 'off', WALSTREAM_ENCRYPTION_REQUIRED: 'yes' },
  { WALSTREAM_VERBOSE: '', WALSTREAM_PARTIAL: 'No', WALSTREAM_ENCRYPTION_REQUIRED: ' 0 ' },
  { WALSTREAM_LOG_FORMAT: 'json' },
  { WALSTREAM_LOG_FORMAT: 'text' },
  { WALSTREAM_LOG_FORMAT: 'xml' },
];

/** This process's environment without anything that configures walstream or AWS. */
function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WALSTREAM_') && !k.startsWith('AWS_')));
}

describe('the fetch fast path reads the command line as commander does', () => {
  it('takes a command line only when commander gives the same values, for every command line and environment of the grid', () => {
    let taken = 0;
    for (const args of ARGVS) {
      for (const extra of ENVS) {
        const env = { ...cleanEnv(), ...extra };
        const fast = parseSpoolFetch(args, env);
        if (fast === undefined) continue;
        taken++;
        const what = `${args.join(' ')} with ${JSON.stringify(extra)}`;
        const full = commanderFetch(args, env);
        expect(full, what).toBeDefined();
        const o = full!.opts;
        const expected: SpoolFetchArgs = {
          name: full!.name,
          dest: full!.dest,
          archive: o['archive'] as string,
          ...(o['s3Endpoint'] !== undefined ? { s3Endpoint: o['s3Endpoint'] as string } : {}),
          ...(o['encryptionKeyFile'] !== undefined ? { encryptionKeyFile: o['encryptionKeyFile'] as string } : {}),
          encryptionRequired: o['encryptionRequired'] === true,
          prefetch: o['prefetch'] as number,
          ...(o['spool'] !== undefined ? { spool: o['spool'] as string } : {}),
          partial: o['partial'] === true,
          verbose: o['verbose'] === true,
        };
        expect(fast, what).toEqual(expected);
        expect(full!.logFormat, what).toBe('text');
      }
    }
    // The usual restore_command forms are taken, not left to the full command line.
    expect(taken).toBeGreaterThan(40);
    expect(parseSpoolFetch(['fetch', N, D, '--archive', A, '--prefetch'], {})).toMatchObject({ name: N, dest: D, archive: A, prefetch: 8 });
    expect(parseSpoolFetch(['fetch', N, D, '--prefetch', '16'], { WALSTREAM_ARCHIVE: A })).toMatchObject({ archive: A, prefetch: 16 });
  });

  it('leaves alone what commander refuses or treats otherwise', () => {
    expect(parseSpoolFetch(['fetch', '--prefetch', N, D, '--archive', A], {})).toBeUndefined();
    expect(parseSpoolFetch(['fetch', N, D, '--archive', A, '--prefetch', '--help'], {})).toBeUndefined();
    expect(parseSpoolFetch(['fetch', N, D, '--archive', A], { WALSTREAM_PREFETCH: '' })).toBeUndefined();
    expect(parseSpoolFetch(['fetch', N, D, '--archive', A, '--prefetch'], { WALSTREAM_LOG_FORMAT: 'json' })).toBeUndefined();
    expect(parseSpoolFetch(['fetch', N, D, '--archive', A], {})).toBeUndefined();
  });
});

/** A segment-shaped file: a long header naming a 1 MB segment size, then `fill`. */
function fakeSegment(fill: number): Buffer {
  const b = Buffer.alloc(FIXTURE_SEG_SIZE, fill);
  fixtureSegment().copy(b, 0, 0, 40);
  return b;
}

describe('the fetch fast path', () => {
  function setup(): { archive: string; spool: string; dest: string; argv: string[] } {
    const base = tmp();
    const archive = join(base, 'archive');
    const spool = join(base, 'spool');
    mkdirSync(archive);
    mkdirSync(join(base, 'pg_wal'));
    mkdirSync(spool, { mode: 0o700 });
    writeFileSync(join(spool, '.archive'), `${archive} `);
    // A live worker holds the spool (this process): none is started.
    writeFileSync(join(spool, '.lock'), `${process.pid}\n`);
    const dest = join(base, 'pg_wal', 'RECOVERYXLOG');
    return { archive, spool, dest, argv: ['node', 'walstream', 'fetch', N, dest, '--archive', archive, '--prefetch', '2', '--spool', spool] };
  }

  it('serves a segment the spool holds: moved to %p, the next ones wanted', async () => {
    const s = setup();
    writeFileSync(join(s.spool, N), fakeSegment(7));
    expect(await fetchFromSpool(s.argv, cleanEnv())).toBe(0);
    expect(readFileSync(s.dest).equals(fakeSegment(7))).toBe(true);
    expect(existsSync(join(s.spool, N))).toBe(false);
    expect(JSON.parse(readFileSync(join(s.spool, '.want'), 'utf8'))).toEqual({ name: N, segSize: FIXTURE_SEG_SIZE, count: 2 });
    expect(readdirSync(resolve(s.dest, '..'))).toEqual(['RECOVERYXLOG']);
  });

  it('leaves a segment the spool lacks, a short copy, or another archive to the full command, having served nothing', async () => {
    const s = setup();
    expect(await fetchFromSpool(s.argv, cleanEnv())).toBeUndefined();
    expect(existsSync(s.dest)).toBe(false);
    expect(existsSync(join(s.spool, '.want'))).toBe(false);
    writeFileSync(join(s.spool, N), fakeSegment(7).subarray(0, 8192));
    expect(await fetchFromSpool(s.argv, cleanEnv())).toBeUndefined();
    expect(existsSync(s.dest)).toBe(false);
    writeFileSync(join(s.spool, N), fakeSegment(7));
    const other = s.argv.map((a) => (a === s.archive ? `${s.archive}-other` : a));
    expect(await fetchFromSpool(other, cleanEnv())).toBeUndefined();
    expect(existsSync(s.dest)).toBe(false);
    // Not a fetch with --prefetch: nothing is looked at.
    expect(await fetchFromSpool(['node', 'walstream', 'fetch', N, s.dest, '--archive', s.archive], cleanEnv())).toBeUndefined();
  });
});
