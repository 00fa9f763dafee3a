// What walstream restore writes for PostgreSQL (backup/restore.ts, commands/restore.ts):
// restore_command quoted for the shell and then for postgresql.conf, the fetch arguments it
// carries (never a secret), and the target times it can compare with a backup's end.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { confQuote, parseTargetTime, restoreCommandLine, shellQuote } from '../../src/backup/restore.js';
import { archiveForServer, fetchArguments } from '../../src/commands/restore.js';

/** What PostgreSQL's conf parser makes of a quoted value (GUC_scanstr: '' and \\ are escapes). */
function unconf(v: string): string {
  expect(v.startsWith("'") && v.endsWith("'")).toBe(true);
  return v.slice(1, -1).replace(/''|\\\\|\\'/g, (m) => (m === "''" || m === "\\'" ? "'" : '\\'));
}

describe('restore_command', () => {
  it('survives postgresql.conf and the shell with spaces, quotes and backslashes in paths', () => {
    const archive = "/tmp/an archive/it's \\here";
    const line = restoreCommandLine(['/usr/bin/printf', '%s|'], ['--archive', archive, '--prefetch', '8']);
    const conf = confQuote(line);
    expect(conf).not.toMatch(/\n/);
    const back = unconf(conf);
    expect(back).toBe(line);
    // PostgreSQL substitutes %f and %p, then runs it with /bin/sh -c.
    const cmd = back.replace('%f', '000000010000000000000003').replace('%p', 'pg_wal/RECOVERYXLOG');
    const out = execFileSync('/bin/sh', ['-c', cmd], { encoding: 'utf8' });
    expect(out).toBe(`fetch|000000010000000000000003|pg_wal/RECOVERYXLOG|--archive|${archive}|--prefetch|8|`);
  });

  it('leaves plain words bare and quotes the rest', () => {
    expect(shellQuote('%f')).toBe('%f');
    expect(shellQuote('/usr/bin/node')).toBe('/usr/bin/node');
    expect(shellQuote('s3://bucket/prefix')).toBe('s3://bucket/prefix');
    expect(shellQuote('a b')).toBe("'a b'");
    expect(shellQuote("it's")).toBe("'it'\\''s'");
    expect(confQuote("a'b\\c")).toBe("'a''b\\\\c'");
  });

  it('carries the archive (a local one made absolute), the endpoint, the key file, never a key', () => {
    expect(archiveForServer('relative/archive')).toBe(`${process.cwd()}/relative/archive`);
    expect(archiveForServer('s3://bucket/p')).toBe('s3://bucket/p');
    const s3 = fetchArguments({
      archive: 's3://bucket/p',
      s3Endpoint: 'http://127.0.0.1:9000',
      encryptionKeyFile: 'keys',
      encryptionRequired: true,
      keyFromEnvironment: false,
      fetchOptions: ['--prefetch', '4'],
    });
    expect(s3.args).toEqual(['--archive', 's3://bucket/p', '--s3-endpoint', 'http://127.0.0.1:9000', '--encryption-key-file', `${process.cwd()}/keys`, '--encryption-required', '--prefetch', '4']);
    expect(s3.environment.join(' ')).toMatch(/AWS_ACCESS_KEY_ID/);
    const env = fetchArguments({ archive: '/a', keyFromEnvironment: true });
    expect(env.args).toEqual(['--archive', '/a']);
    expect(env.environment).toEqual(['WALSTREAM_ENCRYPTION_KEY (the archive key)']);
    expect(() => fetchArguments({ archive: '/a', keyFromEnvironment: false, fetchOptions: ['--archive=/b'] })).toThrow(/set by restore itself/);
    expect(() => fetchArguments({ archive: '/a', keyFromEnvironment: false, fetchOptions: ['%p'] })).toThrow(/contains %/);
  });
});

describe('parseTargetTime', () => {
  it('reads ISO 8601 and PostgreSQL timestamptz output, and wants a zone', () => {
    expect(parseTargetTime('2026-12-04 08:51:36.123456+00').toISOString()).toBe('2026-12-04T08:51:36.123Z');
    expect(parseTargetTime('2026-12-04T10:51:36+02').toISOString()).toBe('2026-12-04T08:51:36.000Z');
    expect(parseTargetTime('2026-12-04 03:21:36-0530').toISOString()).toBe('2026-12-04T08:51:36.000Z');
    expect(parseTargetTime('2026-12-04 08:51:36 UTC').toISOString()).toBe('2026-12-04T08:51:36.000Z');
    expect(parseTargetTime('2026-12-04T08:51:36Z').toISOString()).toBe('2026-12-04T08:51:36.000Z');
    expect(() => parseTargetTime('2026-12-04 08:51:36')).toThrow(/a zone/);
    expect(() => parseTargetTime('yesterday')).toThrow(/cannot read the target time/);
  });
});
