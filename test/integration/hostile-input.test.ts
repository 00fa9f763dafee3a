// Hostile input to push (archive_command) and fetch (restore_command): names that are paths, too
// long or not WAL names, archive locations with odd characters, symbolic links in and to a local
// archive, files of the wrong size. Every case runs the real CLI against a local archive made by
// `walstream push` of a real PostgreSQL 15 segment (fixtures/pg15-1mb), and checks both the exit
// status PostgreSQL's contract asks for (replication-protocol.md §6-§7) and that nothing was
// written, or served, that should not have been.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { freePort } from '../harness/pg.js';
import { runCli, type CliResult } from '../support/cli.js';
import { FIXTURE_NAME, fixtureSegment } from '../unit/fixture.js';

const SEG = FIXTURE_NAME; // 000000010000000000000007, 1 MiB
const NEXT = '000000010000000000000008';

let root: string;
let segment: Buffer;
/** A directory holding the real segment under its own name (a pg_wal stand-in). */
let walDir: string;

function fresh(name: string): string {
  const d = join(root, name);
  mkdirSync(d, { recursive: true });
  return d;
}

/** Every file under `dir`, recursively, as relative paths (what an archive holds). */
function tree(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return (readdirSync(dir, { recursive: true }) as string[]).sort();
}

/** One line on stderr, no raw control characters in it, and not longer than `max`. */
function oneLine(res: CliResult, max = 400): string {
  const text = res.stderr;
  expect(text.endsWith('\n'), JSON.stringify(text)).toBe(true);
  const line = text.slice(0, -1);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: looking for control characters is the point
  expect(line, JSON.stringify(text)).not.toMatch(/[\u0000-\u001f\u007f]/);
  expect(line.length, line).toBeLessThanOrEqual(max);
  return line;
}

const push = (path: string, archive: string, extra: string[] = [], cwd?: string): Promise<CliResult> => runCli(['push', path, '--archive', archive, ...extra], cwd !== undefined ? { cwd } : {});
const fetch = (name: string, dest: string, archive: string, cwd?: string): Promise<CliResult> => runCli(['fetch', name, dest, '--archive', archive], cwd !== undefined ? { cwd } : {});

