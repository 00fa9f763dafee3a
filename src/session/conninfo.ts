// Connection settings as libpq takes them: a keyword/value conninfo string or a postgres:// URI
// (libpq's conninfo_parse / conninfo_uri_parse), overridden by -h/-p/-U, with the PG* environment
// variables libpq reads for what is left unset. Pure apart from reading the environment: files
// (certificates, keys, ~/.pgpass) are read when connecting (session/connection.ts).
import { parse as parseUri } from 'pg-connection-string';
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
  host?: string;
  port?: string | number;
  user?: string;
  password?: string;
  applicationName: string;
  /** Seconds; 0 means wait forever (libpq's connect_timeout). */
  connectTimeout?: number;
  /** Seconds of connect_timeout when neither connectTimeout, connect_timeout nor PGCONNECT_TIMEOUT gives one (default 30). */
  defaultConnectTimeout?: number;
  /** wal_sender_timeout requested for this connection, e.g. "60s". */
  walSenderTimeout?: string;
}

const SSL_KEYS = ['sslmode', 'sslrootcert', 'sslcert', 'sslkey', 'sslcrl', 'sslpassword'] as const;

const KNOWN_KEYS = new Set<string>([
  'host', 'hostaddr', 'port', 'user', 'password', 'dbname', 'application_name', 'fallback_application_name',
  'connect_timeout', 'options', 'replication', 'keepalives', 'keepalives_idle', 'passfile', 'target_session_attrs',
  'client_encoding', 'channel_binding', ...SSL_KEYS,
]);

/** The environment variable libpq reads for a keyword left unset. */
const ENV_FOR: Record<string, string> = {
  hostaddr: 'PGHOSTADDR',
  passfile: 'PGPASSFILE',
  sslmode: 'PGSSLMODE',
  sslrootcert: 'PGSSLROOTCERT',
  sslcert: 'PGSSLCERT',
  sslkey: 'PGSSLKEY',
  sslcrl: 'PGSSLCRL',
  channel_binding: 'PGCHANNELBINDING',
  connect_timeout: 'PGCONNECT_TIMEOUT',
};

/**
 * The pg client's configuration with the replication startup parameter (which pg sends though
 * its types omit it), and what pg does not do the libpq way and session/connection.ts does:
 * sslmode negotiation and certificate files, and the password file.
 */
export type ReplicationClientConfig = ClientConfig & {
  replication?: string;
  /** sslmode and the ssl* files (read when connecting). */
  sslSettings: SslSettings;
  /** libpq's `host` when `hostaddr` is what is connected to: the name verify-full checks and the password file matches. */
  hostName?: string;
  /** passfile= (else PGPASSFILE, else ~/.pgpass). */
  passfile?: string;
  /** channel_binding: SCRAM-SHA-256-PLUS over TLS when the server offers it (prefer, libpq's default), always (require) or never. */
  channelBinding: ChannelBinding;
};

export type ChannelBinding = 'disable' | 'prefer' | 'require';

/** Remove the ssl* parameters from a URI's query, leaving every other byte as written. */
function withoutSslParams(uri: string): string {
  const q = uri.indexOf('?');
  if (q < 0) return uri;
  const hash = uri.indexOf('#', q);
  const query = uri.slice(q + 1, hash < 0 ? undefined : hash);
  const kept = query.split('&').filter((part) => {
    const name = part.split('=')[0] ?? '';
    let decoded = name;
    try {
      decoded = decodeURIComponent(name);
    } catch {
      // left for the parser to refuse
    }
    return !(SSL_KEYS as readonly string[]).includes(decoded);
  });
  return `${uri.slice(0, q)}${kept.length ? `?${kept.join('&')}` : ''}${hash < 0 ? '' : uri.slice(hash)}`;
}

