// One physical replication connection (walsender in replication=true mode): connect through the
// pg client (SCRAM, md5) with libpq's host list, sslmode negotiation, certificate files
// (session/tls.ts) and password sources (password=, PGPASSWORD, the password file per host:
// session/pgpass.ts), run replication commands over the simple query protocol and read their text
// rows. Mirrors fe-connect.c (PQconnectPoll: the hosts tried in order, each bounded by
// connect_timeout; the SSL fallbacks; CONNECTION_CHECK_TARGET for target_session_attrs) and
// streamutil.c (GetConnection, RunIdentifySystem, RetrieveWalSegSize, CreateReplicationSlot,
// GetSlotInformation).
// Guarantees: a host is left for the next one only where libpq leaves it (no answer, connect_timeout,
// "cannot connect now", the wrong kind of server), plus a server that closes the connection before
// saying anything; a refused login, a TLS or certificate failure ends the attempt as in libpq; when
// no host will do, one error names every host tried and why.
import pg from 'pg';
import {
  createPhysicalSlotCommand,
  dropSlotCommand,
  identifySystemCommand,
  parseIdentifySystem,
  parseReadReplicationSlot,
  readSlotCommand,
  showCommand,
  timelineHistoryCommand,
  type SlotInfo,
  type SystemIdentity,
  type TextRow,
} from '../protocol/commands.js';
import { ProtocolError } from '../protocol/messages.js';
import { assertSegSize, historyFileName, parseSizeSetting } from '../wal/segment.js';
import { commandName, ConnectionLostError, ConnectionSetupError, ServerError, toServerError } from './errors.js';
import { hostsForConnect, hostsOf, type HostTarget, type ReplicationClientConfig, type TargetSessionAttrs } from './conninfo.js';
import { buildTlsOptions, describeTlsError, isTlsError } from './tls.js';
import { passfilePath, passwordFromFile } from './pgpass.js';
import type { ConnectionOptions as TlsConnectionOptions } from 'node:tls';
import { userInfo } from 'node:os';
import { CopyBothStream, type StreamEvents } from './copyboth.js';
import { directReadSocket } from './direct-read.js';
import type { Lsn } from '../wal/lsn.js';
import { startReplicationCommand } from '../protocol/commands.js';

export interface CommandResult {
  fields: string[];
  rows: TextRow[];
}

const textOnly = { getTypeParser: () => (value: string) => value };

/** Who connects, with which password (never printed) and where it came from. */
interface Credentials {
  user: string;
  password: string | undefined;
  /** The password file the password came from, for libpq's hint after a rejected password. */
  passwordFile?: string;
}

interface AttemptFailure {
  ssl: boolean;
  err: Error;
  /** The TCP connection was made (a failure after it may be retried with the other SSL choice). */
  reachedServer: boolean;
  /** The server accepted the credentials before the failure. */
  authenticated: boolean;
}

function stderrWarning(message: string): void {
  process.stderr.write(`walstream: warning: ${message}\n`);
}

function osUserName(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env['USER'] ?? '';
  }
}

/**
 * The user (options, PGUSER, else the OS user, as libpq) and the password: the options'
 * password=, else PGPASSWORD, else the password file entry for this host (the configuration's
 * first unless given), its port, the database and the user: as libpq, each host of a list has its
 * own entry.
 */
export function resolveCredentials(cfg: ReplicationClientConfig, warn: (message: string) => void, target: HostTarget = hostsOf(cfg)[0]!): Credentials {
  const env = process.env;
  const user = cfg.user || env['PGUSER'] || osUserName();
  const given = typeof cfg.password === 'string' && cfg.password !== '' ? cfg.password : env['PGPASSWORD'] || undefined;
  if (given !== undefined) return { user, password: given };
  const file = passfilePath(cfg.passfile);
  if (file === undefined) return { user, password: undefined };
  // The password file matches libpq's host (not hostaddr, unless only hostaddr was given), the
  // port and the database ("replication" for a physical replication connection).
  const found = passwordFromFile(file, { host: target.name ?? target.address, port: String(target.port), database: cfg.database ?? 'replication', user });
  if (found.warning) warn(found.warning);
  return found.password === undefined ? { user, password: undefined } : { user, password: found.password, passwordFile: file };
}

