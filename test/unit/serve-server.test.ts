// walstream serve in-process, spoken to over real TCP sockets on 127.0.0.1 with raw bytes (and
// with node-postgres where a library client is the point): a WalServer over a WAL source built
// from the real PostgreSQL 15 segment in fixtures/pg15-1mb, written into a temporary LocalStore.
// Exact responses are compared with messages written out by hand here from the protocol's
// message formats (not with the encoders under test): the ParameterStatus set of a PostgreSQL 15
// walsender, IDENTIFY_SYSTEM, SHOW, the errors a walsender gives (and that the session goes on
// after them), START_REPLICATION streaming the fixture's bytes exactly, status updates, the
// client's CopyDone, the end of a historic timeline, passwords (SCRAM, md5, channel binding over
// TLS), and hostile clients: a client that never reads (back-pressure), one that disconnects
// mid-stream, huge lengths, truncated messages, plaintext injected after SSLRequest.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { createSecureContext } from 'node:tls';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { LocalStore } from '../../src/storage/local.js';
import { MemoryStore } from '../../src/storage/memory.js';
import { openSource } from '../../src/commands/serve.js';
import { StoreReader } from '../../src/source/store-reader.js';
import { WalSource } from '../../src/source/wal-source.js';
import { WalServer } from '../../src/server/server.js';
import { SlotRegistry } from '../../src/server/slots.js';
import { buildScramVerifier, certificateEndPointHash, formatScramVerifier, md5Secret, PasswordBook } from '../../src/server/auth.js';
import { DEFAULT_HIGH_WATER, Wire } from '../../src/server/wire.js';
import { MAX_SEND_SIZE, WalSender } from '../../src/server/walsender.js';
import { XLOG_DATA_FRAME_HEADER_SIZE } from '../../src/protocol/backend.js';
import { decodeServerCopyData, encodeHotStandbyFeedback, encodeStandbyStatus } from '../../src/protocol/messages.js';
import { silentLogger } from '../../src/util/log.js';
import { nowPgTime } from '../../src/wal/time.js';
import { PAGE_MAGIC_BY_MAJOR } from '../../src/wal/page.js';
import { FIXTURE_NAME, FIXTURE_START, fixtureSegment, fixtureSystemId } from './fixture.js';
import { makeSegment, seg as synthName, SEG as SYNTH_SEG, SYSID as SYNTH_SYSID } from './ops-walgen.js';

// ---------------------------------------------------------------------------------------------
// Messages written out by hand (protocol.sgml "Message Formats"), to compare whole responses.
// ---------------------------------------------------------------------------------------------

function msg(type: string, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  const head = Buffer.alloc(5);
  head[0] = type.charCodeAt(0);
  head.writeUInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}
function i16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
}
function i32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}
const cstr = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');
const TEXT = 25;
const INT4 = 23;
const INT8 = 20;
/** RowDescription of text-format columns: [name, type OID, typlen]. */
function T(...cols: [string, number, number][]): Buffer {
  return msg('T', i16(cols.length), ...cols.flatMap(([n, oid, len]) => [cstr(n), i32(0), i16(0), i32(oid), i16(len), i32(-1), i16(0)]));
}
function D(...vals: (string | Buffer | null)[]): Buffer {
  return msg('D', i16(vals.length), ...vals.flatMap((v) => (v === null ? [i32(-1)] : [i32(Buffer.byteLength(v)), typeof v === 'string' ? Buffer.from(v) : v])));
}
const C = (tag: string): Buffer => msg('C', cstr(tag));
const Z = msg('Z', Buffer.from('I'));
const W = msg('W', Buffer.from([0]), i16(0));
const COPY_DONE = msg('c');

// What a client sends, with pg-protocol's serializer (what node-postgres writes).
const Q = (text: string): Buffer => serialize.query(text);
const copyData = (payload: Buffer): Buffer => serialize.copyData(payload);
function status(write: bigint, flush: bigint, replyRequested: boolean): Buffer {
  return encodeStandbyStatus({ write, flush, apply: 0n, clientTime: nowPgTime(), replyRequested });
}

// ---------------------------------------------------------------------------------------------
// A raw client: bytes out, messages in.
// ---------------------------------------------------------------------------------------------

interface Msg {
  type: string;
  body: Buffer;
  raw: Buffer;
}

interface ErrorInfo {
  S?: string;
  V?: string;
  C?: string;
  M?: string;
  D?: string;
  H?: string;
}

