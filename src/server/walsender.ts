// The CopyBoth stream of one START_REPLICATION, seen from the server (walsender.c WalSndLoop,
// XLogSendPhysical, ProcessRepliesIfAny, ProcessStandbyReplyMessage,
// ProcessStandbyHSFeedbackMessage, WalSndKeepaliveIfNecessary, WalSndCheckTimeOut): WAL from the
// cursor in XLogData messages of at most 128 kB while the socket takes them, the client's status
// updates and feedback read the whole time, a keepalive asking for a reply after half of
// wal_sender_timeout without a word from the client and the connection dropped after all of it,
// and the two ways a stream ends: the client's CopyDone, or the end of a historic timeline
// (CopyDone, then the next timeline and where it starts).
import { commandComplete, copyDone, dataRow, errorResponse, int8Field, keepaliveFrame, readyForQuery, rowDescription, textField, xlogDataFrameHeader } from '../protocol/backend.js';
import {
  HOT_STANDBY_FEEDBACK_SIZE,
  MSG_HOT_STANDBY_FEEDBACK,
  MSG_STANDBY_STATUS,
  STANDBY_STATUS_SIZE,
  decodeHotStandbyFeedback,
  decodeStandbyStatus,
  type HotStandbyFeedback,
  type StandbyStatus,
} from '../protocol/messages.js';
import { formatLsn, type Lsn } from '../wal/lsn.js';
import { nowPgTime } from '../wal/time.js';
import type { WalCursor } from '../source/wal-source.js';
import { WalSourceError } from '../source/types.js';
import type { Wire } from './wire.js';

/** walsender.c MAX_SEND_SIZE: XLOG_BLCKSZ * 16. */
export const MAX_SEND_SIZE = 128 * 1024;
/** How much one read from the source may hand over at a time. */
const READ_BURST = 1024 * 1024;

export type StreamEnd =
  | { kind: 'client-done' }
  | { kind: 'timeline-end'; nextTli: number; switchpoint: Lsn }
  /** An error that ends the COPY; the session goes on (E and Z were sent). */
  | { kind: 'error'; message: string }
  /** The connection is gone or must be closed (timeout, protocol violation, Terminate). */
  | { kind: 'closed'; why: string };

export interface WalSenderEvents {
  /** A standby status update arrived. */
  status(s: StandbyStatus): void;
  /** Hot standby feedback arrived. */
  feedback(f: HotStandbyFeedback): void;
  /** WAL up to `lsn` was handed to the socket. */
  sent(lsn: Lsn): void;
}

export interface WalSenderOptions {
  wire: Wire;
  cursor: WalCursor;
  /** The WAL end to report in XLogData (the flush position of the current timeline, or the switch point). */
  walEnd: () => Lsn;
  /** wal_sender_timeout in milliseconds (0 = never). */
  timeoutMs: number;
  events: WalSenderEvents;
  /** Resolves when the server shuts down. */
  stopping: Promise<void>;
}

/** Wakes a waiting loop when the stream must end (client CopyDone, close, shutdown), leaving nothing behind otherwise. */
class Signal {
  private readonly wakers = new Set<() => void>();
  /** Resolves when `p` settles or the signal fires, whichever is first. */
  until(p: Promise<unknown>): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        this.wakers.delete(done);
        resolve();
      };
      this.wakers.add(done);
      p.then(done, done);
    });
  }
  /** Resolves when the signal fires. */
  next(): Promise<void> {
    return this.until(new Promise(() => undefined));
  }
  fire(): void {
    for (const w of [...this.wakers]) w();
  }
}

export class WalSender {
  private clientDone = false;
  private ended: StreamEnd | undefined;
  private lastHeard = Date.now();
  private pinged = false;
  private sentUpTo: Lsn;
  private copyDoneSent = false;
  private readonly signal = new Signal();

  constructor(private readonly o: WalSenderOptions) {
    this.sentUpTo = o.cursor.position;
  }

  // ---- messages from the client during COPY (the connection dispatches them) ----

  /** A CopyData message from the client. */
  copyData(payload: Buffer): void {
    this.heard();
    const type = payload[0];
    if (type === MSG_STANDBY_STATUS) {
      if (payload.length < STANDBY_STATUS_SIZE) return this.fail('insufficient data left in message');
      const s = decodeStandbyStatus(payload.subarray(0, STANDBY_STATUS_SIZE));
      this.o.events.status(s);
      // A reply asked for is answered at once (ProcessStandbyReplyMessage), never asking back.
      if (s.replyRequested) this.keepalive(false);
      return;
    }
    if (type === MSG_HOT_STANDBY_FEEDBACK) {
      if (payload.length < HOT_STANDBY_FEEDBACK_SIZE) return this.fail('insufficient data left in message');
      this.o.events.feedback(decodeHotStandbyFeedback(payload.subarray(0, HOT_STANDBY_FEEDBACK_SIZE)));
      return;
    }
    // walsender.c ProcessRepliesIfAny: "unexpected message type", the connection is closed.
    this.close(`unexpected message type "${payload.length ? String.fromCharCode(type!) : ''}" in the replication stream`);
  }

  /** The stream is ending (the client's CopyDone, an error, a close): messages after it wait for its end. */
  get finishing(): boolean {
    return this.clientDone || this.ended !== undefined;
  }

  /** The client's CopyDone. */
  copyDone(): void {
    this.heard();
    this.clientDone = true;
    this.signal.fire();
  }

  /** The connection is gone (Terminate, EOF, reset). */
  close(why: string): void {
    this.finish({ kind: 'closed', why });
  }

