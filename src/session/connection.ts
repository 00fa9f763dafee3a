// One physical replication connection (walsender in replication=true mode): connect through the
// pg client (auth, TLS, pgpass, PG* variables), run replication commands over the simple query
// protocol and read their text rows. Mirrors streamutil.c (GetConnection, RunIdentifySystem,
// RetrieveWalSegSize, CreateReplicationSlot, GetSlotInformation).
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
import { ConnectionLostError, toServerError } from './errors.js';
import type { ReplicationClientConfig } from './conninfo.js';
import { CopyBothStream, type StreamEvents } from './copyboth.js';
import type { Lsn } from '../wal/lsn.js';
import { startReplicationCommand } from '../protocol/commands.js';

export interface CommandResult {
  fields: string[];
  rows: TextRow[];
}

const textOnly = { getTypeParser: () => (value: string) => value };

export class ReplicationConnection {
  private closed = false;

  private constructor(
    private readonly client: pg.Client,
    readonly serverVersionNum: number,
  ) {}

  static async connect(cfg: ReplicationClientConfig): Promise<ReplicationConnection> {
    const client = new pg.Client({ ...cfg, types: textOnly } as pg.ClientConfig);
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
      throw toServerError(err);
    }
    if (early) throw toServerError(early);
    const conn = new ReplicationConnection(client, 0);
    client.removeListener('error', onError);
    // Failures reach the command in flight; without a listener an 'error' event would crash the process.
    client.on('error', () => undefined);
    const res = await conn.command(showCommand('server_version_num'));
    const num = Number(res.rows[0]?.['server_version_num']);
    if (!Number.isInteger(num) || num < 100000) throw new ProtocolError('could not read server_version_num');
    (conn as { serverVersionNum: number }).serverVersionNum = num;
    return conn;
  }

  get pgClient(): pg.Client {
    return this.client;
  }

  /** Run one replication command and return its rows as text. */
  async command(text: string): Promise<CommandResult> {
    if (this.closed) throw new ConnectionLostError('connection is closed');
    try {
      const res = await this.client.query({ text, types: textOnly } as pg.QueryConfig);
      const fields = (res.fields ?? []).map((f) => f.name);
      return { fields, rows: (res.rows ?? []) as TextRow[] };
    } catch (err) {
      throw toServerError(err);
    }
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

