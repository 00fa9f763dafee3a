// Seeded property test of everything that reads what a (possibly hostile or broken) walsender
// sends: the CopyData decoder, the replication-command result parsers, the WAL page-header
// checker, and the stream loop with the START_REPLICATION submittable behind it. Inputs are random bytes, truncated valid messages
// and mutated valid messages. The property: only the typed errors come out (ProtocolError for
// bytes; ServerError / ConnectionLostError for what the connection reports), never a TypeError,
// RangeError or other exception, and a stream always ends (no hang).
//
// WALSTREAM_FUZZ_SEED=<n> replays a run; WALSTREAM_FUZZ_CASES=<n> sets the number of cases per
// property (default 20000). The seed is printed so a failure can be replayed.
import { describe, expect, it } from 'vitest';
import {
  KEEPALIVE_SIZE,
  MSG_KEEPALIVE,
  MSG_STANDBY_STATUS,
  MSG_XLOG_DATA,
  ProtocolError,
  STANDBY_STATUS_SIZE,
  XLOG_DATA_HEADER_SIZE,
  decodeServerCopyData,
  decodeStandbyStatus,
  encodeKeepalive,
  encodeStandbyStatus,
  encodeXLogData,
} from '../../src/protocol/messages.js';
import { parseEndOfTimeline, parseIdentifySystem, parseReadReplicationSlot, type TextRow } from '../../src/protocol/commands.js';
import { runStream, type SinkListener, type WalSink } from '../../src/session/stream.js';
import { CopyBothStream, type StreamEvents } from '../../src/session/copyboth.js';
import { ConnectionLostError, ServerError } from '../../src/session/errors.js';
import type { ReplicationConnection } from '../../src/session/connection.js';
import { silentLogger } from '../../src/util/log.js';
import { IncrementalPageChecker, LONG_PAGE_HEADER_SIZE, PAGE_MAGIC_BY_MAJOR, SHORT_PAGE_HEADER_SIZE } from '../../src/wal/page.js';

// ---------------------------------------------------------------------------------------------
// A tiny PRNG: splitmix32-style mixing of a 32-bit state. Deterministic for a given seed.
// ---------------------------------------------------------------------------------------------
class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** Uniform 32-bit unsigned integer. */
  u32(): number {
    this.s = (this.s + 0x9e3779b9) >>> 0;
    let z = this.s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return n <= 1 ? 0 : this.u32() % n;
  }
  bool(pTrue = 0.5): boolean {
    return this.u32() / 0x1_0000_0000 < pTrue;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
  /** A 64-bit value biased towards the edges (0, small, near 2^63, near 2^64). */
  u64(): bigint {
    switch (this.int(6)) {
      case 0:
        return 0n;
      case 1:
        return BigInt(this.int(1 << 20));
      case 2:
        return (1n << 63n) - 1n - BigInt(this.int(4));
      case 3:
        return (1n << 64n) - 1n - BigInt(this.int(4));
      default:
        return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
    }
  }
}

function envInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got "${v}"`);
  return n;
}

const SEED = envInt('WALSTREAM_FUZZ_SEED') ?? (Date.now() ^ (process.pid << 10)) >>> 0;
const CASES = envInt('WALSTREAM_FUZZ_CASES') ?? 20_000;
// Printed once per run so that any failure can be replayed exactly.
console.log(`fuzz-protocol: WALSTREAM_FUZZ_SEED=${SEED} WALSTREAM_FUZZ_CASES=${CASES}`);

/** Each property gets its own stream of numbers, so a replay of one does not depend on the others. */
function rngFor(property: number): Rng {
  return new Rng((SEED ^ Math.imul(property + 1, 0x27d4eb2d)) >>> 0);
}

/** A cheap assertion for the hot loops (vitest's expect costs more than the code under test). */
function check(cond: boolean, what: string): void {
  if (!cond) throw new Error(`property violated: ${what} (WALSTREAM_FUZZ_SEED=${SEED})`);
}

function describeFailure(what: string, index: number, input: unknown, err: unknown): string {
  const shown = Buffer.isBuffer(input) ? input.toString('hex') : JSON.stringify(input, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
  const e = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return `${what}: case ${index} (WALSTREAM_FUZZ_SEED=${SEED}) threw ${e}\ninput: ${shown}`;
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/** A valid server message: XLogData (with random payload) or a keepalive. */
function validServerMessage(r: Rng, dataStart?: bigint): Buffer {
  if (r.bool(0.7)) {
    const len = r.bool(0.1) ? 0 : r.int(200);
    return encodeXLogData(dataStart ?? r.u64(), r.u64(), r.u64() & ((1n << 63n) - 1n), r.bytes(len));
  }
  return encodeKeepalive(r.u64(), r.u64() & ((1n << 63n) - 1n), r.bool());
}

/** Random bytes, a truncated valid message, or a mutated valid message. */
function hostileServerMessage(r: Rng, dataStart?: bigint): Buffer {
  switch (r.int(5)) {
    case 0: {
      // Random bytes, sometimes starting with a real type byte so the decoder goes deeper.
      const b = r.bytes(r.int(48));
      if (b.length > 0 && r.bool(0.6)) b[0] = r.pick([MSG_XLOG_DATA, MSG_KEEPALIVE, MSG_STANDBY_STATUS, 0x73, 0x70, 0x00, 0xff]);
      return b;
    }
    case 1: {
      const v = validServerMessage(r, dataStart);
      return v.subarray(0, r.int(v.length + 1));
    }
    case 2: {
      const v = Buffer.from(validServerMessage(r, dataStart));
      const flips = 1 + r.int(4);
      for (let i = 0; i < flips && v.length > 0; i++) v[r.int(v.length)] = r.u32() & 0xff;
      return v;
    }
    case 3: {
      // A valid message with junk appended (keepalives are fixed-size on the wire).
      return Buffer.concat([validServerMessage(r, dataStart), r.bytes(1 + r.int(16))]);
    }
    default:
      return validServerMessage(r, dataStart);
  }
}

const LSN_TEXTS = ['0/0', '0/B023F8', '1/2C000000', 'FFFFFFFF/FFFFFFFF', '0/3000000 ', ' 0/1'];

/** A random text value for a result column: sometimes valid, sometimes not, sometimes null. */
function randomField(r: Rng): string | null {
  switch (r.int(9)) {
    case 0:
      return null;
    case 1:
      return r.pick(LSN_TEXTS);
    case 2:
      return String(r.int(20));
    case 3:
      return String(r.u64());
    case 4:
      return r.pick(['', '-1', '1.5', '1e3', 'NaN', 'Infinity', '0x10', '4294967296', '99999999999999999999999', '/', 'a/b', '0/']);
    case 5:
      return r.pick(['physical', 'logical']);
    default: {
      const len = r.int(24);
      let s = '';
      for (let i = 0; i < len; i++) s += String.fromCharCode(r.bool(0.8) ? 0x20 + r.int(95) : r.int(0x3000));
      return s;
    }
  }
}

function randomRow(r: Rng, columns: readonly string[]): TextRow {
  const row: TextRow = {};
  for (const c of columns) if (r.bool(0.9)) row[c] = randomField(r);
  if (r.bool(0.1)) row[`extra_${r.int(3)}`] = randomField(r);
  return row;
}

// ---------------------------------------------------------------------------------------------
// Properties of the pure codec
// ---------------------------------------------------------------------------------------------

describe('protocol fuzz: pure codec', () => {
  it('decodeServerCopyData returns a well-formed message or throws ProtocolError', () => {
    const r = rngFor(1);
    let decoded = 0;
    let rejected = 0;
    for (let i = 0; i < CASES; i++) {
      const input = hostileServerMessage(r);
      let msg;
      try {
        msg = decodeServerCopyData(input);
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw new Error(describeFailure('decodeServerCopyData', i, input, err));
        rejected++;
        continue;
      }
      decoded++;
      // Whatever decodes must be exactly what the bytes say.
      const where = `case ${i}: ${input.toString('hex')}`;
      if (msg.kind === 'xlogdata') {
        check(input[0] === MSG_XLOG_DATA, `XLogData from type byte ${input[0]}, ${where}`);
        check(msg.data.length === input.length - XLOG_DATA_HEADER_SIZE, `XLogData payload length, ${where}`);
        check(msg.dataStart === input.readBigUInt64BE(1) && msg.walEnd === input.readBigUInt64BE(9), `XLogData positions, ${where}`);
      } else {
        check(input[0] === MSG_KEEPALIVE && input.length >= KEEPALIVE_SIZE, `keepalive from ${where}`);
        check(msg.walEnd === input.readBigUInt64BE(1) && msg.replyRequested === (input[17] !== 0), `keepalive fields, ${where}`);
      }
    }
    // The generator must exercise both outcomes, or the property says nothing.
    expect(decoded).toBeGreaterThan(CASES / 10);
    expect(rejected).toBeGreaterThan(CASES / 10);
  });

  it('decodeStandbyStatus round-trips valid updates and throws only ProtocolError otherwise', () => {
    const r = rngFor(2);
    for (let i = 0; i < CASES; i++) {
      const status = { write: r.u64(), flush: r.u64(), apply: r.u64(), clientTime: r.u64() & ((1n << 63n) - 1n), replyRequested: r.bool() };
      const valid = encodeStandbyStatus(status);
      let input: Buffer;
      switch (r.int(3)) {
        case 0:
          input = valid;
          break;
        case 1:
          input = valid.subarray(0, r.int(STANDBY_STATUS_SIZE));
          break;
        default:
          input = r.bytes(r.int(40));
          if (input.length > 0 && r.bool()) input[0] = MSG_STANDBY_STATUS;
      }
      let got;
      try {
        got = decodeStandbyStatus(input);
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw new Error(describeFailure('decodeStandbyStatus', i, input, err));
        check(input !== valid, `a valid status update was rejected: case ${i}`);
        continue;
      }
      check(input.length === STANDBY_STATUS_SIZE, `a ${input.length}-byte status update was accepted: case ${i}`);
      if (input === valid) {
        check(
          got.write === status.write && got.flush === status.flush && got.apply === status.apply && got.clientTime === status.clientTime && got.replyRequested === status.replyRequested,
          `status update round trip: case ${i}`,
        );
      }
    }
  });

  it('result-row parsers (IDENTIFY_SYSTEM, READ_REPLICATION_SLOT, end of timeline) throw only ProtocolError', () => {
    const r = rngFor(3);
    const parsers: [string, (row: TextRow) => unknown, readonly string[]][] = [
      ['parseIdentifySystem', parseIdentifySystem, ['systemid', 'timeline', 'xlogpos', 'dbname']],
      ['parseReadReplicationSlot', parseReadReplicationSlot, ['slot_type', 'restart_lsn', 'restart_tli']],
      ['parseEndOfTimeline', parseEndOfTimeline, ['next_tli', 'next_tli_startpos']],
    ];
    let accepted = 0;
    for (let i = 0; i < CASES; i++) {
      const [name, parse, columns] = r.pick(parsers);
      const row = randomRow(r, columns);
      try {
        const v = parse(row) as Record<string, unknown>;
        accepted++;
        // Accepted timelines are TimeLineIDs (uint32 >= 1); accepted positions are uint64.
        for (const key of ['timeline', 'nextTli', 'restartTli']) {
          const t = v[key];
          if (t !== undefined && t !== null) check(Number.isInteger(t) && (t as number) >= 1 && (t as number) <= 0xffffffff, `${name} accepted ${key} ${String(t)}`);
        }
        for (const key of ['xlogPos', 'nextStart', 'restartLsn', 'systemId']) {
          const l = v[key];
          if (l !== undefined && l !== null) check(typeof l === 'bigint' && l >= 0n && l < 1n << 64n, `${name} accepted ${key} ${String(l)}`);
        }
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw new Error(describeFailure(name, i, row, err));
      }
    }
    expect(accepted).toBeGreaterThan(0);
  });
});

describe('protocol fuzz: WAL page headers in what the server streams', () => {
  it('IncrementalPageChecker answers every hostile segment prefix with a verdict, never an exception', () => {
    const r = rngFor(5);
    const blockSize = 8192;
    const segSize = 1 << 20;
    const magics = Object.values(PAGE_MAGIC_BY_MAJOR);
    let rejected = 0;
    for (let i = 0; i < CASES / 20; i++) {
      const segNo = BigInt(r.int(1000));
      const tli = 1 + r.int(3);
      const systemId = r.u64();
      const pages = 1 + r.int(6);
      // Valid headers first, then damage: bytes flipped, pages zeroed, junk pages.
      const seg = Buffer.alloc(pages * blockSize);
      for (let p = 0; p < pages; p++) {
        const at = p * blockSize;
        seg.writeUInt16LE(r.bool(0.9) ? magics[magics.length - 1]! : r.pick(magics), at);
        seg.writeUInt16LE(p === 0 ? 0x0002 : r.int(16), at + 2);
        seg.writeUInt32LE(r.bool(0.9) ? tli : r.u32(), at + 4);
        seg.writeBigUInt64LE(segNo * BigInt(segSize) + BigInt(at), at + 8);
        seg.writeUInt32LE(r.int(blockSize), at + 16);
        if (p === 0) {
          seg.writeBigUInt64LE(systemId, 24);
          seg.writeUInt32LE(r.bool(0.9) ? segSize : r.u32(), 32);
          seg.writeUInt32LE(r.bool(0.9) ? blockSize : r.u32(), 36);
        }
        const hdr = p === 0 ? LONG_PAGE_HEADER_SIZE : SHORT_PAGE_HEADER_SIZE;
        r.bytes(64).copy(seg, at + hdr);
      }
      for (let f = r.int(6); f > 0; f--) seg[r.int(seg.length)] = r.u32() & 0xff;
      if (r.bool(0.2)) seg.fill(0, r.int(pages) * blockSize);
      if (r.bool(0.1)) r.bytes(blockSize).copy(seg, r.int(pages) * blockSize);
      const checker = new IncrementalPageChecker({ segNo, segSize, tli, blockSize, systemId: r.bool(0.8) ? systemId : undefined, magic: r.bool(0.5) ? magics[magics.length - 1] : undefined });
      // Fed in the pieces a server would send: any split, contiguous.
      let off = 0;
      try {
        while (off < seg.length) {
          const n = Math.min(seg.length - off, 1 + r.int(r.bool(0.3) ? 40 : 20000));
          const verdict = checker.feed(off, seg.subarray(off, off + n));
          check(verdict === undefined || typeof verdict === 'string', `page checker verdict of type ${typeof verdict}`);
          off += n;
          if (verdict !== undefined) {
            rejected++;
            break;
          }
        }
      } catch (err) {
        throw new Error(describeFailure('IncrementalPageChecker.feed', i, seg.subarray(0, 64), err));
      }
    }
    expect(rejected).toBeGreaterThan(0);
  });
});

// ---------------------------------------------------------------------------------------------
// The stream loop (runStream) over the real START_REPLICATION submittable (CopyBothStream), fed
// by a fake connection that plays the server's part.
// ---------------------------------------------------------------------------------------------

/** An in-memory sink that checks it is only ever given contiguous WAL. */
class MemorySink implements WalSink {
  receivedLsn: bigint;
  writtenLsn: bigint;
  durableLsn: bigint;
  error: Error | undefined;
  bytes = 0;
  private readonly listeners = new Set<SinkListener>();
  constructor(
    start: bigint,
    private readonly endPos?: bigint,
  ) {
    this.receivedLsn = start;
    this.writtenLsn = start;
    this.durableLsn = start;
  }
  write(lsn: bigint, data: Buffer): void {
    if (lsn !== this.receivedLsn) throw new Error(`sink got WAL at ${lsn}, expected ${this.receivedLsn}`);
    // With --endpos, the message that reaches it is the last one written.
    if (this.endPos !== undefined && this.receivedLsn >= this.endPos) throw new Error(`sink got WAL at ${lsn}, after endpos ${this.endPos}`);
    this.receivedLsn += BigInt(data.length);
    this.writtenLsn = this.receivedLsn;
    this.bytes += data.length;
  }
  async sync(): Promise<void> {
    this.durableLsn = this.writtenLsn;
    for (const l of this.listeners) l.durable(this.durableLsn);
  }
  attach(l: SinkListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }
}

/** Plays the server side of one START_REPLICATION through the pg Submittable interface. */
class FakeServer {
  stream!: CopyBothStream;
  /** What onCopyData threw, message by message. */
  readonly thrown: unknown[] = [];
  sentByClient: Buffer[] = [];
  copyDoneFromClient = false;
  destroyed = false;
  private readonly handlers = new Map<string, ((...args: unknown[]) => void)[]>();
  /** Where bytes from the socket go while the command runs (the stream's own framer). */
  dataListener: ((chunk: Buffer) => void) | undefined;

  /** Send `payload` as one CopyData message over the socket, cut into random pieces. */
  feedFramed(r: Rng, payload: Buffer): void {
    const frame = Buffer.alloc(5 + payload.length);
    frame[0] = 0x64;
    frame.writeUInt32BE(4 + payload.length, 1);
    payload.copy(frame, 5);
    for (let pos = 0; pos < frame.length && !this.destroyed; ) {
      const n = 1 + r.int(Math.min(frame.length - pos, r.bool(0.5) ? 7 : 70000));
      this.dataListener!(frame.subarray(pos, pos + n));
      pos += n;
    }
  }

  readonly conn = {
    startReplication: (_start: bigint, _tli: number, _slot: string | undefined, events: StreamEvents): CopyBothStream => {
      const wrapped: StreamEvents = {
        ...events,
        onCopyData: (payload) => {
          try {
            events.onCopyData(payload);
          } catch (err) {
            this.thrown.push(err);
            throw err;
          }
        },
        onXLogData: (lsn, walEnd, piece) => {
          try {
            events.onXLogData(lsn, walEnd, piece);
          } catch (err) {
            this.thrown.push(err);
            throw err;
          }
        },
      };
      this.stream = new CopyBothStream('START_REPLICATION PHYSICAL 0/0 TIMELINE 1', wrapped);
      this.stream.submit(this.connection as never);
      return this.stream;
    },
  } as unknown as ReplicationConnection;

  private readonly connection = {
    query: (): void => undefined,
    sendCopyFromChunk: (chunk: Buffer): void => {
      this.sentByClient.push(Buffer.from(chunk));
    },
    endCopyFrom: (): void => {
      this.copyDoneFromClient = true;
      // The server answers a client CopyDone with CopyDone, the command tags and ReadyForQuery.
      setImmediate(() => {
        if (this.destroyed) return;
        this.stream.handleCommandComplete({ text: 'START_STREAMING' });
        this.stream.handleReadyForQuery();
      });
    },
    on: (event: string, fn: (...args: unknown[]) => void): void => {
      this.handlers.set(event, [...(this.handlers.get(event) ?? []), fn]);
    },
    removeListener: (event: string, fn: (...args: unknown[]) => void): void => {
      this.handlers.set(
        event,
        (this.handlers.get(event) ?? []).filter((f) => f !== fn),
      );
    },
    stream: {
      listeners: (): ((chunk: Buffer) => void)[] => [],
      on: (_event: string, fn: (chunk: Buffer) => void): void => {
        this.dataListener = fn;
      },
      removeListener: (): void => undefined,
      pause: (): void => undefined,
      resume: (): void => undefined,
      destroy: (): void => {
        if (this.destroyed) return;
        this.destroyed = true;
        // pg reports a destroyed socket to the active query as a lost connection.
        setImmediate(() => this.stream.handleError(new Error('Connection terminated unexpectedly')));
      },
    },
  };

  emit(event: string): void {
    for (const fn of this.handlers.get(event) ?? []) fn();
  }
}

const STREAM_START = 0x3000000n;

/** Every way a walsender can end or break a START_REPLICATION, picked at random after the messages. */
function finishRandomly(r: Rng, server: FakeServer): void {
  const s = server.stream;
  switch (r.int(6)) {
    case 0: // end of a historic timeline: CopyDone, then the next-timeline row set
      server.emit('copyDone');
      s.handleRowDescription({ fields: [{ name: 'next_tli' }, { name: 'next_tli_startpos' }] });
      s.handleDataRow({ fields: [randomField(r), randomField(r)] });
      s.handleCommandComplete({ text: 'START_STREAMING' });
      s.handleReadyForQuery();
      return;
    case 1: // primary shutdown: COPY 0, then the connection closes
      s.handleCommandComplete({ text: 'COPY 0' });
      s.handleError(new Error('Connection terminated'));
      return;
    case 2: // an ErrorResponse from the server
      s.handleError(Object.assign(new Error('requested WAL segment has already been removed'), { code: r.pick(['58P01', 'XX000', '57P01']) }));
      return;
    case 3: // silent close
      s.handleError(new Error('Connection terminated unexpectedly'));
      return;
    case 4: // a result set with random columns and rows
      s.handleRowDescription({ fields: [{ name: r.pick(['next_tli', 'x', 'next_tli_startpos']) }] });
      for (let i = r.int(3); i > 0; i--) s.handleDataRow({ fields: [randomField(r), randomField(r)] });
      s.handleReadyForQuery();
      return;
    default: // nothing: the loop must end through its own stop (endpos) or a failure
      if (!server.copyDoneFromClient && !server.destroyed) s.handleError(new Error('Connection terminated'));
  }
}

async function oneSession(r: Rng, messages: number, index: number): Promise<void> {
  const server = new FakeServer();
  const endPos = r.bool(0.3) ? STREAM_START + 1n + BigInt(r.int(4000)) : undefined;
  const sink = new MemorySink(STREAM_START, endPos);
  const done = runStream(server.conn, sink, {
    start: STREAM_START,
    timeline: 1,
    slot: r.bool() ? 'fuzz' : undefined,
    endPos,
    segSize: r.pick([1 << 20, 16 << 20]),
    statusIntervalMs: 0,
    synchronous: r.bool(0.3),
    reportFlush: r.bool(),
    stopRequested: new Promise<void>(() => undefined),
    log: silentLogger,
  });
  // Awaited below, after the messages: mark it handled now so an early rejection is not "unhandled".
  done.catch(() => undefined);
  server.emit('replicationStart');
  const inputs: Buffer[] = [];
  for (let i = 0; i < messages && !server.destroyed && !server.copyDoneFromClient; i++) {
    // Mostly the contiguous stream a real server sends, with hostile messages mixed in.
    const input = r.bool(0.6) ? validServerMessage(r, sink.receivedLsn) : hostileServerMessage(r, r.bool(0.5) ? sink.receivedLsn : undefined);
    inputs.push(input);
    // Whole, as pg's parser hands it on, or framed by the stream itself from pieces of the socket's bytes.
    if (r.bool()) server.stream.handleCopyData({ chunk: input });
    else server.feedFramed(r, input);
    if (r.bool(0.1)) await new Promise((res) => setImmediate(res));
  }
  for (const err of server.thrown) {
    if (!(err instanceof ProtocolError)) throw new Error(describeFailure('stream loop', index, inputs.at(-1), err));
  }
  // A message the loop rejected drops the connection: nothing after it reaches the sink.
  if (server.thrown.length > 0) expect(server.destroyed).toBe(true);
  // Let the loop's own reactions (fsync, status, CopyDone at --endpos) run.
  await new Promise((res) => setImmediate(res));
  // Reaching --endpos makes the loop end the COPY itself.
  if (endPos !== undefined && sink.receivedLsn >= endPos && !server.destroyed) expect(server.copyDoneFromClient).toBe(true);
  if (!server.destroyed && !server.copyDoneFromClient) finishRandomly(r, server);

  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_res, rej) => {
    timer = setTimeout(() => rej(new Error(`stream loop did not end: session ${index} (WALSTREAM_FUZZ_SEED=${SEED})`)), 5000);
  });
  try {
    const result = await Promise.race([done, hang]);
    expect(['timeline-end', 'stopped', 'server-shutdown']).toContain(result.end.kind);
    expect(result.received).toBe(sink.receivedLsn);
  } catch (err) {
    if (!(err instanceof ProtocolError || err instanceof ServerError || err instanceof ConnectionLostError)) {
      throw new Error(describeFailure('stream loop result', index, inputs.at(-1), err));
    }
    // A failure found in the data is reported as that failure, not as the lost connection.
    if (server.thrown.length > 0) expect(err).toBe(server.thrown[0]);
  } finally {
    clearTimeout(timer);
  }
  // Every reply the loop sent is a well-formed standby status update.
  for (const reply of server.sentByClient) {
    const status = decodeStandbyStatus(reply);
    expect(status.flush).toBeLessThanOrEqual(status.write);
  }
}

describe('protocol fuzz: stream loop', () => {
  it('the loop rejects hostile messages only with ProtocolError and always ends', async () => {
    const r = rngFor(4);
    let messages = 0;
    let session = 0;
    while (messages < CASES) {
      const n = 1 + r.int(40);
      await oneSession(r, n, session++);
      messages += n;
    }
    expect(session).toBeGreaterThan(0);
  });
});