  private heard(): void {
    this.lastHeard = Date.now();
    this.pinged = false;
  }

  /** An error in the client's messages: ends the COPY with ERROR 08P01, the session stays. */
  private fail(message: string): void {
    if (this.ended) return;
    this.o.wire.send(errorResponse({ severity: 'ERROR', code: '08P01', message }), readyForQuery());
    this.finish({ kind: 'error', message });
  }

  private finish(end: StreamEnd): void {
    if (this.ended) return;
    this.ended = end;
    this.signal.fire();
  }

  private keepalive(replyRequested: boolean): void {
    this.o.wire.send(keepaliveFrame(this.sentUpTo, nowPgTime(), replyRequested));
  }

  /** Stream until the client stops, the timeline ends, an error, or the connection goes. */
  async run(): Promise<StreamEnd> {
    const wire = this.o.wire;
    const timeout = this.o.timeoutMs;
    const watchdog =
      timeout > 0
        ? setInterval(
            () => {
              const silent = Date.now() - this.lastHeard;
              if (silent >= timeout) {
                this.finish({ kind: 'closed', why: 'terminating walsender process due to replication timeout' });
              } else if (silent >= timeout / 2 && !this.pinged) {
                this.pinged = true;
                this.keepalive(true);
              }
            },
            Math.max(10, Math.min(1000, Math.floor(timeout / 4))),
          )
        : undefined;
    const onClosed = (): void => this.close('the client closed the connection');
    void wire.whenClosed().then(onClosed);
    let stopping = false;
    void this.o.stopping.then(() => {
      stopping = true;
      this.signal.fire();
    });
    try {
      for (;;) {
        if (this.ended) return this.ended;
        if (stopping) {
          wire.send(errorResponse({ severity: 'FATAL', code: '57P01', message: 'terminating connection due to administrator command' }));
          return { kind: 'closed', why: 'server shutting down' };
        }
        if (this.clientDone) return this.clientStopped();
        let r;
        try {
          // A read from a slow store is not waited out once the stream has ended.
          const reading = this.o.cursor.read(READ_BURST);
          reading.catch(() => undefined);
          await this.signal.until(reading);
          if (this.ended) return this.ended;
          r = await reading;
        } catch (err) {
          if (!(err instanceof WalSourceError)) throw err;
          if (this.ended) return this.ended;
          wire.send(errorResponse({ severity: 'ERROR', code: err.sqlstate, message: err.message }), readyForQuery());
          return { kind: 'error', message: err.message };
        }
        if (this.ended) return this.ended;
        if (r.kind === 'data') {
          // The socket holds at most its high-water mark: a client that stops reading stops us.
          if (!this.sendWal(r.data)) await this.signal.until(wire.writable());
        } else if (r.kind === 'wait') {
          await this.signal.until(this.o.cursor.waitForMore());
        } else {
          return await this.timelineEnded(r.nextTli, r.switchpoint);
        }
      }
    } finally {
      if (watchdog) clearInterval(watchdog);
    }
  }

  /** XLogData messages of at most MAX_SEND_SIZE; the WAL bytes go to the socket as they are. False once the socket is full. */
  private sendWal(data: Buffer): boolean {
    const walEnd = this.o.walEnd();
    const sendTime = nowPgTime();
    let room = true;
    // Stop at the message that fills the socket's queue: the rest is read again next time (from
    // the segment the cursor holds), so a client that stops reading holds one message beyond it.
    for (let off = 0; off < data.length && room; off += MAX_SEND_SIZE) {
      const piece = data.subarray(off, Math.min(data.length, off + MAX_SEND_SIZE));
      const start = this.o.cursor.position;
      const end = start + BigInt(piece.length);
      room = this.o.wire.send(xlogDataFrameHeader(start, walEnd > end ? walEnd : end, sendTime, piece.length), piece);
      this.o.cursor.consumed(piece.length);
    }
    this.sentUpTo = this.o.cursor.position;
    this.o.events.sent(this.sentUpTo);
    return room;
  }

  /** The client asked to stop: CopyDone back, then the two CommandCompletes (walsender.c EndReplicationCommand). */
  private clientStopped(): StreamEnd {
    const wire = this.o.wire;
    if (!this.copyDoneSent) wire.send(copyDone());
    wire.send(commandComplete('START_STREAMING'), commandComplete('START_REPLICATION'), readyForQuery());
    return { kind: 'client-done' };
  }

  /**
   * The end of a historic timeline: CopyDone, the client's CopyDone (status updates may come
   * first), then next_tli and next_tli_startpos, START_STREAMING, START_REPLICATION, ReadyForQuery.
   */
  private async timelineEnded(nextTli: number, switchpoint: Lsn): Promise<StreamEnd> {
    const wire = this.o.wire;
    wire.send(copyDone());
    this.copyDoneSent = true;
    while (!this.clientDone && !this.ended) await this.signal.next();
    if (this.ended) return this.ended;
    wire.send(endOfTimelineResult(nextTli, switchpoint));
    return { kind: 'timeline-end', nextTli, switchpoint };
  }
}

/** The result a walsender sends for the end of a timeline (also without COPY, for a start at the switch point). */
export function endOfTimelineResult(nextTli: number, switchpoint: Lsn): Buffer {
  return Buffer.concat([
    rowDescription([int8Field('next_tli'), textField('next_tli_startpos')]),
    dataRow([String(nextTli), formatLsn(switchpoint)]),
    commandComplete('START_STREAMING'),
    commandComplete('START_REPLICATION'),
    readyForQuery(),
  ]);
}
