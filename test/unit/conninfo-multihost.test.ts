// Multi-host connection strings as libpq reads them (fe-connect.c pqConnectOptions2,
// conninfo_uri_parse_options, PQconnectPoll's walk through the hosts), without a PostgreSQL
// server: the lists in keyword/value strings, URIs and PG* variables, libpq's errors for lists that
// do not add up, the order of the hosts, the per-host password file entry, and the walk itself
// against loopback ports that refuse, close or answer with a canned ErrorResponse.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildClientConfig, ConninfoError, describeTarget, hostsForConnect, parseUri, type HostTarget } from '../../src/session/conninfo.js';
import { AllHostsFailedError, hostLabel, ReplicationConnection, resolveCredentials, sessionMismatch } from '../../src/session/connection.js';
import { ServerError } from '../../src/session/errors.js';

const ENV_KEYS = [
  'PGHOST',
  'PGHOSTADDR',
  'PGPORT',
  'PGUSER',
  'PGPASSWORD',
  'PGPASSFILE',
  'PGSSLMODE',
  'PGSSLROOTCERT',
  'PGSSLCERT',
  'PGSSLKEY',
  'PGSSLCRL',
  'PGCHANNELBINDING',
  'PGCONNECT_TIMEOUT',
  'PGTARGETSESSIONATTRS',
  'PGLOADBALANCEHOSTS',
  'HOME',
];
let savedEnv: Record<string, string | undefined> = {};
let home: string;
beforeEach(() => {
  savedEnv = {};
  for (const k of ENV_KEYS) {
    savedEnv[k] = process.env[k];
    delete process.env[k];
  }
  home = mkdtempSync(join(tmpdir(), 'walstream-multihost-'));
  process.env['HOME'] = home;
});
afterEach(() => {
  for (const k of ENV_KEYS) {
    const v = savedEnv[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  rmSync(home, { recursive: true, force: true });
});

const cfg = (dbname: string | undefined, extra: { host?: string; port?: string | number } = {}) => buildClientConfig({ dbname, applicationName: 'a', ...extra });
const hostsIn = (dbname: string | undefined, extra: { host?: string; port?: string | number } = {}) => cfg(dbname, extra).hosts;
const refused = (dbname: string, message: RegExp | string): void => {
  expect(() => cfg(dbname)).toThrow(ConninfoError);
  expect(() => cfg(dbname)).toThrow(message);
};

describe('host and port lists in keyword/value strings', () => {
  it('the example of issue #20: two hosts, a port each, target_session_attrs', () => {
    const c = cfg('host=a,b port=45193,39577 target_session_attrs=read-write');
    expect(c.hosts).toEqual([
      { address: 'a', port: 45193 },
      { address: 'b', port: 39577 },
    ]);
    expect(c.targetSessionAttrs).toBe('read-write');
    expect(c.loadBalanceHosts).toBe('disable');
    // With several hosts pg's single host and port are not set: each attempt is given one host of the list.
    expect(c.host).toBeUndefined();
    expect(c.port).toBeUndefined();
  });

  it('one port for every host, or one per host; an empty entry is the default port or host', () => {
    expect(hostsIn('host=a,b,c port=6000')).toEqual([
      { address: 'a', port: 6000 },
      { address: 'b', port: 6000 },
      { address: 'c', port: 6000 },
    ]);
    expect(hostsIn('host=a,b,c')).toEqual(['a', 'b', 'c'].map((address) => ({ address, port: 5432 })));
    expect(hostsIn('host=a,b,c port=1,,3')).toEqual([
      { address: 'a', port: 1 },
      { address: 'b', port: 5432 },
      { address: 'c', port: 3 },
    ]);
    expect(hostsIn('host=a,,c port=7000')).toEqual([
      { address: 'a', port: 7000 },
      { address: 'localhost', port: 7000 },
      { address: 'c', port: 7000 },
    ]);
    // A port list with no host: as many "default" hosts as ports is not libpq's rule (one host).
    refused('port=1,2', 'could not match 2 port numbers to 1 hosts');
  });

  it("a port list that does not match the hosts is refused with libpq's words", () => {
    refused('host=a,b port=1,2,3', 'could not match 3 port numbers to 2 hosts');
    refused('host=a,b,c port=1,2', 'could not match 2 port numbers to 3 hosts');
    refused('host=a port=5432,5433', 'could not match 2 port numbers to 1 hosts');
  });

  it('each port is checked', () => {
    refused('host=a,b port=5432,x', 'invalid port number: "x"');
    refused('host=a,b port=0,5432', 'invalid port number: "0"');
    refused('host=a,b port=5432,65536', 'invalid port number: "65536"');
  });

  it('a single host keeps host and port as before', () => {
    expect(cfg('host=db1 port=5433')).toMatchObject({ host: 'db1', port: 5433, hosts: [{ address: 'db1', port: 5433 }] });
    const none = cfg(undefined);
    expect(none.host).toBeUndefined();
    expect(none.port).toBeUndefined();
    expect(none.hosts).toEqual([{ address: 'localhost', port: 5432 }]);
  });

  it('IPv6 addresses and socket directories are list entries like any other', () => {
    expect(hostsIn('host=::1,/var/run/postgresql port=5432,5433')).toEqual([
      { address: '::1', port: 5432 },
      { address: '/var/run/postgresql', port: 5433 },
    ]);
  });

  it('-h and -p lists override the string', () => {
    expect(hostsIn('host=x port=1', { host: 'a,b', port: '5,6' })).toEqual([
      { address: 'a', port: 5 },
      { address: 'b', port: 6 },
    ]);
    expect(hostsIn('host=a,b,c', { port: 6543 })).toEqual(['a', 'b', 'c'].map((address) => ({ address, port: 6543 })));
  });
});

describe('hostaddr lists', () => {
  it('hostaddr entries are where to connect, host entries stay the names', () => {
    expect(hostsIn('host=db1,db2 hostaddr=10.0.0.1,10.0.0.2 port=5432,5433')).toEqual([
      { address: '10.0.0.1', name: 'db1', port: 5432 },
      { address: '10.0.0.2', name: 'db2', port: 5433 },
    ]);
  });

  it('hostaddr alone sets the number of hosts; an empty hostaddr entry falls back to the host entry', () => {
    expect(hostsIn('hostaddr=10.0.0.1,10.0.0.2')).toEqual([
      { address: '10.0.0.1', port: 5432 },
      { address: '10.0.0.2', port: 5432 },
    ]);
    expect(hostsIn('host=a,b,c hostaddr=10.0.0.1,,10.0.0.3')).toEqual([
      { address: '10.0.0.1', name: 'a', port: 5432 },
      { address: 'b', port: 5432 },
      { address: '10.0.0.3', name: 'c', port: 5432 },
    ]);
  });

  it("host must have as many entries as hostaddr (libpq's words)", () => {
    refused('host=a,b,c hostaddr=10.0.0.1,10.0.0.2', 'could not match 3 host names to 2 hostaddr values');
    refused('host=a,b hostaddr=10.0.0.1', 'could not match 2 host names to 1 hostaddr values');
    refused('hostaddr=10.0.0.1,10.0.0.2 port=1,2,3', 'could not match 3 port numbers to 2 hosts');
  });

  it('the one-host case keeps hostName', () => {
    expect(cfg('host=db.example hostaddr=127.0.0.1')).toMatchObject({ host: '127.0.0.1', hostName: 'db.example' });
  });
});

describe('URIs with several host:port', () => {
  it('hosts and ports, user, password, database and parameters', () => {
    const c = cfg('postgresql://u:p%40ss@a:5432,b:5433/db?target_session_attrs=read-write&sslmode=disable');
    expect(c.hosts).toEqual([
      { address: 'a', port: 5432 },
      { address: 'b', port: 5433 },
    ]);
    expect(c).toMatchObject({ user: 'u', password: 'p@ss', database: 'db', targetSessionAttrs: 'read-write' });
    expect(c.sslSettings.mode).toBe('disable');
  });

  it('a host without a port gets the default port', () => {
    expect(hostsIn('postgresql://a,b:5433/db')).toEqual([
      { address: 'a', port: 5432 },
      { address: 'b', port: 5433 },
    ]);
    expect(hostsIn('postgres://a:6000,b')).toEqual([
      { address: 'a', port: 6000 },
      { address: 'b', port: 5432 },
    ]);
  });

  it('IPv6 addresses in brackets, with and without a port', () => {
    expect(hostsIn('postgresql://[::1]:5432,[2001:db8::7],127.0.0.1:5434/db')).toEqual([
      { address: '::1', port: 5432 },
      { address: '2001:db8::7', port: 5432 },
      { address: '127.0.0.1', port: 5434 },
    ]);
    expect(hostsIn('postgresql://[::1]/')).toEqual([{ address: '::1', port: 5432 }]);
    expect(hostsIn('postgresql://[::1]?sslmode=disable')).toEqual([{ address: '::1', port: 5432 }]);
  });

  it("malformed IPv6 and parameters are refused with libpq's words", () => {
    refused('postgresql://[::1:5432/db', /end of string reached when looking for matching "\]" in IPv6 host address in URI/);
    refused('postgresql://[]:5432/db', /IPv6 host address may not be empty in URI/);
    refused('postgresql://[::1]x/db', /unexpected character "x" at position \d+ in URI \(expected ":" or "\/"\)/);
    refused('postgresql://a,b/db?sslmode', 'missing key/value separator "=" in URI query parameter: "sslmode"');
    refused('postgresql://a/db?sslmode=a=b', 'extra key/value separator "=" in URI query parameter: "sslmode"');
    refused('postgresql://a/db?nosuch=1', 'invalid URI query parameter: "nosuch"');
    refused('postgresql://a:5432,b:x/db', 'invalid port number: "x"');
    refused('postgresql://a%zz/db', /invalid percent-encoded token/);
    refused('postgresql://a%00/db', /forbidden value %00 in percent-encoded value/);
  });

  it('errors about a URI never show its passwords', () => {
    const said = (uri: string): string => {
      try {
        cfg(uri);
      } catch (err) {
        return (err as Error).message;
      }
      throw new Error('accepted');
    };
    expect(said('postgresql://u:s3cr%zzet@h/db')).toBe('invalid percent-encoded token: in a password');
    expect(said('postgresql://h/db?password=s3cr%00et')).toBe('forbidden value %00 in percent-encoded value: in a password');
    const ipv6 = said('postgresql://u:s3cret@[::1/db?sslpassword=k3y&password=s3cret');
    expect(ipv6).toBe('end of string reached when looking for matching "]" in IPv6 host address in URI: "postgresql://u:****@[::1/db?sslpassword=****&password=****"');
  });

  it('percent-decoding as libpq: %XX only, "+" stays a plus, UTF-8', () => {
    expect(parseUri('postgresql://us%C3%A9r:a+b@h/d%20b?application_name=x%2By+z')).toEqual({
      user: 'usér',
      password: 'a+b',
      host: 'h',
      dbname: 'd b',
      application_name: 'x+y+z',
    });
  });

  it('ssl=true is sslmode=require (libpq\'s JDBC compatibility); a trailing "&" is allowed', () => {
    expect(cfg('postgresql://h/db?ssl=true&').sslSettings.mode).toBe('require');
  });

  it('query parameters override the authority, as later keywords do', () => {
    expect(hostsIn('postgresql://a:1/db?host=b,c&port=2')).toEqual([
      { address: 'b', port: 2 },
      { address: 'c', port: 2 },
    ]);
  });

  it('a URI naming hosts without ports gives an empty port list: PGPORT does not apply (libpq stores ",")', () => {
    process.env['PGPORT'] = '6000';
    expect(hostsIn('postgresql://a,b/db')).toEqual([
      { address: 'a', port: 5432 },
      { address: 'b', port: 5432 },
    ]);
    // One host without a port stores no port: PGPORT applies.
    expect(hostsIn('postgresql://a/db')).toEqual([{ address: 'a', port: 6000 }]);
  });

  it('mismatched lists in a URI are refused like in a keyword/value string', () => {
    refused('postgresql://a:1,b:2/db?port=1,2,3', 'could not match 3 port numbers to 2 hosts');
  });
});

describe('environment lists: PGHOST, PGHOSTADDR, PGPORT, PGTARGETSESSIONATTRS, PGLOADBALANCEHOSTS', () => {
  it('PGHOST and PGPORT lists', () => {
    process.env['PGHOST'] = 'a,b';
    process.env['PGPORT'] = '5432,5433';
    expect(hostsIn(undefined)).toEqual([
      { address: 'a', port: 5432 },
      { address: 'b', port: 5433 },
    ]);
    process.env['PGPORT'] = '7000';
    expect(hostsIn(undefined)).toEqual([
      { address: 'a', port: 7000 },
      { address: 'b', port: 7000 },
    ]);
  });

  it('PGHOSTADDR list with PGHOST names', () => {
    process.env['PGHOST'] = 'db1,db2';
    process.env['PGHOSTADDR'] = '10.0.0.1,10.0.0.2';
    expect(hostsIn(undefined)).toEqual([
      { address: '10.0.0.1', name: 'db1', port: 5432 },
      { address: '10.0.0.2', name: 'db2', port: 5432 },
    ]);
  });

  it('a mismatched PGPORT is refused', () => {
    process.env['PGHOST'] = 'a,b,c';
    process.env['PGPORT'] = '1,2';
    refused('dbname=x', 'could not match 2 port numbers to 3 hosts');
  });

  it('the string wins over the environment, the environment fills what the string leaves', () => {
    process.env['PGHOST'] = 'envhost1,envhost2';
    process.env['PGPORT'] = '1,2';
    expect(hostsIn('host=a,b')).toEqual([
      { address: 'a', port: 1 },
      { address: 'b', port: 2 },
    ]);
    expect(hostsIn('port=9', { host: 'x,y' })).toEqual([
      { address: 'x', port: 9 },
      { address: 'y', port: 9 },
    ]);
  });

  it('target_session_attrs and load_balance_hosts from the environment; the string wins; bad values refused', () => {
    process.env['PGTARGETSESSIONATTRS'] = 'standby';
    process.env['PGLOADBALANCEHOSTS'] = 'random';
    expect(cfg('host=a,b')).toMatchObject({ targetSessionAttrs: 'standby', loadBalanceHosts: 'random' });
    expect(cfg('host=a,b target_session_attrs=primary load_balance_hosts=disable')).toMatchObject({ targetSessionAttrs: 'primary', loadBalanceHosts: 'disable' });
    process.env['PGTARGETSESSIONATTRS'] = 'master';
    refused('host=a', 'invalid target_session_attrs value: "master"');
    delete process.env['PGTARGETSESSIONATTRS'];
    refused('host=a load_balance_hosts=round-robin', 'invalid load_balance_hosts value: "round-robin"');
  });

  it('all of PostgreSQL 14\'s target_session_attrs are taken, "any" by default', () => {
    expect(cfg('host=a').targetSessionAttrs).toBe('any');
    for (const v of ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby']) {
      expect(cfg(`host=a target_session_attrs=${v}`).targetSessionAttrs).toBe(v);
      expect(cfg(`postgresql://a/?target_session_attrs=${v}`).targetSessionAttrs).toBe(v);
    }
  });
});

describe('describeTarget with several hosts', () => {
  it('names every host before a connection, the one connected to after', () => {
    const c = cfg('host=a,::1 port=5432,5433 user=alice password=s3cret');
    expect(describeTarget(c)).toBe('a:5432,[::1]:5433 as alice');
    c.connectedHost = c.hosts![1]!;
    expect(describeTarget(c)).toBe('[::1]:5433 as alice');
  });

  it('hand-made configurations and PG* lists', () => {
    process.env['PGHOST'] = 'a,b';
    expect(describeTarget({})).toBe('a:5432,b:5432 as the current user');
    process.env['PGPORT'] = '1,2,3';
    // A list that does not add up is still described, not thrown.
    expect(describeTarget({})).toBe('a,b:1,2,3 as the current user');
  });
});

describe('the order hosts are tried in', () => {
  const three = cfg('host=a,b,c');
  const names = (hosts: HostTarget[]): string => hosts.map((h) => h.address).join('');

  it('load_balance_hosts=disable (the default): as listed, every time', () => {
    for (let i = 0; i < 5; i++) expect(names(hostsForConnect(three))).toBe('abc');
  });

  it('load_balance_hosts=random: a Fisher-Yates shuffle per connection, every order possible, the list untouched', () => {
    const random = { ...three, loadBalanceHosts: 'random' as const };
    // Each random() answer picks j in [0, i]: 0.99 keeps every host in place, 0 moves each new one to the front.
    const seq = (values: number[]) => {
      let i = 0;
      return () => values[i++ % values.length]!;
    };
    expect(names(hostsForConnect(random, seq([0.99])))).toBe('abc');
    expect(names(hostsForConnect(random, seq([0])))).toBe('cab');
    const seen = new Set<string>();
    for (let i = 0; i < 300; i++) seen.add(names(hostsForConnect(random)));
    expect([...seen].sort()).toEqual(['abc', 'acb', 'bac', 'bca', 'cab', 'cba']);
    expect(names(three.hosts!)).toBe('abc');
  });
});

describe('target_session_attrs: which server does (fe-connect.c CONNECTION_CHECK_TARGET)', () => {
  const primary = { readOnly: false, hotStandby: false };
  const standby = { readOnly: false, hotStandby: true };
  const readOnlyPrimary = { readOnly: true, hotStandby: false };
  it.each([
    ['any', primary, undefined],
    ['any', standby, undefined],
    ['read-write', primary, undefined],
    ['read-write', standby, 'session is read-only'],
    ['read-write', readOnlyPrimary, 'session is read-only'],
    ['read-only', standby, undefined],
    ['read-only', readOnlyPrimary, undefined],
    ['read-only', primary, 'session is not read-only'],
    ['primary', primary, undefined],
    ['primary', readOnlyPrimary, undefined],
    ['primary', standby, 'server is in hot standby mode'],
    ['standby', standby, undefined],
    ['standby', primary, 'server is not in hot standby mode'],
    ['standby', readOnlyPrimary, 'server is not in hot standby mode'],
    ['prefer-standby', standby, undefined],
    ['prefer-standby', primary, 'server is not in hot standby mode'],
  ] as const)('%s on %j: %s', (want, state, verdict) => {
    expect(sessionMismatch(want, state)).toBe(verdict);
  });
});

describe('the password file, per host', () => {
  beforeEach(() => {
    const file = join(home, '.pgpass');
    writeFileSync(file, ['a:5432:replication:walstream:pw-a', 'b:5433:replication:walstream:pw-b', 'db2:5432:replication:walstream:pw-db2', ''].join('\n'));
    chmodSync(file, 0o600);
  });

  it('each host of the list is looked up with its own name and port', () => {
    const c = cfg('host=a,b,c port=5432,5433,5432 user=walstream');
    const warn = (): void => undefined;
    expect(resolveCredentials(c, warn, c.hosts![0]).password).toBe('pw-a');
    expect(resolveCredentials(c, warn, c.hosts![1]).password).toBe('pw-b');
    expect(resolveCredentials(c, warn, c.hosts![2]).password).toBeUndefined();
    // Without a host: the first one.
    expect(resolveCredentials(c, warn).password).toBe('pw-a');
  });

  it('the host name (not hostaddr) is matched, hostaddr only when there is no name', () => {
    const c = cfg('host=db1,db2 hostaddr=127.0.0.1,127.0.0.2 user=walstream');
    const warn = (): void => undefined;
    expect(resolveCredentials(c, warn, c.hosts![0]).password).toBeUndefined();
    expect(resolveCredentials(c, warn, c.hosts![1]).password).toBe('pw-db2');
  });
});

describe("libpq's words for a host in an error", () => {
  it('TCP and Unix-domain socket', () => {
    expect(hostLabel({ address: '10.0.0.1', port: 5432 })).toBe('connection to server at "10.0.0.1", port 5432');
    expect(hostLabel({ address: '/var/run/postgresql', port: 5433 })).toBe('connection to server on socket "/var/run/postgresql/.s.PGSQL.5433"');
  });
});

// ---------------------------------------------------------------------------------------------
// The walk through the hosts, against loopback ports that stand for servers.
// ---------------------------------------------------------------------------------------------

/** A TCP server on 127.0.0.1 that does `onConnection` with every client; counts them. */
async function fakeServer(onConnection: (s: Socket) => void): Promise<{ port: number; accepted: () => number; close: () => Promise<void> }> {
  let accepted = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    onConnection(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    port,
    accepted: () => accepted,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const s = await fakeServer(() => undefined);
  await s.close();
  return s.port;
}

/** A server that reads the StartupMessage and answers with a FATAL ErrorResponse. */
function refusesWith(code: string, message: string): (s: Socket) => void {
  return (s) => {
    s.once('data', () => {
      const fields = Buffer.concat([
        ...(
          [
            ['S', 'FATAL'],
            ['V', 'FATAL'],
            ['C', code],
            ['M', message],
          ] as const
        ).map(([k, v]) => Buffer.from(`${k}${v}\0`, 'utf8')),
        Buffer.from([0]),
      ]);
      const head = Buffer.alloc(5);
      head.write('E', 0, 'latin1');
      head.writeInt32BE(fields.length + 4, 1);
      s.end(Buffer.concat([head, fields]));
    });
  };
}

describe('ReplicationConnection.connect walks the host list', () => {
  const servers: { close: () => Promise<void> }[] = [];
  afterEach(async () => {
    while (servers.length) await servers.pop()!.close();
  });
  const connectTo = (ports: number[], extra = '') =>
    ReplicationConnection.connect(cfg(`host=${ports.map(() => '127.0.0.1').join(',')} port=${ports.join(',')} user=walstream sslmode=disable ${extra}`), () => undefined);

  it('every host down: one error naming each host and why, in the order tried, worth a retry', async () => {
    const [a, b] = [await closedPort(), await closedPort()];
    const err = (await connectTo([a, b]).catch((e: unknown) => e)) as AllHostsFailedError;
    expect(err).toBeInstanceOf(AllHostsFailedError);
    expect(err.message).toBe(
      `connection to server at "127.0.0.1", port ${a} failed: connect ECONNREFUSED 127.0.0.1:${a}; ` + `connection to server at "127.0.0.1", port ${b} failed: connect ECONNREFUSED 127.0.0.1:${b}`,
    );
    expect(err.message).not.toContain('\n');
    expect(err.failures.map((f) => f.host.port)).toEqual([a, b]);
  });

  it("one host down: the error is that host's, as it always was", async () => {
    const a = await closedPort();
    const err = (await connectTo([a]).catch((e: unknown) => e)) as Error;
    expect(err.message).toBe(`connect ECONNREFUSED 127.0.0.1:${a}`);
  });

  it('a server that closes the connection without a word is left for the next host', async () => {
    const mute = await fakeServer((s) => s.destroy());
    servers.push(mute);
    const b = await closedPort();
    const err = (await connectTo([mute.port, b]).catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(AllHostsFailedError);
    expect(err.message).toMatch(new RegExp(`port ${mute.port} failed: Connection terminated unexpectedly; .*port ${b} failed: connect ECONNREFUSED`));
  });

  it('"cannot connect now" (57P03) is left for the next host', async () => {
    const starting = await fakeServer(refusesWith('57P03', 'the database system is starting up'));
    const next = await fakeServer(refusesWith('57P03', 'the database system is shutting down'));
    servers.push(starting, next);
    const err = (await connectTo([starting.port, next.port]).catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(AllHostsFailedError);
    expect(err.message).toBe(
      `connection to server at "127.0.0.1", port ${starting.port} failed: the database system is starting up; ` +
        `connection to server at "127.0.0.1", port ${next.port} failed: the database system is shutting down`,
    );
    expect(next.accepted()).toBe(1);
  });

  it('a refused login ends the walk, as in libpq: the next host is not tried, the SQLSTATE is kept', async () => {
    const down = await closedPort();
    const refusing = await fakeServer(refusesWith('28P01', 'password authentication failed for user "walstream"'));
    const never = await fakeServer((s) => s.destroy());
    servers.push(refusing, never);
    const err = (await connectTo([down, refusing.port, never.port]).catch((e: unknown) => e)) as ServerError;
    expect(err).toBeInstanceOf(ServerError);
    expect(err).not.toBeInstanceOf(AllHostsFailedError);
    expect(err.code).toBe('28P01');
    expect(err.message).toBe(
      `connection to server at "127.0.0.1", port ${down} failed: connect ECONNREFUSED 127.0.0.1:${down}; ` +
        `connection to server at "127.0.0.1", port ${refusing.port} failed: password authentication failed for user "walstream"`,
    );
    expect(never.accepted()).toBe(0);
  });

  it('connect_timeout bounds each host, then the next is tried', async () => {
    const silent = await fakeServer(() => undefined);
    servers.push(silent);
    const b = await closedPort();
    const started = Date.now();
    const err = (await connectTo([silent.port, b], 'connect_timeout=2').catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(AllHostsFailedError);
    expect(err.message).toMatch(new RegExp(`port ${silent.port} failed: timeout expired; .*port ${b} failed: connect ECONNREFUSED`));
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('the configuration names no connected host after a failure', async () => {
    const c = cfg(`host=127.0.0.1 port=${await closedPort()} sslmode=disable`);
    c.connectedHost = { address: 'stale', port: 1 };
    await expect(ReplicationConnection.connect(c, () => undefined)).rejects.toThrow(/ECONNREFUSED/);
    expect(c.connectedHost).toBeUndefined();
  });
});
