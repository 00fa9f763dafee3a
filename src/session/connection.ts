// One physical replication connection (walsender in replication=true mode): connect through the
// pg client (SCRAM, md5) with libpq's sslmode negotiation, certificate files (session/tls.ts) and
// password sources (password=, PGPASSWORD, the password file: session/pgpass.ts), run
// replication commands over the simple query protocol and read their text rows. Mirrors
// fe-connect.c (PQconnectPoll's SSL fallbacks) and streamutil.c (GetConnection,
// RunIdentifySystem, RetrieveWalSegSize, CreateReplicationSlot, GetSlotInformation).
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
import { ConnectionLostError, ConnectionSetupError, ServerError, toServerError } from './errors.js';
import type { ReplicationClientConfig } from './conninfo.js';
import { buildTlsOptions, describeTlsError, isTlsError } from './tls.js';
import { passfilePath, passwordFromFile } from './pgpass.js';
import type { ConnectionOptions as TlsConnectionOptions } from 'node:tls';
import { userInfo } from 'node:os';
import { CopyBothStream, type StreamEvents } from './copyboth.js';
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
 * password=, else PGPASSWORD, else the password file entry for host, port, database and user.
 */
export function resolveCredentials(cfg: ReplicationClientConfig, warn: (message: string) => void): Credentials {
  const env = process.env;
  const user = cfg.user || env['PGUSER'] || osUserName();
  const given = typeof cfg.password === 'string' && cfg.password !== '' ? cfg.password : env['PGPASSWORD'] || undefined;
  if (given !== undefined) return { user, password: given };
  const file = passfilePath(cfg.passfile);
  if (file === undefined) return { user, password: undefined };
  // The password file matches libpq's host (not hostaddr), the default port and the database
  // ("replication" for a physical replication connection).
  const host = cfg.hostName || cfg.host || env['PGHOST'] || 'localhost';
  const port = String(cfg.port ?? (env['PGPORT'] || 5432));
  const found = passwordFromFile(file, { host, port, database: cfg.database ?? 'replication', user });
  if (found.warning) warn(found.warning);
  return found.password === undefined ? { user, password: undefined } : { user, password: found.password, passwordFile: file };
}

/** A failed attempt's error: TLS problems worded like libpq's, server errors keeping their SQLSTATE. */
function connectFailure(err: unknown): Error {
  if (isTlsError(err)) return new ConnectionSetupError(describeTlsError(err as Error));
  const e = toServerError(err);
  if (/server does not support SSL/i.test(e.message)) return new ConnectionSetupError('server does not support SSL, but SSL was required');
  return e;
}

/** One error for all attempts (libpq reports each; here they share one line). */
function connectError(failures: AttemptFailure[], mode: string, creds: Credentials): Error {
  const hint = (e: Error): string =>
    e instanceof ServerError && e.code === '28P01' && creds.passwordFile ? `${e.message} (password retrieved from file "${creds.passwordFile}")` : e.message;
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
  const text = texts.every((t) => t === texts[0])
    ? texts[0]!
    : relevant.map((f, i) => `${texts[i]} (${f.ssl ? 'with' : 'without'} SSL, sslmode=${mode})`).join('; ');
  const server = relevant.find((f) => f.err instanceof ServerError)?.err as ServerError | undefined;
  return server ? new ServerError(text, server.code, server.detail, server.hint) : new ConnectionSetupError(text);
}

/** How a connection treats a server that goes silent. */
export interface ConnectBehaviour {
  /**
   * Give a command up (and drop the connection) when its answer has not come after this many
   * milliseconds (0 or absent = wait forever). The connection itself is bounded by the
   * configuration's connectionTimeoutMillis (connect_timeout).
   */
  replyTimeoutMs?: number;
}

export class ReplicationConnection {
  private closed = false;

  private constructor(
    private readonly client: pg.Client,
    readonly serverVersionNum: number,
    private readonly replyTimeoutMs = 0,
  ) {}

