// bin/walstream.sh, the walstream command: it answers a fetch the prefetch spool holds and a push an
// earlier look-ahead archived without starting Node, and hands everything else to bin/walstream
// on Node untouched. Over random command lines and environments, a call the script answers must
// be one the command line reads (cli/fast-path.ts parseFastCommand, itself held to commander) as
// the same fetch or push with the same spool, archive, file and destination; a call it does not
// answer must reach Node with its arguments as given, having changed nothing.
import { afterEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { parseFastCommand } from '../../src/cli/fast-path.js';
import { claimArchive } from '../../src/archive/identity.js';
import { judgeLeftover, parseTempName, THIS_WRITER } from '../../src/storage/leftovers.js';
import { LocalStore } from '../../src/storage/local.js';
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
    writeFileSync(join(cwd, spool, '.want'), JSON.stringify({ name: '000000010000000000000002', segSize: SEG_SIZE, count: 8 }));
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
      { why: 'a segment of another size than the request names', prepare: (cwd) => writeFileSync(join(cwd, '.walstream-prefetch', SEG), segment(2 * SEG_SIZE)) },
      { why: 'no request record', prepare: (cwd) => rmSync(join(cwd, '.walstream-prefetch', '.want')) },
      {
        why: 'a request record naming a size twice',
        prepare: (cwd) => writeFileSync(join(cwd, '.walstream-prefetch', '.want'), `{"segSize":${2 * SEG_SIZE},"name":"x","segSize":${SEG_SIZE}}`),
      },
      { why: 'a request record naming no valid size', prepare: (cwd) => writeFileSync(join(cwd, '.walstream-prefetch', '.want'), `{"name":"x","segSize":${SEG_SIZE + 1},"count":8}`) },
      { why: 'a request record of two lines', prepare: (cwd) => writeFileSync(join(cwd, '.walstream-prefetch', '.want'), `{"segSize":${SEG_SIZE}}\n`) },
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

  it('runs receive and serve with gc() exposed and a young generation of 2 MB a semi-space, unless NODE_OPTIONS sizes it', () => {
    const { cwd, fakeNode, argsFile } = setUp();
    const bin = join(ROOT, 'bin', 'walstream');
    const cases: [string[], Record<string, string>, string[]][] = [
      [['receive', '-D', 'spool'], {}, ['--max-semi-space-size=2', '--expose-gc', bin, 'receive', '-D', 'spool']],
      [['serve', '--listen', '127.0.0.1:5433'], {}, ['--max-semi-space-size=2', '--expose-gc', bin, 'serve', '--listen', '127.0.0.1:5433']],
      [['--log-format', 'json', 'receive'], {}, ['--max-semi-space-size=2', '--expose-gc', bin, '--log-format', 'json', 'receive']],
      [['--log-format=json', 'serve'], {}, ['--max-semi-space-size=2', '--expose-gc', bin, '--log-format=json', 'serve']],
      [['--log-format', 'receive', 'status'], {}, [bin, '--log-format', 'receive', 'status']],
      [['receive', '-D', 'spool'], { NODE_OPTIONS: '--max-semi-space-size=8' }, ['--expose-gc', bin, 'receive', '-D', 'spool']],
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
  describe('a fetch from a plain local archive', () => {
    /** What the archive holds: SEG with bytes of its own (any changed byte shows). */
    const DATA = Buffer.from(segment(SEG_SIZE).map((b, i) => (i < 64 ? b : (i * 7919) & 0xff)));

    /** setUp() plus a local archive `arch` in it, written by walstream's own code, holding SEG. */
    async function archiveSetUp(): Promise<{ cwd: string; fakeNode: string; argsFile: string; arch: string }> {
      const base = setUp();
      const arch = join(base.cwd, 'arch');
      const store = new LocalStore(arch);
      try {
        await claimArchive(store, { systemIdentifier: 7715686313818013751n, segmentSize: SEG_SIZE }, SEG);
        await store.put(SEG, DATA);
      } finally {
        await store.close();
      }
      return { ...base, arch };
    }

    /** Where `tool` is on this PATH ("" where it is not). */
    const which = (tool: string): string => spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim();

    /** A directory for PATH holding the programs the script runs, from this PATH, but not those in `leave`. */
    function pathWithout(cwd: string, ...leave: string[]): string {
      const bin = join(cwd, 'bin-without');
      mkdirSync(bin);
      for (const tool of ['cat', 'mv', 'rm', 'ln', 'od', 'stat', 'readlink', 'sha256sum', 'tr', 'openssl']) {
        if (leave.includes(tool)) continue;
        const found = which(tool);
        if (found !== '') symlinkSync(found, join(bin, tool));
      }
      return bin;
    }

    it('copies the segment to %p itself, renamed there only with the recorded SHA-256', async () => {
      const { cwd, fakeNode, arch } = await archiveSetUp();
      const answered: [string[], Record<string, string>][] = [
        [['fetch', SEG, 'pg_wal/RECOVERYXLOG', '--archive', arch], {}],
        [['fetch', SEG, join(cwd, 'pg_wal', 'RECOVERYXLOG')], { WALSTREAM_ARCHIVE: arch }],
        [['fetch', `--archive=${arch}`, '--partial', SEG, 'pg_wal/RECOVERYXLOG'], {}],
        [['fetch', SEG, 'pg_wal/RECOVERYXLOG', '--archive', arch, '--spool', 'spool'], { AWS_ENDPOINT_URL: 'http://127.0.0.1:9' }],
      ];
      for (const [args, env] of answered) {
        rmSync(join(cwd, 'pg_wal', 'RECOVERYXLOG'), { force: true });
        if (args.includes('--partial')) writeFileSync(join(cwd, 'pg_wal', 'RECOVERYXLOG'), 'replaced');
        expect(run(args, env, cwd, fakeNode), args.join(' ')).toBe(0);
        const got = join(cwd, 'pg_wal', 'RECOVERYXLOG');
        expect(readFileSync(got).equals(DATA), args.join(' ')).toBe(true);
        expect(statSync(got).mode & 0o777).toBe(0o600);
        // Nothing else in pg_wal (no temp file), the archive's copy kept.
        expect(readdirSync(join(cwd, 'pg_wal')).sort()).toEqual([SEG, 'RECOVERYXLOG']);
        expect(readFileSync(join(arch, SEG)).equals(DATA)).toBe(true);
        // The command line reads it as the same fetch, from this archive, with no prefetch and no key.
        const c = parseFastCommand(args, env);
        expect(c && c.command === 'fetch' ? { name: c.name, dest: resolve(cwd, c.dest), archive: c.archive, prefetch: c.prefetch, key: c.encryptionKeyFile } : c).toEqual({
          name: SEG,
          dest: got,
          archive: arch,
          prefetch: undefined,
          key: undefined,
        });
      }
      // Without openssl, sha256sum takes the checksum.
      rmSync(join(cwd, 'pg_wal', 'RECOVERYXLOG'));
      expect(run(['fetch', SEG, 'pg_wal/RECOVERYXLOG', '--archive', arch], { PATH: pathWithout(cwd, 'openssl') }, cwd, fakeNode)).toBe(0);
      expect(readFileSync(join(cwd, 'pg_wal', 'RECOVERYXLOG')).equals(DATA)).toBe(true);
    });

    it('names its temp file as walstream does, so that the next fetch removes it if the copy is cut short', async () => {
      const { cwd, fakeNode, arch } = await archiveSetUp();
      // The program that hashes the copy (openssl, else sha256sum), recording the file it is
      // given (the temp file), then running the real one.
      const bin = join(cwd, 'bin-logging');
      mkdirSync(bin);
      const log = join(cwd, 'hashed');
      const tool = which('openssl') !== '' ? 'openssl' : 'sha256sum';
      writeFileSync(join(bin, tool), `#!/bin/sh\nfor a do last=$a; done\ncase $last in ''|-*) ;; *) printf '%s\\n' "$last" >> ${log} ;; esac\nexec ${which(tool)} "$@"\n`, { mode: 0o755 });
      expect(run(['fetch', SEG, 'pg_wal/RECOVERYXLOG', '--archive', arch], { PATH: `${bin}:${process.env['PATH'] ?? '/usr/bin:/bin'}` }, cwd, fakeNode)).toBe(0);
      const hashed = readFileSync(log, 'utf8').trim();
      expect(dirname(hashed)).toBe('pg_wal');
      const parsed = parseTempName(basename(hashed));
      expect(parsed?.target).toBe('RECOVERYXLOG');
      const writer = parsed!.writer!;
      expect({ space: writer.space, host: writer.host }).toEqual({ space: THIS_WRITER.space, host: THIS_WRITER.host });
      expect(writer.start).toMatch(/^\d+$/);
      // Its writer, the script, is gone: a temp file by that name is one the next fetch removes.
      expect(judgeLeftover(writer, new Date())).toBe('dead');
    });

    it('hands to Node whatever it cannot vouch for, leaving %p and the archive as they were', async () => {
      const usual = (arch: string): string[] => ['fetch', SEG, 'pg_wal/RECOVERYXLOG', '--archive', arch];
      const meta = (arch: string): string => join(arch, '.walstream-meta', `${SEG}.sha256`);
      const sha = createHash('sha256').update(DATA).digest('hex');
      const cases: { why: string; args?: (arch: string) => string[]; env?: Record<string, string>; without?: string[]; prepare?: (cwd: string, arch: string) => void; left?: string[] }[] = [
        { why: 'a copy whose checksum differs', prepare: (_, arch) => writeFileSync(join(arch, SEG), Buffer.concat([DATA.subarray(0, -1), Buffer.from([DATA.at(-1)! ^ 1])])) },
        { why: 'no checksum record', prepare: (_, arch) => rmSync(meta(arch)) },
        { why: 'a record of two lines', prepare: (_, arch) => writeFileSync(meta(arch), `${sha} none ${SEG_SIZE}\n\n`) },
        { why: 'a record without a newline', prepare: (_, arch) => writeFileSync(meta(arch), `${sha} none ${SEG_SIZE}`) },
        { why: 'a record of a compressed copy', prepare: (_, arch) => writeFileSync(meta(arch), `${sha} gzip ${SEG_SIZE}\n`) },
        { why: 'a record with a tab', prepare: (_, arch) => writeFileSync(meta(arch), `${sha}\tnone ${SEG_SIZE}\n`) },
        { why: 'a record in capitals', prepare: (_, arch) => writeFileSync(meta(arch), `${sha.toUpperCase()} none ${SEG_SIZE}\n`) },
        {
          why: 'the segment as a symbolic link',
          prepare: (cwd, arch) => {
            writeFileSync(join(cwd, 'elsewhere'), DATA);
            rmSync(join(arch, SEG));
            symlinkSync(join(cwd, 'elsewhere'), join(arch, SEG));
          },
        },
        { why: 'only a compressed copy', prepare: (_, arch) => rmSync(join(arch, SEG)) },
        { why: 'no identity record', prepare: (_, arch) => rmSync(join(arch, 'walstream.json')) },
        {
          why: 'an encrypted archive',
          prepare: (_, arch) => writeFileSync(join(arch, 'walstream.json'), `{"format":1,"systemIdentifier":"7715686313818013751","segmentSize":${SEG_SIZE},"encryption":"aes-256-gcm"}\n`),
        },
        { why: 'an identity record of two lines', prepare: (_, arch) => writeFileSync(join(arch, 'walstream.json'), `{"format":1,"systemIdentifier":"1",\n"encryption":"aes-256-gcm"}\n`) },
        { why: 'a key in the environment', env: { WALSTREAM_ENCRYPTION_KEY: '' } },
        { why: 'a key file in the environment', env: { WALSTREAM_ENCRYPTION_KEY_FILE: 'k' } },
        { why: 'a key file', args: (arch) => [...usual(arch), '--encryption-key-file', 'k'] },
        { why: '--encryption-required', args: (arch) => [...usual(arch), '--encryption-required'] },
        { why: 'encryption required by the environment', env: { WALSTREAM_ENCRYPTION_REQUIRED: '1' } },
        { why: 'a relative archive path', args: () => usual('arch') },
        { why: 'an archive path through ..', args: (arch) => usual(`${arch}/../pg_wal/../arch`) },
        { why: 'an archive path through .', args: (arch) => usual(`${dirname(arch)}/./arch`) },
        { why: 'a temp file of %p left beside it', prepare: (cwd) => writeFileSync(join(cwd, 'pg_wal', '.RECOVERYXLOG.123.tmp'), 'x'), left: ['.RECOVERYXLOG.123.tmp'] },
        { why: 'an old temp file of %p left beside it', prepare: (cwd) => writeFileSync(join(cwd, 'pg_wal', 'RECOVERYXLOG.walstream-tmp'), 'x'), left: ['RECOVERYXLOG.walstream-tmp'] },
        { why: '%p a directory', prepare: (cwd) => mkdirSync(join(cwd, 'pg_wal', 'RECOVERYXLOG')), left: ['RECOVERYXLOG'] },
        { why: "%p's directory missing", args: (arch) => ['fetch', SEG, 'nowhere/RECOVERYXLOG', '--archive', arch] },
        { why: '%p ending in /', args: (arch) => ['fetch', SEG, 'pg_wal/RECOVERYXLOG/', '--archive', arch] },
        { why: '%p with a glob character', args: (arch) => ['fetch', SEG, 'pg_wal/RECOVERY*', '--archive', arch] },
        { why: 'a history file', args: (arch) => ['fetch', '00000002.history', 'pg_wal/RECOVERYXLOG', '--archive', arch] },
        { why: 'verbose', env: { WALSTREAM_VERBOSE: '1' } },
        { why: 'the record check', env: { WALSTREAM_VERIFY_RECORDS: 'on' } },
        { why: '--prefetch, the spool lacking it', args: (arch) => [...usual(arch), '--prefetch'], prepare: (cwd) => rmSync(join(cwd, '.walstream-prefetch', SEG)) },
        { why: 'WALSTREAM_PREFETCH, the spool lacking it', env: { WALSTREAM_PREFETCH: '8' }, prepare: (cwd) => rmSync(join(cwd, '.walstream-prefetch', SEG)) },
        { why: 'no program to hash with', without: ['openssl', 'sha256sum'] },
      ];
      for (const c of cases) {
        const { cwd, fakeNode, argsFile, arch } = await archiveSetUp();
        c.prepare?.(cwd, arch);
        const before = readdirSync(arch, { recursive: true }).sort();
        const args = c.args?.(arch) ?? usual(arch);
        const env = { ...c.env, ...(c.without ? { PATH: pathWithout(cwd, ...c.without) } : {}) };
        const status = run(args, env, cwd, fakeNode);
        expect({ why: c.why, status }).toEqual({ why: c.why, status: NODE_CALLED });
        expect(readFileSync(argsFile, 'utf8')).toBe(`${join(ROOT, 'bin', 'walstream')}\n${args.join('\n')}\n`);
        expect(readdirSync(join(cwd, 'pg_wal')).sort(), c.why).toEqual([SEG, ...(c.left ?? [])].sort());
        expect(readdirSync(arch, { recursive: true }).sort(), c.why).toEqual(before);
      }
    });
  });
});
