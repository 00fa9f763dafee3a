// BASE_BACKUP over a replication connection, as a pg "Submittable" (like session/copyboth.ts),
// read the way pg_basebackup.c BaseBackup reads it: the start position row, the tablespace list,
// then the archives: PostgreSQL 15+ in one COPY OUT of typed CopyData messages (basebackup_copy.c
// copystream: 'n' new archive, 'd' data, 'p' progress, 'm' manifest follows); 13 and 14 in one
// COPY OUT per tablespace in the list's order, then one more for the manifest; last the end
// position row.
//
// Guarantees: memory stays bounded whatever the backup's size: archive data is handed on as views
// of the socket's chunks (never reassembled), and reading the socket pauses while more than a few
// megabytes wait for the consumer; a server error ends every pending read with that error, as one
// line (ServerError keeps its SQLSTATE); the connection is given back to pg at ReadyForQuery.
import {
  BB_DATA,
  BB_MANIFEST,
  BB_NEW_ARCHIVE,
  BB_PROGRESS,
  baseBackupCommand,
  parseBackupPosition,
  parseNewArchive,
  parseProgress,
  parseTablespaceRow,
  tablespaceArchiveName,
  type BackupPosition,
  type BaseBackupCommandOptions,
  type TablespaceInfo,
} from '../protocol/basebackup.js';
import type { TextRow } from '../protocol/commands.js';
import { ProtocolError } from '../protocol/messages.js';
import type { ReplicationConnection } from './connection.js';
import { ConnectionLostError, toServerError } from './errors.js';

const COPY_DATA = 0x64; // 'd'
const COPY_OUT_RESPONSE = 0x48; // 'H'
const COPY_DONE = 0x63; // 'c'
const READY_FOR_QUERY = 0x5a; // 'Z'
/** A message other than archive data longer than this is not something a walsender sends. */
const MAX_OTHER_MESSAGE = 64 * 1024 * 1024;
/** The two zero blocks that end a tar archive. */
const TAR_END_BYTES = 1024;

/** Pause reading the socket once this much archive data waits for the consumer; resume below the low mark. */
export const DEFAULT_HIGH_WATER = 8 * 1024 * 1024;
const LOW_FRACTION = 0.25;

/**
 * Cuts the server's bytes into messages while BASE_BACKUP runs: archive data (CopyData of 13/14;
 * the 'd' CopyData of 15+ after its type byte) goes to `data` in pieces as they arrive, other
 * CopyData payloads whole to `copyMessage`, every other message whole to `other`.
 */
export class BackupFramer {
  private partial: Buffer | undefined;
  private dataLeft = 0;

  constructor(
    /** 15+: CopyData payloads start with a type byte. */
    private readonly typed: boolean,
    private readonly sink: { data(piece: Buffer): void; copyMessage(payload: Buffer): void; other(message: Buffer): void },
  ) {}