/** A failed attempt's error: TLS problems worded like libpq's, server errors keeping their SQLSTATE. */
function connectFailure(err: unknown): Error {
  if (isTlsError(err)) return new ConnectionSetupError(describeTlsError(err as Error));
  // A system error (an errno name: no SQLSTATE class starts with E) is not the server's word.
  const code = (err as { code?: unknown } | null)?.code;
  if (err instanceof Error && typeof code === 'string' && /^E[A-Z0-9_]+$/.test(code)) {
    return /^(ECONNRESET|EPIPE|ETIMEDOUT)$/.test(code) ? new ConnectionLostError(err.message) : err;
  }
  const e = toServerError(err);
  if (/server does not support SSL/i.test(e.message)) return new ConnectionSetupError('server does not support SSL, but SSL was required');
  return e;
}

/** One error for all attempts at one host (libpq reports each; here they share one line). */
function connectError(failures: AttemptFailure[], mode: string, creds: Credentials): Error {
  const hint = (e: Error): string => (e instanceof ServerError && e.code === '28P01' && creds.passwordFile ? `${e.message} (password retrieved from file "${creds.passwordFile}")` : e.message);
  // prefer against a server without SSL: only the plain attempt matters.
  const relevant = failures.filter((f, i) => !(i < failures.length - 1 && f.ssl && /server does not support SSL/.test(f.err.message)));
  const last = relevant[relevant.length - 1]!;
  if (relevant.length === 1) {
    const e = last.err;
    if (e instanceof ServerError) return new ServerError(hint(e), e.code, e.detail, e.hint);
    if (e instanceof ConnectionSetupError || e instanceof ConnectionLostError) return e;
    return new ConnectionSetupError(hint(e));
  }
  // The same refusal with and without SSL is said once.
  const texts = relevant.map((f) => hint(f.err));
  const text = texts.every((t) => t === texts[0]) ? texts[0]! : relevant.map((f, i) => `${texts[i]} (${f.ssl ? 'with' : 'without'} SSL, sslmode=${mode})`).join('; ');
  const server = relevant.find((f) => f.err instanceof ServerError)?.err as ServerError | undefined;
  return server ? new ServerError(text, server.code, server.detail, server.hint) : new ConnectionSetupError(text);
}

/**
 * Does libpq go on to the next host after this failure (PQconnectPoll's try_next_host and
 * try_next_addr)? Yes when the server could not be reached or named (connection refused, no route,
 * a name that does not resolve), when connect_timeout ran out, and when the server answered
 * "cannot connect now" (57P03: starting up, shutting down, not yet a hot standby). Also (where
 * libpq would stop) when the server closed the connection without a word: that is no working
 * server, and the next may be. Not when the server refused the login or the startup, nor after a
 * TLS or certificate failure or a client-side refusal (no password, channel binding): those are
 * the user's to fix, and libpq reports them without trying further hosts.
 */
function triesNextHost(f: Omit<AttemptFailure, 'ssl'>): boolean {
  const e = f.err;
  if (e instanceof ServerError) return e.code === '57P03';
  if (e instanceof ConnectionLostError) return true;
  if (e instanceof ConnectionSetupError) return false;
  return !f.reachedServer;
}

/** No host would do: every one was tried, the error of each is in the message. Always worth a retry later. */
export class AllHostsFailedError extends ConnectionLostError {
  constructor(
    message: string,
    readonly failures: readonly HostFailure[],
  ) {
    super(message);
    this.name = 'AllHostsFailedError';
  }
}

export interface HostFailure {
  host: HostTarget;
  error: Error;
}

