// libpq's rules for TLS host names, private key files and the password file, without a server.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildTlsOptions, ipBytes, keyFileProblem, parseSubjectAltNames, verifyPeerName, TlsSetupError } from '../../src/session/tls.js';
import { findPassword, passfilePath, passwordFromFile } from '../../src/session/pgpass.js';
import { resolveCredentials } from '../../src/session/connection.js';
import { buildClientConfig } from '../../src/session/conninfo.js';

const ENV_KEYS = ['HOME', 'PGPASSWORD', 'PGPASSFILE', 'PGUSER', 'PGHOST', 'PGPORT', 'PGHOSTADDR', 'PGSSLMODE', 'PGSSLROOTCERT', 'PGSSLCERT', 'PGSSLKEY'];
let saved: Record<string, string | undefined> = {};
let dir: string;
beforeEach(() => {
  saved = {};
  for (const k of ENV_KEYS) {
    saved[k] = process.env[k];
    delete process.env[k];
  }
  dir = mkdtempSync(join(tmpdir(), 'walstream-sec-'));
  process.env['HOME'] = dir;
});
afterEach(() => {
  for (const k of ENV_KEYS) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
  rmSync(dir, { recursive: true, force: true });
});

const cert = (cn: string | undefined, san?: string) => ({ subject: (cn === undefined ? {} : { CN: cn }) as never, subjectaltname: san });

describe('verify-full host name check', () => {
  it('a DNS subjectAltName matches, case-insensitively; the CN is then ignored', () => {
    expect(verifyPeerName('db.example.com', cert('other', 'DNS:DB.Example.com'))).toBeUndefined();
    const err = verifyPeerName('db.example.com', cert('db.example.com', 'DNS:other.example.com'));
    expect(err?.message).toBe('server certificate for "other.example.com" does not match host name "db.example.com"');
  });

  it('counts the other names in the message', () => {
    expect(verifyPeerName('x', cert('cn', 'DNS:a, DNS:b, IP Address:10.0.0.1'))?.message).toBe('server certificate for "a" (and 2 other names) does not match host name "x"');
    expect(verifyPeerName('x', cert(undefined, 'DNS:a, DNS:b'))?.message).toBe('server certificate for "a" (and 1 other name) does not match host name "x"');
  });

  it('without a subjectAltName of the host kind, the Common Name decides', () => {
    expect(verifyPeerName('db.example.com', cert('db.example.com'))).toBeUndefined();
    expect(verifyPeerName('localhost', cert('localhost', 'IP Address:127.0.0.1'))).toBeUndefined();
    // An IP host with only DNS entries may still match the CN (libpq's deliberate departure from RFC 6125).
    expect(verifyPeerName('127.0.0.1', cert('127.0.0.1', 'DNS:localhost'))).toBeUndefined();
    expect(verifyPeerName('127.0.0.1', cert('127.0.0.1', 'IP Address:10.0.0.1'))?.message).toMatch(/does not match host name "127.0.0.1"/);
  });

  it('IP addresses compare as addresses, IPv4 and IPv6', () => {
    expect(verifyPeerName('127.0.0.1', cert(undefined, 'DNS:localhost, IP Address:127.0.0.1'))).toBeUndefined();
    expect(verifyPeerName('::1', cert(undefined, 'IP Address:0:0:0:0:0:0:0:1'))).toBeUndefined();
    expect(verifyPeerName('127.0.0.2', cert(undefined, 'IP Address:127.0.0.1'))).toBeInstanceOf(Error);
    expect(verifyPeerName('localhost', cert(undefined, 'IP Address:127.0.0.1'))?.message).toBe('server certificate for "127.0.0.1" does not match host name "localhost"');
  });

  it('wildcards: "*." as the whole first label, one label only', () => {
    expect(verifyPeerName('db.example.com', cert(undefined, 'DNS:*.example.com'))).toBeUndefined();
    expect(verifyPeerName('a.db.example.com', cert(undefined, 'DNS:*.example.com'))).toBeInstanceOf(Error);
    expect(verifyPeerName('example.com', cert(undefined, 'DNS:*.example.com'))).toBeInstanceOf(Error);
    expect(verifyPeerName('dbexample.com', cert(undefined, 'DNS:d*.example.com'))).toBeInstanceOf(Error);
  });

  it('no host name, no names, an embedded NUL', () => {
    expect(verifyPeerName(undefined, cert('x'))?.message).toBe('host name must be specified for a verified SSL connection');
    expect(verifyPeerName('x', cert(undefined))?.message).toBe("could not get server's host name from server certificate");
    expect(verifyPeerName('a', cert(undefined, 'DNS:"a\\u0000.evil"'))?.message).toBe("SSL certificate's name contains embedded null");
  });

  it("parses Node's subjectaltname text, quoted values included", () => {
    expect(parseSubjectAltNames('DNS:localhost, IP Address:127.0.0.1, DNS:"a, DNS:b"')).toEqual([
      { type: 'DNS', value: 'localhost' },
      { type: 'IP Address', value: '127.0.0.1' },
      { type: 'DNS', value: 'a, DNS:b' },
    ]);
    expect(parseSubjectAltNames(undefined)).toEqual([]);
    expect(ipBytes('::ffff:127.0.0.1')?.toString('hex')).toBe('00000000000000000000ffff7f000001');
    expect(ipBytes('fe80::1')?.toString('hex')).toBe('fe800000000000000000000000000001');
    expect(ipBytes('localhost')).toBeUndefined();
  });
});

