// One client of walstream serve, from its first byte to its last (postmaster.c
// ProcessStartupPacket, auth.c ClientAuthentication, postinit.c, postgres.c PostgresMain's
// message loop in a walsender, walsender.c exec_replication_command): GSSENCRequest refused,
// SSLRequest answered 'S' with a TLS handshake when a certificate is configured (else 'N'),
// CancelRequest ignored, the StartupMessage with replication=true, password authentication
// (auth.ts) or trust, the ParameterStatus a walsender of the archived system's major version
// reports, then replication commands answered from the WAL source, and START_REPLICATION handed
// to a WalSender. Everything a client sends is bounded and checked; a client names positions and
// timelines only, never files, and nothing it sends is written anywhere.
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import {
  authenticationMD5Password,
  authenticationOk,
  authenticationSASL,
  authenticationSASLContinue,
  authenticationSASLFinal,
  backendKeyData,
  commandComplete,
  copyBothResponse,
  dataRow,
  errorResponse,
  int4Field,
  int8Field,
  negotiateProtocolVersion,
  OID,
  parameterStatus,
  readyForQuery,
  rowDescription,
  textField,
  type ErrorFields,
} from '../protocol/backend.js';
import {
  FE,
  FrontendFramer,
  MAX_AUTH_MESSAGE_LENGTH,
  ProtocolViolation,
  parseFirstPacket,
  parsePasswordMessage,
  parseQuery,
  parseSASLInitialResponse,
  printable,
  type FirstPacket,
  type TypedMessage,
} from '../protocol/frontend.js';
import { isReplicationCommand, parseReplicationCommand, ReplSyntaxError, type ReplCommand } from '../protocol/repl-grammar.js';
import { formatLsn, type Lsn } from '../wal/lsn.js';
import { historyFileName } from '../wal/segment.js';
import { timelineOfPoint } from '../wal/timeline.js';
import type { Logger } from '../util/log.js';
import type { WalSource } from '../source/wal-source.js';
import { WalSourceError, type SourceIdentity } from '../source/types.js';
import { AuthError, checkMd5Response, ScramServer, SCRAM_MECHANISM, SCRAM_PLUS_MECHANISM, type PasswordBook } from './auth.js';
import { SlotError, type SlotRegistry } from './slots.js';
import { endOfTimelineResult, WalSender, type StreamEnd } from './walsender.js';
import { Wire } from './wire.js';

/** The largest message accepted once authenticated (replication commands and status updates are small). */
export const MAX_MESSAGE_LENGTH = 1024 * 1024;
/** Bytes a client may have sent ahead of what is processed before reading from it pauses. */
const INPUT_LIMIT = 2 * MAX_MESSAGE_LENGTH;
/** authentication_timeout: the time from connecting to being ready for commands. */
const AUTHENTICATION_TIMEOUT_MS = 60_000;
/** wal_sender_timeout's default. */
export const DEFAULT_SENDER_TIMEOUT_MS = 60_000;

export interface TlsSettings {
  context: SecureContext;
  /** tls-server-end-point binding data of the certificate (auth.ts certificateEndPointHash). */
  endPointHash: Buffer;
  /** Refuse clients that do not use TLS (hostssl). */
  required: boolean;
}

export interface AuthSettings {
  /** No password asked (--trust). */
  trust: boolean;
  book: PasswordBook | undefined;
}

/** What every connection shares: the WAL source, slots, settings, and the list of clients. */
export interface ServeContext {
  source: WalSource;
  slots: SlotRegistry;
  auth: AuthSettings;
  tls: TlsSettings | undefined;
  log: Logger;
  /** Per-server random bytes for mock SCRAM salts. */
  mockSecret: Buffer;
  /** max_wal_senders: clients streaming or ready at once. */
  maxClients: number;
  /** Resolves when the server shuts down. */
  stopping: Promise<void>;
  /** The clients connected now (for status and metrics). */
  clients: Map<number, ClientInfo>;
  /** A new backend process id for BackendKeyData (unique among connections). */
  newPid(): number;
  /** The server's version string when no WAL tells it (receive --serve knows its server's). */
  serverVersion?: string;
}

export type ClientState = 'startup' | 'idle' | 'catchup' | 'streaming';

/** One client as status and metrics show it (pg_stat_replication's columns). */
export interface ClientInfo {
  pid: number;
  address: string;
  port: number;
  tls: boolean;
  user: string | undefined;
  applicationName: string | undefined;
  state: ClientState;
  connectedAt: Date;
  timeline: number | undefined;
  slot: string | undefined;
  sent: Lsn | undefined;
  write: Lsn | undefined;
  flush: Lsn | undefined;
  apply: Lsn | undefined;
  replyAt: Date | undefined;
  /** Hot standby feedback: the oldest xmin the standby still needs (0 = none). */
  xmin: number | undefined;
  bytesSent: number;
}

