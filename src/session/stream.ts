// The CopyBoth loop of one START_REPLICATION (receivelog.c HandleCopyStream, ProcessXLogDataMsg,
// ProcessKeepaliveMsg, sendFeedback): checks that XLogData is contiguous, hands it to the sink,
// answers keepalives, sends status updates on a timer and, in synchronous mode, after every batch
// once it is durable. The flush position sent is always the sink's durable position. With a
// receive timeout (walreceiver.c's wal_receiver_timeout) a connection from which nothing arrives
// is given up: the caller reconnects.
import { ProtocolError, decodeServerCopyData, encodeStandbyStatus, type ServerCopyMessage } from '../protocol/messages.js';
import { formatLsn, type Lsn } from '../wal/lsn.js';
import { nowPgTime } from '../wal/time.js';
import type { ReplicationConnection } from './connection.js';
import type { CopyBothStream, StreamEnd } from './copyboth.js';
import type { Logger } from '../util/log.js';
import { ConnectionLostError } from './errors.js';
import { SilenceClock } from './silence.js';

/** What the loop needs from where WAL goes (the sink): see sink/wal-dir.ts. */
export interface WalSink {
  readonly receivedLsn: Lsn;
  readonly writtenLsn: Lsn;
  readonly durableLsn: Lsn;
  readonly error: Error | undefined;
  write(lsn: Lsn, data: Buffer): void;
  sync(): Promise<void>;
  /** Register for the sink's events; returns a function that removes the listener. */
  attach(l: SinkListener): () => void;
}

export interface SinkListener {
  /** Too much is queued: stop reading from the server. */
  pressure(): void;
  /** The queue has drained: read again. */
  drain(): void;
  /** The durable position moved. */
  durable(lsn: Lsn): void;
  /** A write or fsync failed: nothing more will be made durable. */
  failed(err: Error): void;
}

/** Every parameter of one stream in one value (receivelog.h StreamCtl). */
export interface StreamCtl {
  start: Lsn;
  timeline: number;
  slot?: string;
  /** Stop once this position is received (pg_receivewal --endpos). */
  endPos?: Lsn;
  segSize: number;
  /** Milliseconds between status updates; 0 = only when asked. */
  statusIntervalMs: number;
  /**
   * End the connection when no message at all arrived from the server for this long while
   * reading (milliseconds; 0 or absent = never). A reply is asked for at half of it.
   */
  receiveTimeoutMs?: number;
  /** fsync and report after every received batch. */
  synchronous: boolean;
  /**
   * Otherwise, make what was received durable at most this long after it arrived (milliseconds;
   * 0 or absent: only at segment ends, as pg_receivewal): receive --serve, whose clients get WAL
   * only once it is durable.
   */
  syncAfterMs?: number;
  /** Report the flush position (with a slot or in synchronous mode), as pg_receivewal does. */
  reportFlush: boolean;
  /**
   * A position on this timeline that an earlier stream of this process made durable in the file
   * this one starts by writing again (the segment in progress, streamed again from its start):
   * reported while the sink is still below it, so that a reconnection never moves the server's
   * slot back, as pg_receivewal's does, to the start of that segment.
   */
  durableBefore?: Lsn;
  /** Resolves when the caller wants the stream to stop (signal). */
  stopRequested: Promise<void>;
  /** Other reasons to stop reading for a while (a full upload spool). */
  backpressure?: { attach(l: { pressure(): void; drain(): void }): () => void };
  log: Logger;
  onProgress?: (received: Lsn, serverEnd: Lsn) => void;
  /** Observation (metrics): every server message, and every move of the durable position. */
  onActivity?: (a: StreamActivity) => void;
}

export interface StreamActivity {
  kind: 'data' | 'keepalive' | 'durable';
  received: Lsn;
  durable: Lsn;
  /** The server's WAL end as last reported in this stream. */
  serverEnd: Lsn;
}

export interface StreamResult {
  end: StreamEnd;
  /** Position after the last byte received. */
  received: Lsn;
}

export async function runStream(conn: ReplicationConnection, sink: WalSink, ctl: StreamCtl): Promise<StreamResult> {
  const round = new StreamRound(sink, ctl);
  const stream = round.start(conn);
  round.watch();
  try {
    const end = await stream.done;
    return { end, received: sink.receivedLsn };
  } finally {
    round.finish();
  }
}

/**
 * One runStream: its state, what it does with each message from the server, and what watches
 * it meanwhile (the sink, the spool, the status timer, the receive timeout, a stop request).
 */
