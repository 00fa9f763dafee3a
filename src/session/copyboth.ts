// START_REPLICATION as a pg "Submittable": it sends the command, hands every CopyData payload to
// the caller synchronously, answers the server's CopyDone, and reads the result set that follows
// the end of a timeline (walsender.c StartReplication / XLogSendPhysical; receivelog.c
// HandleEndOfCopyStream, ReadEndOfStreamingResult). Covers the five ways the command can end:
// error after 'W', rows without COPY, CopyDone then rows, "COPY 0" then close, and silent close.
import type pg from 'pg';
import { parseEndOfTimeline, type TextRow } from '../protocol/commands.js';
import { toServerError } from './errors.js';

export interface StreamEvents {
  /** Called synchronously for each CopyData payload: `payload` is a view, copy what you keep. */
  onCopyData(payload: Buffer): void;
  /** The server ended the COPY (end of a historic timeline). */
  onServerCopyDone?(): void;
  /** Any message from the server for this command arrived (liveness: see session/silence.ts). */
  onServerMessage?(): void;
}

export type StreamEnd =
  | { kind: 'timeline-end'; nextTli: number; nextStart: bigint }
  | { kind: 'stopped' }
  | { kind: 'server-shutdown' };

interface Connection {
  query(text: string): void;
  sendCopyFromChunk(chunk: Buffer): void;
  endCopyFrom(): void;
  on(event: string, fn: (...args: unknown[]) => void): void;
  removeListener(event: string, fn: (...args: unknown[]) => void): void;
  stream: { pause(): void; resume(): void; destroy(): void };
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
    private readonly client: pg.Client,
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
    connection.query(this.text);
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
    const e = toServerError(err);
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
