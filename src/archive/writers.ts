// The receivers archiving into one archive, as each records itself there: two receivers (each
// with its own slot, each its own spool) may archive the same WAL into the same archive for
// high availability (docs/operations.md), and status shows both and which is ahead. A record is
// a small JSON object `walstream.writer.<writer>.<time>` (storage/types.ts WRITER_RECORD_RE):
// objects in an archive are never overwritten, so each update is a new object and the one before
// is removed after it; a reader takes the newest of each writer. Updated at most every
// `intervalMs` (and at the end of a stream); failures are logged and never stop the receiver.
import { hostname } from 'node:os';
import { KeyUnavailableError, NotFoundError, WRITER_RECORD_PREFIX, WRITER_RECORD_RE, type ArchiveStore } from '../storage/types.js';
import { formatLsn, parseLsn, type Lsn } from '../wal/lsn.js';
import type { Logger } from '../util/log.js';

/** What one receiver records of itself. */
export interface WriterRecord {
  /** The writer's name: its slot, else its host. */
  writer: string;
  host: string;
  pid: number;
  slot: string | null;
  timeline: number | null;
  /** Durable in its spool (what it reports flushed to the server when it has a slot). */
  flushLsn: Lsn | null;
  /** The newest complete segment it archived (or found already archived). */
  lastArchived: string | null;
  updated: Date;
}

/** A writer's name from its slot, else its host name: letters, digits, '_' and '-', at most 63. */
export function writerName(slot: string | undefined, host = hostname()): string {
  const base = (slot ?? host).toLowerCase().replace(/[^a-z0-9_-]/g, '_');
  return base.slice(0, 63) || 'receiver';
}

function recordName(writer: string, at: number): string {
  return `${WRITER_RECORD_PREFIX}${writer}.${at.toString(16).padStart(12, '0')}`;
}

export function encodeWriterRecord(r: WriterRecord): Buffer {
  return Buffer.from(
    `${JSON.stringify({
      format: 1,
      writer: r.writer,
      host: r.host,
      pid: r.pid,
      slot: r.slot,
      timeline: r.timeline,
      flushLsn: r.flushLsn === null ? null : formatLsn(r.flushLsn),
      lastArchived: r.lastArchived,
      updated: r.updated.toISOString(),
    })}\n`,
  );
}

/** A record as stored; undefined when it is not one walstream wrote (never thrown: status shows the rest). */
export function decodeWriterRecord(data: Buffer): WriterRecord | undefined {
  try {
    const o = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
    const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
    const updated = new Date(String(o['updated']));
    if (typeof o['writer'] !== 'string' || Number.isNaN(updated.getTime())) return undefined;
    const flush = str(o['flushLsn']);
    return {
      writer: o['writer'],
      host: str(o['host']) ?? '',
      pid: typeof o['pid'] === 'number' ? o['pid'] : 0,
      slot: str(o['slot']),
      timeline: typeof o['timeline'] === 'number' ? o['timeline'] : null,
      flushLsn: flush === null ? null : parseLsn(flush),
      lastArchived: str(o['lastArchived']),
      updated,
    };
  } catch {
    return undefined;
  }
}

/**
 * The newest record of each writer in the archive, by name; those encrypted with a key not given,
 * and those unreadable otherwise, are left out and counted.
 */
export async function readWriters(store: ArchiveStore): Promise<{ writers: WriterRecord[]; encrypted: number; unreadable: number }> {
  const newest = new Map<string, string>();
  for (const o of await store.list(WRITER_RECORD_PREFIX)) {
    const m = WRITER_RECORD_RE.exec(o.name);
    if (!m) continue;
    const held = newest.get(m[1]!);
    if (held === undefined || o.name > held) newest.set(m[1]!, o.name);
  }
  const writers: WriterRecord[] = [];
  let unreadable = 0;
  let encrypted = 0;
  for (const name of [...newest.values()].sort()) {
    try {
      const r = decodeWriterRecord((await store.get(name)).data);
      if (r) writers.push(r);
      else unreadable++;
    } catch (err) {
      // Replaced meanwhile by a newer one: read next time.
      if (err instanceof KeyUnavailableError) encrypted++;
      else if (!(err instanceof NotFoundError)) unreadable++;
    }
  }
  return { writers, encrypted, unreadable };
}

export interface WriterRecorderOptions {
  store: ArchiveStore;
  slot: string | undefined;
  log: Logger;
  /** At most one record this often (milliseconds). */
  intervalMs?: number;
  /** Store the record encrypted (the receiver encrypts what it archives). */
  encrypted: boolean;
}

/** One receiver's record in the archive, kept up to date at a bounded rate. */
export class WriterRecorder {
  readonly writer: string;
  private readonly host = hostname();
  private timeline: number | null = null;
  private flushLsn: Lsn | null = null;
  private lastArchived: string | null = null;
  /** The record stored last (removed once the next one is stored), and older ones found at start. */
  private stored: string[] | undefined;
  private lastAt = 0;
  private lastWritten = 0;
  private chain: Promise<void> = Promise.resolve();
  private closed = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly o: WriterRecorderOptions) {
    this.writer = writerName(o.slot);
  }

  /** Where the stream is: durable up to `flushLsn` on `timeline`. */
  progress(timeline: number, flushLsn: Lsn): void {
    if (this.timeline === timeline && this.flushLsn !== null && flushLsn <= this.flushLsn) return;
    this.timeline = timeline;
    this.flushLsn = flushLsn;
    this.schedule();
  }

  /** A complete segment is in the archive. */
  archived(segment: string): void {
    if (this.lastArchived !== null && segment.slice(8) <= this.lastArchived.slice(8)) return;
    this.lastArchived = segment;
    this.schedule();
  }

  /** Store what is new now (the end of a stream), after a record being written. */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    return this.enqueue();
  }

  /** Wait for the record being written; nothing more is written after. */
  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.chain;
    this.closed = true;
  }

  private schedule(): void {
    if (this.timer || this.closed) return;
    const wait = Math.max(0, this.lastWritten + (this.o.intervalMs ?? 10_000) - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.enqueue();
    }, wait);
    this.timer.unref();
  }

  /** One write after another, never two at once. */
  private enqueue(): Promise<void> {
    this.chain = this.chain.then(() => (this.closed ? undefined : this.write()));
    return this.chain;
  }

  private async write(): Promise<void> {
    if (this.flushLsn === null && this.lastArchived === null) return;
    const { store, log } = this.o;
    // Also after a failure: the next attempt waits its turn, never a write a moment.
    this.lastWritten = Date.now();
    try {
      if (this.stored === undefined) {
        const own = `${WRITER_RECORD_PREFIX}${this.writer}.`;
        this.stored = (await store.list(own)).map((o) => o.name).filter((n) => WRITER_RECORD_RE.test(n));
      }
      // Names go up with time, also past a clock that stepped back.
      const at = Math.max(Date.now(), this.lastAt + 1);
      const name = recordName(this.writer, at);
      const record: WriterRecord = {
        writer: this.writer,
        host: this.host,
        pid: process.pid,
        slot: this.o.slot ?? null,
        timeline: this.timeline,
        flushLsn: this.flushLsn,
        lastArchived: this.lastArchived,
        updated: new Date(at),
      };
      await store.put(name, encodeWriterRecord(record), { noSync: true, unencrypted: !this.o.encrypted });
      this.lastAt = at;
      const older = this.stored.filter((n) => n < name);
      this.stored = [name];
      for (const n of older) await store.delete(n).catch(() => undefined);
    } catch (err) {
      log.verbose(`could not record this receiver in the archive: ${(err as Error).message}`);
    }
  }
}