class StreamRound {
  private stream!: CopyBothStream;
  private stopping = false;
  private lastStatus = 0;
  private syncScheduled = false;
  private laterSync: NodeJS.Timeout | undefined;
  private serverEnd: Lsn = 0n;
  private lastSentFlush: Lsn = -1n;
  private lastServerMessage = 0;
  private stopWhenStarted = false;
  /** The round has ended (a stop request that comes later must not act). */
  private over = false;
  private readonly receiveTimeoutMs: number;
  private readonly silence: SilenceClock | undefined;
  /** Who holds reading stopped now. */
  private readonly holds = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private detach: (() => void) | undefined;
  private detachBackpressure: (() => void) | undefined;

  constructor(
    private readonly sink: WalSink,
    private readonly ctl: StreamCtl,
  ) {
    this.receiveTimeoutMs = ctl.receiveTimeoutMs ?? 0;
    this.silence = this.receiveTimeoutMs > 0 ? new SilenceClock(this.receiveTimeoutMs, SilenceClock.tickFor(this.receiveTimeoutMs), Date.now()) : undefined;
  }

  /** START_REPLICATION, every message handed over synchronously as it is framed. */
  start(conn: ReplicationConnection): CopyBothStream {
    const { ctl, silence } = this;
    this.stream = conn.startReplication(ctl.start, ctl.timeline, ctl.slot, {
      onCopyData: (payload) => {
        if (this.stopWhenStarted) this.stop('received stop request');
        this.onMessage(decodeServerCopyData(payload));
      },
      onXLogData: (lsn, walEnd, piece) => {
        if (this.stopWhenStarted) this.stop('received stop request');
        this.onWal(lsn, walEnd, piece);
      },
      onServerMessage() {
        silence?.heard(Date.now());
      },
    });
    return this.stream;
  }

  /** Listen to the sink and the spool, start the timers, and act on a stop request. */
  watch(): void {
    this.watchSink();
    this.detachBackpressure = this.ctl.backpressure?.attach({ pressure: () => this.hold('spool'), drain: () => this.release('spool') });
    this.startTimers();
    this.watchStopRequest();
  }

  /** Everything watch() started, stopped. */
  finish(): void {
    this.over = true;
    if (this.laterSync) clearTimeout(this.laterSync);
    if (this.timer) clearInterval(this.timer);
    if (this.watchdog) clearInterval(this.watchdog);
    this.detach?.();
    this.detachBackpressure?.();
  }

  private observe(kind: StreamActivity['kind']): void {
    this.ctl.onActivity?.({ kind, received: this.sink.receivedLsn, durable: this.sink.durableLsn, serverEnd: this.serverEnd });
  }

  /** The flush position to report: the sink's durable position, or what an earlier stream made durable. */
  private flushToReport(): Lsn {
    if (!this.ctl.reportFlush) return 0n;
    const durable = this.sink.durableLsn;
    const before = this.ctl.durableBefore;
    return before !== undefined && before > durable ? before : durable;
  }

  private sendStatus(replyRequested = false): void {
    const flush = this.flushToReport();
    const status = encodeStandbyStatus({
      write: this.sink.writtenLsn,
      flush,
      apply: 0n,
      clientTime: nowPgTime(),
      replyRequested,
    });
    this.stream.send(status);
    this.lastStatus = Date.now();
    this.lastSentFlush = flush;
  }

  /** Make durable what was received, then report it (a failed sync reports nothing). */
  private syncThenReport(): void {
    this.sink.sync().then(
      () => this.sendStatus(),
      () => undefined,
    );
  }

  // Stop cleanly: ignore further data, make what we have durable, report it, then end the COPY
  // (nothing can be sent after our CopyDone).
  private stop(why: string): void {
    if (this.stopping) return;
    this.stopping = true;
    this.ctl.log.verbose(why);
    this.sink
      .sync()
      .then(
        () => this.sendStatus(),
        () => undefined,
      )
      .finally(() => this.stream.sendCopyDone());
  }

  private onMessage(msg: ServerCopyMessage): void {
    this.lastServerMessage = Date.now();
    if (msg.kind === 'keepalive') {
      if (msg.walEnd > this.serverEnd) this.serverEnd = msg.walEnd;
      this.observe('keepalive');
      if (msg.replyRequested) {
        // Make what we have durable first so the answer can carry it (receivelog.c ProcessKeepaliveMsg).
        if (this.ctl.reportFlush && this.sink.writtenLsn > this.sink.durableLsn) this.syncThenReport();
        else this.sendStatus();
      }
      return;
    }
    this.onWal(msg.dataStart, msg.walEnd, msg.data);
  }