describe('private key file permissions (libpq)', () => {
  const st = (mode: number, uid: number, file = true) => ({ mode, uid, isFile: () => file });
  it('a user-owned key must be 0600 or less', () => {
    expect(keyFileProblem('k', st(0o100600, 1000))).toBeUndefined();
    expect(keyFileProblem('k', st(0o100400, 1000))).toBeUndefined();
    expect(keyFileProblem('k', st(0o100640, 1000))).toMatch(/private key file "k" has group or world access/);
    expect(keyFileProblem('k', st(0o100604, 1000))).toMatch(/group or world access/);
  });
  it('a root-owned key may be group-readable (0640), nothing more', () => {
    expect(keyFileProblem('k', st(0o100640, 0))).toBeUndefined();
    expect(keyFileProblem('k', st(0o100660, 0))).toMatch(/group or world access/);
    expect(keyFileProblem('k', st(0o100644, 0))).toMatch(/group or world access/);
  });
  it('must be a regular file', () => {
    expect(keyFileProblem('k', st(0o040700, 1000, false))).toBe('private key file "k" is not a regular file');
  });
});

describe('TLS options from the ssl settings', () => {
  const pg = (): string => {
    const d = join(dir, '.postgresql');
    mkdirSync(d, { recursive: true });
    return d;
  };

  it('without a root certificate: no verification, except verify-ca/verify-full refuse to start', () => {
    expect(buildTlsOptions({ mode: 'require' }, 'h')).toMatchObject({ rejectUnauthorized: false, servername: 'h' });
    expect(buildTlsOptions({ mode: 'prefer' }, '127.0.0.1').servername).toBeUndefined();
    expect(() => buildTlsOptions({ mode: 'verify-ca' }, 'h')).toThrow(TlsSetupError);
    expect(() => buildTlsOptions({ mode: 'verify-full', rootCert: join(dir, 'missing.crt') }, 'h')).toThrow(`root certificate file "${join(dir, 'missing.crt')}" does not exist`);
  });

  it('the default ~/.postgresql/root.crt makes even sslmode=require verify the chain (libpq)', () => {
    writeFileSync(join(pg(), 'root.crt'), 'ROOT');
    const o = buildTlsOptions({ mode: 'require' }, 'h');
    expect(o.rejectUnauthorized).toBe(true);
    expect(String(o.ca)).toBe('ROOT');
    // Only verify-full checks the name.
    expect(o.checkServerIdentity?.('h', cert('other') as never)).toBeUndefined();
    const full = buildTlsOptions({ mode: 'verify-full' }, 'h');
    expect(full.checkServerIdentity?.('ignored', cert('other') as never)?.message).toMatch(/does not match host name "h"/);
  });

  it('sslrootcert=system: verified against the trusted roots', () => {
    const o = buildTlsOptions({ mode: 'verify-full', rootCert: 'system' }, 'h');
    expect(o.rejectUnauthorized).toBe(true);
    expect(o.ca).toBeUndefined();
  });

  it('client certificate and key: defaults in ~/.postgresql, key checked like libpq', () => {
    expect(buildTlsOptions({ mode: 'require' }, 'h').cert).toBeUndefined();
    const d = pg();
    writeFileSync(join(d, 'postgresql.crt'), 'CERT');
    expect(() => buildTlsOptions({ mode: 'require' }, 'h')).toThrow(`certificate present, but not private key file "${join(d, 'postgresql.key')}"`);
    writeFileSync(join(d, 'postgresql.key'), 'KEY', { mode: 0o644 });
    chmodSync(join(d, 'postgresql.key'), 0o644);
    expect(() => buildTlsOptions({ mode: 'require' }, 'h')).toThrow(/has group or world access/);
    chmodSync(join(d, 'postgresql.key'), 0o600);
    const o = buildTlsOptions({ mode: 'require', keyPassword: 'pw' }, 'h');
    expect(String(o.cert)).toBe('CERT');
    expect(String(o.key)).toBe('KEY');
    expect(o.passphrase).toBe('pw');
  });
});