type Phase = 'first' | 'md5' | 'sasl-init' | 'sasl-continue' | 'ready' | 'copy' | 'closed';

/** pg_split_opts: the words of an `options` startup value, backslash escaping a space or backslash. */
export function splitOptions(options: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < options.length; i++) {
    const c = options[i]!;
    if (/\s/.test(c) && c !== '\\') {
      if (inWord) out.push(cur);
      cur = '';
      inWord = false;
      continue;
    }
    inWord = true;
    if (c === '\\' && i + 1 < options.length) cur += options[++i];
    else cur += c;
  }
  if (inWord) out.push(cur);
  return out;
}

/** Settings from `options` ("-c name=value", "--name=value"), as the backend's process_postgres_switches takes them. */
export function settingsFromOptions(options: string): Map<string, string> {
  const out = new Map<string, string>();
  const words = splitOptions(options);
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    let setting: string | undefined;
    if (w === '-c') setting = words[++i];
    else if (w.startsWith('-c')) setting = w.slice(2);
    else if (w.startsWith('--')) setting = w.slice(2);
    else throw new AuthError('08P01', `invalid command-line argument for server process: ${w.slice(0, 40)}`);
    if (setting === undefined) throw new AuthError('08P01', 'invalid command-line argument for server process: -c');
    const eq = setting.indexOf('=');
    if (eq <= 0) throw new AuthError('08P01', `-c ${setting.slice(0, 40)} requires a value`);
    out.set(setting.slice(0, eq).replace(/-/g, '_').toLowerCase(), setting.slice(eq + 1));
  }
  return out;
}

/** A time setting in milliseconds (guc.c parse_int with GUC_UNIT_MS): "60000", "60s", "1min". */
export function parseDurationSetting(text: string): number | undefined {
  const m = /^\s*(\d+)\s*(ms|s|min|h|d)?\s*$/.exec(text);
  if (!m) return undefined;
  const mult = { ms: 1, s: 1000, min: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? 'ms') as 'ms' | 's' | 'min' | 'h' | 'd'];
  const v = Number(m[1]) * mult;
  return Number.isSafeInteger(v) && v <= 2 ** 31 - 1 ? v : undefined;
}

/** How SHOW prints a time in milliseconds (guc.c: the largest unit that divides it). */
function formatDuration(ms: number): string {
  if (ms === 0) return '0';
  for (const [unit, n] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['min', 60_000],
    ['s', 1000],
  ] as const)
    if (ms % n === 0) return `${ms / n}${unit}`;
  return `${ms}ms`;
}

/** SHOW wal_segment_size's form: "16MB", "1GB" (what pg_receivewal parses). */
export function formatSegmentSize(bytes: number): string {
  return bytes % (1024 * 1024 * 1024) === 0 ? `${bytes / (1024 * 1024 * 1024)}GB` : `${bytes / (1024 * 1024)}MB`;
}

/** The server_version walstream reports: the archived system's major version (libpq reads "15.0" as 150000). */
export function serverVersionString(id: SourceIdentity | undefined, fallback: string | undefined): string | undefined {
  if (id?.major !== undefined) return `${id.major}.0 (walstream)`;
  return fallback;
}

/** What a client may send during COPY (postgres.c in a walsender). */
function isCopyMessage(type: number): boolean {
  return type === FE.CopyData || type === FE.CopyDone || type === FE.Terminate;
}

/** A client as `SHOW walstream.clients` lists it (pg_stat_replication's column names). */
export function clientJson(c: ClientInfo): Record<string, string | number | boolean | null> {
  const lsn = (v: Lsn | undefined): string | null => (v === undefined ? null : formatLsn(v));
  return {
    pid: c.pid,
    application_name: c.applicationName ?? '',
    client_addr: c.address,
    client_port: c.port,
    usename: c.user ?? null,
    ssl: c.tls,
    state: c.state,
    backend_start: c.connectedAt.toISOString(),
    timeline: c.timeline ?? null,
    slot_name: c.slot ?? null,
    sent_lsn: lsn(c.sent),
    write_lsn: lsn(c.write),
    flush_lsn: lsn(c.flush),
    replay_lsn: lsn(c.apply),
    reply_time: c.replyAt ? c.replyAt.toISOString() : null,
    backend_xmin: c.xmin ?? null,
    sent_bytes: c.bytesSent,
  };
}