function errorOf(m: Msg): ErrorInfo {
  expect(['E', 'N']).toContain(m.type);
  const out: Record<string, string> = {};
  let pos = 0;
  while (pos < m.body.length && m.body[pos] !== 0) {
    const code = String.fromCharCode(m.body[pos]!);
    const end = m.body.indexOf(0, pos + 1);
    out[code] = m.body.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return out;
}

function dataRowOf(m: Msg): (Buffer | null)[] {
  expect(m.type).toBe('D');
  const n = m.body.readInt16BE(0);
  const out: (Buffer | null)[] = [];
  let pos = 2;
  for (let i = 0; i < n; i++) {
    const len = m.body.readInt32BE(pos);
    pos += 4;
    if (len < 0) out.push(null);
    else {
      out.push(m.body.subarray(pos, pos + len));
      pos += len;
    }
  }
  return out;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class Raw {
  private buf: Buffer = Buffer.alloc(0);
  private wakers: (() => void)[] = [];
  closed = false;

  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static connect(port: number): Promise<Raw> {
    return new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port }, () => resolve(new Raw(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.wakers;
    this.wakers = [];
    for (const f of w) f();
  }

  write(...bufs: Buffer[]): void {
    this.socket.write(Buffer.concat(bufs));
  }

  /** Wait until `take` yields something, the connection closes (undefined), or the time is up (throws). */
  private async wait<T>(take: () => T | undefined, timeoutMs: number, what: string, allowClose = false): Promise<T | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = take();
      if (v !== undefined) return v;
      if (this.closed) {
        if (allowClose) return undefined;
        throw new Error(`the server closed the connection while the test waited for ${what} (${this.buf.length} bytes unread: ${this.buf.subarray(0, 64).toString('hex')})`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.wakers.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  private takeMsg(): Msg | undefined {
    if (this.buf.length < 5) return undefined;
    const len = this.buf.readUInt32BE(1);
    if (this.buf.length < 1 + len) return undefined;
    const raw = this.buf.subarray(0, 1 + len);
    this.buf = this.buf.subarray(1 + len);
    return { type: String.fromCharCode(raw[0]!), body: raw.subarray(5), raw };
  }

  /** The single-byte answer to SSLRequest or GSSENCRequest. */
  async byte(timeoutMs = 3000): Promise<string> {
    const b = await this.wait(
      () => {
        if (this.buf.length < 1) return undefined;
        const c = String.fromCharCode(this.buf[0]!);
        this.buf = this.buf.subarray(1);
        return c;
      },
      timeoutMs,
      'a one-byte answer',
    );
    return b!;
  }

  async next(timeoutMs = 3000): Promise<Msg> {
    return (await this.wait(() => this.takeMsg(), timeoutMs, 'a message'))!;
  }

  /** Messages up to and including the first of `type`. */
  async until(type: string, timeoutMs = 3000): Promise<Msg[]> {
    const out: Msg[] = [];
    for (;;) {
      const m = await this.next(timeoutMs);
      out.push(m);
      if (m.type === type) return out;
    }
  }

  /** Everything until the server closes the connection. */
  async untilClosed(timeoutMs = 3000): Promise<Msg[]> {
    const out: Msg[] = [];
    for (;;) {
      const m = await this.wait(() => this.takeMsg(), timeoutMs, 'the connection to close', true);
      if (m === undefined) {
        expect(this.buf.length, 'bytes after the last whole message').toBe(0);
        return out;
      }
      out.push(m);
    }
  }

  /** Messages up to ReadyForQuery, or up to the close (so a test failing shows what came instead). */
  async untilZOrClose(timeoutMs = 3000): Promise<Msg[]> {
    const out: Msg[] = [];
    for (;;) {
      const m = await this.wait(() => this.takeMsg(), timeoutMs, 'ReadyForQuery', true);
      if (m === undefined) return out;
      out.push(m);
      if (m.type === 'Z') return out;
    }
  }

  /** Whatever arrives within `ms` (the connection may stay open). */
  async quiet(ms: number): Promise<Msg[]> {
    await sleep(ms);
    const out: Msg[] = [];
    for (let m = this.takeMsg(); m; m = this.takeMsg()) out.push(m);
    return out;
  }

  get unread(): number {
    return this.buf.length;
  }

  /** Every byte until the server closes the connection, unparsed. */
  async rawUntilClosed(timeoutMs = 3000): Promise<Buffer> {
    await this.wait(() => undefined, timeoutMs, 'the connection to close', true);
    const b = this.buf;
    this.buf = Buffer.alloc(0);
    return b;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** The StartupMessage a walreceiver or pg_receivewal sends (pg-protocol adds client_encoding). */
function startupPacket(params: Record<string, string> = {}): Buffer {
  return serialize.startup({ user: 'replicator', database: 'replication', replication: 'true', application_name: 'walreceiver', ...params });
}

/** Connect, send the StartupMessage, read until ReadyForQuery (trust). */
async function session(port: number, params: Record<string, string> = {}): Promise<{ c: Raw; startup: Msg[] }> {
  const c = await Raw.connect(port);
  c.write(startupPacket(params));
  return { c, startup: await c.until('Z') };
}

/** A query's whole answer, up to ReadyForQuery. */
async function ask(c: Raw, text: string): Promise<Msg[]> {
  c.write(Q(text));
  return c.until('Z');
}

/** What a list of messages is, for assertions that show FATALs when they fail. */
function shape(ms: Msg[]): string {
  return ms.map((m) => (m.type === 'E' ? `E(${errorOf(m).S} ${errorOf(m).C} ${errorOf(m).M})` : m.type)).join(' ');
}

/** All messages as one Buffer, for exact comparisons. */
const bytes = (ms: Msg[]): Buffer => Buffer.concat(ms.map((m) => m.raw));

/** Read XLogData until `end`, checking the framing rules of §9.7; returns the WAL bytes. */
async function streamUntil(c: Raw, start: bigint, end: bigint, opts: { walEnd?: bigint } = {}): Promise<Buffer> {
  const parts: Buffer[] = [];
  let next = start;
  const now = nowPgTime();
  while (next < end) {
    const m = await c.next(5000);
    expect(m.type).toBe('d');
    const d = decodeServerCopyData(m.body);
    if (d.kind !== 'xlogdata') continue; // keepalives may come between
    // contiguous, not empty, at most MAX_SEND_SIZE (walsender.c XLogSendPhysical)
    expect(d.dataStart).toBe(next);
    expect(d.data.length).toBeGreaterThan(0);
    expect(d.data.length).toBeLessThanOrEqual(128 * 1024);
    expect(d.walEnd).toBeGreaterThanOrEqual(d.dataStart + BigInt(d.data.length));
    if (opts.walEnd !== undefined) expect(d.walEnd).toBe(opts.walEnd);
    // sendTime: microseconds since 2000-01-01, now
    expect(d.sendTime > now - 60_000_000n && d.sendTime < now + 60_000_000n).toBe(true);
    parts.push(Buffer.from(d.data));
    next += BigInt(d.data.length);
  }
  expect(next).toBe(end);
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------------
// The servers.
// ---------------------------------------------------------------------------------------------

const SYSID = fixtureSystemId();
const FIXTURE_END = FIXTURE_START + 1024n * 1024n; // 0/800000
const FIXTURE = fixtureSegment();
const HISTORY_2 = Buffer.from('1\t0/800000\tno recovery target specified\n');

let root: string;
const toClose: { server: WalServer; source: WalSource }[] = [];

async function localSource(withHistory = false): Promise<WalSource> {
  const dir = mkdtempSync(join(root, 'store-'));
  const store = new LocalStore(dir);
  await store.put(FIXTURE_NAME, fixtureSegment());
  if (withHistory) await store.put('00000002.history', HISTORY_2);
  return openSource({ archive: store, log: silentLogger, pollIntervalMs: 50 });
}

async function startServer(source: WalSource, o: Partial<ConstructorParameters<typeof WalServer>[0]> = {}): Promise<{ server: WalServer; port: number }> {
  const server = new WalServer({ source, slots: new SlotRegistry(), auth: { trust: true, book: undefined }, log: silentLogger, ...o });
  const addr = await server.listen({ host: '127.0.0.1', port: 0 });
  toClose.push({ server, source });
  return { server, port: addr.port };
}

/** The server's own socket for a client (to look at what it has queued). */
function serverSocketOf(server: WalServer, client: Raw): Socket {
  const sockets = (server as unknown as { sockets: Set<Socket> }).sockets;
  const s = [...sockets].find((x) => x.remotePort === client.socket.localPort);
  if (!s) throw new Error('no server socket for that client');
  return s;
}

/** A store that answers slowly once `delayMs` is set: the server is inside a read when the client acts. */
class SlowStore extends MemoryStore {
  delayMs = 0;
  private busy = 0;
  private async pause(): Promise<void> {
    if (this.delayMs > 0) {
      this.busy++;
      await sleep(this.delayMs);
      this.busy--;
    }
  }
  /** Resolves once no request has been waiting for 200 ms. */
  async idle(): Promise<void> {
    let quietSince = Date.now();
    while (Date.now() - quietSince < 200) {
      if (this.busy > 0) quietSince = Date.now();
      await sleep(10);
    }
  }
  override async get(name: string): ReturnType<MemoryStore['get']> {
    await this.pause();
    return super.get(name);
  }
  override async head(name: string): ReturnType<MemoryStore['head']> {
    await this.pause();
    return super.head(name);
  }
  override async list(prefix?: string, opts?: Parameters<MemoryStore['list']>[1]): ReturnType<MemoryStore['list']> {
    await this.pause();
    return super.list(prefix, opts);
  }
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

let trust: { server: WalServer; port: number };
let historic: { server: WalServer; port: number };
let password: { server: WalServer; port: number };
let tls: { server: WalServer; port: number; certPem: string };

const PASSWORD_FILE = (): string => [`replicator:${formatScramVerifier(buildScramVerifier('s3cret'))}`, `legacy:${md5Secret('old-secret', 'legacy')}`, 'plainuser:plain-secret'].join('\n');

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'walstream-serve-server-'));
  trust = await startServer(await localSource());
  historic = await startServer(await localSource(true));
  password = await startServer(await localSource(), { auth: { trust: false, book: PasswordBook.parse(PASSWORD_FILE(), 'test') } });
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-sha256', '-days', '1', '-subj', '/CN=localhost', '-keyout', join(root, 'key.pem'), '-out', join(root, 'cert.pem')],
    {
      stdio: 'pipe',
    },
  );
  const certPem = readFileSync(join(root, 'cert.pem'), 'utf8');
  const keyPem = readFileSync(join(root, 'key.pem'), 'utf8');
  const t = await startServer(await localSource(), {
    auth: { trust: false, book: PasswordBook.parse(PASSWORD_FILE(), 'test') },
    tls: { context: createSecureContext({ cert: certPem, key: keyPem }), endPointHash: certificateEndPointHash(certPem), required: false },
  });
  tls = { ...t, certPem };
});

afterAll(async () => {
  for (const { server, source } of toClose) {
    await server.close();
    source.close();
  }
  if (root) rmSync(root, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Connection start.
// ---------------------------------------------------------------------------------------------

describe('connection start', () => {
  it('AuthenticationOk, the ParameterStatus set of a PostgreSQL 15 walsender, BackendKeyData, ReadyForQuery', async () => {
    const { c, startup } = await session(trust.port);
    expect(startup[0]!.raw).toEqual(msg('R', i32(0)));
    const ps = startup.filter((m) => m.type === 'S');
    const params = new Map(
      ps.map((m) => {
        const name = m.body.toString('utf8', 0, m.body.indexOf(0));
        return [name, m.body.toString('utf8', name.length + 1, m.body.length - 1)];
      }),
    );
    // every GUC_REPORT setting of 15 (guc.c), no more: 16's scram_iterations and 18's search_path are absent
    expect([...params.keys()].sort()).toEqual(
      [
        'application_name',
        'client_encoding',
        'DateStyle',
        'default_transaction_read_only',
        'in_hot_standby',
        'integer_datetimes',
        'IntervalStyle',
        'is_superuser',
        'server_encoding',
        'server_version',
        'session_authorization',
        'standard_conforming_strings',
        'TimeZone',
      ].sort(),
    );
    expect(params.get('integer_datetimes')).toBe('on'); // pg_receivewal exits without it
    expect(params.get('in_hot_standby')).toBe('off');
    expect(params.get('default_transaction_read_only')).toBe('off');
    expect(params.get('application_name')).toBe('walreceiver');
    expect(params.get('session_authorization')).toBe('replicator');
    expect(params.get('client_encoding')).toBe('UTF8');
    // libpq turns "%d.%d" into PQserverVersion 150000: the archived WAL's major
    expect(params.get('server_version')).toMatch(/^15\.0( |$)/);
    // each one exactly as the message format says
    for (const [name, value] of params) expect(ps.find((m) => m.body.toString('utf8', 0, m.body.indexOf(0)) === name)!.raw).toEqual(msg('S', cstr(name), cstr(value)));
    const k = startup.find((m) => m.type === 'K')!;
    expect(k.body.length).toBe(8);
    const pid = k.body.readInt32BE(0);
    expect(pid).toBeGreaterThan(0);
    expect(startup[startup.length - 1]!.raw).toEqual(Z);
    // the order: R, the S set, K, Z
    expect(startup.map((m) => m.type).join('')).toBe(`R${'S'.repeat(13)}KZ`);
    // a second connection has another pid (the walreceiver names its temporary slot after it)
    const other = await session(trust.port);
    expect(other.startup.find((m) => m.type === 'K')!.body.readInt32BE(0)).not.toBe(pid);
    expect(trust.server.clients().map((x) => x.pid)).toEqual(expect.arrayContaining([pid]));
    c.close();
    other.c.close();
  });

  it('GSSENCRequest is refused with N, SSLRequest without TLS configured with N, then the StartupMessage', async () => {
    const c = await Raw.connect(trust.port);
    c.write(Buffer.from('0000000804d21630', 'hex'));
    expect(await c.byte()).toBe('N');
    c.write(serialize.requestSsl());
    expect(await c.byte()).toBe('N');
    c.write(startupPacket());
    expect((await c.until('Z'))[0]!.raw).toEqual(msg('R', i32(0)));
    c.close();
  });

  it('protocol 3.2 and _pq_ options: NegotiateProtocolVersion (newest minor 0), then the session goes on', async () => {
    const c = await Raw.connect(trust.port);
    const body = Buffer.concat([i32((3 << 16) | 2), cstr('user'), cstr('replicator'), cstr('replication'), cstr('true'), cstr('_pq_.compression'), cstr('on'), Buffer.from([0])]);
    c.write(i32(body.length + 4), body);
    const msgs = await c.until('Z');
    expect(msgs[0]!.raw).toEqual(msg('v', i32(0x30000), i32(1), cstr('_pq_.compression')));
    expect(msgs[1]!.raw).toEqual(msg('R', i32(0)));
    c.close();
  });

  /** An untyped packet: Int32 length (counting itself), then the body. */
  const packet = (...parts: Buffer[]): Buffer => {
    const body = Buffer.concat(parts);
    return Buffer.concat([i32(body.length + 4), body]);
  };

  it.each<[string, string, RegExp, Buffer]>([
    ['no user', '28000', /^no PostgreSQL user name specified in startup packet$/, serialize.startup({ database: 'replication', replication: 'true' })],
    ['no replication parameter (a SQL connection)', '28000', /replication/, serialize.startup({ user: 'u', database: 'postgres' })],
    ['replication=database (logical)', '28000', /logical/, serialize.startup({ user: 'u', database: 'postgres', replication: 'database' })],
    ['replication=bogus', '28000', /invalid value for parameter "replication"/, serialize.startup({ user: 'u', replication: 'bogus' })],
    ['protocol 2.0', '08P01', /^unsupported frontend protocol 2\.0: server supports 3\.0 to 3\.0$/, packet(i32(2 << 16), cstr('user'), cstr('u'), Buffer.from([0]))],
    ['a bad layout', '08P01', /^invalid startup packet layout: expected terminator as last byte$/, packet(i32(3 << 16), cstr('user'), cstr('u'))],
    ['a claimed 2 GB startup packet', '08P01', /^invalid length of startup packet$/, Buffer.from('7fffffff00030000', 'hex')],
    ['a bad wal_sender_timeout', '08P01', /wal_sender_timeout/, serialize.startup({ user: 'u', replication: 'true', options: '-c wal_sender_timeout=soon' })],
  ])('startup refused: %s (FATAL %s, then the connection closes)', async (_what, code, message, bytesOut) => {
    const c = await Raw.connect(trust.port);
    c.write(bytesOut);
    const msgs = await c.untilClosed();
    expect(msgs).toHaveLength(1);
    const e = errorOf(msgs[0]!);
    expect(e.S).toBe('FATAL');
    expect(e.V).toBe('FATAL');
    expect(e.C).toBe(code);
    expect(e.M).toMatch(message);
  });

  it('a CancelRequest is ignored: the connection closes without a word', async () => {
    const c = await Raw.connect(trust.port);
    c.write(serialize.cancel(12345, 678));
    expect(await c.untilClosed()).toEqual([]);
  });

  it('the parameters a walreceiver passes in options take effect (SHOW wal_sender_timeout)', async () => {
    const { c } = await session(trust.port, { options: '-c wal_sender_timeout=0' });
    expect(bytes(await ask(c, 'SHOW wal_sender_timeout'))).toEqual(Buffer.concat([T(['wal_sender_timeout', TEXT, -1]), D('0'), C('SHOW'), Z]));
    c.close();
    const d = await session(trust.port, { options: '-c wal_sender_timeout=5s' });
    expect(dataRowOf((await ask(d.c, 'SHOW wal_sender_timeout'))[1]!)[0]!.toString()).toBe('5s');
    d.c.close();
  });
});

describe("what a walsender of each major reports (the WAL's page magic tells the major)", () => {
  it.each([13, 14, 15, 16, 17, 18])('PostgreSQL %i', async (major) => {
    const magic = PAGE_MAGIC_BY_MAJOR[major]!;
    const segment = makeSegment({ tli: 1, segNo: 3 });
    for (let off = 0; off < segment.length; off += 8192) segment.writeUInt16LE(magic, off);
    const store = new MemoryStore();
    await store.put(synthName(1, 3), segment);
    const source = await WalSource.open({ stores: [new StoreReader(store, 'archive')], log: silentLogger, pollIntervalMs: 50 });
    expect(source.identity?.major).toBe(major);
    const { port } = await startServer(source);
    const { c, startup } = await session(port);
    const names = startup.filter((m) => m.type === 'S').map((m) => m.body.toString('utf8', 0, m.body.indexOf(0)));
    const want = [
      'application_name',
      'client_encoding',
      'DateStyle',
      'integer_datetimes',
      'IntervalStyle',
      'is_superuser',
      'server_encoding',
      'server_version',
      'session_authorization',
      'standard_conforming_strings',
      'TimeZone',
    ];
    if (major >= 14) want.push('default_transaction_read_only', 'in_hot_standby');
    if (major >= 16) want.push('scram_iterations');
    if (major >= 18) want.push('search_path');
    expect(names.sort()).toEqual(want.sort());
    const version = startup.find((m) => m.type === 'S' && m.body.toString('utf8', 0, m.body.indexOf(0)) === 'server_version')!;
    expect(version.body.toString('utf8', 'server_version'.length + 1, version.body.length - 1)).toMatch(new RegExp(`^${major}\\.0( |$)`));
    // IDENTIFY_SYSTEM's timeline: int4 in 13-15, int8 from 16
    const timeline: [string, number, number] = major >= 16 ? ['timeline', INT8, 8] : ['timeline', INT4, 4];
    expect(bytes(await ask(c, 'IDENTIFY_SYSTEM'))).toEqual(
      Buffer.concat([T(['systemid', TEXT, -1], timeline, ['xlogpos', TEXT, -1], ['dbname', TEXT, -1]), D(SYNTH_SYSID.toString(), '1', '0/400000', null), C('IDENTIFY_SYSTEM'), Z]),
    );
    // TIMELINE_HISTORY's content: bytea in 13, text from 14 (the RowDescription comes before the error)
    const th = await ask(c, 'TIMELINE_HISTORY 1');
    expect(th[0]!.raw).toEqual(T(['filename', TEXT, -1], ['content', major <= 13 ? 17 : TEXT, -1]));
    expect(dataRowOf((await ask(c, 'SHOW server_version_num'))[1]!)[0]!.toString()).toBe(String(major * 10000));
    c.close();
  });
});

// ---------------------------------------------------------------------------------------------
// Commands.
// ---------------------------------------------------------------------------------------------

describe('commands', () => {
  it('IDENTIFY_SYSTEM: systemid text, timeline int4 (15), xlogpos text, dbname NULL', async () => {
    const { c } = await session(trust.port);
    const answer = await ask(c, 'IDENTIFY_SYSTEM');
    expect(bytes(answer)).toEqual(
      Buffer.concat([T(['systemid', TEXT, -1], ['timeline', INT4, 4], ['xlogpos', TEXT, -1], ['dbname', TEXT, -1]), D(SYSID.toString(), '1', '0/800000', null), C('IDENTIFY_SYSTEM'), Z]),
    );
    // with a trailing semicolon, as the grammar allows
    expect(bytes(await ask(c, 'IDENTIFY_SYSTEM;'))).toEqual(bytes(answer));
    c.close();
  });

  it.each<[string, string, string]>([
    ['SHOW wal_segment_size', 'wal_segment_size', '1MB'],
    ['SHOW data_directory_mode', 'data_directory_mode', '0700'],
    ['SHOW server_version_num', 'server_version_num', '150000'],
    ['SHOW wal_block_size', 'wal_block_size', '8192'],
    ['SHOW integer_datetimes', 'integer_datetimes', 'on'],
    ['SHOW transaction_read_only', 'transaction_read_only', 'off'],
    ['SHOW "DateStyle"', 'DateStyle', 'ISO, MDY'],
  ])('%s', async (query, column, value) => {
    const { c } = await session(trust.port);
    expect(bytes(await ask(c, query))).toEqual(Buffer.concat([T([column, TEXT, -1]), D(value), C('SHOW'), Z]));
    c.close();
  });

  it('an unknown SHOW is 42704 and the session goes on', async () => {
    const { c } = await session(trust.port);
    const answer = await ask(c, 'SHOW no_such_setting');
    expect(answer.map((m) => m.type).join('')).toBe('EZ');
    expect(errorOf(answer[0]!)).toEqual({ S: 'ERROR', V: 'ERROR', C: '42704', M: 'unrecognized configuration parameter "no_such_setting"' });
    expect((await ask(c, 'IDENTIFY_SYSTEM')).map((m) => m.type).join('')).toBe('TDCZ');
    c.close();
  });

  it('SQL is 0A000 and the session goes on (lower-case keywords are SQL)', async () => {
    const { c } = await session(trust.port);
    for (const sql of ['SELECT 1', 'identify_system', "SELECT pg_catalog.set_config('search_path', '', false);", '']) {
      const answer = await ask(c, sql);
      expect(answer.map((m) => m.type).join(''), sql).toBe('EZ');
      expect(errorOf(answer[0]!)).toEqual({ S: 'ERROR', V: 'ERROR', C: '0A000', M: 'cannot execute SQL commands in WAL sender for physical replication' });
    }
    expect((await ask(c, 'IDENTIFY_SYSTEM')).map((m) => m.type).join('')).toBe('TDCZ');
    c.close();
  });

  it('SQL starting with a character the replication scanner returns as itself is 0A000 too, and never a disconnect', async () => {
    const { c } = await session(trust.port);
    for (const sql of ['-- a comment\nSELECT 1', '/* c */ SELECT 1', '(SELECT 1)', '*']) {
      c.write(Q(sql));
      const answer = await c.until('Z');
      expect(answer.map((m) => m.type).join(''), sql).toBe('EZ');
      const e = errorOf(answer[0]!);
      expect(e.S, sql).toBe('ERROR');
      expect(e.C, sql).toBe('0A000');
    }
    c.close();
  });

  it('a malformed replication command is 42601 and the session goes on, even when its first token cannot be scanned', async () => {
    const { c } = await session(trust.port);
    for (const [text, m] of [
      ['START_REPLICATION', 'syntax error'],
      ['TIMELINE_HISTORY 0', 'invalid timeline 0'],
      ["'unterminated", 'unterminated quoted string'],
    ]) {
      const answer = await ask(c, text!);
      expect(answer.map((x) => x.type).join(''), text).toBe('EZ');
      expect(errorOf(answer[0]!)).toMatchObject({ S: 'ERROR', C: '42601', M: m });
    }
    expect((await ask(c, 'IDENTIFY_SYSTEM')).map((x) => x.type).join('')).toBe('TDCZ');
    c.close();
  });

  it('the extended query protocol is 08P01 once, messages up to Sync are ignored, then ReadyForQuery', async () => {
    const { c } = await session(trust.port);
    c.write(serialize.parse({ text: 'IDENTIFY_SYSTEM' }), serialize.bind({}), serialize.describe({ type: 'P' }), serialize.execute({}), serialize.flush(), serialize.sync());
    const answer = await c.until('Z');
    expect(answer.map((m) => m.type).join('')).toBe('EZ');
    expect(errorOf(answer[0]!)).toEqual({ S: 'ERROR', V: 'ERROR', C: '08P01', M: 'extended query protocol not supported in a replication connection' });
    // CopyData and CopyDone outside COPY are accepted and ignored (postgres.c)
    c.write(copyData(status(1n, 1n, true)), serialize.copyDone());
    expect((await ask(c, 'IDENTIFY_SYSTEM')).map((m) => m.type).join('')).toBe('TDCZ');
    c.close();
  });

  it('a message type no walsender knows is FATAL 08P01', async () => {
    const { c } = await session(trust.port);
    c.write(serialize.password('x'));
    const msgs = await c.untilClosed();
    expect(msgs).toHaveLength(1);
    expect(errorOf(msgs[0]!)).toMatchObject({ S: 'FATAL', C: '08P01' });
  });

  it('Terminate closes the connection; the server forgets the client', async () => {
    const { c, startup } = await session(trust.port);
    const pid = startup.find((m) => m.type === 'K')!.body.readInt32BE(0);
    expect(trust.server.clients().some((x) => x.pid === pid)).toBe(true);
    c.write(serialize.end());
    expect(await c.untilClosed()).toEqual([]);
    await waitFor(() => !trust.server.clients().some((x) => x.pid === pid), 'the client to be forgotten');
  });

  it('READ_REPLICATION_SLOT of a missing slot is one row of NULLs; a temporary slot lives as long as its connection', async () => {
    const { c, startup } = await session(trust.port);
    const pid = startup.find((m) => m.type === 'K')!.body.readInt32BE(0);
    const readCols: [string, number, number][] = [
      ['slot_type', TEXT, -1],
      ['restart_lsn', TEXT, -1],
      ['restart_tli', INT8, 8],
    ];
    expect(bytes(await ask(c, 'READ_REPLICATION_SLOT nope'))).toEqual(Buffer.concat([T(...readCols), D(null, null, null), C('READ_REPLICATION_SLOT'), Z]));
    const name = `pg_walreceiver_${pid}`;
    // what a 15 walreceiver sends with wal_receiver_create_temp_slot=on [V15]
    expect(bytes(await ask(c, `CREATE_REPLICATION_SLOT "${name}" TEMPORARY PHYSICAL (RESERVE_WAL)`))).toEqual(
      Buffer.concat([T(['slot_name', TEXT, -1], ['consistent_point', TEXT, -1], ['snapshot_name', TEXT, -1], ['output_plugin', TEXT, -1]), D(name, '0/0', null, null), C('CREATE_REPLICATION_SLOT'), Z]),
    );
    // RESERVE_WAL: restart_lsn is where WAL ends now
    const other = await session(trust.port);
    expect(bytes(await ask(other.c, `READ_REPLICATION_SLOT ${name}`))).toEqual(Buffer.concat([T(...readCols), D('physical', '0/800000', '1'), C('READ_REPLICATION_SLOT'), Z]));
    // a duplicate is 42710 (what pg_receivewal --if-not-exists ignores)
    const dup = await ask(other.c, `CREATE_REPLICATION_SLOT "${name}" PHYSICAL`);
    expect(errorOf(dup[0]!)).toMatchObject({ S: 'ERROR', C: '42710', M: `replication slot "${name}" already exists` });
    // streaming with it: a flush report moves restart_lsn
    c.write(Q(`START_REPLICATION SLOT "${name}" 0/700000 TIMELINE 1`));
    expect((await c.next()).raw).toEqual(W);
    await streamUntil(c, FIXTURE_START, FIXTURE_END);
    c.write(copyData(status(0x7a0000n, 0x7a0000n, false)));
    await waitFor(() => trust.server.clients().find((x) => x.pid === pid)?.flush === 0x7a0000n, 'the flush report');
    expect(dataRowOf((await ask(other.c, `READ_REPLICATION_SLOT ${name}`))[1]!).map((v) => v?.toString() ?? null)).toEqual(['physical', '0/7A0000', '1']);
    // the slot is in use: another client cannot stream with it (55006, before 'W')
    const busy = await ask(other.c, `START_REPLICATION SLOT "${name}" 0/700000 TIMELINE 1`);
    expect(busy.map((m) => m.type).join('')).toBe('EZ');
    expect(errorOf(busy[0]!)).toMatchObject({ C: '55006' });
    // the connection goes, and its temporary slot with it
    c.close();
    await waitFor(() => !trust.server.clients().some((x) => x.pid === pid), 'the client to go');
    expect(dataRowOf((await ask(other.c, `READ_REPLICATION_SLOT ${name}`))[1]!)).toEqual([null, null, null]);
    other.c.close();
  });

  it('a persistent slot: created, dropped, and DROP of a missing one is 42704', async () => {
    const { c } = await session(trust.port);
    expect(bytes(await ask(c, 'CREATE_REPLICATION_SLOT "rwslot" PHYSICAL')).subarray(-Z.length - C('CREATE_REPLICATION_SLOT').length)).toEqual(Buffer.concat([C('CREATE_REPLICATION_SLOT'), Z]));
    // pg_receivewal --drop-slot needs COMMAND_OK without a row description
    expect(bytes(await ask(c, 'DROP_REPLICATION_SLOT "rwslot"'))).toEqual(Buffer.concat([C('DROP_REPLICATION_SLOT'), Z]));
    const missing = await ask(c, 'DROP_REPLICATION_SLOT "rwslot"');
    expect(errorOf(missing[0]!)).toMatchObject({ S: 'ERROR', C: '42704', M: 'replication slot "rwslot" does not exist' });
    const bad = await ask(c, 'CREATE_REPLICATION_SLOT "Bad-Name" PHYSICAL');
    expect(errorOf(bad[0]!)).toMatchObject({ S: 'ERROR', C: '42602' });
    c.close();
  });
});

// ---------------------------------------------------------------------------------------------
// START_REPLICATION.
// ---------------------------------------------------------------------------------------------

describe('START_REPLICATION over the fixture segment', () => {
  it("streams the fixture's bytes exactly; a reply request is answered by a keepalive; CopyDone ends it", async () => {
    const { c } = await session(trust.port);
    c.write(Q('START_REPLICATION 0/700000 TIMELINE 1'));
    expect((await c.next()).raw).toEqual(W);
    const wal = await streamUntil(c, FIXTURE_START, FIXTURE_END, { walEnd: FIXTURE_END });
    expect(wal.equals(FIXTURE)).toBe(true);
    // nothing more: the server waits at the end of WAL (no idle keepalives before wal_sender_timeout/2)
    expect(await c.quiet(150)).toEqual([]);
    // 'r' with replyRequested = 1: an immediate 'k' with walEnd = what was sent, reply = 0
    c.write(copyData(status(FIXTURE_END, FIXTURE_END, true)));
    const k = await c.next();
    expect(k.type).toBe('d');
    expect(k.body.length).toBe(18);
    const ka = decodeServerCopyData(k.body);
    expect(ka).toMatchObject({ kind: 'keepalive', walEnd: FIXTURE_END, replyRequested: false });
    // 'r' without a reply request and 'h' feedback: no answer
    c.write(copyData(status(FIXTURE_END, FIXTURE_END, false)), copyData(encodeHotStandbyFeedback({ clientTime: nowPgTime(), xmin: 0, xminEpoch: 0, catalogXmin: 0, catalogXminEpoch: 0 })));
    expect(await c.quiet(100)).toEqual([]);
    // the client's CopyDone: CopyDone, START_STREAMING, START_REPLICATION, ReadyForQuery [V15]
    c.write(serialize.copyDone());
    expect(bytes(await c.until('Z'))).toEqual(Buffer.concat([COPY_DONE, C('START_STREAMING'), C('START_REPLICATION'), Z]));
    // and the session goes on
    expect((await ask(c, 'IDENTIFY_SYSTEM')).map((m) => m.type).join('')).toBe('TDCZ');
    c.close();
  });

  it('a start that is not segment-aligned: the first XLogData begins exactly there', async () => {
    const { c } = await session(trust.port);
    c.write(Q('START_REPLICATION 0/712345'));
    expect((await c.next()).raw).toEqual(W);
    const wal = await streamUntil(c, 0x712345n, FIXTURE_END);
    expect(wal.equals(FIXTURE.subarray(0x12345))).toBe(true);
    c.write(serialize.copyDone());
    expect(bytes(await c.until('Z'))).toEqual(Buffer.concat([COPY_DONE, C('START_STREAMING'), C('START_REPLICATION'), Z]));
    c.close();
  });

  it('a start exactly at the flush position: COPY with nothing to send', async () => {
    const { c } = await session(trust.port);
    c.write(Q('START_REPLICATION 0/800000 TIMELINE 1'));
    expect((await c.next()).raw).toEqual(W);
    expect(await c.quiet(150)).toEqual([]);
    c.write(serialize.copyDone());
    expect(bytes(await c.until('Z'))).toEqual(Buffer.concat([COPY_DONE, C('START_STREAMING'), C('START_REPLICATION'), Z]));
    c.close();
  });

  it('a start ahead of the end: W, then ERROR XX000 "ahead of the WAL flush position", Z; the session goes on', async () => {
    const { c } = await session(trust.port);
    c.write(Q('START_REPLICATION 0/900000 TIMELINE 1'));
    const answer = await c.until('Z');
    expect(answer.map((m) => m.type).join('')).toBe('WEZ');
    expect(answer[0]!.raw).toEqual(W);
    expect(errorOf(answer[1]!)).toEqual({ S: 'ERROR', V: 'ERROR', C: 'XX000', M: 'requested starting point 0/900000 is ahead of the WAL flush position of this server 0/800000' });
    // a client may still send CopyData/CopyDone: ignored while idle
    c.write(copyData(status(1n, 1n, false)), serialize.copyDone());
    expect((await ask(c, 'IDENTIFY_SYSTEM')).map((m) => m.type).join('')).toBe('TDCZ');
    c.close();
  });

  it('an unknown timeline: ERROR XX000 before W', async () => {
    const { c } = await session(trust.port);
    const answer = await ask(c, 'START_REPLICATION 0/700000 TIMELINE 5');
    expect(answer.map((m) => m.type).join('')).toBe('EZ');
    expect(errorOf(answer[0]!)).toEqual({ S: 'ERROR', V: 'ERROR', C: 'XX000', M: "requested timeline 5 is not in this server's history" });
    c.close();
  });

  it('a missing slot: ERROR 42704 before W', async () => {
    const { c } = await session(trust.port);
    const answer = await ask(c, 'START_REPLICATION SLOT "nope" 0/700000 TIMELINE 1');
    expect(answer.map((m) => m.type).join('')).toBe('EZ');
    expect(errorOf(answer[0]!)).toMatchObject({ C: '42704', M: 'replication slot "nope" does not exist' });
    c.close();
  });

  it('WAL before the archive begins: W, then 58P01 "already been removed"', async () => {
    const { c } = await session(trust.port);
    c.write(Q('START_REPLICATION 0/100000 TIMELINE 1'));
    const answer = await c.until('Z');
    expect(answer.map((m) => m.type).join('')).toBe('WEZ');
    expect(errorOf(answer[1]!)).toMatchObject({ S: 'ERROR', C: '58P01', M: 'requested WAL segment 000000010000000000000001 has already been removed' });
    c.close();
  });

  it('a short \'r\' is ERROR 08P01 "insufficient data left in message"; COPY ends and the session stays', async () => {
    const { c, startup } = await session(trust.port);
    const pid = startup.find((m) => m.type === 'K')!.body.readInt32BE(0);
    const idle = (): Promise<void> => waitFor(() => trust.server.clients().find((x) => x.pid === pid)?.state === 'idle', 'the stream to end');
    c.write(Q('START_REPLICATION 0/800000 TIMELINE 1'));
    expect((await c.next()).raw).toEqual(W);
    c.write(copyData(status(1n, 1n, false).subarray(0, 20)));
    const answer = await c.until('Z');
    expect(answer.map((m) => m.type).join('')).toBe('EZ');
    expect(errorOf(answer[0]!)).toEqual({ S: 'ERROR', V: 'ERROR', C: '08P01', M: 'insufficient data left in message' });
    // (asking at once, before the sender has wound down, is the next tests' subject)
    await idle();
    expect(shape(await ask(c, 'IDENTIFY_SYSTEM'))).toBe('T D C Z');
    // a short 'h' the same way
    c.write(Q('START_REPLICATION 0/800000 TIMELINE 1'));
    expect((await c.next()).raw).toEqual(W);
    c.write(copyData(Buffer.from('6800', 'hex')));
    expect((await c.until('Z')).map((m) => m.type).join('')).toBe('EZ');
    await idle();
    expect(shape(await ask(c, 'SHOW wal_segment_size'))).toBe('T D C Z');
    c.close();
  });

  it("a query sent as soon as ReadyForQuery follows a short 'r' is answered (60 rounds over the local store)", async () => {
    // At the end of WAL the sender looks at the store every poll interval (50 ms here); a round
    // whose short 'r' arrives during such a look is the case the slow-store test below makes certain.
    const { c } = await session(trust.port);
    for (let i = 0; i < 60; i++) {
      c.write(Q('START_REPLICATION 0/800000 TIMELINE 1'));
      expect((await c.next()).raw).toEqual(W);
      await sleep(i % 13);
      c.write(copyData(status(1n, 1n, false).subarray(0, 20)));
      expect((await c.until('Z')).map((m) => m.type).join('')).toBe('EZ');
      c.write(Q('SHOW wal_segment_size'));
      expect(shape(await c.untilZOrClose()), `round ${i}`).toBe('T D C Z');
    }
    c.close();
  });

  it('an unknown CopyData subtype closes the connection without an ErrorResponse', async () => {
    const { c } = await session(trust.port);
    c.write(Q('START_REPLICATION 0/800000 TIMELINE 1'));
    expect((await c.next()).raw).toEqual(W);
    c.write(copyData(Buffer.from('x1234')));
    expect((await c.untilClosed()).filter((m) => m.type === 'E')).toEqual([]);
  });

  it('during COPY, a message other than CopyData, CopyDone or Terminate is FATAL 08P01', async () => {
    const { c } = await session(trust.port);
    c.write(Q('START_REPLICATION 0/800000 TIMELINE 1'));
    expect((await c.next()).raw).toEqual(W);
    c.write(Q('IDENTIFY_SYSTEM'));
    const msgs = await c.untilClosed();
    expect(msgs).toHaveLength(1);
    expect(errorOf(msgs[0]!)).toMatchObject({ S: 'FATAL', C: '08P01', M: 'invalid standby message type "Q"' });
  });

  it('wal_sender_timeout: a keepalive asking for a reply after half of it, then a close without ErrorResponse', async () => {
    const { c } = await session(trust.port, { options: '-c wal_sender_timeout=400ms' });
    const t0 = Date.now();
    c.write(Q('START_REPLICATION 0/800000 TIMELINE 1'));
    expect((await c.next()).raw).toEqual(W);
    const ping = await c.next(2000);
    const pingAt = Date.now() - t0;
    expect(decodeServerCopyData(ping.body)).toMatchObject({ kind: 'keepalive', walEnd: FIXTURE_END, replyRequested: true });
    expect(pingAt).toBeGreaterThanOrEqual(190);
    const rest = await c.untilClosed(3000);
    const closedAt = Date.now() - t0;
    expect(rest.filter((m) => m.type === 'E')).toEqual([]);
    expect(closedAt).toBeGreaterThanOrEqual(390);
    expect(closedAt).toBeLessThan(2000);
  });

  it('any message from the client resets the timeout', async () => {
    const { c } = await session(trust.port, { options: '-c wal_sender_timeout=600ms' });
    c.write(Q('START_REPLICATION 0/800000 TIMELINE 1'));
    expect((await c.next()).raw).toEqual(W);
    // 1.2 s of status updates 100 ms apart: twice the timeout, and the connection stays
    for (let i = 0; i < 12; i++) {
      await sleep(100);
      c.write(copyData(status(FIXTURE_END, FIXTURE_END, false)));
    }
    expect(c.closed).toBe(false);
    c.write(serialize.copyDone());
    // a keepalive ('d') may come first on a loaded machine, when a pause between updates passed half the timeout
    expect(
      (await c.until('Z'))
        .map((m) => m.type)
        .join('')
        .replace(/^d+/, ''),
    ).toBe('cCCZ');
    c.close();
  });

  it('a client that disconnects mid-stream is forgotten and its slot released; others are served', async () => {
    const { c: admin } = await session(trust.port);
    await ask(admin, 'CREATE_REPLICATION_SLOT "midstream" PHYSICAL');
    const { c, startup } = await session(trust.port);
    const pid = startup.find((m) => m.type === 'K')!.body.readInt32BE(0);
    c.write(Q('START_REPLICATION SLOT "midstream" 0/700000 TIMELINE 1'));
    expect((await c.next()).raw).toEqual(W);
    const first = await c.next();
    expect(decodeServerCopyData(first.body).kind).toBe('xlogdata');
    c.close();
    await waitFor(() => !trust.server.clients().some((x) => x.pid === pid), 'the client to be forgotten');
    // the slot is free again
    const again = await session(trust.port);
    again.c.write(Q('START_REPLICATION SLOT "midstream" 0/700000 TIMELINE 1'));
    expect((await again.c.next()).raw).toEqual(W);
    expect((await streamUntil(again.c, FIXTURE_START, FIXTURE_END)).equals(FIXTURE)).toBe(true);
    again.c.write(serialize.copyDone());
    await again.c.until('Z');
    await ask(again.c, 'DROP_REPLICATION_SLOT "midstream"');
    again.c.close();
    admin.close();
  });

  it('the session stays usable right after an error that ends COPY, even while the sender is still reading', async () => {
    // A store that answers slowly: the sender is inside a read when the client's short 'r' ends COPY.
    const store = new SlowStore();
    await store.put(FIXTURE_NAME, fixtureSegment());
    const source = await WalSource.open({ stores: [new StoreReader(store, 'archive')], log: silentLogger, pollIntervalMs: 50 });
    const { port } = await startServer(source);
    const { c } = await session(port);
    store.delayMs = 300;
    c.write(Q('START_REPLICATION 0/800000 TIMELINE 1'));
    expect((await c.next(5000)).raw).toEqual(W);
    await sleep(50); // the sender now waits for the store
    c.write(copyData(status(1n, 1n, false).subarray(0, 20)));
    expect((await c.until('Z', 5000)).map((m) => m.type).join('')).toBe('EZ');
    // ReadyForQuery said the server is ready for a query: one comes at once
    c.write(Q('SHOW wal_segment_size'));
    expect(shape(await c.untilZOrClose(5000))).toBe('T D C Z');
    c.close();
  });
});

describe('a historic timeline (the archive holds 00000002.history: timeline 1 ends at 0/800000)', () => {
  it('IDENTIFY_SYSTEM reports timeline 2; TIMELINE_HISTORY 2 returns the file as it is', async () => {
    const { c } = await session(historic.port);
    expect(dataRowOf((await ask(c, 'IDENTIFY_SYSTEM'))[1]!).map((v) => v?.toString() ?? null)).toEqual([SYSID.toString(), '2', '0/800000', null]);
    expect(bytes(await ask(c, 'TIMELINE_HISTORY 2'))).toEqual(Buffer.concat([T(['filename', TEXT, -1], ['content', TEXT, -1]), D('00000002.history', HISTORY_2), C('TIMELINE_HISTORY'), Z]));
    c.close();
  });

  it('TIMELINE_HISTORY 1: RowDescription, then ERROR 58P01 (there is no such file) [V15]', async () => {
    const { c } = await session(historic.port);
    const answer = await ask(c, 'TIMELINE_HISTORY 1');
    expect(answer.map((m) => m.type).join('')).toBe('TEZ');
    expect(answer[0]!.raw).toEqual(T(['filename', TEXT, -1], ['content', TEXT, -1]));
    expect(errorOf(answer[1]!)).toEqual({ S: 'ERROR', V: 'ERROR', C: '58P01', M: 'could not open file "pg_wal/00000001.history": No such file or directory' });
    c.close();
  });

  it('streaming timeline 1 to its end: CopyDone, then next_tli and its start, START_STREAMING, START_REPLICATION, Z', async () => {
    const { c } = await session(historic.port);
    c.write(Q('START_REPLICATION 0/700000 TIMELINE 1'));
    expect((await c.next()).raw).toEqual(W);
    // walEnd on a historic timeline is its switch point
    expect((await streamUntil(c, FIXTURE_START, FIXTURE_END, { walEnd: FIXTURE_END })).equals(FIXTURE)).toBe(true);
    expect((await c.next()).raw).toEqual(COPY_DONE);
    // status updates may come before the client's CopyDone [V15]
    c.write(copyData(status(FIXTURE_END, FIXTURE_END, false)));
    expect(await c.quiet(100)).toEqual([]);
    c.write(serialize.copyDone());
    expect(bytes(await c.until('Z'))).toEqual(Buffer.concat([T(['next_tli', INT8, 8], ['next_tli_startpos', TEXT, -1]), D('2', '0/800000'), C('START_STREAMING'), C('START_REPLICATION'), Z]));
    // the walreceiver then asks again on the new timeline, on the same connection
    c.write(Q('START_REPLICATION 0/800000 TIMELINE 2'));
    expect((await c.next()).raw).toEqual(W);
    c.write(serialize.copyDone());
    expect((await c.until('Z')).map((m) => m.type).join('')).toBe('cCCZ');
    c.close();
  });

  it('a start exactly at the switch point: the end-of-timeline answer without COPY', async () => {
    const { c } = await session(historic.port);
    expect(bytes(await ask(c, 'START_REPLICATION 0/800000 TIMELINE 1'))).toEqual(
      Buffer.concat([T(['next_tli', INT8, 8], ['next_tli_startpos', TEXT, -1]), D('2', '0/800000'), C('START_STREAMING'), C('START_REPLICATION'), Z]),
    );
    c.close();
  });

  it('a start beyond the switch point: ERROR XX000 with the fork in DETAIL, before W', async () => {
    const { c } = await session(historic.port);
    const answer = await ask(c, 'START_REPLICATION 0/900000 TIMELINE 1');
    expect(answer.map((m) => m.type).join('')).toBe('EZ');
    expect(errorOf(answer[0]!)).toEqual({
      S: 'ERROR',
      V: 'ERROR',
      C: 'XX000',
      M: "requested starting point 0/900000 on timeline 1 is not in this server's history",
      D: "This server's history forked from timeline 1 at 0/800000.",
    });
    c.close();
  });
});

// ---------------------------------------------------------------------------------------------
// node-postgres as the client.
// ---------------------------------------------------------------------------------------------

type ReplicationConfig = pg.ClientConfig & { replication: boolean | string; enableChannelBinding?: boolean };

function pgClient(port: number, o: Partial<ReplicationConfig> = {}): pg.Client {
  return new pg.Client({ host: '127.0.0.1', port, user: 'replicator', database: 'replication', replication: true, ...o } as ReplicationConfig);
}

describe('node-postgres (replication: true) as a library client', () => {
  it('IDENTIFY_SYSTEM and TIMELINE_HISTORY through pg', async () => {
    const client = pgClient(historic.port);
    await client.connect();
    try {
      const id = await client.query('IDENTIFY_SYSTEM');
      expect(id.rows).toEqual([{ systemid: SYSID.toString(), timeline: 2, xlogpos: '0/800000', dbname: null }]);
      expect(id.fields.map((f) => [f.name, f.dataTypeID])).toEqual([
        ['systemid', 25],
        ['timeline', 23],
        ['xlogpos', 25],
        ['dbname', 25],
      ]);
      const h = await client.query('TIMELINE_HISTORY 2');
      expect(h.rows).toEqual([{ filename: '00000002.history', content: HISTORY_2.toString() }]);
      // T then E: pg reports the error and the connection goes on
      await expect(client.query('TIMELINE_HISTORY 1')).rejects.toMatchObject({ code: '58P01' });
      await expect(client.query('SELECT 1')).rejects.toMatchObject({ code: '0A000' });
      expect((await client.query('SHOW wal_segment_size')).rows).toEqual([{ wal_segment_size: '1MB' }]);
    } finally {
      await client.end();
    }
  });

  it('SCRAM-SHA-256 with the right password, 28P01 with a wrong one or an unknown user', async () => {
    const ok = pgClient(password.port, { password: 's3cret' });
    await ok.connect();
    expect((await ok.query('IDENTIFY_SYSTEM')).rows[0]).toMatchObject({ timeline: 1, xlogpos: '0/800000' });
    await ok.end();
    for (const [user, pw] of [
      ['replicator', 'wrong'],
      ['nobody', 's3cret'],
      ['legacy', 'wrong'],
      ['plainuser', 'plain-secret-not'],
    ]) {
      const bad = pgClient(password.port, { user, password: pw });
      await expect(bad.connect(), `${user}/${pw}`).rejects.toMatchObject({ code: '28P01', message: `password authentication failed for user "${user}"` });
    }
  });

  it('md5 for a user whose secret is an md5 hash, SCRAM for a plain-text one', async () => {
    for (const [user, pw] of [
      ['legacy', 'old-secret'],
      ['plainuser', 'plain-secret'],
    ]) {
      const client = pgClient(password.port, { user, password: pw });
      await client.connect();
      expect((await client.query('SHOW session_authorization')).rows).toEqual([{ session_authorization: user }]);
      await client.end();
    }
  });

  it('raw: the server offers SCRAM-SHA-256 only without TLS, and a message too long before authentication is FATAL', async () => {
    const c = await Raw.connect(password.port);
    c.write(startupPacket());
    const r = await c.next();
    expect(r.raw).toEqual(msg('R', i32(10), cstr('SCRAM-SHA-256'), Buffer.from([0])));
    // a SASLInitialResponse claiming 70000 bytes, over the 65535 allowed before authentication
    c.write(Buffer.from('7000011170', 'hex'));
    const msgs = await c.untilClosed();
    expect(msgs).toHaveLength(1);
    expect(errorOf(msgs[0]!)).toMatchObject({ S: 'FATAL', C: '08P01' });
    expect(errorOf(msgs[0]!).M).toMatch(/^invalid message length 70000/);
  });

  it('TLS: SCRAM-SHA-256-PLUS with channel binding; the client list shows ssl', async () => {
    const client = pgClient(tls.port, { password: 's3cret', ssl: { rejectUnauthorized: false }, enableChannelBinding: true, application_name: 'tls-test' });
    await client.connect();
    // without channel binding over TLS the client says "y" and the server accepts it
    const plain = pgClient(tls.port, { password: 's3cret', ssl: { rejectUnauthorized: false }, application_name: 'tls-asker' });
    try {
      await plain.connect();
      // the list leaves out the connection that asks; the other one is there, over TLS
      const clients = JSON.parse((await plain.query('SHOW walstream.clients')).rows[0]['walstream.clients'] as string) as { application_name: string; ssl: boolean }[];
      expect(clients.find((x) => x.application_name === 'tls-test')?.ssl).toBe(true);
      expect(clients.find((x) => x.application_name === 'tls-asker')).toBeUndefined();
    } finally {
      await client.end();
      await plain.end();
    }
    const wrong = pgClient(tls.port, { password: 'nope', ssl: { rejectUnauthorized: false }, enableChannelBinding: true });
    await expect(wrong.connect()).rejects.toMatchObject({ code: '28P01' });
  });

  it('TLS: plaintext sent right behind SSLRequest (before the answer) is refused, never taken into the session', async () => {
    const c = await Raw.connect(tls.port);
    c.write(serialize.requestSsl(), startupPacket());
    let all = await c.rawUntilClosed();
    // PostgreSQL answers 'S' before it notices (postmaster.c); either way a FATAL follows in plaintext and no TLS starts
    if (all[0] === 0x53) all = all.subarray(1);
    expect(all[0]).toBe(0x45);
    expect(all.readUInt32BE(1) + 1).toBe(all.length);
    expect(errorOf({ type: 'E', body: all.subarray(5), raw: all })).toMatchObject({ S: 'FATAL', C: '08P01', M: 'received unencrypted data after SSL request' });
  });
});

// ---------------------------------------------------------------------------------------------
// Hostile clients.
// ---------------------------------------------------------------------------------------------

describe('hostile clients', () => {
  it('a claimed 2 GB message after authentication: FATAL 08P01 after its 5 header bytes', async () => {
    const { c } = await session(trust.port);
    c.write(Buffer.from('517fffffff', 'hex'));
    const msgs = await c.untilClosed();
    expect(msgs).toHaveLength(1);
    expect(errorOf(msgs[0]!)).toMatchObject({ S: 'FATAL', C: '08P01' });
    expect(errorOf(msgs[0]!).M).toMatch(/^invalid message length 2147483647/);
  });

  it('a message in pieces is answered once whole; a truncated one and a close leave nothing behind', async () => {
    const { c, startup } = await session(trust.port);
    const pid = startup.find((m) => m.type === 'K')!.body.readInt32BE(0);
    const q = Q('IDENTIFY_SYSTEM');
    for (let i = 0; i < q.length; i++) {
      c.write(q.subarray(i, i + 1));
      if (i % 4 === 0) await sleep(5);
    }
    expect((await c.until('Z')).map((m) => m.type).join('')).toBe('TDCZ');
    c.write(q.subarray(0, 7));
    expect(await c.quiet(100)).toEqual([]);
    c.socket.end();
    expect(await c.untilClosed()).toEqual([]);
    await waitFor(() => !trust.server.clients().some((x) => x.pid === pid), 'the client to be forgotten');
  });

  it('a truncated startup packet and a close', async () => {
    const c = await Raw.connect(trust.port);
    c.write(startupPacket().subarray(0, 10));
    expect(await c.quiet(50)).toEqual([]);
    c.socket.end();
    expect(await c.untilClosed()).toEqual([]);
  });

  it('a client gone while its CREATE_REPLICATION_SLOT ... TEMPORARY waits for the store leaves no slot behind', async () => {
    const store = new SlowStore();
    await store.put(FIXTURE_NAME, fixtureSegment());
    const source = await WalSource.open({ stores: [new StoreReader(store, 'archive')], log: silentLogger, pollIntervalMs: 50 });
    const slots = new SlotRegistry();
    const { server, port } = await startServer(source, { slots });
    const { c, startup } = await session(port);
    const pid = startup.find((m) => m.type === 'K')!.body.readInt32BE(0);
    await sleep(60); // past the poll interval: RESERVE_WAL's look at the end of WAL goes to the store
    store.delayMs = 300;
    c.write(Q(`CREATE_REPLICATION_SLOT "pg_walreceiver_${pid}" TEMPORARY PHYSICAL (RESERVE_WAL)`));
    await sleep(50);
    c.close();
    await waitFor(() => !server.clients().some((x) => x.pid === pid), 'the client to be forgotten');
    await store.idle(); // every slow look has been answered
    await sleep(20);
    // a temporary slot lives as long as its connection (slot.c ReplicationSlotCleanup)
    expect(slots.list().map((x) => x.name)).toEqual([]);
  });

  it('a client gone during startup, while the server looks for WAL, is not listed as connected', async () => {
    // an archive that holds no WAL yet when the server starts: each startup looks again
    const store = new SlowStore();
    const source = await WalSource.open({ stores: [new StoreReader(store, 'archive')], log: silentLogger, pollIntervalMs: 10 });
    const { server, port } = await startServer(source, { maxClients: 1 });
    await sleep(20);
    store.delayMs = 300;
    const c = await Raw.connect(port);
    c.write(startupPacket({ application_name: 'gone-during-startup' }));
    await sleep(50);
    // WAL arrives while that look is under way, and the client goes
    store.delayMs = 0;
    await store.put(FIXTURE_NAME, fixtureSegment());
    store.delayMs = 300;
    c.close();
    await sleep(100);
    await store.idle();
    await sleep(20);
    const ghosts = server.clients().filter((x) => x.applicationName === 'gone-during-startup');
    // with max_wal_senders = 1, the next client is served, not refused with 53300
    const next = await Raw.connect(port);
    next.write(startupPacket());
    const answer = await next.untilZOrClose();
    next.close();
    expect(shape(answer.filter((m) => m.type === 'E' || m.type === 'Z'))).toBe('Z');
    expect(ghosts).toEqual([]);
  });

  it('a client that never reads holds a bounded amount of the server; a second client is served meanwhile; nothing is lost', async () => {
    // 48 MiB of synthetic WAL (the fixture's 1 MiB fits in the kernel's socket buffers)
    const store = new MemoryStore();
    const SEGS = 48;
    for (let n = 1; n <= SEGS; n++) await store.put(synthName(1, n), makeSegment({ tli: 1, segNo: n }));
    const source = await WalSource.open({ stores: [new StoreReader(store, 'archive')], log: silentLogger, pollIntervalMs: 50 });
    const { server, port } = await startServer(source);
    const start = BigInt(SYNTH_SEG);
    const end = BigInt(SYNTH_SEG) * BigInt(SEGS + 1);
    const expected = (from: bigint, len: number): Buffer => {
      const parts: Buffer[] = [];
      let at = from;
      let left = len;
      while (left > 0) {
        const segNo = Number(at / BigInt(SYNTH_SEG));
        const off = Number(at % BigInt(SYNTH_SEG));
        const n = Math.min(left, SYNTH_SEG - off);
        parts.push(makeSegment({ tli: 1, segNo }).subarray(off, off + n));
        at += BigInt(n);
        left -= n;
      }
      return Buffer.concat(parts);
    };

    const { c: slow, startup } = await session(port);
    const slowPid = startup.find((m) => m.type === 'K')!.body.readInt32BE(0);
    expect(dataRowOf((await ask(slow, 'IDENTIFY_SYSTEM'))[1]!).map((v) => v?.toString() ?? null)).toEqual([SYNTH_SYSID.toString(), '1', '0/3100000', null]);
    slow.socket.pause();
    slow.write(Q('START_REPLICATION 0/100000 TIMELINE 1'));
    // the sender stops once the socket is full: its sent position stops moving
    const sentOf = (): bigint => server.clients().find((x) => x.pid === slowPid)?.sent ?? 0n;
    let last = -1n;
    let stableSince = Date.now();
    let maxQueued = 0;
    const deadline = Date.now() + 10_000;
    for (;;) {
      const s = sentOf();
      maxQueued = Math.max(maxQueued, serverSocketOf(server, slow).writableLength);
      if (s !== last) {
        last = s;
        stableSince = Date.now();
      } else if (Date.now() - stableSince > 400 && s > start) break;
      if (Date.now() > deadline) throw new Error('the sender never stopped');
      await sleep(10);
    }
    // it stopped well before the end: the kernel's buffers and the Wire's queue hold the rest
    expect(last).toBeLessThan(end);
    // what the server holds for that socket is bounded: the high-water mark and one read of at most 1 MiB past it
    const bound = DEFAULT_HIGH_WATER + 1024 * 1024 + 16 * XLOG_DATA_FRAME_HEADER_SIZE + 64;
    expect(maxQueued).toBeLessThanOrEqual(bound);
    expect(serverSocketOf(server, slow).writableLength).toBeGreaterThan(0);

    // another client is served normally meanwhile
    const { c: quick } = await session(port);
    quick.write(Q('START_REPLICATION 0/100000 TIMELINE 1'));
    expect((await quick.next()).raw).toEqual(W);
    expect((await streamUntil(quick, start, start + 2n * BigInt(SYNTH_SEG))).equals(expected(start, 2 * SYNTH_SEG))).toBe(true);
    quick.write(serialize.copyDone());
    const tail = await quick.until('Z', 10_000);
    expect(
      tail
        .slice(-4)
        .map((m) => m.type)
        .join(''),
    ).toBe('cCCZ');
    quick.close();
    // the slow client is still where it was
    expect(sentOf()).toBe(last);

    // it reads at last: everything arrives, contiguous and exact
    slow.socket.resume();
    expect((await slow.next()).raw).toEqual(W);
    let at = start;
    while (at < end) {
      const m = await slow.next(10_000);
      const d = decodeServerCopyData(m.body);
      if (d.kind !== 'xlogdata') continue;
      expect(d.dataStart).toBe(at);
      if (!d.data.equals(expected(at, d.data.length))) throw new Error(`wrong bytes at ${at.toString(16)}`);
      at += BigInt(d.data.length);
    }
    slow.write(serialize.copyDone());
    expect(
      (await slow.until('Z', 10_000))
        .slice(-4)
        .map((m) => m.type)
        .join(''),
    ).toBe('cCCZ');
    slow.close();
  });
});

describe('WalSender back-pressure, exactly (a socket that never drains)', () => {
  /** A Duplex whose writes are never taken: everything written stays queued. */
  function stuckSocket(): Duplex {
    return new Duplex({
      read() {},
      write(_chunk, _enc, _cb) {
        // never calls back
      },
    });
  }

  it.each([64 * 1024, 256 * 1024, DEFAULT_HIGH_WATER])('with a high-water mark of %i bytes, the queue holds at most one message beyond it', async (highWater) => {
    const source = await localSource();
    const sock = stuckSocket();
    const wire = new Wire(sock, highWater);
    const sender = new WalSender({
      wire,
      cursor: source.cursor(1, FIXTURE_START),
      walEnd: () => FIXTURE_END,
      timeoutMs: 0,
      events: { status() {}, feedback() {}, sent() {} },
      stopping: new Promise<void>(() => undefined),
    });
    const done = sender.run();
    // let it run until it waits for the socket: something queued, and no more for a while
    let before = -1;
    let stableSince = Date.now();
    const deadline = Date.now() + 5000;
    while (wire.queued === 0 || Date.now() - stableSince < 150) {
      if (wire.queued !== before) {
        before = wire.queued;
        stableSince = Date.now();
      }
      if (Date.now() > deadline) throw new Error('the sender did not fill the socket');
      await sleep(10);
    }
    const queued = wire.queued;
    sender.close('test over');
    expect((await done).kind).toBe('closed');
    sock.destroy();
    source.close();
    expect(queued).toBeGreaterThan(0);
    // Wire: "the sender stops producing once more than `highWater` bytes wait there"
    expect(queued).toBeLessThanOrEqual(highWater + MAX_SEND_SIZE + XLOG_DATA_FRAME_HEADER_SIZE);
  });
});
