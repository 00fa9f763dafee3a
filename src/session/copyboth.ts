// START_REPLICATION as a pg "Submittable": it sends the command, hands every CopyData payload to
// the caller synchronously, answers the server's CopyDone, and reads the result set that follows
// the end of a timeline (walsender.c StartReplication / XLogSendPhysical; receivelog.c
// HandleEndOfCopyStream, ReadEndOfStreamingResult). Covers the five ways the command can end:
// error after 'W', rows without COPY, CopyDone then rows, "COPY 0" then close, and silent close.
//
// While the command runs, walstream frames what the server sends itself (the socket's data
// listeners of pg are set aside when the command is submitted, on an idle connection, and put
// back at its ReadyForQuery): CopyData goes straight to the caller, XLogData as views of the
// socket's own chunks, a message that spans chunks in pieces as they arrive, so no WAL byte is
// copied or reassembled on its way to the sink; every other message is handed whole to pg's
// parser, which reads it as ever.
import { parseEndOfTimeline, type TextRow } from '../protocol/commands.js';
import { MSG_XLOG_DATA, ProtocolError, XLOG_DATA_HEADER_SIZE } from '../protocol/messages.js';
import { toServerError } from './errors.js';
import { directReaderOf } from './direct-read.js';

export interface StreamEvents {
  /** Called synchronously for each CopyData payload but XLogData: `payload` is a view, copy what you keep. */
  onCopyData(payload: Buffer): void;
  /**
   * Called synchronously for each piece of an XLogData message, in order: `lsn` is where `piece`
   * starts (the message's dataStart plus the bytes before it), `walEnd` the message's. `piece` is
   * a view of the socket's buffer: consume it before returning.
   */
  onXLogData(lsn: bigint, walEnd: bigint, piece: Buffer): void;
  /** The server ended the COPY (end of a historic timeline). */
  onServerCopyDone?(): void;
  /** Any message from the server for this command arrived (liveness: see session/silence.ts). */
  onServerMessage?(): void;
}

export type StreamEnd = { kind: 'timeline-end'; nextTli: number; nextStart: bigint } | { kind: 'stopped' } | { kind: 'server-shutdown' };

interface DataStream {
  pause(): void;
  resume(): void;
  destroy(): void;
  listeners(event: 'data'): ((chunk: Buffer) => void)[];
  on(event: 'data', fn: (chunk: Buffer) => void): void;
  removeListener(event: 'data', fn: (chunk: Buffer) => void): void;
}

interface Connection {
  query(text: string): void;
  sendCopyFromChunk(chunk: Buffer): void;
  endCopyFrom(): void;
  on(event: string, fn: (...args: unknown[]) => void): void;
  removeListener(event: string, fn: (...args: unknown[]) => void): void;
  stream: DataStream;
}

interface RowDescriptionMsg {
  fields: { name: string }[];
}
interface DataRowMsg {
  fields: (string | null)[];
}
interface CommandCompleteMsg {
  text: string;
}
interface CopyDataMsg {
  chunk: Buffer;
}

const COPY_DATA = 0x64; // 'd'
const READY_FOR_QUERY = 0x5a; // 'Z'
/** A message other than CopyData longer than this is not something a walsender sends. */
const MAX_OTHER_MESSAGE = 64 * 1024 * 1024;

/**
 * Cuts the server's byte stream into messages while a START_REPLICATION runs: XLogData pieces go
 * to `wal` without a copy, other CopyData payloads to `copyData` (copied only when they span
 * chunks, and they are small), every other message whole to `other`.
 */
export class CopyFramer {
  /** The start of a message (its header, or a whole small message) gathered across chunks. */
  private partial: Buffer | undefined;
  /** An XLogData message being streamed in pieces: where its next piece starts, what is left. */
  private xlog: { lsn: bigint; walEnd: bigint; left: number } | undefined;

  constructor(
    private readonly sink: {
      copyData(payload: Buffer): void;
      wal(lsn: bigint, walEnd: bigint, piece: Buffer): void;
      other(message: Buffer): void;
    },
  ) {}

  /** Bytes received but not yet handed on (an incomplete header or small message). */
  get pendingBytes(): number {
    return this.partial?.length ?? 0;
  }