function errorFields(err: unknown): ErrorFields {
  if (err instanceof WalSourceError) return { severity: 'ERROR', code: err.sqlstate, message: err.message };
  if (err instanceof SlotError) return { severity: 'ERROR', code: err.code, message: err.message, ...(err.hint ? { hint: err.hint } : {}) };
  if (err instanceof ReplSyntaxError) return { severity: 'ERROR', code: err.code, message: err.message };
  return { severity: 'ERROR', code: 'XX000', message: (err as Error).message };
}

export class ClientConnection {
  private phase: Phase = 'first';
  private readonly framer = new FrontendFramer(MAX_AUTH_MESSAGE_LENGTH);
  private socket: Socket | TLSSocket;
  private wire: Wire;
  private running = false;
  private sslDone = false;
  private gssDone = false;
  private tlsActive = false;
  private user = '';
  private readonly settings = new Map<string, string>();
  private senderTimeoutMs = DEFAULT_SENDER_TIMEOUT_MS;
  private scram: ScramServer | undefined;
  private md5Salt: Buffer | undefined;
  private ignoreTillSync = false;
  /** Messages that arrived while a stream was ending, to process once it has (bounded by INPUT_LIMIT in all). */
  private readonly held: TypedMessage[] = [];
  private sender: WalSender | undefined;
  private readonly authTimer: NodeJS.Timeout;
  readonly info: ClientInfo;

  constructor(
    raw: Socket,
    private readonly ctx: ServeContext,
  ) {
    this.socket = raw;
    this.wire = new Wire(raw);
    this.info = {
      pid: ctx.newPid(),
      address: raw.remoteAddress ?? '',
      port: raw.remotePort ?? 0,
      tls: false,
      user: undefined,
      applicationName: undefined,
      state: 'startup',
      connectedAt: new Date(),
      timeline: undefined,
      slot: undefined,
      sent: undefined,
      write: undefined,
      flush: undefined,
      apply: undefined,
      replyAt: undefined,
      xmin: undefined,
      bytesSent: 0,
    };
    raw.setNoDelay(true);
    raw.setKeepAlive(true, 10_000);
    this.attach(raw);
    this.authTimer = setTimeout(() => {
      if (this.phase !== 'ready' && this.phase !== 'copy') this.drop('authentication did not finish in time');
    }, AUTHENTICATION_TIMEOUT_MS);
    raw.once('close', () => this.closed());
  }

  private attach(s: Socket | TLSSocket): void {
    s.on('data', this.onData);
    s.on('error', this.onError);
  }

  private readonly onError = (err: Error): void => {
    this.ctx.log.verbose(`client ${this.who()}: ${err.message}`);
  };

  private readonly onData = (chunk: Buffer): void => {
    if (this.phase === 'closed') return;
    this.framer.push(chunk);
    if (this.framer.pendingBytes > INPUT_LIMIT) this.socket.pause();
    void this.pump();
  };

  private who(): string {
    const app = this.info.applicationName ? ` (${this.info.applicationName})` : '';
    return `${this.info.address}:${this.info.port}${app} pid ${this.info.pid}`;
  }