/** Build the pg client configuration for a physical replication connection. */
export function buildClientConfig(opts: ConnectionOptions): ReplicationClientConfig {
  let kv: Record<string, string> = {};
  if (opts.dbname !== undefined && opts.dbname !== '') {
    if (isUri(opts.dbname)) {
      let url: URL;
      try {
        url = new URL(opts.dbname);
      } catch {
        throw new ConninfoError('invalid connection URI (check the host, port and percent-encoding)');
      }
      for (const key of url.searchParams.keys()) {
        if (!KNOWN_KEYS.has(key)) throw new ConninfoError(`invalid URI query parameter: "${key}"`);
      }
      // pg-connection-string would read the ssl* files and apply its own sslmode rules: the ssl*
      // parameters are taken here and handled the libpq way when connecting.
      const parsed = parseUri(withoutSslParams(opts.dbname), { useLibpqCompat: true }) as Record<string, unknown>;
      for (const [k, v] of Object.entries(parsed)) {
        const key = k === 'database' ? 'dbname' : k;
        if (typeof v === 'string' && v !== '' && KNOWN_KEYS.has(key)) kv[key] = v;
      }
      for (const k of SSL_KEYS) {
        const v = url.searchParams.get(k);
        if (v !== null) kv[k] = v;
      }
    } else if (opts.dbname.includes('=')) {
      kv = parseKeywordValue(opts.dbname);
    } else {
      kv = { dbname: opts.dbname };
    }
  }
  for (const k of Object.keys(kv)) {
    if (!KNOWN_KEYS.has(k)) throw new ConninfoError(`invalid connection option "${k}"`);
  }
  const setting = (k: string): string | undefined => {
    const v = kv[k];
    if (v !== undefined && v !== '') return v;
    const env = ENV_FOR[k] !== undefined ? process.env[ENV_FOR[k]] : undefined;
    return env !== undefined && env !== '' ? env : undefined;
  };
  const channelBinding = setting('channel_binding') ?? 'prefer';
  if (!['disable', 'prefer', 'require'].includes(channelBinding)) throw new ConninfoError(`invalid channel_binding value: "${channelBinding}"`);
  const cfg = finish(opts, kv, sslSettingsFrom(setting), setting('hostaddr'), setting('passfile'), setting('connect_timeout'));
  cfg.channelBinding = channelBinding as ChannelBinding;
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

function finish(
  opts: ConnectionOptions,
  kv: Record<string, string>,
  sslSettings: SslSettings,
  hostaddr: string | undefined,
  passfile: string | undefined,
  connectTimeoutText: string | undefined,
): ReplicationClientConfig {
  // hostaddr is where to connect; host stays the name (libpq): verify-full checks it, pgpass matches it.
  const hostName = opts.host ?? kv['host'] ?? (hostaddr !== undefined ? process.env['PGHOST'] || undefined : undefined);
  const host = hostaddr ?? hostName;
  const portText = opts.port !== undefined ? String(opts.port) : kv['port'];
  let port: number | undefined;
  if (portText !== undefined && portText !== '') {
    port = Number(portText);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new ConninfoError(`invalid port number: "${portText}"`);
  }
  const connectTimeout = opts.connectTimeout ?? (connectTimeoutText !== undefined ? libpqConnectTimeout(connectTimeoutText) : (opts.defaultConnectTimeout ?? 30));
  // TCP keepalive as libpq: on unless keepalives=0; keepalives_idle in seconds.
  const keepalives = integerSetting(kv, 'keepalives');
  const keepalivesIdle = integerSetting(kv, 'keepalives_idle');
  const cfg: ReplicationClientConfig = {
    host,
    port,
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
  };
  if (hostName !== undefined && hostName !== host) cfg.hostName = hostName;
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

/** Describe a configuration for messages, never including the password. */
export function describeTarget(cfg: ClientConfig): string {
  const host = cfg.host ?? process.env['PGHOST'] ?? 'localhost';
  const port = cfg.port ?? process.env['PGPORT'] ?? 5432;
  const user = cfg.user ?? process.env['PGUSER'] ?? 'the current user';
  return `${host}:${port} as ${user}`;
}
