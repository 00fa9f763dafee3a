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
  let stream!: CopyBothStream;
  let stopping = false;
  let lastStatus = 0;
  let syncScheduled = false;
  let laterSync: NodeJS.Timeout | undefined;
  let serverEnd: Lsn = 0n;
  let lastSentFlush: Lsn = -1n;
  let lastServerMessage = 0;
  const observe = (kind: StreamActivity['kind']): void => ctl.onActivity?.({ kind, received: sink.receivedLsn, durable: sink.durableLsn, serverEnd });

  const sendStatus = (replyRequested = false): void => {
    const flush = ctl.reportFlush ? sink.durableLsn : 0n;
    const status = encodeStandbyStatus({
      write: sink.writtenLsn,
      flush,
      apply: 0n,
      clientTime: nowPgTime(),
      replyRequested,
    });
    stream.send(status);
    lastStatus = Date.now();
    lastSentFlush = flush;
  };

  // Stop cleanly: ignore further data, make what we have durable, report it, then end the COPY
  // (nothing can be sent after our CopyDone).
  const stop = (why: string): void => {
    if (stopping) return;
    stopping = true;
    ctl.log.verbose(why);
    sink
      .sync()
      .then(
        () => sendStatus(),
        () => undefined,
      )
      .finally(() => stream.sendCopyDone());
  };

  const onMessage = (msg: ServerCopyMessage): void => {
    lastServerMessage = Date.now();
    if (msg.kind === 'keepalive') {
      if (msg.walEnd > serverEnd) serverEnd = msg.walEnd;
      observe('keepalive');
      if (msg.replyRequested) {
        if (ctl.reportFlush && sink.writtenLsn > sink.durableLsn) {
          // Make what we have durable first so the answer can carry it (receivelog.c ProcessKeepaliveMsg).
          sink.sync().then(
            () => sendStatus(),
            () => undefined,
          );
        } else {
          sendStatus();
        }
      }
      return;
    }
    onWal(msg.dataStart, msg.walEnd, msg.data);
  };

  /** WAL from XLogData: a whole message's, or a piece of one (the framer hands them on as they arrive). */
  const onWal = (lsn: Lsn, walEnd: Lsn, piece: Buffer): void => {
    lastServerMessage = Date.now();
    if (stopping) return;
    const expected = sink.receivedLsn;
    if (lsn !== expected) {
      throw new ProtocolError(`received WAL at ${formatLsn(lsn)} but expected ${formatLsn(expected)}: the server skipped or repeated data`);
    }
    if (walEnd > serverEnd) serverEnd = walEnd;
    let data = piece;
    // With --endpos, pg_receivewal stops at the segment boundary inside a message that reaches it.
    if (ctl.endPos !== undefined) {
      const segSize = BigInt(ctl.segSize);
      const boundary = (lsn / segSize + 1n) * segSize;
      const end = lsn + BigInt(data.length);
      if (end > boundary && boundary >= ctl.endPos) data = data.subarray(0, Number(boundary - lsn));
    }
    sink.write(lsn, data);
    ctl.onProgress?.(sink.receivedLsn, serverEnd);
    observe('data');
    if (ctl.synchronous && !syncScheduled) {
      syncScheduled = true;
      // After this batch of messages (one socket read), make it durable and report at once.
      setImmediate(() => {
        syncScheduled = false;
        if (stopping) return;
        sink.sync().then(
          () => sendStatus(),
          () => undefined,
        );
      });
    }
    if (!ctl.synchronous && (ctl.syncAfterMs ?? 0) > 0 && laterSync === undefined) {
      laterSync = setTimeout(() => {
        laterSync = undefined;
        if (!stopping) sink.sync().catch(() => undefined);
      }, ctl.syncAfterMs);
    }
    if (ctl.endPos !== undefined && sink.receivedLsn >= ctl.endPos) {
      stop(`stopped log streaming at ${formatLsn(sink.receivedLsn)} (timeline ${ctl.timeline}): reached end position`);
    }
  };

  const receiveTimeoutMs = ctl.receiveTimeoutMs ?? 0;
  const silence = receiveTimeoutMs > 0 ? new SilenceClock(receiveTimeoutMs, SilenceClock.tickFor(receiveTimeoutMs), Date.now()) : undefined;

  stream = conn.startReplication(ctl.start, ctl.timeline, ctl.slot, {
    onCopyData(payload) {
      if (stopWhenStarted) stop('received stop request');
      onMessage(decodeServerCopyData(payload));
    },
    onXLogData(lsn, walEnd, piece) {
      if (stopWhenStarted) stop('received stop request');
      onWal(lsn, walEnd, piece);
    },
    onServerMessage() {
      silence?.heard(Date.now());
    },
  });

  // Reading stops while any source of pressure holds it, and resumes when none does. While it
  // is stopped the server's silence is ours: the receive timeout starts again on resuming.
  const holds = new Set<string>();
  const hold = (who: string): void => {
    holds.add(who);
    silence?.pause();
    stream.pause();
  };
  const release = (who: string): void => {
    holds.delete(who);
    if (holds.size === 0) {
      silence?.resume(Date.now());
      stream.resume();
    }
  };
  const onPressure = (): void => hold('sink');
  const onDrain = (): void => release('sink');
  const onFailed = (err: Error): void => stream.fail(err);
  const onDurable = (): void => {
    observe('durable');
    // Tell the server promptly when a segment becomes durable with a slot (retention) or sync mode.
    if (ctl.reportFlush && !ctl.synchronous && sink.durableLsn !== lastSentFlush && stream.started) sendStatus();
  };
  const detach = sink.attach({ pressure: onPressure, drain: onDrain, failed: onFailed, durable: onDurable });
  const detachBackpressure = ctl.backpressure?.attach({ pressure: () => hold('spool'), drain: () => release('spool') });
  const timer =
    ctl.statusIntervalMs > 0
      ? setInterval(
          () => {
            // After a status interval without any server message, ask for a reply (as walreceiver.c
            // does before wal_receiver_timeout): an idle server otherwise sends nothing, and a live
            // connection could not be told from a dead one. Never when answering a keepalive.
            if (stream.started && Date.now() - lastStatus >= ctl.statusIntervalMs) sendStatus(Date.now() - lastServerMessage >= ctl.statusIntervalMs);
          },
          Math.min(ctl.statusIntervalMs, 1000),
        )
      : undefined;
  const watchdog = silence
    ? setInterval(() => {
        const now = Date.now();
        const verdict = silence.tick(now);
        if (verdict === 'ping') {
          // Half the timeout without a word: ask for one (walreceiver.c sends a reply with
          // replyRequested then). Not an answer to a keepalive, so no ping-pong.
          if (stream.started && !stopping) sendStatus(true);
        } else if (verdict === 'dead') {
          const secs = Math.round(silence.silentFor(now) / 1000);
          stream.fail(new ConnectionLostError(`no message from the server for ${secs} s: connection considered dead (--receive-timeout ${receiveTimeoutMs / 1000})`));
        }
      }, silence.tickMs)
    : undefined;
  let stopWhenStarted = false;
  let over = false;
  void ctl.stopRequested.then(() => {
    // A round that has ended must not act: after a timeline switch the next round streams on the
    // same connection, and this round's CopyDone and stale status would end that stream instead.
    if (over) return;
    // CopyDone is only valid once the server has entered COPY mode.
    if (stream.started) stop('received stop request');
    else stopWhenStarted = true;
  });

  try {
    const end = await stream.done;
    return { end, received: sink.receivedLsn };
  } finally {
    over = true;
    if (laterSync) clearTimeout(laterSync);
    if (timer) clearInterval(timer);
    if (watchdog) clearInterval(watchdog);
    detach();
    detachBackpressure?.();
  }
}