describe('password file', () => {
  const key = { host: 'db1', port: '5432', database: 'replication', user: 'walstream' };

  it('first matching line wins; "*" matches anything; comments are skipped', () => {
    const text = ['# comment', 'db2:5432:replication:walstream:no', '*:5432:*:walstream:yes', 'db1:5432:replication:walstream:later'].join('\n');
    expect(findPassword(text, key)).toBe('yes');
    expect(findPassword('db1:5433:replication:walstream:x\n', key)).toBeUndefined();
    expect(findPassword('db1:5432:postgres:walstream:x\n', key)).toBeUndefined();
    expect(findPassword('db1:5432:replication:walstream:crlf\r\n', key)).toBe('crlf');
  });

  it('backslash escapes ":" and "\\" in fields and in the password', () => {
    expect(findPassword(String.raw`db1:5432:replication:walstream:a\:b\\c`, key)).toBe(String.raw`a:b\c`);
    expect(findPassword(String.raw`d\:b:5432:replication:walstream:p`, { ...key, host: 'd:b' })).toBe('p');
    // The password ends at the first unescaped ":".
    expect(findPassword('db1:5432:replication:walstream:pw:extra', key)).toBe('pw');
  });

  it("a file others can read is ignored with libpq's warning", () => {
    const file = join(dir, 'pgpass');
    writeFileSync(file, 'db1:5432:replication:walstream:secret-pw\n', { mode: 0o600 });
    chmodSync(file, 0o600);
    expect(passwordFromFile(file, key)).toEqual({ password: 'secret-pw', file });
    chmodSync(file, 0o640);
    const r = passwordFromFile(file, key);
    expect(r.password).toBeUndefined();
    expect(r.warning).toBe(`password file "${file}" has group or world access; permissions should be u=rw (0600) or less`);
    expect(r.warning).not.toContain('secret-pw');
    expect(passwordFromFile(dir, key).warning).toBe(`password file "${dir}" is not a plain file`);
    expect(passwordFromFile(join(dir, 'missing'), key)).toEqual({ password: undefined, file: join(dir, 'missing') });
  });

  it('which file: passfile=, then PGPASSFILE, then ~/.pgpass', () => {
    expect(passfilePath('/a')).toBe('/a');
    process.env['PGPASSFILE'] = '/b';
    expect(passfilePath(undefined)).toBe('/b');
    delete process.env['PGPASSFILE'];
    expect(passfilePath(undefined)).toBe(join(dir, '.pgpass'));
  });
});

describe('resolveCredentials: password=, then PGPASSWORD, then the password file', () => {
  const warnings: string[] = [];
  const warn = (m: string): void => {
    warnings.push(m);
  };
  beforeEach(() => {
    warnings.length = 0;
    writeFileSync(join(dir, '.pgpass'), 'db1:5432:replication:walstream:from-file\nlocalhost:5432:replication:walstream:local\n', { mode: 0o600 });
    chmodSync(join(dir, '.pgpass'), 0o600);
  });

  it('the order of the sources', () => {
    const cfg = (s: string) => buildClientConfig({ dbname: s, applicationName: 'a' });
    expect(resolveCredentials(cfg('host=db1 user=walstream'), warn)).toEqual({
      user: 'walstream',
      password: 'from-file',
      passwordFile: join(dir, '.pgpass'),
    });
    process.env['PGPASSWORD'] = 'from-env';
    expect(resolveCredentials(cfg('host=db1 user=walstream'), warn)).toEqual({ user: 'walstream', password: 'from-env' });
    expect(resolveCredentials(cfg('host=db1 user=walstream password=from-string'), warn)).toEqual({ user: 'walstream', password: 'from-string' });
    expect(warnings).toEqual([]);
  });

  it('matches host (not hostaddr), default port and the replication database; PGUSER and PGHOST count', () => {
    const cfg = buildClientConfig({ dbname: 'host=db1 hostaddr=127.0.0.1 user=walstream', applicationName: 'a' });
    expect(resolveCredentials(cfg, warn).password).toBe('from-file');
    process.env['PGUSER'] = 'walstream';
    expect(resolveCredentials(buildClientConfig({ applicationName: 'a' }), warn).password).toBe('local');
    process.env['PGHOST'] = 'db1';
    expect(resolveCredentials(buildClientConfig({ applicationName: 'a' }), warn)).toMatchObject({ user: 'walstream', password: 'from-file' });
    expect(resolveCredentials(buildClientConfig({ dbname: 'port=5433', applicationName: 'a' }), warn).password).toBeUndefined();
  });

  it('an unsafe password file is ignored with a warning', () => {
    chmodSync(join(dir, '.pgpass'), 0o644);
    const r = resolveCredentials(buildClientConfig({ dbname: 'host=db1 user=walstream', applicationName: 'a' }), warn);
    expect(r.password).toBeUndefined();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/has group or world access/);
  });
});