  /**
   * Connect the libpq way (fe-connect.c PQconnectPoll): sslmode decides the attempts (prefer:
   * SSL, then without it if the server refuses SSL, the handshake fails or the server rejects the
   * SSL connection before authentication; allow: the reverse), the password comes from the
   * options, PGPASSWORD or the password file. `warn` gets libpq's warnings (an ignored password file).
   */
  static async connect(
    cfg: ReplicationClientConfig,
    warn: (message: string) => void = stderrWarning,
    behaviour: ConnectBehaviour = {},
  ): Promise<ReplicationConnection> {
    const creds = resolveCredentials(cfg, warn);
    // libpq ignores sslmode on a Unix-domain socket: the server never offers SSL there.
    const unixSocket = (cfg.host ?? process.env['PGHOST'] ?? '').startsWith('/');
    const mode = unixSocket ? 'disable' : (cfg.sslSettings?.mode ?? 'prefer');
    const order: boolean[] = mode === 'disable' ? [false] : mode === 'allow' ? [false, true] : mode === 'prefer' ? [true, false] : [true];
    const failures: AttemptFailure[] = [];
    for (const useSsl of order) {
      let ssl: TlsConnectionOptions | false = false;
      try {
        if (useSsl) ssl = buildTlsOptions(cfg.sslSettings ?? { mode }, cfg.hostName ?? cfg.host ?? process.env['PGHOST'] ?? 'localhost');
      } catch (err) {
        failures.push({ ssl: true, err: err as Error, reachedServer: true, authenticated: false });
        if (mode === 'prefer') continue;
        break;
      }
      const result = await ReplicationConnection.attempt(cfg, ssl, creds, behaviour);
      if (result instanceof ReplicationConnection) return result;
      failures.push({ ...result, ssl: useSsl });
      // Retry with the other choice only where libpq does.
      const again =
        (mode === 'prefer' && useSsl && result.reachedServer && !result.authenticated && !(result.err instanceof ConnectionLostError && /timeout/i.test(result.err.message))) ||
        (mode === 'allow' && !useSsl && result.err instanceof ServerError && !result.authenticated);
      if (!again) break;
    }
    throw connectError(failures, mode, creds);
  }

  /** One connection attempt, with or without TLS. */
  private static async attempt(
    cfg: ReplicationClientConfig,
    ssl: TlsConnectionOptions | false,
    creds: Credentials,
    behaviour: ConnectBehaviour,
  ): Promise<ReplicationConnection | Omit<AttemptFailure, 'ssl'>> {
    const { sslSettings: _ssl, hostName: _name, passfile: _file, channelBinding: _cb, ...pgConfig } = cfg;
    const channelBinding = cfg.channelBinding ?? 'prefer';
    if (channelBinding === 'require' && ssl === false) {
      return { err: new ConnectionSetupError('channel binding required, but SSL not in use'), reachedServer: false, authenticated: false };
    }
    const client = new pg.Client({
      ...pgConfig,
      // SCRAM-SHA-256-PLUS when the server offers it over TLS, as libpq's channel_binding=prefer.
      enableChannelBinding: ssl !== false && channelBinding !== 'disable',
      user: creds.user,
      // A function: pg neither reads PGPASSWORD nor its own ~/.pgpass; the server asks, we answer.
      password: async () => {
        if (creds.password === undefined) throw new Error('fe_sendauth: no password supplied');
        return creds.password;
      },
      ssl,
      types: textOnly,
    } as pg.ClientConfig);
    let reachedServer = false;
    let authenticated = false;
    const con = (client as unknown as {
      connection: { on(event: string, fn: (msg: { mechanisms?: string[] }) => void): void; stream: { destroy(err: Error): void } };
    }).connection;
    let bound = false;
    con.on('connect', () => {
      reachedServer = true;
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
    const conn = new ReplicationConnection(client, 0, behaviour.replyTimeoutMs ?? 0);
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
      throw toServerError(err);
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
    const stream = new CopyBothStream(startReplicationCommand(start, tli, slot), this.client, events);
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