/** libpq's words for the server an error is about (fe-connect.c emitHostIdentityInfo). */
export function hostLabel(t: HostTarget): string {
  return t.address.startsWith('/') ? `connection to server on socket "${t.address}/.s.PGSQL.${t.port}"` : `connection to server at "${t.address}", port ${t.port}`;
}

/**
 * The error of a connect that no host satisfied: with one host, that host's error as it is (the
 * caller names the host); with several, one line naming each host and why, in the order tried
 * (libpq gathers the same lines in its error message). `exhausted`: every host was tried (a retry
 * later may find one); else the last host's failure ended the attempt, and its kind (a server
 * error and its SQLSTATE) is kept.
 */
function hostsError(failures: HostFailure[], hostCount: number, exhausted: boolean): Error {
  const last = failures[failures.length - 1]!.error;
  if (failures.length === 1 && !(exhausted && last instanceof TargetMismatchError)) return last;
  const parts: string[] = [];
  for (const f of failures) {
    const text = hostCount === 1 ? f.error.message : `${hostLabel(f.host)} failed: ${f.error.message}`;
    if (!parts.includes(text)) parts.push(text);
  }
  const text = parts.join('; ');
  if (exhausted) return new AllHostsFailedError(text, failures);
  if (last instanceof ServerError) return new ServerError(text, last.code, last.detail, last.hint);
  if (last instanceof ConnectionLostError) return new ConnectionLostError(text);
  return new ConnectionSetupError(text);
}

/** The server is not of the kind target_session_attrs asks for (libpq's words). */
class TargetMismatchError extends ConnectionSetupError {
  constructor(message: string) {
    super(message);
    this.name = 'TargetMismatchError';
  }
}

/** What a server reported of itself (ParameterStatus) or answered when asked, for target_session_attrs. */
export interface SessionState {
  /** default_transaction_read_only, or transaction_read_only when asked. */
  readOnly?: boolean;
  /** in_hot_standby (14+), or what the answers prove when asked. */
  hotStandby?: boolean;
}

/**
 * Why a server with this state does not do for `want`, in libpq's words, or undefined when it
 * does (fe-connect.c CONNECTION_CHECK_TARGET). read-write and read-only go by "read only"
 * (default_transaction_read_only or in hot standby); primary, standby and prefer-standby's
 * first pass by "in hot standby". Pure.
 */
export function sessionMismatch(want: TargetSessionAttrs, state: SessionState): string | undefined {
  switch (want) {
    case 'any':
      return undefined;
    case 'read-write':
    case 'read-only': {
      const readOnly = state.readOnly === true || state.hotStandby === true;
      if (want === 'read-write') return readOnly ? 'session is read-only' : undefined;
      return readOnly ? undefined : 'session is not read-only';
    }
    case 'primary':
      return state.hotStandby === true ? 'server is in hot standby mode' : undefined;
    case 'standby':
    case 'prefer-standby':
      return state.hotStandby === true ? undefined : 'server is not in hot standby mode';
  }
}

/** A boolean setting's text as libpq reads it ("on" and nothing else is on). */
function settingOn(value: string | undefined | null): boolean {
  return typeof value === 'string' && value.startsWith('on');
}

/** How a connection treats a server that goes silent. */
export interface ConnectBehaviour {
  /**
   * Give a command up (and drop the connection) when its answer has not come after this many
   * milliseconds (0 or absent = wait forever). The connection itself is bounded by the
   * configuration's connectionTimeoutMillis (connect_timeout), for each host.
   */
  replyTimeoutMs?: number;
  /** The order of the hosts when load_balance_hosts=random (a value in [0, 1), like Math.random). */
  random?: () => number;
}

/** One host's outcome: a connection, or why not and whether to go on to the next host. */
type HostOutcome = { conn: ReplicationConnection } | { err: Error; nextHost: boolean };

export class ReplicationConnection {
  private closed = false;

