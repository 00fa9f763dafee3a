// Connection settings as libpq takes them: a keyword/value conninfo string or a postgres:// URI
// (libpq's conninfo_parse / conninfo_uri_parse), overridden by -h/-p/-U, with PG* environment
// variables and ~/.pgpass filled in by the pg client. Pure apart from reading TLS files named in it.
import { parse as parseUri } from 'pg-connection-string';
import type { ClientConfig } from 'pg';

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
  /** wal_sender_timeout requested for this connection, e.g. "60s". */
  walSenderTimeout?: string;
}

const KNOWN_KEYS = new Set([
  'host', 'hostaddr', 'port', 'user', 'password', 'dbname', 'application_name', 'fallback_application_name',
  'sslmode', 'sslrootcert', 'sslcert', 'sslkey', 'connect_timeout', 'options', 'replication',
  'keepalives', 'keepalives_idle', 'passfile', 'sslcrl', 'sslpassword', 'target_session_attrs', 'client_encoding',
]);

/** The pg client's configuration with the replication startup parameter (which pg sends though its types omit it). */
export type ReplicationClientConfig = ClientConfig & { replication?: string };

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
      const parsed = parseUri(opts.dbname, { useLibpqCompat: true }) as Record<string, unknown>;
      for (const [k, v] of Object.entries(parsed)) {
        const key = k === 'database' ? 'dbname' : k;
        if (typeof v === 'string' && v !== '' && KNOWN_KEYS.has(key)) kv[key] = v;
      }
      if (parsed['ssl'] !== undefined && parsed['ssl'] !== false) return finish(opts, kv, parsed['ssl'] as ClientConfig['ssl']);
    } else if (opts.dbname.includes('=')) {
      kv = parseKeywordValue(opts.dbname);
    } else {
      kv = { dbname: opts.dbname };
    }
  }
  for (const k of Object.keys(kv)) {
    if (!KNOWN_KEYS.has(k)) throw new ConninfoError(`invalid connection option "${k}"`);
  }
  let ssl: ClientConfig['ssl'] | undefined;
  const sslmode = kv['sslmode'] ?? process.env['PGSSLMODE'];
  if (sslmode !== undefined) {
    const params = new URLSearchParams({ sslmode });
    for (const k of ['sslrootcert', 'sslcert', 'sslkey'] as const) {
      const v = kv[k] ?? process.env[`PG${k.toUpperCase()}`];
      if (v) params.set(k, v);
    }
    const sslConfig = parseUri(`postgres://x/?${params.toString()}`, { useLibpqCompat: true }) as { ssl?: ClientConfig['ssl'] };
    ssl = sslConfig.ssl;
  }
  return finish(opts, kv, ssl);
}

function finish(opts: ConnectionOptions, kv: Record<string, string>, ssl: ClientConfig['ssl'] | undefined): ReplicationClientConfig {
  const host = opts.host ?? kv['host'] ?? kv['hostaddr'];
  const portText = opts.port !== undefined ? String(opts.port) : kv['port'];
  let port: number | undefined;
  if (portText !== undefined && portText !== '') {
    port = Number(portText);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new ConninfoError(`invalid port number: "${portText}"`);
  }
  const timeoutText = kv['connect_timeout'];
  const connectTimeout = opts.connectTimeout ?? (timeoutText ? Number(timeoutText) : 30);
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
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
  };
  if (ssl !== undefined) cfg.ssl = ssl;
  if (kv['options'] || opts.walSenderTimeout) {
    const parts = [kv['options'] ?? ''];
    if (opts.walSenderTimeout) parts.push(`-c wal_sender_timeout=${opts.walSenderTimeout}`);
    cfg.options = parts.join(' ').trim();
  }
  return cfg;
}

/** Describe a configuration for messages, never including the password. */
export function describeTarget(cfg: ClientConfig): string {
  const host = cfg.host ?? process.env['PGHOST'] ?? 'localhost';
  const port = cfg.port ?? process.env['PGPORT'] ?? 5432;
  const user = cfg.user ?? process.env['PGUSER'] ?? 'the current user';
  return `${host}:${port} as ${user}`;
}