  push(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length) {
      const x = this.xlog;
      if (x) {
        const n = Math.min(x.left, chunk.length - pos);
        const lsn = x.lsn;
        x.lsn += BigInt(n);
        x.left -= n;
        if (x.left === 0) this.xlog = undefined;
        this.sink.wal(lsn, x.walEnd, chunk.subarray(pos, pos + n));
        pos += n;
        continue;
      }
      if (this.partial) {
        const want = this.needed(this.partial);
        const take = Math.min(want - this.partial.length, chunk.length - pos);
        this.partial = Buffer.concat([this.partial, chunk.subarray(pos, pos + take)]);
        pos += take;
        if (this.partial.length < this.needed(this.partial)) continue;
        const whole = this.partial;
        this.partial = undefined;
        if (this.consume(whole, 0) !== whole.length) throw new Error('message framing failed');
        continue;
      }
      const used = this.consume(chunk, pos);
      if (used === 0) {
        this.partial = Buffer.from(chunk.subarray(pos));
        return;
      }
      pos += used;
    }
  }

  /** How many bytes of a message's start `b` must be there before it can be handed on. */
  private needed(b: Buffer): number {
    if (b.length < 5) return 5;
    const len = b.readUInt32BE(1);
    if (b[0] === COPY_DATA && len >= 5) {
      if (b.length < 6) return 6;
      if (b[5] === MSG_XLOG_DATA && len - 4 >= XLOG_DATA_HEADER_SIZE) return 5 + XLOG_DATA_HEADER_SIZE;
    }
    return 1 + len;
  }

  /**
   * Hand on the message that starts at `at` in `b`; returns the bytes used, 0 when more are
   * needed first. An XLogData message is handed on from its header on, the rest of it in pieces.
   */
  private consume(b: Buffer, at: number): number {
    const avail = b.length - at;
    if (avail < 5) return 0;
    const type = b[at]!;
    const len = b.readUInt32BE(at + 1);
    if (len < 4) throw new ProtocolError(`invalid message length ${len} from the server`);
    if (type === COPY_DATA && len >= 5) {
      if (avail < 6) return 0;
      if (b[at + 5] === MSG_XLOG_DATA && len - 4 >= XLOG_DATA_HEADER_SIZE) {
        if (avail < 5 + XLOG_DATA_HEADER_SIZE) return 0;
        const lsn = b.readBigUInt64BE(at + 6);
        const walEnd = b.readBigUInt64BE(at + 14);
        const dataLen = len - 4 - XLOG_DATA_HEADER_SIZE;
        const start = at + 5 + XLOG_DATA_HEADER_SIZE;
        const here = Math.min(dataLen, b.length - start);
        if (here < dataLen) this.xlog = { lsn: lsn + BigInt(here), walEnd, left: dataLen - here };
        if (here > 0 || dataLen === 0) this.sink.wal(lsn, walEnd, b.subarray(start, start + here));
        return 5 + XLOG_DATA_HEADER_SIZE + here;
      }
    }
    if (len > MAX_OTHER_MESSAGE) throw new ProtocolError(`message of ${len} bytes from the server: too long`);
    if (avail < 1 + len) return 0;
    const message = b.subarray(at, at + 1 + len);
    if (type === COPY_DATA) this.sink.copyData(message.subarray(5));
    else this.sink.other(message);
    return 1 + len;
  }
}

export class CopyBothStream {
  readonly done: Promise<StreamEnd>;
  private resolve!: (end: StreamEnd) => void;
  private reject!: (err: Error) => void;
  private connection: Connection | undefined;
  private fields: string[] = [];
  private readonly rows: TextRow[] = [];
  private readonly tags: string[] = [];
  private copyDoneSent = false;
  private copyStarted = false;
  private settled = false;
  private failure: Error | undefined;
  private readonly onReplicationStart = (): void => {
    this.copyStarted = true;
    this.heard();
  };
  private readonly onCopyDone = (): void => {
    this.heard();
    this.events.onServerCopyDone?.();
    this.sendCopyDone();
  };

