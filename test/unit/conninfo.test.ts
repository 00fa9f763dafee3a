import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { buildClientConfig, parseKeywordValue, isUri, describeTarget, ConninfoError } from '../../src/session/conninfo.js';

// buildClientConfig reads PGSSLMODE and friends: run without them.
const ENV_KEYS = ['PGSSLMODE', 'PGSSLROOTCERT', 'PGSSLCERT', 'PGSSLKEY', 'PGSSLCRL', 'PGHOST', 'PGHOSTADDR', 'PGPORT', 'PGUSER', 'PGPASSFILE', 'PGCHANNELBINDING'];
let savedEnv: Record<string, string | undefined> = {};
beforeEach(() => {
  savedEnv = {};
  for (const k of ENV_KEYS) {
    savedEnv[k] = process.env[k];
    delete process.env[k];
  }
});
afterEach(() => {
  for (const k of ENV_KEYS) {
    const v = savedEnv[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

describe('parseKeywordValue', () => {
  it('parses plain and quoted values with escapes', () => {
    expect(parseKeywordValue(String.raw`host=localhost port=5432 dbname='my db' password='it\'s'`)).toEqual({
      host: 'localhost',
      port: '5432',
      dbname: 'my db',
      password: "it's",
    });
  });

  it('allows spaces around "=" and any whitespace between pairs', () => {
    expect(parseKeywordValue('  host = localhost\tport= 5432\n user =alice  ')).toEqual({ host: 'localhost', port: '5432', user: 'alice' });
  });

  it('handles empty quoted values, escaped backslashes and escapes outside quotes', () => {
    expect(parseKeywordValue("password='' user=bob")).toEqual({ password: '', user: 'bob' });
    expect(parseKeywordValue(String.raw`password='a\\b'`)).toEqual({ password: String.raw`a\b` });
    expect(parseKeywordValue(String.raw`password=a\ b`)).toEqual({ password: 'a b' });
    expect(parseKeywordValue("options='-c wal_sender_timeout=10s'")).toEqual({ options: '-c wal_sender_timeout=10s' });
  });

  it('the last of a repeated keyword wins; an empty string is empty', () => {
    expect(parseKeywordValue('host=a host=b')).toEqual({ host: 'b' });
    expect(parseKeywordValue('')).toEqual({});
    expect(parseKeywordValue('   ')).toEqual({});
  });

  it.each([
    ['host localhost', /missing "=" after "host"/],
    ['host', /missing "=" after "host"/],
    ['host=a port', /missing "=" after "port"/],
    ['=value', /invalid connection string/],
    ["password='abc", /unterminated quoted string/],
    [String.raw`password='abc\'`, /unterminated quoted string/],
  ])('rejects %j', (text, message) => {
    expect(() => parseKeywordValue(text)).toThrow(ConninfoError);
    expect(() => parseKeywordValue(text)).toThrow(message);
  });
});

describe('isUri', () => {
  it('recognises both URI schemes only', () => {
    expect(isUri('postgresql://h/db')).toBe(true);
    expect(isUri('postgres://h')).toBe(true);
    expect(isUri('host=h')).toBe(false);
    expect(isUri('mysql://h')).toBe(false);
  });
});

describe('buildClientConfig', () => {
  it('defaults: replication connection to the "replication" database, application name from the options', () => {
    const cfg = buildClientConfig({ applicationName: 'walstream' });
    expect(cfg).toMatchObject({ replication: 'true', database: 'replication', application_name: 'walstream', connectionTimeoutMillis: 30000 });
    expect(cfg.host).toBeUndefined();
    expect(cfg.port).toBeUndefined();
    expect(cfg.user).toBeUndefined();
    expect(cfg.ssl).toBeUndefined();
    // libpq's default sslmode: try SSL, go on without it.
    expect(cfg.sslSettings).toEqual({ mode: 'prefer' });
    expect(cfg.options).toBeUndefined();
  });

  it('takes settings from a keyword/value string', () => {
    const cfg = buildClientConfig({
      dbname: String.raw`host=db1 port=5433 user=alice password='it\'s' dbname=postgres`,
      applicationName: 'walstream',
    });
    expect(cfg).toMatchObject({
      host: 'db1',
      port: 5433,
      user: 'alice',
      password: "it's",
      database: 'postgres',
      application_name: 'walstream',
      replication: 'true',
    });
  });

  it('an application_name in the string beats the option', () => {
    expect(buildClientConfig({ dbname: 'application_name=from_string', applicationName: 'walstream' }).application_name).toBe('from_string');
  });

  it('-h, -p and -U override the string', () => {
    const cfg = buildClientConfig({ dbname: 'host=db1 port=5433 user=alice', host: 'db2', port: '6543', user: 'bob', applicationName: 'walstream' });
    expect(cfg).toMatchObject({ host: 'db2', port: 6543, user: 'bob' });
    expect(buildClientConfig({ dbname: 'port=5433', port: 6000, applicationName: 'a' }).port).toBe(6000);
  });

  it('hostaddr is used when no host is given', () => {
    expect(buildClientConfig({ dbname: 'hostaddr=10.0.0.1', applicationName: 'a' }).host).toBe('10.0.0.1');
  });

  it('a bare -d value is a database name', () => {
    expect(buildClientConfig({ dbname: 'mydb', applicationName: 'a' }).database).toBe('mydb');
  });

  // (A URI naming a database was refused with 'invalid connection option "database"' until
  // src/session/conninfo.ts was changed while these tests were written; this guards it.)
  it('URI form: user, password, host, port, database and application_name', () => {
    const cfg = buildClientConfig({ dbname: 'postgresql://u:p@h:5433/db?application_name=x', applicationName: 'walstream' });
    expect(cfg).toMatchObject({ host: 'h', port: 5433, user: 'u', password: 'p', database: 'db', application_name: 'x', replication: 'true' });
  });

  it('URI form without a database, and with sslmode', () => {
    expect(buildClientConfig({ dbname: 'postgres://h:5432', applicationName: 'walstream' })).toMatchObject({
      host: 'h',
      port: 5432,
      database: 'replication',
      application_name: 'walstream',
    });
    const cfg = buildClientConfig({ dbname: 'postgresql://u:p@h:5433/db?application_name=x&sslmode=disable', applicationName: 'walstream' });
    expect(cfg).toMatchObject({ host: 'h', port: 5433, user: 'u', password: 'p', database: 'db', application_name: 'x' });
    expect(cfg.sslSettings.mode).toBe('disable');
  });

  it('URI form: ssl* parameters are taken as given, and the files are not read yet', () => {
    const cfg = buildClientConfig({
      dbname: 'postgresql://u@h:5433/db?sslmode=verify-full&sslrootcert=/nonexistent/root.crt&sslcert=/nonexistent/c.crt&sslkey=/nonexistent/c.key&application_name=x',
      applicationName: 'walstream',
    });
    expect(cfg.sslSettings).toEqual({ mode: 'verify-full', rootCert: '/nonexistent/root.crt', cert: '/nonexistent/c.crt', key: '/nonexistent/c.key' });
    expect(cfg).toMatchObject({ host: 'h', port: 5433, user: 'u', database: 'db', application_name: 'x' });
    expect(cfg.ssl).toBeUndefined();
  });

  it('URI form: -h/-p/-U still override', () => {
    const cfg = buildClientConfig({ dbname: 'postgresql://u@h:5433/?sslmode=disable', host: 'h2', port: 1234, user: 'u2', applicationName: 'a' });
    expect(cfg).toMatchObject({ host: 'h2', port: 1234, user: 'u2' });
  });

  it('URI form: an unknown query parameter is refused, as in the keyword/value form', () => {
    expect(() => buildClientConfig({ dbname: 'postgres://h:5432?foo=bar', applicationName: 'a' })).toThrow(ConninfoError);
    expect(() => buildClientConfig({ dbname: 'postgresql://h/db?applicaton_name=x', applicationName: 'a' })).toThrow(ConninfoError);
  });

  it.each([
    ['port=abc', undefined],
    ['port=0', undefined],
    ['port=65536', undefined],
    ['port=54.3', undefined],
    ['host=h', 'x'],
    ['host=h', '70000'],
  ])('invalid port: %j with -p %j', (dbname, port) => {
    expect(() => buildClientConfig({ dbname, port, applicationName: 'a' })).toThrow(ConninfoError);
    expect(() => buildClientConfig({ dbname, port, applicationName: 'a' })).toThrow(/invalid port number/);
  });

  it('an invalid URI port is refused', () => {
    expect(() => buildClientConfig({ dbname: 'postgresql://h:99999/?sslmode=disable', applicationName: 'a' })).toThrow();
  });

  it('an unknown keyword is refused', () => {
    expect(() => buildClientConfig({ dbname: 'host=h foo=bar', applicationName: 'a' })).toThrow(ConninfoError);
    expect(() => buildClientConfig({ dbname: 'host=h foo=bar', applicationName: 'a' })).toThrow(/invalid connection option "foo"/);
  });

  it('syntax errors in the string surface as ConninfoError', () => {
    expect(() => buildClientConfig({ dbname: "host=h password='x", applicationName: 'a' })).toThrow(ConninfoError);
  });

  it('connect_timeout: default 30 s, from the string, from the options, 0 = forever', () => {
    expect(buildClientConfig({ dbname: 'connect_timeout=5', applicationName: 'a' }).connectionTimeoutMillis).toBe(5000);
    expect(buildClientConfig({ dbname: 'connect_timeout=0', applicationName: 'a' }).connectionTimeoutMillis).toBe(0);
    expect(buildClientConfig({ connectTimeout: 7, applicationName: 'a' }).connectionTimeoutMillis).toBe(7000);
  });

  it('options and wal_sender_timeout', () => {
    expect(buildClientConfig({ walSenderTimeout: '60s', applicationName: 'a' }).options).toBe('-c wal_sender_timeout=60s');
    expect(buildClientConfig({ dbname: "options='-c work_mem=1MB'", walSenderTimeout: '10s', applicationName: 'a' }).options).toBe('-c work_mem=1MB -c wal_sender_timeout=10s');
    expect(buildClientConfig({ dbname: "options='-c work_mem=1MB'", applicationName: 'a' }).options).toBe('-c work_mem=1MB');
  });

  it('sslmode from the string, default prefer', () => {
    expect(buildClientConfig({ dbname: 'host=h sslmode=disable', applicationName: 'a' }).sslSettings).toEqual({ mode: 'disable' });
    expect(buildClientConfig({ dbname: 'host=h sslmode=require', applicationName: 'a' }).sslSettings).toEqual({ mode: 'require' });
    expect(buildClientConfig({ dbname: 'host=h', applicationName: 'a' }).sslSettings).toEqual({ mode: 'prefer' });
    for (const mode of ['allow', 'prefer', 'verify-ca', 'verify-full']) {
      expect(buildClientConfig({ dbname: `sslmode=${mode}`, applicationName: 'a' }).sslSettings.mode).toBe(mode);
    }
  });

  it('an unknown sslmode is refused', () => {
    expect(() => buildClientConfig({ dbname: 'sslmode=no-verify', applicationName: 'a' })).toThrow(/invalid sslmode value: "no-verify"/);
    expect(() => buildClientConfig({ dbname: 'postgres://h/?sslmode=true', applicationName: 'a' })).toThrow(ConninfoError);
  });

  it('ssl settings from PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY, PGSSLCRL; the string wins', () => {
    process.env['PGSSLMODE'] = 'verify-ca';
    process.env['PGSSLROOTCERT'] = '/env/root.crt';
    process.env['PGSSLCERT'] = '/env/c.crt';
    process.env['PGSSLKEY'] = '/env/c.key';
    process.env['PGSSLCRL'] = '/env/root.crl';
    expect(buildClientConfig({ dbname: 'host=h', applicationName: 'a' }).sslSettings).toEqual({
      mode: 'verify-ca',
      rootCert: '/env/root.crt',
      cert: '/env/c.crt',
      key: '/env/c.key',
      crl: '/env/root.crl',
    });
    expect(buildClientConfig({ dbname: "sslmode=disable sslrootcert=/s/root.crt sslpassword='p w'", applicationName: 'a' }).sslSettings).toMatchObject({
      mode: 'disable',
      rootCert: '/s/root.crt',
      keyPassword: 'p w',
    });
  });

  it('sslrootcert=system: verify-full by default, and no weaker mode', () => {
    expect(buildClientConfig({ dbname: 'sslrootcert=system', applicationName: 'a' }).sslSettings.mode).toBe('verify-full');
    expect(() => buildClientConfig({ dbname: 'sslrootcert=system sslmode=require', applicationName: 'a' })).toThrow(/weak sslmode "require" may not be used with sslrootcert=system/);
  });

  it('hostaddr is where to connect, host stays the name (for verify-full and the password file)', () => {
    const cfg = buildClientConfig({ dbname: 'host=db.example hostaddr=127.0.0.1', applicationName: 'a' });
    expect(cfg.host).toBe('127.0.0.1');
    expect(cfg.hostName).toBe('db.example');
    process.env['PGHOSTADDR'] = '10.1.1.1';
    expect(buildClientConfig({ host: 'db2', applicationName: 'a' })).toMatchObject({ host: '10.1.1.1', hostName: 'db2' });
    process.env['PGHOST'] = 'db3';
    expect(buildClientConfig({ applicationName: 'a' })).toMatchObject({ host: '10.1.1.1', hostName: 'db3' });
  });

  it('channel_binding: prefer by default, from the string or PGCHANNELBINDING, checked', () => {
    expect(buildClientConfig({ applicationName: 'a' }).channelBinding).toBe('prefer');
    expect(buildClientConfig({ dbname: 'channel_binding=require', applicationName: 'a' }).channelBinding).toBe('require');
    expect(buildClientConfig({ dbname: 'postgres://h/?channel_binding=disable', applicationName: 'a' }).channelBinding).toBe('disable');
    process.env['PGCHANNELBINDING'] = 'require';
    expect(buildClientConfig({ applicationName: 'a' }).channelBinding).toBe('require');
    expect(() => buildClientConfig({ dbname: 'channel_binding=yes', applicationName: 'a' })).toThrow(/invalid channel_binding value: "yes"/);
  });

  it('passfile from the string or PGPASSFILE', () => {
    expect(buildClientConfig({ dbname: 'passfile=/x/pgpass', applicationName: 'a' }).passfile).toBe('/x/pgpass');
    process.env['PGPASSFILE'] = '/env/pgpass';
    expect(buildClientConfig({ applicationName: 'a' }).passfile).toBe('/env/pgpass');
  });
});

describe('describeTarget', () => {
  it('never shows the password', () => {
    const cfg = buildClientConfig({ dbname: 'host=db1 port=5433 user=alice password=s3cret', applicationName: 'a' });
    const text = describeTarget(cfg);
    expect(text).toBe('db1:5433 as alice');
    expect(text).not.toContain('s3cret');
  });

  it('falls back to localhost:5432', () => {
    expect(describeTarget({})).toBe('localhost:5432 as the current user');
  });
});