/** An archive made by `walstream push` of the real segment. */
async function archiveWithSegment(name: string, extra: string[] = []): Promise<string> {
  const archive = join(root, name);
  const res = await push(join(walDir, SEG), archive, extra);
  expect(res.code, res.stderr).toBe(0);
  return archive;
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'walstream-hostile-'));
  segment = fixtureSegment();
  walDir = fresh('pg_wal');
  writeFileSync(join(walDir, SEG), segment);
});
afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('hostile names', () => {
  let archive: string;
  let before: string[];
  beforeAll(async () => {
    archive = await archiveWithSegment('names-archive');
    before = tree(archive);
  });

  const longNames = ['A'.repeat(300), '0'.repeat(5000), `${SEG}0`, `${SEG}X`, `${SEG}.partialX`, `${'0'.repeat(64)}.history`];

  it('push: names that are too long or not WAL names: exit 1, one short line, nothing archived', async () => {
    const scratch = fresh('push-long');
    for (const name of longNames) {
      // Where the file system allows it, the file holds the real segment: only the name is wrong.
      if (name.length < 255) writeFileSync(join(scratch, name), segment);
      const res = await push(join(scratch, name), archive);
      expect(res.code, name.slice(0, 40)).toBe(1);
      const line = oneLine(res, 200);
      expect(line).toMatch(/not a WAL file name/);
      if (name.length > 80) expect(line).not.toContain(name);
    }
    expect(tree(archive)).toEqual(before);
  });

  it('fetch: names that are too long or not WAL names: exit 1, one short line, nothing written', async () => {
    const dest = fresh('fetch-long');
    for (const name of longNames) {
      const res = await fetch(name, join(dest, 'RECOVERYXLOG'), archive);
      expect(res.code, name.slice(0, 40)).toBe(1);
      const line = oneLine(res, 200);
      if (name.length > 80) expect(line).not.toContain(name);
    }
    expect(readdirSync(dest)).toEqual([]);
  });

  // A copy of the segment one level up, so that a fetch which followed "../" would find something.
  const pathNames = [
    `../${SEG}`,
    `./${SEG}`,
    `${SEG}/`,
    `${SEG}/.`,
    `/${SEG}`,
    `names-archive/${SEG}`,
    '..',
    '.',
    `${SEG}\n`,
    `\n${SEG}`,
    `${SEG.slice(0, 12)}\n${SEG.slice(12)}`,
    `${SEG}\r`,
    `\t${SEG}`,
    `${SEG}\u001b[2J`,
    `${SEG.slice(0, 23)}\u0001`,
  ];

  it('fetch: %f that is a path or holds "..", "/" or control characters: exit 1, one line, nothing written', async () => {
    writeFileSync(join(root, SEG), segment);
    const dest = fresh('fetch-paths');
    for (const name of pathNames) {
      const res = await fetch(name, join(dest, 'RECOVERYXLOG'), archive, root);
      expect(res.code, JSON.stringify(name)).toBe(1);
      oneLine(res);
    }
    expect(readdirSync(dest)).toEqual([]);
    rmSync(join(root, SEG));
  });

  it('push: a %p whose basename is not a WAL name (control characters, "..", ".") or that is not the file its name says: exit 1, nothing archived', async () => {
    const scratch = fresh('push-paths');
    const odd = [`${SEG}\n`, `\n${SEG}`, `${SEG.slice(0, 12)}\n${SEG.slice(12)}`, `${SEG}\r`, `\t${SEG}`, `${SEG}\u001b[2J`];
    for (const name of odd) writeFileSync(join(scratch, name), segment);
    mkdirSync(join(scratch, NEXT));
    // The real segment 7 under the name of segment 8 (a symbolic link, then a copy): its pages say 7.
    symlinkSync(join(walDir, SEG), join(scratch, 'link'));
    const paths = [...odd.map((n) => join(scratch, n)), join(scratch, '..'), join(scratch, '.'), `${join(scratch, NEXT)}/`, `${join(scratch, NEXT)}/..`];
    for (const p of paths) {
      const res = await push(p, archive);
      expect(res.code, JSON.stringify(p)).toBe(1);
      oneLine(res);
    }
    rmSync(join(scratch, NEXT), { recursive: true });
    symlinkSync(join(walDir, SEG), join(scratch, NEXT));
    const linked = await push(join(scratch, NEXT), archive);
    expect(linked.code).toBe(1);
    expect(oneLine(linked)).toContain(NEXT);
    expect(tree(archive)).toEqual(before);
  });

  it('fetch: a %p in a directory that does not exist is not a miss: exit 126 in archive recovery, 1 in a standby, nothing created', async () => {
    const cwd = fresh('datadir-missing-dest');
    const dest = join(cwd, 'no-such-dir', 'RECOVERYXLOG');
    const pitr = await fetch(SEG, dest, archive, cwd);
    expect(pitr.code).toBe(126);
    expect(oneLine(pitr)).toMatch(/cannot write .*no-such-dir.*: its directory does not exist/);
    writeFileSync(join(cwd, 'standby.signal'), '');
    const sb = await fetch(SEG, dest, archive, cwd);
    expect(sb.code).toBe(1);
    expect(oneLine(sb)).toMatch(/its directory does not exist/);
    expect(readdirSync(cwd)).toEqual(['standby.signal']);
  });
});

