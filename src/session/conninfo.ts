// Connection settings as libpq takes them (fe-connect.c conninfo_parse, conninfo_uri_parse_options,
// conninfo_uri_parse_params, conninfo_uri_decode, conninfo_add_defaults, pqConnectOptions2): a
// keyword/value string or a postgres:// URI, overridden by -h/-p/-U, with the PG* environment
// variables libpq reads for what is left unset. host, hostaddr and port may be comma-separated
// lists, in both forms and in PGHOST/PGHOSTADDR/PGPORT (postgresql://a:5432,[::1]:5433/db): the
// servers session/connection.ts tries in order, chosen among by target_session_attrs and shuffled
// per connection by load_balance_hosts=random.
// Guarantees: a conninfo libpq refuses is refused here, before any connection, with libpq's words
// ("could not match 2 port numbers to 3 hosts", "invalid port number"); every host of the list has
// its own address, name (for verify-full and the password file) and port. Pure apart from reading
// the environment: files (certificates, keys, ~/.pgpass) are read when connecting.
import { isIP } from 'node:net';
import type { ClientConfig } from 'pg';
import { SSL_MODES, type SslMode, type SslSettings } from './tls.js';

export class ConninfoError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConninfoError';
  }
}

/** Parse libpq's keyword = value form: values may be single-quoted with backslash escapes. */
export function parseKeywordValue(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  const n = text.length;
  const skipWs = (): void => {
    while (i < n && /\s/.test(text[i]!)) i++;
  };
  while (true) {
    skipWs();
    if (i >= n) break;
    const keyStart = i;
    while (i < n && /[A-Za-z0-9_]/.test(text[i]!)) i++;
    const key = text.slice(keyStart, i);
    if (key === '') throw new ConninfoError(`invalid connection string near "${text.slice(keyStart, keyStart + 20)}"`);
    skipWs();
    if (text[i] !== '=') throw new ConninfoError(`missing "=" after "${key}" in connection info string`);
    i++;
    skipWs();
    let value = '';
    if (text[i] === "'") {
      i++;
      let closed = false;
      while (i < n) {
        const c = text[i]!;
        if (c === '\\' && i + 1 < n) {
          value += text[i + 1];
          i += 2;
        } else if (c === "'") {
          i++;
          closed = true;
          break;
        } else {
          value += c;
          i++;
        }
      }
      if (!closed) throw new ConninfoError('unterminated quoted string in connection info string');
    } else {
      while (i < n && !/\s/.test(text[i]!)) {
        if (text[i] === '\\' && i + 1 < n) {
          value += text[i + 1];
          i += 2;
        } else {
          value += text[i];
          i++;
        }
      }
    }
    out[key] = value;
  }
  return out;
}

export function isUri(text: string): boolean {
  return /^postgres(ql)?:\/\//.test(text);
}

export interface ConnectionOptions {
  /** -d/--dbname: a conninfo string or URI. */
  dbname?: string;
  /** -h: a host, or a comma-separated list of hosts. */
  host?: string;
  /** -p: a port, or a comma-separated list (one port for every host, or one per host). */
  port?: string | number;
  user?: string;
  password?: string;
  applicationName: string;
  /** Seconds; 0 means wait forever (libpq's connect_timeout, for each host). */
  connectTimeout?: number;
  /** Seconds of connect_timeout when neither connectTimeout, connect_timeout nor PGCONNECT_TIMEOUT gives one (default 30). */
  defaultConnectTimeout?: number;
  /** wal_sender_timeout requested for this connection, e.g. "60s". */
  walSenderTimeout?: string;
}

const SSL_KEYS = ['sslmode', 'sslrootcert', 'sslcert', 'sslkey', 'sslcrl', 'sslpassword'] as const;

const KNOWN_KEYS = new Set<string>([
  'host',
  'hostaddr',
  'port',
  'user',
  'password',
  'dbname',
  'application_name',
  'fallback_application_name',
  'connect_timeout',
  'options',
  'replication',
  'keepalives',
  'keepalives_idle',
  'passfile',
  'target_session_attrs',
  'load_balance_hosts',
  'client_encoding',
  'channel_binding',
  ...SSL_KEYS,
]);