  private constructor(
    private readonly client: pg.Client,
    readonly serverVersionNum: number,
    private readonly replyTimeoutMs: number,
    /** The server of the host list this connection reached. */
    readonly target: HostTarget,
    /** The settings the server reported (ParameterStatus), e.g. server_version, in_hot_standby. */
    readonly parameters: ReadonlyMap<string, string>,
  ) {}

  /**
   * Connect the libpq way (fe-connect.c PQconnectPoll): the hosts of the configuration in order
   * (shuffled with load_balance_hosts=random), each bounded by connect_timeout; at each, sslmode
   * decides the attempts (prefer: SSL, then without it if the server refuses SSL, the handshake
   * fails or the server rejects the SSL connection before authentication; allow: the reverse),
   * the password comes from the options, PGPASSWORD or the password file entry of that host; a
   * server that is not of the kind target_session_attrs asks for is left for the next
   * (prefer-standby: standbys first, then any server). `warn` gets libpq's warnings (an ignored
   * password file). On success the configuration's connectedHost names the host; when no host
   * will do, the error names each host and why (AllHostsFailedError when every host was tried).
   */
  static async connect(cfg: ReplicationClientConfig, warn: (message: string) => void = stderrWarning, behaviour: ConnectBehaviour = {}): Promise<ReplicationConnection> {
    const hosts = hostsForConnect(cfg, behaviour.random);
    delete cfg.connectedHost;
    const warned = new Set<string>();
    const warnOnce = (message: string): void => {
      if (warned.has(message)) return;
      warned.add(message);
      warn(message);
    };
    const wanted = cfg.targetSessionAttrs ?? 'any';
    // prefer-standby: a first pass that takes standbys only, then one that takes any server
    // (fe-connect.c SERVER_TYPE_PREFER_STANDBY_PASS2).
    const passes: TargetSessionAttrs[] = wanted === 'prefer-standby' ? ['standby', 'any'] : [wanted];
    const failures: HostFailure[] = [];
    for (const want of passes) {
      for (const target of hosts) {
        const outcome = await ReplicationConnection.connectHost(cfg, target, warnOnce, behaviour);
        if ('err' in outcome) {
          failures.push({ host: target, error: outcome.err });
          if (!outcome.nextHost) throw hostsError(failures, hosts.length, false);
          continue;
        }
        const conn = outcome.conn;
        const mismatch = await conn.targetMismatch(want, cfg.replication);
        if (mismatch === undefined) {
          cfg.connectedHost = target;
          return conn;
        }
        // libpq closes politely (Terminate) and tries the next host.
        await conn.close();
        failures.push({ host: target, error: new TargetMismatchError(mismatch) });
      }
    }
    throw hostsError(failures, hosts.length, true);
  }

  /** One host: the attempts sslmode asks for, with this host's password. */
  private static async connectHost(cfg: ReplicationClientConfig, target: HostTarget, warn: (message: string) => void, behaviour: ConnectBehaviour): Promise<HostOutcome> {
    const creds = resolveCredentials(cfg, warn, target);
    // libpq ignores sslmode on a Unix-domain socket: the server never offers SSL there.
    const unixSocket = target.address.startsWith('/');
    const mode = unixSocket ? 'disable' : (cfg.sslSettings?.mode ?? 'prefer');
    const order: boolean[] = mode === 'disable' ? [false] : mode === 'allow' ? [false, true] : mode === 'prefer' ? [true, false] : [true];
    const failures: AttemptFailure[] = [];
    for (const useSsl of order) {
      let ssl: TlsConnectionOptions | false = false;
      try {
        if (useSsl) ssl = buildTlsOptions(cfg.sslSettings ?? { mode }, target.name ?? target.address);
      } catch (err) {
        failures.push({ ssl: true, err: err as Error, reachedServer: true, authenticated: false });
        if (mode === 'prefer') continue;
        break;
      }
      let result: ReplicationConnection | Omit<AttemptFailure, 'ssl'>;
      try {
        result = await ReplicationConnection.attempt(cfg, target, ssl, creds, behaviour);
      } catch (err) {
        // Connected, but the server did not answer SHOW server_version_num as PostgreSQL does.
        const e = toServerError(err);
        return { err: e, nextHost: e instanceof ConnectionLostError };
      }
      if (result instanceof ReplicationConnection) return { conn: result };
      failures.push({ ...result, ssl: useSsl });
      // Retry with the other choice only where libpq does.
      const again =
        (mode === 'prefer' && useSsl && result.reachedServer && !result.authenticated && !(result.err instanceof ConnectionLostError && /timeout/i.test(result.err.message))) ||
        (mode === 'allow' && !useSsl && result.err instanceof ServerError && !result.authenticated);
      if (!again) break;
    }
    return { err: connectError(failures, mode, creds), nextHost: triesNextHost(failures[failures.length - 1]!) };
  }