describe('archive locations with odd characters', () => {
  const names = ['a b', 'p%20q', 'h#i', 'q?r', 'ünï cødé ☃'];

  it('a directory path with spaces, %, #, ? or unicode: push then fetch round-trips, in exactly that directory', async () => {
    const base = fresh('odd-paths');
    await Promise.all(
      names.map(async (n) => {
        const dir = join(base, n);
        const res = await push(join(walDir, SEG), dir);
        expect(res.code, `${n}: ${res.stderr}`).toBe(0);
        expect(readdirSync(dir)).toContain(SEG);
        const dest = join(base, `${Buffer.from(n).toString('hex')}.out`);
        const got = await fetch(SEG, dest, dir);
        expect(got.code, `${n}: ${got.stderr}`).toBe(0);
        expect(readFileSync(dest).equals(segment)).toBe(true);
      }),
    );
    // Nothing was written under any other name.
    expect(
      readdirSync(base)
        .filter((f) => !f.endsWith('.out'))
        .sort(),
    ).toEqual([...names].sort());
  });

  it('file:// URLs: percent-encoding names the decoded directory; "?" and "#" are refused, nothing created', async () => {
    const base = fresh('odd-urls');
    // file:///…/a%20b is the directory "a b"; file:///…/p%2520q is "p%20q"; pathToFileURL encodes #, ? and unicode.
    const cases: [string, string][] = [
      [`file://${base}/a%20b`, 'a b'],
      [`file://${base}/p%2520q`, 'p%20q'],
      [pathToFileURL(join(base, 'h#i')).href, 'h#i'],
      [pathToFileURL(join(base, 'q?r')).href, 'q?r'],
      [pathToFileURL(join(base, 'ünï cødé ☃')).href, 'ünï cødé ☃'],
    ];
    for (const [url, dir] of cases) {
      const res = await push(join(walDir, SEG), url);
      expect(res.code, `${url}: ${res.stderr}`).toBe(0);
      expect(readdirSync(join(base, dir))).toContain(SEG);
      const dest = join(base, 'RECOVERYXLOG');
      const got = await fetch(SEG, dest, url);
      expect(got.code, `${url}: ${got.stderr}`).toBe(0);
      expect(readFileSync(dest).equals(segment)).toBe(true);
      rmSync(dest);
    }
    expect(readdirSync(base).sort()).toEqual(cases.map(([, d]) => d).sort());
    // Unencoded "#" or "?" would silently drop the rest of the path (file:///…/h#i is …/h).
    for (const url of [`file://${base}/x#y`, `file://${base}/x?y`, `file://${base}/x%2Fy`]) {
      const res = await push(join(walDir, SEG), url);
      expect(res.code, url).toBe(1);
      expect(oneLine(res)).toMatch(/invalid archive location/);
    }
    expect(readdirSync(base).sort()).toEqual(cases.map(([, d]) => d).sort());
  });

  it('s3:// URLs with bad bucket names or prefixes are refused at open time, without touching the network', async () => {
    const port = await freePort(); // nothing listens there: a request would fail differently, and slowly
    const cwd = fresh('datadir-s3');
    const urls = ['s3://bu cket/wal', 's3://bucket_/wal', 's3://', 's3:///x', 's3://bucket/../x', 's3://bucket/a//b', 's3://ab/x', 's3://bucket/x#y'];
    for (const url of urls) {
      const env = { AWS_ENDPOINT_URL: `http://127.0.0.1:${port}`, AWS_ACCESS_KEY_ID: 'AKIDTEST', AWS_SECRET_ACCESS_KEY: 'secret', AWS_REGION: 'us-east-1' };
      const t0 = Date.now();
      const p = await runCli(['push', join(walDir, SEG), '--archive', url], { env, cwd });
      expect(p.code, url).toBe(1);
      expect(oneLine(p)).toMatch(/invalid archive location|no bucket/);
      // fetch: a misconfigured archive must not read as "end of WAL" outside a standby.
      const f = await runCli(['fetch', SEG, join(cwd, 'RECOVERYXLOG'), '--archive', url], { env, cwd });
      expect(f.code, url).toBe(126);
      expect(oneLine(f)).toMatch(/invalid archive location|no bucket/);
      expect(Date.now() - t0).toBeLessThan(10_000);
    }
    expect(readdirSync(cwd)).toEqual([]);
  });
});