/** The environment variable libpq reads for a keyword left unset (host, hostaddr and port: see finish). */
const ENV_FOR: Record<string, string> = {
  passfile: 'PGPASSFILE',
  sslmode: 'PGSSLMODE',
  sslrootcert: 'PGSSLROOTCERT',
  sslcert: 'PGSSLCERT',
  sslkey: 'PGSSLKEY',
  sslcrl: 'PGSSLCRL',
  channel_binding: 'PGCHANNELBINDING',
  connect_timeout: 'PGCONNECT_TIMEOUT',
  target_session_attrs: 'PGTARGETSESSIONATTRS',
  load_balance_hosts: 'PGLOADBALANCEHOSTS',
};

/** libpq's default port (DEF_PGPORT) and the host pg connects to when none is given. */
export const DEFAULT_PORT = 5432;
export const DEFAULT_HOST = 'localhost';

/** target_session_attrs, PostgreSQL 14's set (fe-connect.c pqConnectOptions2). */
export const TARGET_SESSION_ATTRS = ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby'] as const;
export type TargetSessionAttrs = (typeof TARGET_SESSION_ATTRS)[number];

/** load_balance_hosts (PostgreSQL 16): try the hosts in the given order, or in a random order per connection. */
export const LOAD_BALANCE_HOSTS = ['disable', 'random'] as const;
export type LoadBalanceHosts = (typeof LOAD_BALANCE_HOSTS)[number];

/** One server of the host list (libpq's pg_conn_host). */
export interface HostTarget {
  /** Where to connect: the hostaddr entry, else the host entry (a name, an IP address or a Unix socket directory), else localhost. */
  address: string;
  /** The host entry when a hostaddr entry gives the address: the name verify-full checks and the password file matches. */
  name?: string;
  port: number;
}

/**
 * The pg client's configuration with the replication startup parameter (which pg sends though
 * its types omit it), and what pg does not do the libpq way and session/connection.ts does:
 * the host list and the choice among it, sslmode negotiation and certificate files, and the
 * password file.
 */
export type ReplicationClientConfig = ClientConfig & {
  replication?: string;
  /** sslmode and the ssl* files (read when connecting). */
  sslSettings: SslSettings;
  /** libpq's `host` when `hostaddr` is what is connected to (one host only; each of `hosts` has its own). */
  hostName?: string;
  /**
   * Every server to try, in order (at least one). `host`, `port` and `hostName` above repeat the
   * only one when there is one and it was given; with several they are left unset. pg is always
   * given one host and port of this list, never a list.
   */
  hosts?: HostTarget[];
  /** What kind of server to accept (default any). */
  targetSessionAttrs?: TargetSessionAttrs;
  /** The order to try the hosts in (default disable: as listed). */
  loadBalanceHosts?: LoadBalanceHosts;
  /** Set by ReplicationConnection.connect: the host of the last connection it made (unset while connecting and after a failure). */
  connectedHost?: HostTarget;
  /** passfile= (else PGPASSFILE, else ~/.pgpass). */
  passfile?: string;
  /** channel_binding: SCRAM-SHA-256-PLUS over TLS when the server offers it (prefer, libpq's default), always (require) or never. */
  channelBinding: ChannelBinding;
};

export type ChannelBinding = 'disable' | 'prefer' | 'require';

/** libpq's conninfo_uri_decode: %XX escapes (no "+" for a space), %00 refused; the result read as UTF-8. A secret is never shown in an error. */
function uriDecode(text: string, secret = false): string {
  if (!text.includes('%')) return text;
  const shown = secret ? 'in a password' : `"${text}"`;
  const parts: Buffer[] = [];
  let i = 0;
  for (;;) {
    const pct = text.indexOf('%', i);
    const stop = pct < 0 ? text.length : pct;
    if (stop > i) parts.push(Buffer.from(text.slice(i, stop), 'utf8'));
    if (pct < 0) break;
    const hex = text.slice(pct + 1, pct + 3);
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw new ConninfoError(`invalid percent-encoded token: ${shown}`);
    const byte = parseInt(hex, 16);
    if (byte === 0) throw new ConninfoError(`forbidden value %00 in percent-encoded value: ${shown}`);
    parts.push(Buffer.from([byte]));
    i = pct + 3;
  }
  return Buffer.concat(parts).toString('utf8');
}