  /**
   * One connection attempt to one host, with or without TLS. pg is given this host's address and
   * port, never a list, and never left to read PGHOST or PGPORT itself.
   */
  private static async attempt(
    cfg: ReplicationClientConfig,
    target: HostTarget,
    ssl: TlsConnectionOptions | false,
    creds: Credentials,
    behaviour: ConnectBehaviour,
  ): Promise<ReplicationConnection | Omit<AttemptFailure, 'ssl'>> {
    const { sslSettings: _ssl, hostName: _name, passfile: _file, channelBinding: _cb, hosts: _hosts, targetSessionAttrs: _tsa, loadBalanceHosts: _lb, connectedHost: _connected, ...pgConfig } = cfg;
    const channelBinding = cfg.channelBinding ?? 'prefer';
    if (channelBinding === 'require' && ssl === false) {
      return { err: new ConnectionSetupError('channel binding required, but SSL not in use'), reachedServer: false, authenticated: false };
    }
    const client = new pg.Client({
      ...pgConfig,
      host: target.address,
      port: target.port,
      // SCRAM-SHA-256-PLUS when the server offers it over TLS, as libpq's channel_binding=prefer.
      enableChannelBinding: ssl !== false && channelBinding !== 'disable',
      user: creds.user,
      // A function: pg neither reads PGPASSWORD nor its own ~/.pgpass; the server asks, we answer.
      password: async () => {
        if (creds.password === undefined) throw new Error('fe_sendauth: no password supplied');
        return creds.password;
      },
      ssl,
      // Without TLS, the socket reads into one reused buffer (session/direct-read.ts).
      ...(ssl === false ? { stream: () => directReadSocket() } : {}),
      types: textOnly,
    } as pg.ClientConfig);
    let reachedServer = false;
    let authenticated = false;
    const parameters = new Map<string, string>();
    const con = (
      client as unknown as {
        connection: {
          on(event: 'parameterStatus', fn: (msg: { parameterName: string; parameterValue: string }) => void): void;
          on(event: string, fn: (msg: { mechanisms?: string[] }) => void): void;
          stream: { destroy(err: Error): void };
        };
      }
    ).connection;
    let bound = false;
    con.on('connect', () => {
      reachedServer = true;
    });
    con.on('parameterStatus', (msg) => {
      parameters.set(msg.parameterName, msg.parameterValue);
    });
    con.on('authenticationSASL', (msg) => {
      bound = ssl !== false && (msg.mechanisms ?? []).includes('SCRAM-SHA-256-PLUS');
    });
    con.on('authenticationOk', () => {
      authenticated = true;
      // channel_binding=require: a server that authenticated us any other way may be an impostor.
      if (channelBinding === 'require' && !bound) {
        con.stream.destroy(new ConnectionSetupError('channel binding required, but server authenticated client without channel binding'));
      }
    });
    let early: Error | undefined;
    const onError = (e: Error): void => {
      early = e;
    };
    client.on('error', onError);
    try {
      await client.connect();
    } catch (err) {
      client.removeListener('error', onError);
      await client.end().catch(() => undefined);
      return { err: connectFailure(err), reachedServer, authenticated };
    }
    if (early) {
      await client.end().catch(() => undefined);
      return { err: connectFailure(early), reachedServer, authenticated };
    }
    const conn = new ReplicationConnection(client, 0, behaviour.replyTimeoutMs ?? 0, target, parameters);
    client.removeListener('error', onError);
    // Failures reach the command in flight; without a listener an 'error' event would crash the process.
    client.on('error', () => undefined);
    try {
      const res = await conn.command(showCommand('server_version_num'));
      const num = Number(res.rows[0]?.['server_version_num']);
      if (!Number.isInteger(num) || num < 100000) throw new ProtocolError('could not read server_version_num');
      (conn as { serverVersionNum: number }).serverVersionNum = num;
      return conn;
    } catch (err) {
      await conn.close();
      throw err;
    }
  }