describe('symbolic links', () => {
  it('an archive directory that is a symbolic link: push and fetch work through it, the bytes land in the target, the identity check still applies', async () => {
    const target = fresh('link-target');
    const link = join(root, 'link-archive');
    symlinkSync(target, link);
    const res = await push(join(walDir, SEG), link);
    expect(res.code, res.stderr).toBe(0);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readFileSync(join(target, SEG)).equals(segment)).toBe(true);
    const dest = join(fresh('link-dest'), 'RECOVERYXLOG');
    const got = await fetch(SEG, dest, link);
    expect(got.code, got.stderr).toBe(0);
    expect(readFileSync(dest).equals(segment)).toBe(true);
    // A segment of another database system (its system identifier changed) is refused through the link too.
    const other = Buffer.from(segment);
    other.writeBigUInt64LE(other.readBigUInt64LE(24) ^ 0xffn, 24);
    const scratch = fresh('link-other');
    writeFileSync(join(scratch, SEG), other);
    const foreign = await push(join(scratch, SEG), link);
    expect(foreign.code).toBe(1);
    expect(oneLine(foreign)).toMatch(/system/i);
    expect(readFileSync(join(target, SEG)).equals(segment)).toBe(true);
    expect(
      readdirSync(target)
        .filter((f) => !f.startsWith('.'))
        .sort(),
    ).toEqual([SEG, 'walstream.json']);
  });

  it('an object in the archive that is a symbolic link (to /etc/passwd, to another segment) is never served: corrupt-object exit codes', async () => {
    const archive = await archiveWithSegment('objlink-archive');
    symlinkSync('/etc/passwd', join(archive, NEXT));
    symlinkSync(SEG, join(archive, '000000010000000000000009'));
    const cwd = fresh('datadir-objlink');
    const dest = join(cwd, 'RECOVERYXLOG');
    for (const name of [NEXT, '000000010000000000000009']) {
      const pitr = await fetch(name, dest, archive, cwd);
      expect(pitr.code, name).toBe(126);
      const line = oneLine(pitr);
      expect(line).toContain(name);
      expect(line).toMatch(/symbolic link/);
      expect(existsSync(dest)).toBe(false);
    }
    writeFileSync(join(cwd, 'standby.signal'), '');
    const sb = await fetch('000000010000000000000009', dest, archive, cwd);
    expect(sb.code).toBe(1);
    expect(readdirSync(cwd)).toEqual(['standby.signal']);
    // The real segment is still served.
    expect((await fetch(SEG, dest, archive, cwd)).code).toBe(0);
    expect(readFileSync(dest).equals(segment)).toBe(true);
  });

  it('push: a name in the archive that is a symbolic link is neither taken as the archived copy nor written through', async () => {
    const archive = fresh('objlink-push');
    const victim = join(fresh('objlink-victim'), 'file');
    writeFileSync(victim, 'not wal');
    symlinkSync(victim, join(archive, SEG));
    const res = await push(join(walDir, SEG), archive);
    expect(res.code).toBe(1);
    const line = oneLine(res);
    expect(line).toContain(SEG);
    expect(line).toMatch(/symbolic link/);
    expect(readFileSync(victim, 'utf8')).toBe('not wal');
    expect(lstatSync(join(archive, SEG)).isSymbolicLink()).toBe(true);
  });
});

describe('wrong sizes', () => {
  it('push: a segment file truncated or padded is refused, nothing archived', async () => {
    const archive = join(root, 'size-archive');
    const scratch = fresh('size-scratch');
    for (const [what, bytes] of [
      ['truncated', segment.subarray(0, segment.length / 2)],
      ['padded', Buffer.concat([segment, Buffer.alloc(8192)])],
      ['one byte more', Buffer.concat([segment, Buffer.alloc(1)])],
      ['one byte less', segment.subarray(0, segment.length - 1)],
    ] as const) {
      writeFileSync(join(scratch, SEG), bytes);
      const res = await push(join(scratch, SEG), archive);
      expect(res.code, what).toBe(1);
      expect(oneLine(res)).toMatch(new RegExp(`${SEG}: file has ${bytes.length} bytes`));
      expect(
        tree(archive).filter((f) => f.includes(SEG)),
        what,
      ).toEqual([]);
    }
  });

  it('fetch: an archived object truncated or padded on disk is refused by its checksum: exit 126 in archive recovery, 1 in a standby', async () => {
    const plain = await archiveWithSegment('size-plain');
    const gz = await archiveWithSegment('size-gzip', ['--compress', 'gzip']);
    const cwd = fresh('datadir-size');
    const dest = join(cwd, 'RECOVERYXLOG');
    const damage: [string, string, () => void][] = [
      ['plain, truncated', plain, () => truncateSync(join(plain, SEG), segment.length / 2)],
      ['gzip, truncated', gz, () => truncateSync(join(gz, `${SEG}.gz`), 1000)],
    ];
    for (const [what, archive, harm] of damage) {
      harm();
      const res = await fetch(SEG, dest, archive, cwd);
      expect(res.code, what).toBe(126);
      expect(oneLine(res)).toMatch(/corrupt/);
      expect(existsSync(dest), what).toBe(false);
    }
    // Padded: the file holds the whole segment and then more.
    const padded = await archiveWithSegment('size-padded');
    writeFileSync(join(padded, SEG), Buffer.concat([segment, Buffer.alloc(8192)]));
    const res = await fetch(SEG, dest, padded, cwd);
    expect(res.code).toBe(126);
    expect(oneLine(res)).toMatch(/corrupt/);
    writeFileSync(join(cwd, 'standby.signal'), '');
    expect((await fetch(SEG, dest, padded, cwd)).code).toBe(1);
    expect(readdirSync(cwd)).toEqual(['standby.signal']);
  });
});