const SECRET_KEYS = new Set(['password', 'sslpassword']);

/** A URI as error messages may show it: the passwords (user info, password=, sslpassword=) masked. */
function withoutSecrets(uri: string): string {
  return uri.replace(/^(postgres(?:ql)?:\/\/[^:@/]*:)[^@/]*@/, '$1****@').replace(/([?&](?:ssl)?password=)[^&]*/g, '$1****');
}

/**
 * A postgresql:// or postgres:// URI as libpq reads it (conninfo_uri_parse_options):
 * [user[:password]@][host][:port][,host[:port]...][/dbname][?name=value[&...]], an IPv6 address
 * in brackets. The hosts and ports become libpq's comma-separated host and port lists, an empty
 * port standing for the default one.
 */
export function parseUri(uri: string): Record<string, string> {
  const prefix = /^postgres(ql)?:\/\//.exec(uri);
  if (!prefix) throw new ConninfoError('invalid URI: it must start with postgresql:// or postgres://');
  const s = uri.slice(prefix[0].length);
  const out: Record<string, string> = {};
  const store = (key: string, raw: string): void => {
    out[key] = uriDecode(raw, SECRET_KEYS.has(key));
  };
  const shown = withoutSecrets(uri);
  let p = 0;
  // User name and password: up to an "@" met before any "/".
  let at = p;
  while (at < s.length && s[at] !== '@' && s[at] !== '/') at++;
  if (s[at] === '@') {
    const cred = s.slice(0, at);
    const colon = cred.indexOf(':');
    const user = colon < 0 ? cred : cred.slice(0, colon);
    if (user !== '') store('user', user);
    if (colon >= 0 && colon + 1 < cred.length) store('password', cred.slice(colon + 1));
    p = at + 1;
  }
  // host[:port], separated by commas.
  const hosts: string[] = [];
  const ports: string[] = [];
  let end = '';
  for (;;) {
    let host: string;
    if (s[p] === '[') {
      const close = s.indexOf(']', p + 1);
      if (close < 0) throw new ConninfoError(`end of string reached when looking for matching "]" in IPv6 host address in URI: "${shown}"`);
      if (close === p + 1) throw new ConninfoError(`IPv6 host address may not be empty in URI: "${shown}"`);
      host = s.slice(p + 1, close);
      p = close + 1;
      if (p < s.length && !':/?,'.includes(s[p]!)) {
        throw new ConninfoError(`unexpected character "${s[p]}" at position ${prefix[0].length + p + 1} in URI (expected ":" or "/"): "${shown}"`);
      }
    } else {
      const start = p;
      while (p < s.length && !':/?,'.includes(s[p]!)) p++;
      host = s.slice(start, p);
    }
    hosts.push(host);
    end = s[p] ?? '';
    let port = '';
    if (end === ':') {
      const start = ++p;
      while (p < s.length && !'/?,'.includes(s[p]!)) p++;
      port = s.slice(start, p);
      end = s[p] ?? '';
    }
    ports.push(port);
    if (end !== ',') break;
    p++;
  }
  const hostList = hosts.join(',');
  const portList = ports.join(',');
  if (hostList !== '') store('host', hostList);
  if (portList !== '') store('port', portList);
  if (end === '/') {
    const start = ++p;
    while (p < s.length && s[p] !== '?') p++;
    const dbname = s.slice(start, p);
    if (dbname !== '') store('dbname', dbname);
    end = s[p] ?? '';
  }
  if (end === '?') {
    const parts = s.slice(p + 1).split('&');
    // A trailing "&" ends the list; an empty parameter anywhere else is refused (no "=").
    if (parts[parts.length - 1] === '') parts.pop();
    for (const part of parts) {
      const eq = part.indexOf('=');
      if (eq < 0) throw new ConninfoError(`missing key/value separator "=" in URI query parameter: "${part}"`);
      if (part.indexOf('=', eq + 1) >= 0) throw new ConninfoError(`extra key/value separator "=" in URI query parameter: "${part.slice(0, eq)}"`);
      let key = uriDecode(part.slice(0, eq));
      let value = uriDecode(part.slice(eq + 1), SECRET_KEYS.has(key));
      // libpq's JDBC compatibility: ssl=true is sslmode=require.
      if (key === 'ssl' && value === 'true') {
        key = 'sslmode';
        value = 'require';
      }
      if (!KNOWN_KEYS.has(key)) throw new ConninfoError(`invalid URI query parameter: "${key}"`);
      out[key] = value;
    }
  }
  return out;
}