  /** Process what has arrived, one message at a time; in COPY, client messages go straight to the sender. */
  private async pump(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      while (this.phase !== 'closed') {
        if (this.phase === 'first') {
          const body = this.framer.nextFirstPacket();
          if (!body) break;
          await this.firstPacket(parseFirstPacket(body));
          continue;
        }
        // Messages held while a stream ended go first, once it has.
        const msg = this.phase === 'ready' && this.held.length > 0 ? this.held.shift()! : this.framer.next();
        if (!msg) break;
        if (this.phase === 'copy') {
          // After the client's CopyDone or an error that ended the COPY, a new command waits for
          // the stream's end (its CommandCompletes and ReadyForQuery go out first).
          if (this.held.length > 0 || (this.sender?.finishing && !isCopyMessage(msg.type))) {
            this.held.push({ type: msg.type, body: Buffer.from(msg.body) });
            continue;
          }
          this.copyMessage(msg);
        } else if (this.phase === 'ready') await this.message(msg);
        else await this.authMessage(msg);
      }
    } catch (err) {
      if (err instanceof ProtocolViolation) this.fatal({ severity: 'FATAL', code: '08P01', message: err.message });
      else if (err instanceof AuthError) this.fatal({ severity: 'FATAL', code: err.code, message: err.message });
      else this.fatal({ severity: 'FATAL', code: 'XX000', message: (err as Error).message });
    } finally {
      this.running = false;
      if (this.phase !== 'closed' && this.socket.isPaused() && this.framer.pendingBytes <= INPUT_LIMIT) this.socket.resume();
    }
  }

  /** Say FATAL and close (nothing else is sent or read after it). */
  private fatal(e: ErrorFields, log = true): void {
    if (this.phase === 'closed') return;
    if (log) this.ctx.log.warn(`client ${this.who()}: ${e.message}`);
    this.phase = 'closed';
    this.sender?.close(e.message);
    this.wire.end(errorResponse(e));
  }

  /** Close without a word (a cancel request, a timeout before authentication). */
  private drop(why: string): void {
    if (this.phase === 'closed') return;
    this.ctx.log.verbose(`client ${this.who()}: ${why}`);
    this.phase = 'closed';
    this.sender?.close(why);
    this.wire.destroy();
  }

  /** The server shuts down: a stream ends through the sender (stopping); anyone else hears FATAL 57P01 now. */
  shutdown(): void {
    if (this.phase === 'copy' || this.phase === 'closed') return;
    this.fatal({ severity: 'FATAL', code: '57P01', message: 'terminating connection due to administrator command' }, false);
  }

  private closed(): void {
    this.phase = 'closed';
    clearTimeout(this.authTimer);
    this.sender?.close('the client closed the connection');
    this.ctx.slots.connectionEnded(this.info.pid);
    this.ctx.clients.delete(this.info.pid);
  }

  // ---- before authentication ----

  private async firstPacket(p: FirstPacket): Promise<void> {
    switch (p.kind) {
      case 'cancel':
        // Nothing runs that a cancel could stop (a replication command is short; COPY ends by CopyDone).
        return this.drop('cancel request ignored');
      case 'gssenc':
        if (this.gssDone || this.tlsActive) throw new ProtocolViolation('unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0');
        this.gssDone = true;
        this.wire.send(Buffer.from('N'));
        return;
      case 'ssl':
        if (this.sslDone) throw new ProtocolViolation('unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0');
        this.sslDone = true;
        if (!this.ctx.tls) {
          this.wire.send(Buffer.from('N'));
          return;
        }
        return this.startTls();
      case 'startup':
        return this.startup(p);
    }
  }

  /** Answer 'S' and hand the socket to TLS; bytes sent before the handshake would be plaintext injected into the session. */
  private startTls(): void {
    if (this.framer.takeRemainder().length > 0) throw new ProtocolViolation('received unencrypted data after SSL request');
    const raw = this.socket as Socket;
    raw.removeListener('data', this.onData);
    raw.removeListener('error', this.onError);
    raw.write('S');
    const secure = new TLSSocket(raw, { isServer: true, secureContext: this.ctx.tls!.context });
    secure.on('secure', () => {
      this.tlsActive = true;
      this.info.tls = true;
    });
    this.socket = secure;
    this.wire = new Wire(secure);
    this.attach(secure);
  }

  private async startup(p: Extract<FirstPacket, { kind: 'startup' }>): Promise<void> {
    this.framer.startTyped();
    const params = p.params;
    const user = params.get('user');
    if (!user) throw new AuthError('28000', 'no PostgreSQL user name specified in startup packet');
    this.user = user;
    this.info.user = user;
    // Protocol 3.x beyond 3.0 and _pq_ extensions: say what is supported (ProcessStartupPacket).
    const extensions = [...params.keys()].filter((k) => k.startsWith('_pq_.'));
    if (p.minor > 0 || extensions.length > 0) this.wire.send(negotiateProtocolVersion(0, extensions));
    if (this.ctx.tls?.required && !this.tlsActive) {
      throw new AuthError('28000', `no pg_hba.conf entry for replication connection from host "${this.info.address}", user "${user}", no encryption`);
    }
    const replication = (params.get('replication') ?? 'false').toLowerCase();
    if (['true', 'on', 'yes', '1'].includes(replication)) {
      // physical replication: the only kind served
    } else if (replication === 'database') {
      throw new AuthError('28000', 'walstream serve does not serve logical replication (replication=database); connect with replication=true');
    } else if (['false', 'off', 'no', '0'].includes(replication)) {
      throw new AuthError('28000', 'walstream serve only accepts physical replication connections (replication=true); it runs no SQL');
    } else {
      throw new AuthError('28000', `invalid value for parameter "replication": "${replication.slice(0, 40)}"`);
    }
    for (const [k, v] of params) {
      if (k === 'user' || k === 'database' || k === 'replication' || k === 'options' || k.startsWith('_pq_.')) continue;
      this.settings.set(k.toLowerCase(), v);
    }
    for (const [k, v] of settingsFromOptions(params.get('options') ?? '')) this.settings.set(k, v);
    const timeout = this.settings.get('wal_sender_timeout');
    if (timeout !== undefined) {
      const ms = parseDurationSetting(timeout);
      if (ms === undefined) throw new AuthError('08P01', `invalid value for parameter "wal_sender_timeout": "${timeout.slice(0, 40)}"`);
      this.senderTimeoutMs = ms;
    }
    this.info.applicationName = this.settings.get('application_name');
    this.ctx.log.verbose(`connection from ${this.who()} user ${JSON.stringify(user)}${this.tlsActive ? ' over TLS' : ''}`);
    // An archive that held no WAL when the server started may hold some now.
    if (!this.ctx.source.identity) {
      await this.ctx.source.refresh();
      if (this.phase === 'closed') return;
    }

    if (this.ctx.auth.trust) return this.authenticated();
    const secret = this.ctx.auth.book?.secretFor(user);
    if (secret?.kind === 'md5') {
      this.md5Salt = randomBytes(4);
      this.wire.send(authenticationMD5Password(this.md5Salt));
      this.phase = 'md5';
      return;
    }
    this.wire.send(authenticationSASL(this.tlsActive ? [SCRAM_PLUS_MECHANISM, SCRAM_MECHANISM] : [SCRAM_MECHANISM]));
    this.phase = 'sasl-init';
  }

  private async authMessage(msg: TypedMessage): Promise<void> {
    if (msg.type !== FE.Password) throw new ProtocolViolation(`expected password response, got message type ${msg.type}`);
    if (this.phase === 'md5') {
      const response = parsePasswordMessage(msg.body);
      const secret = this.ctx.auth.book?.secretFor(this.user);
      if (!secret || !checkMd5Response(secret, this.user, this.md5Salt!, response)) {
        throw new AuthError('28P01', `password authentication failed for user "${this.user}"`);
      }
      return this.authenticated();
    }
    if (this.phase === 'sasl-init') {
      const { mechanism, data } = parseSASLInitialResponse(msg.body);
      this.scram = new ScramServer({
        user: this.user,
        secret: this.ctx.auth.book?.secretFor(this.user),
        mechanism,
        plusOffered: this.tlsActive,
        channelBinding: this.ctx.tls?.endPointHash,
        mockSecret: this.ctx.mockSecret,
      });
      if (!data) throw new AuthError('08P01', 'malformed SCRAM message (empty message)');
      const step = this.scram.step(data);
      this.wire.send(authenticationSASLContinue(step.data));
      this.phase = 'sasl-continue';
      return;
    }
    const step = this.scram!.step(msg.body);
    if (step.kind !== 'done') throw new AuthError('08P01', 'invalid SCRAM exchange state');
    this.wire.send(authenticationSASLFinal(step.data));
    return this.authenticated();
  }

  /** AuthenticationOk, then what a walsender reports about itself, BackendKeyData and ReadyForQuery. */
  private authenticated(): void {
    this.framer.maxLength = MAX_MESSAGE_LENGTH;
    const id = this.ctx.source.identity;
    const version = serverVersionString(id, this.ctx.serverVersion);
    if (!id || !version) {
      throw new AuthError('57P03', 'the database system is starting up: walstream holds no WAL yet');
    }
    const streaming = [...this.ctx.clients.values()].filter((c) => c.state !== 'startup').length;
    if (streaming >= this.ctx.maxClients) {
      this.fatal({ severity: 'FATAL', code: '53300', message: `number of requested standby connections exceeds max_wal_senders (currently ${this.ctx.maxClients})` });
      return;
    }
    clearTimeout(this.authTimer);
    this.info.state = 'idle';
    this.ctx.clients.set(this.info.pid, this.info);
    const major = id.major ?? 15;
    const params: [string, string][] = [
      ['application_name', this.settings.get('application_name') ?? ''],
      ['client_encoding', this.settings.get('client_encoding') ?? 'UTF8'],
      ['DateStyle', 'ISO, MDY'],
      ['integer_datetimes', 'on'],
      ['IntervalStyle', 'postgres'],
      ['is_superuser', 'off'],
      ['server_encoding', 'UTF8'],
      ['server_version', version],
      ['session_authorization', this.user],
      ['standard_conforming_strings', 'on'],
      ['TimeZone', 'UTC'],
    ];
    if (major >= 14) params.push(['default_transaction_read_only', 'off'], ['in_hot_standby', 'off']);
    if (major >= 16) params.push(['scram_iterations', '4096']);
    if (major >= 18) params.push(['search_path', '"$user", public']);
    const key = randomBytes(4).readInt32BE(0);
    this.wire.send(authenticationOk(), ...params.map(([k, v]) => parameterStatus(k, v)), backendKeyData(this.info.pid, key), readyForQuery());
    this.phase = 'ready';
    this.ctx.log.verbose(`client ${this.who()} authenticated as ${JSON.stringify(this.user)}`);
  }

  // ---- commands ----

  private error(e: ErrorFields): void {
    this.wire.send(errorResponse(e), readyForQuery());
  }

  private async message(msg: TypedMessage): Promise<void> {
    switch (msg.type) {
      case FE.Query:
        return this.query(parseQuery(msg.body));
      case FE.Terminate:
        return this.drop('client sent Terminate');
      case FE.CopyData:
      case FE.CopyDone:
      case FE.CopyFail:
        return; // outside COPY: accepted and ignored, as postgres.c does
      case FE.Sync:
        this.ignoreTillSync = false;
        this.wire.send(readyForQuery());
        return;
      case FE.Flush:
        return;
      case FE.Parse:
      case FE.Bind:
      case FE.Describe:
      case FE.Execute:
      case FE.Close:
        if (!this.ignoreTillSync) this.wire.send(errorResponse({ severity: 'ERROR', code: '08P01', message: 'extended query protocol not supported in a replication connection' }));
        this.ignoreTillSync = true;
        return;
      case FE.FunctionCall:
        this.error({ severity: 'ERROR', code: '08P01', message: 'fastpath function calls not supported in a replication connection' });
        return;
      default:
        throw new ProtocolViolation(`invalid frontend message type ${msg.type}`);
    }
  }

  private async query(text: string): Promise<void> {
    let replication: boolean;
    try {
      replication = isReplicationCommand(text);
    } catch (err) {
      // A first token that cannot be scanned: a syntax error, and the session goes on.
      this.error(errorFields(err));
      return;
    }
    if (!replication) {
      this.error({ severity: 'ERROR', code: '0A000', message: 'cannot execute SQL commands in WAL sender for physical replication' });
      return;
    }
    let cmd: ReplCommand;
    try {
      cmd = parseReplicationCommand(text);
    } catch (err) {
      this.error(errorFields(err));
      return;
    }
    try {
      await this.command(cmd);
    } catch (err) {
      if (err instanceof ProtocolViolation || err instanceof AuthError) throw err;
      this.error(errorFields(err));
    }
  }

  private async command(cmd: ReplCommand): Promise<void> {
    const source = this.ctx.source;
    const id = source.requireIdentity();
    const major = id.major ?? 15;
    switch (cmd.kind) {
      case 'identify_system': {
        const ts = await source.timelines();
        this.wire.send(
          rowDescription([textField('systemid'), major >= 16 ? int8Field('timeline') : int4Field('timeline'), textField('xlogpos'), textField('dbname')]),
          dataRow([id.systemId.toString(), String(ts.current), formatLsn(ts.end), null]),
          commandComplete('IDENTIFY_SYSTEM'),
          readyForQuery(),
        );
        return;
      }
      case 'show':
        return this.show(cmd.name, id);
      case 'timeline_history': {
        // The columns go out before the file is opened, as in walsender.c SendTimeLineHistory.
        const contentField = major <= 13 ? { name: 'content', typeOid: OID.bytea, typeLen: -1 } : textField('content');
        const head = rowDescription([textField('filename'), contentField]);
        const raw = await source.historyFile(cmd.tli);
        const name = historyFileName(cmd.tli);
        if (!raw) {
          this.wire.send(head, errorResponse({ severity: 'ERROR', code: '58P01', message: `could not open file "pg_wal/${name}": No such file or directory` }), readyForQuery());
          return;
        }
        this.wire.send(head, dataRow([name, raw]), commandComplete('TIMELINE_HISTORY'), readyForQuery());
        return;
      }
      case 'read_replication_slot': {
        const slot = this.ctx.slots.get(cmd.slot);
        let row: (string | null)[] = [null, null, null];
        if (slot) {
          const ts = await source.timelines();
          const tli = slot.restartLsn !== undefined ? timelineOfPoint(ts.history, ts.current, slot.restartLsn) : undefined;
          row = ['physical', slot.restartLsn !== undefined ? formatLsn(slot.restartLsn) : null, tli !== undefined ? String(tli) : null];
        }
        this.wire.send(rowDescription([textField('slot_type'), textField('restart_lsn'), int8Field('restart_tli')]), dataRow(row), commandComplete('READ_REPLICATION_SLOT'), readyForQuery());
        return;
      }
      case 'create_replication_slot': {
        if (cmd.logical) throw new SlotError('0A000', 'walstream serve does not serve logical replication: only physical slots can be created');
        const reserve = cmd.reserveWal ? (await source.timelines()).end : undefined;
        // A temporary slot of a client gone meanwhile would outlive it.
        if (cmd.temporary && this.phase === 'closed') return;
        await this.ctx.slots.create(cmd.slot, cmd.temporary, this.info.pid, reserve);
        this.ctx.log.info(`client ${this.who()} created ${cmd.temporary ? 'temporary ' : ''}replication slot "${cmd.slot}"`);
        this.wire.send(
          rowDescription([textField('slot_name'), textField('consistent_point'), textField('snapshot_name'), textField('output_plugin')]),
          dataRow([cmd.slot, '0/0', null, null]),
          commandComplete('CREATE_REPLICATION_SLOT'),
          readyForQuery(),
        );
        return;
      }
      case 'drop_replication_slot':
        await this.ctx.slots.drop(cmd.slot, cmd.wait, this.info.pid);
        this.ctx.log.info(`client ${this.who()} dropped replication slot "${cmd.slot}"`);
        this.wire.send(commandComplete('DROP_REPLICATION_SLOT'), readyForQuery());
        return;
      case 'start_replication':
        if (cmd.logical) throw new SlotError('0A000', 'walstream serve does not serve logical replication');
        return this.startReplication(cmd.slot, cmd.start, cmd.timeline);
      case 'base_backup':
        throw new SlotError('0A000', 'walstream serve does not take base backups (BASE_BACKUP): take them from the primary');
      case 'alter_replication_slot':
      case 'upload_manifest':
        throw new SlotError('0A000', `walstream serve does not support ${cmd.kind.toUpperCase()}`);
    }
  }

  private show(name: string, id: SourceIdentity): void {
    const key = name.toLowerCase();
    const version = serverVersionString(id, this.ctx.serverVersion)!;
    const major = id.major ?? 15;
    const values: Record<string, [string, () => string]> = {
      wal_segment_size: ['wal_segment_size', () => formatSegmentSize(id.segSize)],
      wal_block_size: ['wal_block_size', () => String(id.blockSize)],
      block_size: ['block_size', () => '8192'],
      server_version: ['server_version', () => version],
      server_version_num: ['server_version_num', () => String(major * 10000)],
      data_directory_mode: ['data_directory_mode', () => '0700'],
      integer_datetimes: ['integer_datetimes', () => 'on'],
      transaction_read_only: ['transaction_read_only', () => 'off'],
      default_transaction_read_only: ['default_transaction_read_only', () => 'off'],
      in_hot_standby: ['in_hot_standby', () => 'off'],
      server_encoding: ['server_encoding', () => 'UTF8'],
      client_encoding: ['client_encoding', () => this.settings.get('client_encoding') ?? 'UTF8'],
      datestyle: ['DateStyle', () => 'ISO, MDY'],
      timezone: ['TimeZone', () => 'UTC'],
      intervalstyle: ['IntervalStyle', () => 'postgres'],
      standard_conforming_strings: ['standard_conforming_strings', () => 'on'],
      application_name: ['application_name', () => this.settings.get('application_name') ?? ''],
      session_authorization: ['session_authorization', () => this.user],
      is_superuser: ['is_superuser', () => 'off'],
      wal_sender_timeout: ['wal_sender_timeout', () => formatDuration(this.senderTimeoutMs)],
      max_wal_senders: ['max_wal_senders', () => String(this.ctx.maxClients)],
      wal_level: ['wal_level', () => 'replica'],
      // walstream's own: what `walstream status -d` shows of a walstream serve (JSON).
      'walstream.clients': ['walstream.clients', () => JSON.stringify([...this.ctx.clients.values()].filter((c) => c.pid !== this.info.pid).map(clientJson))],
      'walstream.slots': [
        'walstream.slots',
        () =>
          JSON.stringify(
            this.ctx.slots.list().map((sl) => ({ name: sl.name, temporary: sl.temporary, active_pid: sl.activePid ?? null, restart_lsn: sl.restartLsn === undefined ? null : formatLsn(sl.restartLsn) })),
          ),
      ],
    };
    const entry = values[key];
    if (!entry) {
      this.error({ severity: 'ERROR', code: '42704', message: `unrecognized configuration parameter "${name}"` });
      return;
    }
    this.wire.send(rowDescription([textField(entry[0])]), dataRow([entry[1]()]), commandComplete('SHOW'), readyForQuery());
  }

  /** walsender.c StartReplication: slot, timeline and position checks, CopyBothResponse, then the stream. */
  private async startReplication(slotName: string | undefined, start: Lsn, requestedTli: number | undefined): Promise<void> {
    const source = this.ctx.source;
    if (slotName !== undefined) this.ctx.slots.acquire(slotName, this.info.pid);
    const release = (): void => {
      if (slotName !== undefined) this.ctx.slots.release(slotName, this.info.pid);
    };
    try {
      const ts = await source.timelines();
      const tli = requestedTli ?? ts.current;
      if (tli !== ts.current) {
        const plan = source.plan(tli);
        if (plan.kind !== 'historic') throw new WalSourceError('XX000', `requested timeline ${tli} is not in this server's history`);
        if (start > plan.switchpoint) {
          const e: ErrorFields = {
            severity: 'ERROR',
            code: 'XX000',
            message: `requested starting point ${formatLsn(start)} on timeline ${tli} is not in this server's history`,
            detail: `This server's history forked from timeline ${tli} at ${formatLsn(plan.switchpoint)}.`,
          };
          release();
          this.error(e);
          return;
        }
        if (start === plan.switchpoint) {
          // Nothing to stream on that timeline: the end-of-timeline answer without COPY.
          release();
          this.wire.send(endOfTimelineResult(plan.nextTli, plan.switchpoint));
          return;
        }
      }
      this.wire.send(copyBothResponse());
      if (tli === ts.current && start > ts.end) {
        release();
        this.error({
          severity: 'ERROR',
          code: 'XX000',
          message: `requested starting point ${formatLsn(start)} is ahead of the WAL flush position of this server ${formatLsn(ts.end)}`,
        });
        return;
      }
      this.stream(tli, start, slotName, release);
    } catch (err) {
      release();
      throw err;
    }
  }

  private stream(tli: number, start: Lsn, slotName: string | undefined, release: () => void): void {
    const source = this.ctx.source;
    const cursor = source.cursor(tli, start);
    const info = this.info;
    info.timeline = tli;
    info.slot = slotName;
    info.sent = start;
    info.state = 'catchup';
    const endNow = (): Lsn => {
      const plan = source.plan(tli);
      return plan.kind === 'historic' ? plan.switchpoint : source.endOfCurrent();
    };
    const sender = new WalSender({
      wire: this.wire,
      cursor,
      walEnd: endNow,
      timeoutMs: this.senderTimeoutMs,
      stopping: this.ctx.stopping,
      events: {
        status: (s) => {
          info.write = s.write;
          info.flush = s.flush;
          info.apply = s.apply;
          info.replyAt = new Date();
          if (slotName !== undefined) this.ctx.slots.confirm(slotName, s.flush);
        },
        feedback: (f) => {
          info.xmin = f.xmin;
        },
        sent: (lsn) => {
          info.bytesSent += Number(lsn - (info.sent ?? lsn));
          info.sent = lsn;
          info.state = lsn >= endNow() ? 'streaming' : 'catchup';
        },
      },
    });
    this.sender = sender;
    this.phase = 'copy';
    this.ctx.log.info(`client ${this.who()} starts streaming at ${formatLsn(start)} (timeline ${tli})${slotName ? ` with slot "${slotName}"` : ''}`);
    void sender.run().then(
      (end) => this.streamEnded(end, release),
      (err: Error) => this.streamEnded({ kind: 'closed', why: err.message }, release),
    );
  }

  private streamEnded(end: StreamEnd, release: () => void): void {
    release();
    this.sender = undefined;
    this.info.state = 'idle';
    const where = this.info.sent !== undefined ? ` at ${formatLsn(this.info.sent)}` : '';
    if (end.kind === 'closed') {
      if (this.phase !== 'closed') this.ctx.log.info(`client ${this.who()} stopped streaming${where}: ${end.why}`);
      this.drop(end.why);
      return;
    }
    if (end.kind === 'error') this.ctx.log.warn(`client ${this.who()}: ${end.message}`);
    else if (end.kind === 'timeline-end') this.ctx.log.info(`client ${this.who()} reached the end of timeline ${this.info.timeline} at ${formatLsn(end.switchpoint)}; timeline ${end.nextTli} follows`);
    else this.ctx.log.verbose(`client ${this.who()} stopped streaming${where}`);
    if (this.phase === 'copy') this.phase = 'ready';
    if (this.held.length > 0 && this.socket.isPaused() && this.phase !== 'closed') this.socket.resume();
    void this.pump();
  }

  /** A message during COPY (postgres.c in a walsender: only CopyData, CopyDone and Terminate). */
  private copyMessage(msg: TypedMessage): void {
    const sender = this.sender;
    if (msg.type === FE.CopyData) sender?.copyData(msg.body);
    else if (msg.type === FE.CopyDone) sender?.copyDone();
    else if (msg.type === FE.Terminate) this.drop('client sent Terminate');
    else throw new ProtocolViolation(`invalid standby message type "${printable(msg.type)}"`);
  }
}