  push(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length) {
      if (this.dataLeft > 0) {
        const n = Math.min(this.dataLeft, chunk.length - pos);
        this.dataLeft -= n;
        this.sink.data(chunk.subarray(pos, pos + n));
        pos += n;
        continue;
      }
      if (this.partial) {
        const take = Math.min(this.needed(this.partial) - this.partial.length, chunk.length - pos);
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

  private needed(b: Buffer): number {
    if (b.length < 5) return 5;
    if (b[0] === COPY_DATA) {
      if (!this.typed) return 5;
      if (b.length < 6) return 6;
      if (b[5] === BB_DATA) return 6;
    }
    return 1 + b.readUInt32BE(1);
  }

  /** Hand on the message starting at `at`; the bytes used, 0 when more are needed first. */
  private consume(b: Buffer, at: number): number {
    const avail = b.length - at;
    if (avail < 5) return 0;
    const type = b[at]!;
    const len = b.readUInt32BE(at + 1);
    if (len < 4) throw new ProtocolError(`invalid message length ${len} from the server`);
    if (type === COPY_DATA) {
      if (!this.typed) {
        this.dataLeft = len - 4;
        return 5;
      }
      if (len < 5) throw new ProtocolError('empty CopyData message from BASE_BACKUP');
      if (avail < 6) return 0;
      if (b[at + 5] === BB_DATA) {
        this.dataLeft = len - 5;
        return 6;
      }
    }
    if (len > MAX_OTHER_MESSAGE) throw new ProtocolError(`message of ${len} bytes from the server: too long`);
    if (avail < 1 + len) return 0;
    const message = b.subarray(at, at + 1 + len);
    if (type === COPY_DATA) this.sink.copyMessage(message.subarray(5));
    else this.sink.other(message);
    return 1 + len;
  }
}

/** What the server said before the archives: where the backup starts and which tablespaces it holds. */
export interface BaseBackupStart extends BackupPosition {
  /** In the server's order; the data directory is the one without an OID. */
  tablespaces: TablespaceInfo[];
}

/** One archive of the backup: base.tar or <oid>.tar (with server-side compression, its suffix too). */
export interface BackupArchiveStream {
  name: string;
  /** The tablespace's OID and location; both undefined for the data directory. */
  oid: number | undefined;
  location: string | undefined;
  /** The archive's bytes, in order; read it to its end before asking for the next archive. */
  data: AsyncIterable<Buffer>;
}

type Item = { kind: 'archive'; name: string; location: string | undefined } | { kind: 'data'; chunk: Buffer } | { kind: 'manifest' };

export interface BaseBackupEvents {
  /** Archive bytes the server reports done ('p' messages in 15+; counted as they arrive before) and the total it announced with PROGRESS (bytes). */
  onProgress?(done: number, total: number | undefined): void;
}

interface DataStream {
  pause(): void;
  resume(): void;
  destroy(err?: Error): void;
  listeners(event: 'data'): ((chunk: Buffer) => void)[];
  on(event: 'data', fn: (chunk: Buffer) => void): void;
  removeListener(event: 'data', fn: (chunk: Buffer) => void): void;
}

interface PgConnection {
  query(text: string): void;
  stream: DataStream;
}

/**
 * A running BASE_BACKUP. Read it in order: `start`, then nextArchive() until it gives undefined
 * (the manifest comes next), then manifest(), then `end`. Any failure (the server's error, a lost
 * connection, abort()) rejects whatever is pending.
 */
export class BaseBackupRun {
  readonly start: Promise<BaseBackupStart>;
  readonly end: Promise<BackupPosition>;
  private resolveStart!: (s: BaseBackupStart) => void;
  private rejectStart!: (e: Error) => void;
  private resolveEnd!: (p: BackupPosition) => void;
  private rejectEnd!: (e: Error) => void;

  private connection: PgConnection | undefined;
  private fields: string[] = [];
  private startPos: BackupPosition | undefined;
  private endPos: BackupPosition | undefined;
  private tablespaces: TablespaceInfo[] | undefined;
  private startResolved = false;
  private copies = 0;
  private bytesDone = 0;
  private totalBytes: number | undefined;

  private readonly queue: Item[] = [];
  private queuedBytes = 0;
  private paused = false;
  private finished = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;
  private peeked: Item | undefined;

  constructor(
    private readonly text: string,
    private readonly typed: boolean,
    private readonly events: BaseBackupEvents = {},
    private readonly highWater = DEFAULT_HIGH_WATER,
  ) {
    this.start = new Promise((res, rej) => {
      this.resolveStart = res;
      this.rejectStart = rej;
    });
    this.end = new Promise((res, rej) => {
      this.resolveEnd = res;
      this.rejectEnd = rej;
    });
    // Callers await these; never an unhandled rejection meanwhile.
    this.start.catch(() => undefined);
    this.end.catch(() => undefined);
  }

  /** The command text sent. */
  get command(): string {
    return this.text;
  }

  // ---- pg Submittable ----
  submit(connection: PgConnection): void {
    this.connection = connection;
    this.takeOver(connection.stream);
    connection.query(this.text);
  }

  /** pg's parser steps aside until ReadyForQuery; archive data never goes through it. */
  private takeOver(stream: DataStream): void {
    const pgListeners = stream.listeners('data');
    for (const l of pgListeners) stream.removeListener('data', l);
    let givenBack = false;
    const giveBack = (): void => {
      if (givenBack) return;
      givenBack = true;
      stream.removeListener('data', onData);
      for (const l of pgListeners) stream.on('data', l);
    };
    const framer = new BackupFramer(this.typed, {
      data: (piece) => this.onData(piece),
      copyMessage: (payload) => this.onCopyMessage(payload),
      other: (message) => {
        const type = message[0];
        if (type === COPY_OUT_RESPONSE) this.onCopyOut();
        else if (type === COPY_DONE) this.onCopyDone();
        else if (type === READY_FOR_QUERY) giveBack();
        for (const l of pgListeners) l(message);
      },
    });
    const onData = (chunk: Buffer): void => {
      if (givenBack) {
        for (const l of pgListeners) l(chunk);
        return;
      }
      try {
        framer.push(chunk);
      } catch (err) {
        this.abort(err instanceof Error ? err : new Error(String(err)));
      }
    };
    stream.on('data', onData);
  }

  handleRowDescription(msg: { fields: { name: string }[] }): void {
    this.fields = msg.fields.map((f) => f.name);
  }

  handleDataRow(msg: { fields: (string | null)[] }): void {
    if (this.failure) return;
    const row: TextRow = {};
    this.fields.forEach((name, i) => {
      row[name] = msg.fields[i] ?? null;
    });
    try {
      if (this.fields.includes('spcoid')) {
        (this.tablespaces ??= []).push(parseTablespaceRow(row));
      } else if (this.fields.includes('recptr')) {
        if (!this.startPos) this.startPos = parseBackupPosition(row, 'start');
        else if (!this.endPos) this.endPos = parseBackupPosition(row, 'end');
        else throw new ProtocolError('BASE_BACKUP sent a third position row');
      } else {
        throw new ProtocolError(`BASE_BACKUP sent an unexpected result set (${this.fields.join(', ')})`);
      }
    } catch (err) {
      this.abort(err as Error);
    }
  }

  handleCommandComplete(): void {
    if (this.failure || this.startResolved || !this.startPos || !this.tablespaces) return;
    this.startResolved = true;
    const ts = this.tablespaces;
    if (!ts.some((t) => t.oid === undefined)) return this.abort(new ProtocolError('BASE_BACKUP listed no data directory among the tablespaces'));
    if (ts.every((t) => t.sizeKb !== undefined)) this.totalBytes = ts.reduce((n, t) => n + t.sizeKb! * 1024, 0);
    this.resolveStart({ ...this.startPos, tablespaces: ts });
  }

  handleEmptyQuery(): void {}

  handleCopyInResponse(): void {
    this.abort(new ProtocolError('server sent CopyInResponse to BASE_BACKUP'));
  }

  handleCopyData(): void {
    // Never reached: CopyData is framed above, before pg's parser.
  }

  handleReadyForQuery(): void {
    if (this.failure) return this.settleFailure();
    if (!this.startResolved) return this.abort(new ProtocolError('BASE_BACKUP ended without sending its start position and tablespaces'));
    if (!this.endPos) return this.abort(new ProtocolError('BASE_BACKUP ended without sending its end position'));
    this.finished = true;
    this.resolveEnd(this.endPos);
    this.notify();
  }

  handleError(err: unknown): void {
    const e = toServerError(err, { command: 'BASE_BACKUP' });
    if (!this.failure) this.failure = e;
    this.settleFailure();
  }

  // ---- the stream of archives ----

  /** The next archive, or undefined when none is left (the manifest or the end comes next). */
  async nextArchive(): Promise<BackupArchiveStream | undefined> {
    for (;;) {
      const item = await this.take();
      if (item === undefined) return undefined;
      if (item.kind === 'data') continue; // the rest of an archive the caller did not read
      if (item.kind === 'manifest') {
        this.peeked = item;
        return undefined;
      }
      const oidText = /^(\d+)\.tar/.exec(item.name)?.[1];
      const oid = oidText !== undefined ? Number(oidText) : undefined;
      return { name: item.name, oid, location: item.location, data: this.dataOf() };
    }
  }

  /** The backup_manifest's bytes (after the last archive); undefined when the server sent none. */
  async manifest(): Promise<Buffer | undefined> {
    let item = await this.take();
    while (item !== undefined && item.kind !== 'manifest') item = await this.take();
    if (item === undefined) return undefined;
    const parts: Buffer[] = [];
    for await (const b of this.dataOf()) parts.push(Buffer.from(b));
    return Buffer.concat(parts);
  }

  /** What ended the backup on the server's side (its error, the connection lost) or abort()'s error; undefined while it runs or once it finished well. */
  get failed(): Error | undefined {
    return this.failure;
  }

  /** Stop: the connection is dropped and everything pending fails with `err`. */
  abort(err: Error): void {
    if (this.failure || this.finished) return;
    this.failure = err;
    this.connection?.stream.destroy();
    this.settleFailure();
  }

  private async *dataOf(): AsyncGenerator<Buffer> {
    for (;;) {
      const item = await this.take();
      if (item === undefined) return;
      if (item.kind !== 'data') {
        this.peeked = item;
        return;
      }
      yield item.chunk;
    }
  }

  private async take(): Promise<Item | undefined> {
    if (this.peeked) {
      const p = this.peeked;
      this.peeked = undefined;
      return p;
    }
    for (;;) {
      const item = this.queue.shift();
      if (item) {
        if (item.kind === 'data') {
          this.queuedBytes -= item.chunk.length;
          if (this.paused && this.queuedBytes <= this.highWater * LOW_FRACTION && !this.failure) {
            this.paused = false;
            this.connection?.stream.resume();
          }
        }
        return item;
      }
      if (this.failure) throw this.failure;
      if (this.finished) return undefined;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  private push(item: Item): void {
    if (this.failure) return;
    this.queue.push(item);
    if (item.kind === 'data') {
      this.queuedBytes += item.chunk.length;
      if (!this.paused && this.queuedBytes >= this.highWater) {
        this.paused = true;
        this.connection?.stream.pause();
      }
    }
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private onData(piece: Buffer): void {
    if (this.copies === 0 && !this.typed) return this.abort(new ProtocolError('BASE_BACKUP sent data before its COPY began'));
    if (piece.length === 0) return;
    this.push({ kind: 'data', chunk: piece });
    if (!this.typed) {
      this.bytesDone += piece.length;
      if (this.copies <= (this.tablespaces?.length ?? 0)) this.events.onProgress?.(this.bytesDone, this.totalBytes);
    }
  }

  private onCopyMessage(payload: Buffer): void {
    try {
      switch (payload[0]) {
        case BB_NEW_ARCHIVE: {
          const { name, location } = parseNewArchive(payload);
          return this.push({ kind: 'archive', name, location: location === '' ? undefined : location });
        }
        case BB_PROGRESS:
          this.bytesDone = Number(parseProgress(payload));
          this.events.onProgress?.(this.bytesDone, this.totalBytes);
          return;
        case BB_MANIFEST:
          if (payload.length !== 1) throw new ProtocolError('malformed manifest message from BASE_BACKUP');
          return this.push({ kind: 'manifest' });
        default:
          throw new ProtocolError(`BASE_BACKUP sent a CopyData message of unknown type ${payload[0]}`);
      }
    } catch (err) {
      this.abort(err as Error);
    }
  }

  /** A COPY OUT begins: in 15+ the one for everything; before, one per tablespace in the list's order, then the manifest's. */
  private onCopyOut(): void {
    this.copies++;
    if (this.typed) {
      if (this.copies > 1) this.abort(new ProtocolError('BASE_BACKUP began a second COPY'));
      return;
    }
    const ts = this.tablespaces ?? [];
    const t = ts[this.copies - 1];
    if (t) this.push({ kind: 'archive', name: tablespaceArchiveName(t), location: t.location });
    else if (this.copies === ts.length + 1) this.push({ kind: 'manifest' });
    else this.abort(new ProtocolError('BASE_BACKUP sent more COPY streams than tablespaces and a manifest'));
  }

  /**
   * A COPY OUT ends. Before 15 the server ends a tablespace's tar without the two zero blocks that
   * end a tar archive, and pg_basebackup adds them (ReceiveTarFile): so do we, so that every
   * stored archive is a whole tar whatever the server's version.
   */
  private onCopyDone(): void {
    if (this.typed || this.failure) return;
    if (this.copies >= 1 && this.copies <= (this.tablespaces?.length ?? 0)) this.push({ kind: 'data', chunk: Buffer.alloc(TAR_END_BYTES) });
  }

  private settleFailure(): void {
    const e = this.failure ?? new ConnectionLostError('BASE_BACKUP failed');
    this.rejectStart(e);
    this.rejectEnd(e);
    this.notify();
  }
}

/**
 * Send BASE_BACKUP on `conn` (idle): the run reads the answer. Progress from PROGRESS; see
 * BaseBackupRun for the order to read it in.
 */
export function startBaseBackup(conn: ReplicationConnection, opts: BaseBackupCommandOptions, events: BaseBackupEvents = {}, highWater?: number): BaseBackupRun {
  const run = new BaseBackupRun(baseBackupCommand(opts, conn.serverVersionNum), conn.serverVersionNum >= 150000, events, highWater);
  conn.pgClient.query(run as unknown as import('pg').Submittable);
  return run;
}