/** libpq's parse_comma_separated_list: every comma separates, nothing is trimmed or unescaped. */
function splitList(text: string): string[] {
  return text.split(',');
}

/** One port entry: empty means the default (libpq substitutes DEF_PGPORT), else 1..65535. */
function portNumber(text: string): number {
  if (text === '') return DEFAULT_PORT;
  const n = /^\s*[-+]?\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new ConninfoError(`invalid port number: "${text}"`);
  return n;
}

/**
 * The host list from libpq's host, hostaddr and port settings (pqConnectOptions2): as many hosts
 * as hostaddr entries, else host entries, else one; host must then have as many entries as
 * hostaddr; port one entry for all or one per host. An empty entry means the default.
 */
export function hostList(host: string | undefined, hostaddr: string | undefined, port: string | undefined): HostTarget[] {
  const addrs = hostaddr ? splitList(hostaddr) : undefined;
  const names = host ? splitList(host) : undefined;
  const n = addrs?.length ?? names?.length ?? 1;
  if (addrs && names && names.length !== n) throw new ConninfoError(`could not match ${names.length} host names to ${n} hostaddr values`);
  const ports = port ? splitList(port) : undefined;
  if (ports && ports.length !== 1 && ports.length !== n) throw new ConninfoError(`could not match ${ports.length} port numbers to ${n} hosts`);
  const out: HostTarget[] = [];
  for (let i = 0; i < n; i++) {
    const a = addrs?.[i] ?? '';
    const h = names?.[i] ?? '';
    const target: HostTarget = { address: a !== '' ? a : h !== '' ? h : DEFAULT_HOST, port: portNumber(ports?.[ports.length === 1 ? 0 : i] ?? '') };
    if (a !== '' && h !== '') target.name = h;
    out.push(target);
  }
  return out;
}

/** An environment variable, unset when empty. */
function env(name: string): string | undefined {
  const v = process.env[name];
  return v !== undefined && v !== '' ? v : undefined;
}

/** The conninfo keywords of -d: a URI, a keyword/value string, or a bare database name. */
function dbnameSettings(dbname: string | undefined): Record<string, string> {
  if (dbname === undefined || dbname === '') return {};
  if (isUri(dbname)) return parseUri(dbname);
  if (dbname.includes('=')) return parseKeywordValue(dbname);
  return { dbname };
}

