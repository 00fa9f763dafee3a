// The password file as libpq reads it (fe-connect.c passwordFromFile, pwdfMatchesString), and
// where the `pgpass` package (pg's own lookup) answers differently: the reason
// src/session/pgpass.ts is kept instead of that package.
import { afterAll, describe, expect, it } from 'vitest';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findPassword, passfileHost, passfilePath, passwordFromFile, type PassfileKey } from '../../src/session/pgpass.js';

const dir = mkdtempSync(join(tmpdir(), 'walstream-pgpass-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let files = 0;
function passfile(text: string, mode = 0o600): string {
  const file = join(dir, `pgpass-${++files}`);
  writeFileSync(file, text);
  chmodSync(file, mode);
  return file;
}

const key: PassfileKey = { host: 'db.example', port: '5432', database: 'replication', user: 'walstream' };

/**
 * Files on which libpq and the pgpass package disagree, with libpq's answer for `key`: each was
 * worked through fe-connect.c's passwordFromFile by hand.
 */
const DIFFERENCES: { why: string; text: string; key?: PassfileKey; libpq: string | undefined }[] = [
  { why: 'the first matching line wins', text: 'db.example:5432:replication:walstream:first\n*:*:*:*:fallback\n', libpq: 'first' },
  { why: 'a line shorter than 11 characters is a valid line', text: '*:*:*:u:pw\n', key: { ...key, user: 'u' }, libpq: 'pw' },
  { why: 'a matching line with an empty password ends the search', text: 'db.example:5432:replication:walstream:\n*:*:*:*:later\n', libpq: undefined },
  { why: '"\\\\" is an escaped backslash, and the ":" after it ends the field', text: 'db.example:5432:repl\\\\:walstream:secret\n', key: { ...key, database: 'repl\\' }, libpq: 'secret' },
  { why: 'ports are compared as text', text: 'db.example:05432:replication:walstream:zero\n', libpq: undefined },
];

describe('the password file, as libpq reads it', () => {
  it('matches host, port, database and user, "*" for any, first match wins', () => {
    const text = ['# a comment', 'other:5432:replication:walstream:no', 'db.example:*:replication:walstream:first', '*:*:*:*:second', ''].join('\n');
    expect(findPassword(text, key)).toBe('first');
    expect(findPassword(text, { ...key, host: 'elsewhere' })).toBe('second');
    expect(findPassword('#db.example:5432:replication:walstream:commented\n', key)).toBeUndefined();
    expect(findPassword('db.example:5432:replication:walstream:crlf\r\n', key)).toBe('crlf');
  });

  it('unescapes ":" and "\\" in every field and in the password', () => {
    const text = 'db.example:5432:a\\:b:c\\\\d:p\\:w\\\\d\\x:ignored\n';
    expect(findPassword(text, { ...key, database: 'a:b', user: 'c\\d' })).toBe('p:w\\dx');
    // "*" is a wildcard only as the whole field; an escaped "\*" is a literal star.
    expect(findPassword('\\*:5432:replication:walstream:star\n', key)).toBeUndefined();
    expect(findPassword('\\*:5432:replication:walstream:star\n', { ...key, host: '*' })).toBe('star');
  });

  it('matches "localhost" for no host and for the default socket directory, other socket directories as written', () => {
    expect(passfileHost('')).toBe('localhost');
    expect(passfileHost('/tmp')).toBe('localhost');
    expect(passfileHost('/var/run/postgresql')).toBe('localhost');
    expect(passfileHost('/srv/pg/sockets')).toBe('/srv/pg/sockets');
    const file = passfile('localhost:5432:replication:walstream:local\n/srv/pg/sockets:5432:replication:walstream:sockets\n');
    expect(passwordFromFile(file, { ...key, host: '/var/run/postgresql' }).password).toBe('local');
    expect(passwordFromFile(file, { ...key, host: '/srv/pg/sockets' }).password).toBe('sockets');
  });

  it('ignores a file that group or others can access, with a warning that holds no password', () => {
    const file = passfile('*:*:*:*:secret\n', 0o640);
    const r = passwordFromFile(file, key);
    expect(r.password).toBeUndefined();
    expect(r.warning).toBe(`password file "${file}" has group or world access; permissions should be u=rw (0600) or less`);
    expect(passwordFromFile(dir, key)).toMatchObject({ password: undefined, warning: `password file "${dir}" is not a plain file` });
    expect(passwordFromFile(join(dir, 'missing'), key)).toEqual({ password: undefined, file: join(dir, 'missing') });
  });

  it('reads passfile=, else PGPASSFILE, else ~/.pgpass', () => {
    expect(passfilePath('/given', { PGPASSFILE: '/env' })).toBe('/given');
    expect(passfilePath(undefined, { PGPASSFILE: '/env' })).toBe('/env');
    expect(passfilePath(undefined, {})).toMatch(/\.pgpass$/);
  });

  it.each(DIFFERENCES)('libpq: $why', ({ text, key: k, libpq }) => {
    expect(passwordFromFile(passfile(text), k ?? key).password).toBe(libpq);
  });
});

type PgPass = (conn: { host: string; port: number; database: string; user: string }, cb: (password: string | undefined) => void) => void;

/** The pgpass package's answer: it reads PGPASSFILE, and no file at all while PGPASSWORD is set. */
async function packageAnswer(file: string, k: PassfileKey, env: Record<string, string> = {}): Promise<string | undefined> {
  const pgpass = createRequire(import.meta.url)('pgpass') as PgPass;
  const saved = { PGPASSFILE: process.env['PGPASSFILE'], PGPASSWORD: process.env['PGPASSWORD'] };
  process.env['PGPASSFILE'] = file;
  delete process.env['PGPASSWORD'];
  Object.assign(process.env, env);
  try {
    return await new Promise((resolve) => pgpass({ host: k.host, port: Number(k.port), database: k.database, user: k.user }, resolve));
  } finally {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
}

describe('the pgpass package (why walstream does not use it)', () => {
  it('agrees with libpq on an ordinary file', async () => {
    expect(await packageAnswer(passfile('other:5432:replication:walstream:no\ndb.example:5432:replication:walstream:yes\n'), key)).toBe('yes');
  });

  it.each(DIFFERENCES)('differs: $why', async ({ text, key: k, libpq }) => {
    expect(await packageAnswer(passfile(text), k ?? key)).not.toBe(libpq);
  });

  it('differs: reads no file while PGPASSWORD is set, even to "" (libpq then reads it)', async () => {
    const file = passfile('*:*:*:*:from-file\n');
    expect(await packageAnswer(file, key, { PGPASSWORD: '' })).toBeUndefined();
    expect(passwordFromFile(file, key).password).toBe('from-file');
  });
});