  /**
   * Why this server does not do for target_session_attrs `want`, or undefined (fe-connect.c
   * CONNECTION_CHECK_TARGET). From what the server reported at startup where it did
   * (default_transaction_read_only and in_hot_standby, PostgreSQL 14+), else by asking it.
   * libpq asks SELECT pg_catalog.pg_is_in_recovery() for primary/standby, which a physical
   * walsender refuses (0A000); over a replication connection walstream asks SHOW
   * transaction_read_only instead, which is on in recovery (and also when
   * default_transaction_read_only is on: before 14 the two cannot be told apart without SQL, and
   * such a server counts as a standby). A question that fails makes the host unsuitable, as in
   * libpq.
   */
  private async targetMismatch(want: TargetSessionAttrs, replication: string | undefined): Promise<string | undefined> {
    if (want === 'any') return undefined;
    const reported = (name: string): boolean | undefined => (this.parameters.has(name) ? this.parameters.get(name) === 'on' : undefined);
    const state: SessionState = { readOnly: reported('default_transaction_read_only'), hotStandby: reported('in_hot_standby') };
    let asking = '';
    const show = async (name: string): Promise<boolean> => {
      asking = `SHOW ${name}`;
      const res = await this.command(showCommand(name));
      if (res.rows.length !== 1) throw new ProtocolError(`${res.rows.length} rows`);
      return settingOn(Object.values(res.rows[0]!)[0]);
    };
    try {
      if (want === 'read-write' || want === 'read-only') {
        if (state.readOnly === undefined || state.hotStandby === undefined) {
          // As libpq: "on" proves one of them is on, "off" that both are off.
          const on = await show('transaction_read_only');
          state.readOnly = on;
          state.hotStandby = on;
        }
      } else if (state.hotStandby === undefined) {
        const physical = replication !== undefined && /^(true|on|yes|1)$/i.test(replication);
        if (!physical) {
          asking = 'SELECT pg_is_in_recovery()';
          const res = await this.command('SELECT pg_catalog.pg_is_in_recovery()');
          state.hotStandby = (Object.values(res.rows[0] ?? {})[0] ?? '').startsWith('t');
        } else {
          state.hotStandby = await show('transaction_read_only');
        }
      }
    } catch (err) {
      return `"${asking}" failed: ${(err as Error).message}`;
    }
    return sessionMismatch(want, state);
  }

  get pgClient(): pg.Client {
    return this.client;
  }