/** Build the pg client configuration for a physical replication connection. */
export function buildClientConfig(opts: ConnectionOptions): ReplicationClientConfig {
  const kv = dbnameSettings(opts.dbname);
  for (const k of Object.keys(kv)) {
    if (!KNOWN_KEYS.has(k)) throw new ConninfoError(`invalid connection option "${k}"`);
  }
  const setting = (k: string): string | undefined => {
    const v = kv[k];
    if (v !== undefined && v !== '') return v;
    return ENV_FOR[k] !== undefined ? env(ENV_FOR[k]) : undefined;
  };
  const channelBinding = setting('channel_binding') ?? 'prefer';
  if (!['disable', 'prefer', 'require'].includes(channelBinding)) throw new ConninfoError(`invalid channel_binding value: "${channelBinding}"`);
  const targetSessionAttrs = setting('target_session_attrs') ?? 'any';
  if (!(TARGET_SESSION_ATTRS as readonly string[]).includes(targetSessionAttrs)) {
    throw new ConninfoError(`invalid target_session_attrs value: "${targetSessionAttrs}"`);
  }
  const loadBalanceHosts = setting('load_balance_hosts') ?? 'disable';
  if (!(LOAD_BALANCE_HOSTS as readonly string[]).includes(loadBalanceHosts)) {
    throw new ConninfoError(`invalid load_balance_hosts value: "${loadBalanceHosts}"`);
  }
  const cfg = finish(opts, kv, sslSettingsFrom(setting), setting('passfile'), setting('connect_timeout'));
  cfg.channelBinding = channelBinding as ChannelBinding;
  cfg.targetSessionAttrs = targetSessionAttrs as TargetSessionAttrs;
  cfg.loadBalanceHosts = loadBalanceHosts as LoadBalanceHosts;
  return cfg;
}

/** libpq's sslmode rules: default prefer; sslrootcert=system demands (and defaults to) verify-full. */
function sslSettingsFrom(setting: (k: string) => string | undefined): SslSettings {
  const rootCert = setting('sslrootcert');
  const given = setting('sslmode');
  if (given !== undefined && !(SSL_MODES as readonly string[]).includes(given)) throw new ConninfoError(`invalid sslmode value: "${given}"`);
  const mode = (given ?? (rootCert === 'system' ? 'verify-full' : 'prefer')) as SslMode;
  if (rootCert === 'system' && mode !== 'verify-full') {
    throw new ConninfoError(`weak sslmode "${mode}" may not be used with sslrootcert=system (use "verify-full")`);
  }
  return { mode, rootCert, cert: setting('sslcert'), key: setting('sslkey'), crl: setting('sslcrl'), keyPassword: setting('sslpassword') };
}

function finish(opts: ConnectionOptions, kv: Record<string, string>, sslSettings: SslSettings, passfile: string | undefined, connectTimeoutText: string | undefined): ReplicationClientConfig {
  // -h and -p win over the string (an empty one counts as not given, as in PQsetdbLogin); a
  // keyword given in the string, even empty, wins over the environment (conninfo_add_defaults).
  const given = (v: string | number | undefined): string | undefined => (v === undefined || String(v) === '' ? undefined : String(v));
  const hostText = given(opts.host) ?? kv['host'] ?? env('PGHOST');
  const hostaddrText = kv['hostaddr'] ?? env('PGHOSTADDR');
  const portText = given(opts.port) ?? kv['port'] ?? env('PGPORT');
  // hostaddr is where to connect; host stays the name (libpq): verify-full checks it, pgpass matches it.
  const hosts = hostList(hostText || undefined, hostaddrText || undefined, portText || undefined);
  const connectTimeout = opts.connectTimeout ?? (connectTimeoutText !== undefined ? libpqConnectTimeout(connectTimeoutText) : (opts.defaultConnectTimeout ?? 30));
  // TCP keepalive as libpq: on unless keepalives=0; keepalives_idle in seconds.
  const keepalives = integerSetting(kv, 'keepalives');
  const keepalivesIdle = integerSetting(kv, 'keepalives_idle');
  const cfg: ReplicationClientConfig = {
    user: opts.user ?? kv['user'],
    password: opts.password ?? kv['password'],
    // A physical walsender ignores the database, but pg insists on one; libpq uses "replication".
    database: kv['dbname'] ?? 'replication',
    application_name: kv['application_name'] ?? opts.applicationName,
    replication: 'true',
    connectionTimeoutMillis: connectTimeout > 0 ? connectTimeout * 1000 : 0,
    keepAlive: keepalives !== 0,
    keepAliveInitialDelayMillis: keepalivesIdle !== undefined && keepalivesIdle > 0 ? keepalivesIdle * 1000 : 10_000,
    sslSettings,
    channelBinding: 'prefer',
    hosts,
  };
  if (hosts.length === 1) {
    const only = hosts[0]!;
    if (hostText || hostaddrText) cfg.host = only.address;
    if (only.name !== undefined) cfg.hostName = only.name;
    if (portText) cfg.port = only.port;
  }
  if (passfile !== undefined) cfg.passfile = passfile;
  if (kv['options'] || opts.walSenderTimeout) {
    const parts = [kv['options'] ?? ''];
    if (opts.walSenderTimeout) parts.push(`-c wal_sender_timeout=${opts.walSenderTimeout}`);
    cfg.options = parts.join(' ').trim();
  }
  return cfg;
}