  constructor(
    private readonly text: string,
    private readonly events: StreamEvents,
  ) {
    this.done = new Promise<StreamEnd>((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
    // Never an unhandled rejection: callers await `done`.
    this.done.catch(() => undefined);
  }

  get started(): boolean {
    return this.copyStarted;
  }

  // ---- pg Submittable interface ----
  submit(connection: Connection): void {
    this.connection = connection;
    connection.on('replicationStart', this.onReplicationStart);
    connection.on('copyDone', this.onCopyDone);
    this.takeOver(connection.stream);
    connection.query(this.text);
  }

  /** pg's parser steps aside until this command's ReadyForQuery (see the top of this file). */
  private takeOver(stream: DataStream): void {
    const pgListeners = stream.listeners('data');
    for (const l of pgListeners) stream.removeListener('data', l);
    // A socket reading into one reused buffer hands its reads over as views (session/direct-read.ts).
    const direct = directReaderOf(stream);
    let releaseDirect: (() => void) | undefined;
    let givenBack = false;
    const giveBack = (): void => {
      if (givenBack) return;
      givenBack = true;
      if (releaseDirect) releaseDirect();
      else stream.removeListener('data', onData);
      for (const l of pgListeners) stream.on('data', l);
    };
    const framer = new CopyFramer({
      copyData: (payload) => this.handleCopyData({ chunk: payload }),
      wal: (lsn, walEnd, piece) => {
        if (this.failure) return;
        try {
          this.events.onXLogData(lsn, walEnd, piece);
        } catch (err) {
          this.fail(err instanceof Error ? err : new Error(String(err)));
        }
      },
      other: (message) => {
        // The command's end: pg takes the connection back before it reads ReadyForQuery, so
        // that whatever follows (the next command's answers) goes to it directly.
        if (message[0] === READY_FOR_QUERY) giveBack();
        // pg may keep what it is given: never a view of a buffer the next read overwrites.
        const own = direct ? Buffer.from(message) : message;
        for (const l of pgListeners) l(own);
      },
    });
    const onData = (chunk: Buffer): void => {
      if (givenBack) {
        for (const l of pgListeners) l(chunk);
        return;
      }
      this.heard();
      try {
        framer.push(chunk);
      } catch (err) {
        this.fail(err instanceof Error ? err : new Error(String(err)));
      }
    };
    if (direct) releaseDirect = direct.take(onData);
    else stream.on('data', onData);
  }

  handleCopyData(msg: CopyDataMsg): void {
    if (this.failure) return;
    this.heard();
    try {
      this.events.onCopyData(msg.chunk);
    } catch (err) {
      // A protocol violation found by the consumer: stop reading and drop the connection.
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  handleRowDescription(msg: RowDescriptionMsg): void {
    this.heard();
    this.fields = msg.fields.map((f) => f.name);
  }

  handleDataRow(msg: DataRowMsg): void {
    this.heard();
    const row: TextRow = {};
    this.fields.forEach((name, i) => {
      row[name] = msg.fields[i] ?? null;
    });
    this.rows.push(row);
  }

  handleCommandComplete(msg: CommandCompleteMsg): void {
    this.heard();
    this.tags.push(msg.text);
  }

  handleEmptyQuery(): void {}

  handleCopyInResponse(): void {
    this.fail(new Error('server sent CopyInResponse to START_REPLICATION'));
  }

  handleReadyForQuery(): void {
    this.detach();
    if (this.failure) return this.settle(undefined, this.failure);
    const row = this.rows[0];
    if (row && 'next_tli' in row) {
      try {
        const end = parseEndOfTimeline(row);
        return this.settle({ kind: 'timeline-end', nextTli: end.nextTli, nextStart: end.nextStart });
      } catch (err) {
        return this.settle(undefined, err as Error);
      }
    }
    this.settle({ kind: 'stopped' });
  }

  handleError(err: unknown): void {
    this.detach();
    if (this.failure) return this.settle(undefined, this.failure);
    // The command's answer, before or after CopyBothResponse (walsender.c StartReplication
    // refuses some starts before it, and fails others once streaming).
    const e = toServerError(err, { command: 'START_REPLICATION', streaming: this.copyStarted });
    // Primary shutdown: "COPY 0" without CopyDone, then the connection closes (WalSndDone).
    if (this.tags.some((t) => t.startsWith('COPY')) && e.name === 'ConnectionLostError') {
      return this.settle({ kind: 'server-shutdown' });
    }
    this.settle(undefined, e);
  }

  // ---- used by the stream loop ----
  send(payload: Buffer): void {
    if (!this.connection || this.copyDoneSent || this.settled) return;
    this.connection.sendCopyFromChunk(payload);
  }

  /** Ask the server to end streaming (client stop); safe to call more than once. */
  sendCopyDone(): void {
    if (!this.connection || this.copyDoneSent || this.settled) return;
    this.copyDoneSent = true;
    this.connection.endCopyFrom();
  }

  pause(): void {
    this.connection?.stream.pause();
  }

  resume(): void {
    this.connection?.stream.resume();
  }

  /** Abort with an error: the connection is dropped, nothing more is read. */
  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.connection?.stream.destroy();
  }

  private heard(): void {
    this.events.onServerMessage?.();
  }

  private detach(): void {
    if (!this.connection) return;
    this.connection.removeListener('replicationStart', this.onReplicationStart);
    this.connection.removeListener('copyDone', this.onCopyDone);
  }

  private settle(end: StreamEnd | undefined, err?: Error): void {
    if (this.settled) return;
    this.settled = true;
    if (err) this.reject(err);
    else this.resolve(end!);
  }
}