  /** Run one replication command and return its rows as text. */
  async command(text: string): Promise<CommandResult> {
    if (this.closed) throw new ConnectionLostError('connection is closed');
    // A server (or a path to it) that went silent: drop the connection, the command fails with this.
    const timer =
      this.replyTimeoutMs > 0
        ? setTimeout(() => {
            const what = text.split(/\s/)[0] ?? text;
            this.abort(new ConnectionLostError(`no answer from the server to ${what} for ${Math.round(this.replyTimeoutMs / 1000)} s: connection considered dead`));
          }, this.replyTimeoutMs)
        : undefined;
    try {
      const res = await this.client.query({ text, types: textOnly } as pg.QueryConfig);
      const fields = (res.fields ?? []).map((f) => f.name);
      return { fields, rows: (res.rows ?? []) as TextRow[] };
    } catch (err) {
      throw toServerError(err, { command: commandName(text) });
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /** Drop the connection with `err`: the command in flight fails with it. */
  private abort(err: Error): void {
    this.closed = true;
    const con = (this.client as unknown as { connection?: { stream?: { destroy(err?: Error): void } } }).connection;
    con?.stream?.destroy(err);
  }

  async identifySystem(): Promise<SystemIdentity> {
    const res = await this.command(identifySystemCommand());
    if (res.rows.length !== 1 || res.fields.length < 3) {
      throw new ProtocolError(`could not identify system: got ${res.rows.length} rows and ${res.fields.length} fields`);
    }
    return parseIdentifySystem(res.rows[0]!);
  }

  async walSegmentSize(): Promise<number> {
    const res = await this.command(showCommand('wal_segment_size'));
    const text = res.rows[0]?.['wal_segment_size'];
    if (text == null) throw new ProtocolError('SHOW wal_segment_size returned no value');
    const size = parseSizeSetting(text);
    assertSegSize(size);
    return size;
  }

  async walBlockSize(): Promise<number> {
    const res = await this.command(showCommand('wal_block_size'));
    const text = res.rows[0]?.['wal_block_size'];
    if (text == null) throw new ProtocolError('SHOW wal_block_size returned no value');
    return parseSizeSetting(text);
  }

  /** TIMELINE_HISTORY: the file name and raw content of a timeline's history file. */
  async timelineHistory(tli: number): Promise<{ filename: string; content: Buffer }> {
    const res = await this.command(timelineHistoryCommand(tli));
    const row = res.rows[0];
    if (!row || res.rows.length !== 1) throw new ProtocolError(`TIMELINE_HISTORY ${tli} returned ${res.rows.length} rows`);
    const filename = row['filename'];
    const content = row['content'];
    if (filename == null || content == null) throw new ProtocolError('TIMELINE_HISTORY returned null fields');
    if (filename !== historyFileName(tli)) {
      throw new ProtocolError(`server reported unexpected history file name for timeline ${tli}: "${filename}"`);
    }
    // 13 and older send the content as bytea, printed in hex.
    const bytes = content.startsWith('\\x') && /^\\x[0-9a-f]*$/.test(content) ? Buffer.from(content.slice(2), 'hex') : Buffer.from(content, 'utf8');
    return { filename, content: bytes };
  }

  async createPhysicalSlot(slot: string, reserveWal: boolean): Promise<void> {
    await this.command(createPhysicalSlotCommand(slot, this.serverVersionNum, reserveWal));
  }

  async dropSlot(slot: string): Promise<void> {
    await this.command(dropSlotCommand(slot, false));
  }

  /** READ_REPLICATION_SLOT (15+); undefined on older servers. */
  async readSlot(slot: string): Promise<SlotInfo | undefined> {
    if (this.serverVersionNum < 150000) return undefined;
    const res = await this.command(readSlotCommand(slot));
    const row = res.rows[0];
    if (!row) throw new ProtocolError('READ_REPLICATION_SLOT returned no row');
    return parseReadReplicationSlot(row);
  }

  /** START_REPLICATION: returns the stream; its `done` settles when the command ends. */
  startReplication(start: Lsn, tli: number, slot: string | undefined, events: StreamEvents): CopyBothStream {
    const stream = new CopyBothStream(startReplicationCommand(start, tli, slot), events);
    this.client.query(stream as unknown as pg.Submittable);
    return stream;
  }

  /** Close the connection politely (Terminate); safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.race([this.client.end().catch(() => undefined), new Promise((r) => setTimeout(r, 2000).unref())]);
  }

  /** Drop the connection at once (used after fatal protocol errors). */
  destroy(): void {
    this.closed = true;
    const con = (this.client as unknown as { connection?: { stream?: { destroy(): void } } }).connection;
    con?.stream?.destroy();
  }
}