/** An integer keyword (libpq's parse_int_param: optional sign, digits, surrounding blanks), or undefined when unset. */
function integerSetting(kv: Record<string, string>, key: string): number | undefined {
  const v = kv[key];
  if (v === undefined || v === '') return undefined;
  if (!/^\s*[-+]?\d+\s*$/.test(v)) throw new ConninfoError(`invalid integer value "${v}" for connection option "${key}"`);
  return Number(v);
}

/** connect_timeout as libpq reads it: 0 or less waits forever, and less than 2 seconds means 2. */
function libpqConnectTimeout(text: string): number {
  const n = integerSetting({ connect_timeout: text }, 'connect_timeout')!;
  if (n <= 0) return 0;
  return Math.max(n, 2);
}

/** What a configuration made some other way than by buildClientConfig names: its host and port, else PGHOST, PGHOSTADDR and PGPORT. */
type HostSettings = Pick<ClientConfig, 'host' | 'port'> & Partial<Pick<ReplicationClientConfig, 'hostName' | 'hosts'>>;

/** The host list of a configuration (its `hosts`, else what its host and port say, else the environment's). */
export function hostsOf(cfg: HostSettings): HostTarget[] {
  if (cfg.hosts && cfg.hosts.length > 0) return cfg.hosts;
  const port = cfg.port !== undefined ? String(cfg.port) : env('PGPORT');
  if (cfg.host) return cfg.hostName ? hostList(cfg.hostName, cfg.host, port) : hostList(cfg.host, undefined, port);
  return hostList(env('PGHOST'), env('PGHOSTADDR'), port);
}

/**
 * The hosts in the order one connection tries them: as listed, or with load_balance_hosts=random
 * shuffled anew for every connection (libpq's "inside-out" Fisher-Yates in pqConnectOptions2).
 */
export function hostsForConnect(cfg: HostSettings & Pick<ReplicationClientConfig, 'loadBalanceHosts'>, random: () => number = Math.random): HostTarget[] {
  const hosts = [...hostsOf(cfg)];
  if (cfg.loadBalanceHosts !== 'random') return hosts;
  for (let i = 1; i < hosts.length; i++) {
    const j = Math.floor(random() * (i + 1));
    const t = hosts[j]!;
    hosts[j] = hosts[i]!;
    hosts[i] = t;
  }
  return hosts;
}

/** host:port of one server, an IPv6 address in brackets. */
export function formatHost(t: HostTarget): string {
  return isIP(t.address) === 6 ? `[${t.address}]:${t.port}` : `${t.address}:${t.port}`;
}

/**
 * Describe a configuration for messages, never including the password: the host connected to
 * when there is a connection, else every host of the list ("a:5432,b:5433 as alice").
 */
export function describeTarget(cfg: ClientConfig & Partial<Pick<ReplicationClientConfig, 'hostName' | 'hosts' | 'connectedHost'>>): string {
  const user = cfg.user ?? process.env['PGUSER'] ?? 'the current user';
  if (cfg.connectedHost) return `${formatHost(cfg.connectedHost)} as ${user}`;
  let where: string;
  try {
    where = hostsOf(cfg).map(formatHost).join(',');
  } catch {
    // An environment list that does not add up: say what is there.
    where = `${cfg.host ?? process.env['PGHOST'] ?? DEFAULT_HOST}:${cfg.port ?? process.env['PGPORT'] ?? DEFAULT_PORT}`;
  }
  return `${where} as ${user}`;
}