  /** WAL from XLogData: a whole message's, or a piece of one (the framer hands them on as they arrive). */
  private onWal(lsn: Lsn, walEnd: Lsn, piece: Buffer): void {
    this.lastServerMessage = Date.now();
    if (this.stopping) return;
    const { sink, ctl } = this;
    const expected = sink.receivedLsn;
    if (lsn !== expected) {
      throw new ProtocolError(`received WAL at ${formatLsn(lsn)} but expected ${formatLsn(expected)}: the server skipped or repeated data`);
    }
    if (walEnd > this.serverEnd) this.serverEnd = walEnd;
    let data = piece;
    // With --endpos, pg_receivewal stops at the segment boundary inside a message that reaches it.
    if (ctl.endPos !== undefined) {
      const segSize = BigInt(ctl.segSize);
      const boundary = (lsn / segSize + 1n) * segSize;
      const end = lsn + BigInt(data.length);
      if (end > boundary && boundary >= ctl.endPos) data = data.subarray(0, Number(boundary - lsn));
    }
    sink.write(lsn, data);
    ctl.onProgress?.(sink.receivedLsn, this.serverEnd);
    this.observe('data');
    if (ctl.synchronous && !this.syncScheduled) {
      this.syncScheduled = true;
      // After this batch of messages (one socket read), make it durable and report at once.
      setImmediate(() => {
        this.syncScheduled = false;
        if (!this.stopping) this.syncThenReport();
      });
    }
    if (!ctl.synchronous && (ctl.syncAfterMs ?? 0) > 0 && this.laterSync === undefined) {
      this.laterSync = setTimeout(() => {
        this.laterSync = undefined;
        if (!this.stopping) sink.sync().catch(() => undefined);
      }, ctl.syncAfterMs);
    }
    if (ctl.endPos !== undefined && sink.receivedLsn >= ctl.endPos) {
      this.stop(`stopped log streaming at ${formatLsn(sink.receivedLsn)} (timeline ${ctl.timeline}): reached end position`);
    }
  }

  // Reading stops while any source of pressure holds it, and resumes when none does. While it
  // is stopped the server's silence is ours: the receive timeout starts again on resuming.
  private hold(who: string): void {
    this.holds.add(who);
    this.silence?.pause();
    this.stream.pause();
  }

  private release(who: string): void {
    this.holds.delete(who);
    if (this.holds.size === 0) {
      this.silence?.resume(Date.now());
      this.stream.resume();
    }
  }

  /** The sink's pressure and drain hold and release reading; its failure ends the stream; its durable position is reported. */
  private watchSink(): void {
    const { sink, ctl } = this;
    this.detach = sink.attach({
      pressure: () => this.hold('sink'),
      drain: () => this.release('sink'),
      failed: (err: Error) => this.stream.fail(err),
      durable: () => {
        this.observe('durable');
        // Tell the server promptly when a segment becomes durable with a slot (retention) or sync mode.
        if (ctl.reportFlush && !ctl.synchronous && this.flushToReport() !== this.lastSentFlush && this.stream.started) this.sendStatus();
      },
    });
  }

  /** Status updates every status interval, and the receive timeout's watchdog. */
  private startTimers(): void {
    const { ctl, silence, stream } = this;
    if (ctl.statusIntervalMs > 0) {
      this.timer = setInterval(
        () => {
          // After a status interval without any server message, ask for a reply (as walreceiver.c
          // does before wal_receiver_timeout): an idle server otherwise sends nothing, and a live
          // connection could not be told from a dead one. Never when answering a keepalive.
          if (stream.started && Date.now() - this.lastStatus >= ctl.statusIntervalMs) this.sendStatus(Date.now() - this.lastServerMessage >= ctl.statusIntervalMs);
        },
        Math.min(ctl.statusIntervalMs, 1000),
      );
    }
    if (silence) {
      this.watchdog = setInterval(() => {
        const now = Date.now();
        const verdict = silence.tick(now);
        if (verdict === 'ping') {
          // Half the timeout without a word: ask for one (walreceiver.c sends a reply with
          // replyRequested then). Not an answer to a keepalive, so no ping-pong.
          if (stream.started && !this.stopping) this.sendStatus(true);
        } else if (verdict === 'dead') {
          const secs = Math.round(silence.silentFor(now) / 1000);
          stream.fail(new ConnectionLostError(`no message from the server for ${secs} s: connection considered dead (--receive-timeout ${this.receiveTimeoutMs / 1000})`));
        }
      }, silence.tickMs);
    }
  }

  private watchStopRequest(): void {
    void this.ctl.stopRequested.then(() => {
      // A round that has ended must not act: after a timeline switch the next round streams on the
      // same connection, and this round's CopyDone and stale status would end that stream instead.
      if (this.over) return;
      // CopyDone is only valid once the server has entered COPY mode.
      if (this.stream.started) this.stop('received stop request');
      else this.stopWhenStarted = true;
    });
  }
}
