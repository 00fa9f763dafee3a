// Turns a stream of XLogData into segment files in a directory, exactly as pg_receivewal lays
// them out (receivelog.c ProcessXLogDataMsg, open_walfile, close_walfile): `<name>.partial` while
// in progress, fsync + rename + directory fsync when complete. Unlike pg_receivewal, finishing a
// segment runs beside the writes of the next one, and a new segment file is given its full size
// without writing zeros (segment-file.ts). The durable position only moves over segments whose
// rename is durable, in order, so the flush we report never runs ahead of the disk.
import { unlinkSync, readdirSync } from 'node:fs';
import { rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Hash } from 'node:crypto';
import { IncrementalPageChecker } from '../wal/page.js';
import { formatLsn, type Lsn } from '../wal/lsn.js';
import { segmentOffset, walFileName } from '../wal/segment.js';
import { CompressedSegmentFile, PlainSegmentFile, compressionSuffix, type Compression, type SegmentFile } from './segment-file.js';
import { exists, fsyncDir, sameContent, writeFileAtomic } from './fsutil.js';
import { StreamRecordCheck } from './record-check.js';
import { builtin } from '../util/lazy.js';

/** node:crypto, loaded for the first segment hashed (digestSegments). */
const crypto = builtin<typeof import('node:crypto')>('node:crypto');

export interface WalDirSinkOptions {
  dir: string;
  segSize: number;
  blockSize: number;
  compression: Compression;
  compressionLevel?: number;
  noSync: boolean;
  systemId: bigint;
  /** XLOG_PAGE_MAGIC expected for the server's version (undefined: accept a known or new one). */
  magic?: number;
  /** Bytes waiting in a compressor above which the stream should pause (default 32 MiB). */
  highWaterBytes?: number;
  onSegmentDone?: (name: string, endLsn: Lsn, written?: SegmentDigest) => void;
  /**
   * Hash each segment with SHA-256 as it is written, for onSegmentDone: an archive that keeps the
   * finished file as it is then need not read it again. Plain segments written whole from their
   * first byte only; others are done without.
   */
  digestSegments?: boolean;
  /** Sees every stream start and every piece of WAL accepted (receive --serve's live tail). */
  tap?: SinkTap;
  /**
   * Check the WAL record by record (default true): a finished segment is renamed, and bytes count
   * as durable, only up to the start of the record in progress, and WAL whose records do not
   * check out is refused before it is written.
   */
  verifyRecords?: boolean;
  /** Told of a finished segment kept under its .partial name at the end of a stream, its last record not verified. */
  onUnverifiedSegment?: (name: string) => void;
}

/** What a tap on the sink sees: stream starts, and each piece once accepted (a view: copy it to keep it). */
export interface SinkTap {
  begin(start: Lsn, tli: number): void;
  data(lsn: Lsn, data: Buffer): void;
}

/** The SHA-256 (hex) of the `size` bytes written into a segment file, from its first byte to its end. */
export interface SegmentDigest {
  sha256: string;
  size: number;
}

/** Zero-filled spare segment files earlier versions prepared: never a WAL name, removed at start. */
export const SPARE_PREFIX = '.walstream-spare-';

export class WalValidationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WalValidationError';
  }
}

/** Events of the sink, as the stream loop consumes them. */
export interface SinkListener {
  /** Too much is waiting: stop reading from the server. */
  pressure(): void;
  /** Read again. */
  drain(): void;
  /** The durable position moved. */
  durable(lsn: Lsn): void;
  /** A write, fsync or rename failed: nothing more will be made durable. */
  failed(err: Error): void;
}

interface OpenSegment {
  segNo: bigint;
  name: string;
  partialPath: string;
  finalPath: string;
  file: SegmentFile;
  created: boolean;
  dirSynced: boolean;
  checker: IncrementalPageChecker;
  /** The SHA-256 of the bytes written from offset 0 up to `hashedTo` (digestSegments). */
  hash: Hash | undefined;
  hashedTo: number;
}

interface DurabilityJob {
  end: Lsn;
  settled: boolean;
}

/** A finished segment waiting for the record check to pass its end before it is renamed. */
interface RecordGate {
  end: Lsn;
  name: string;
  open: (verified: boolean) => void;
}

export class WalDirSink {
  private readonly listeners = new Set<SinkListener>();
  private tli = 0;
  private current: OpenSegment | undefined;
  private failure: Error | undefined;
  private received: Lsn = 0n;
  private durable: Lsn = 0n;
  private readonly jobs: DurabilityJob[] = [];
  /** The publish chain: segment N+1 is renamed only after segment N. */
  private publishChain: Promise<void> = Promise.resolve();
  /** Everything in flight (syncs, publications), to wait for at the end of a stream. */
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly highWater: number;
  private paused = false;
  /** The first segment of a stream may begin mid-segment when the start was not aligned. */
  private midSegmentStartAllowed = false;
  private readonly records: StreamRecordCheck | undefined;
  private readonly gates: RecordGate[] = [];
  /** A finished segment left unrenamed at the end of a stream (its last record was not verified). */
  private unverified: string | undefined;

  constructor(private readonly opts: WalDirSinkOptions) {
    this.highWater = opts.highWaterBytes ?? 32 * 1024 * 1024;
    if (opts.verifyRecords !== false) {
      this.records = new StreamRecordCheck({ segSize: opts.segSize, blockSize: opts.blockSize, systemId: opts.systemId, ...(opts.magic !== undefined ? { magic: opts.magic } : {}) });
    }
    // Spares left by an earlier version are never WAL: remove them.
    for (const name of safeReaddir(opts.dir)) {
      if (name.startsWith(SPARE_PREFIX)) unlinkQuiet(join(opts.dir, name));
    }
  }

  /** Position streaming will start from: everything before it counts as already handled. */
  begin(start: Lsn, tli: number): void {
    if (this.current) throw new Error('begin() while a segment is open');
    if (this.unverified !== undefined) {
      throw new WalValidationError(`segment ${this.unverified} was finished, but the record running past its end never was; it stays ${this.unverified}.partial`);
    }
    this.tli = tli;
    this.records?.begin(start, tli);
    this.received = start;
    if (start > this.durable) this.durable = start;
    this.midSegmentStartAllowed = true;
    this.opts.tap?.begin(start, tli);
  }

  get receivedLsn(): Lsn {
    return this.received;
  }
  /** Handed to the kernel (plain files) or to the compressor. */
  get writtenLsn(): Lsn {
    return this.received;
  }
  get durableLsn(): Lsn {
    return this.durable;
  }
  get error(): Error | undefined {
    return this.failure;
  }

  /** The segment being written (its name, without .partial), if any. */
  get openSegmentName(): string | undefined {
    return this.current?.name;
  }

  /** Register for the sink's events; returns the detach function. */
  attach(l: SinkListener): () => void {
    this.listeners.add(l);
    return () => {
      this.listeners.delete(l);
    };
  }

  /**
   * Take WAL starting at `lsn`. Synchronous: when it returns, `data` has been consumed (written
   * to the page cache, or copied into a compressor) and may be reused. Throws on a gap, an
   * overlap or a bad page header: no byte of such a piece is written.
   */
  write(lsn: Lsn, data: Buffer): void {
    if (this.failure) throw this.failure;
    if (lsn !== this.received) {
      throw new WalValidationError(`WAL received at ${formatLsn(lsn)} where ${formatLsn(this.received)} was expected`);
    }
    const segSize = BigInt(this.opts.segSize);
    let pos = 0;
    while (pos < data.length) {
      const at = lsn + BigInt(pos);
      const segNo = at / segSize;
      const off = segmentOffset(at, this.opts.segSize);
      const n = Math.min(data.length - pos, this.opts.segSize - off);
      const piece = data.subarray(pos, pos + n);
      let seg = this.current;
      if (!seg) {
        if (off !== 0 && !this.midSegmentStartAllowed) {
          throw new WalValidationError(`WAL for a new segment starts at offset ${off}`);
        }
        try {
          seg = this.openSegment(segNo);
        } catch (err) {
          this.fail(err as Error);
          throw err;
        }
        this.midSegmentStartAllowed = false;
      }
      const problem = seg.checker.feed(off, piece);
      if (problem) throw new WalValidationError(`segment ${seg.name}: ${problem}`);
      const bad = this.records?.feed(segNo, off, piece);
      if (bad) throw new WalValidationError(`segment ${bad.segment}, offset ${bad.offset}: ${bad.message}`);
      try {
        seg.file.write(off, piece);
      } catch (err) {
        this.fail(err as Error);
        throw err;
      }
      if (seg.hash) {
        // Only a segment written in order from its first byte is hashed whole.
        if (off === seg.hashedTo) {
          seg.hash.update(piece);
          seg.hashedTo += n;
        } else {
          seg.hash = undefined;
        }
      }
      this.opts.tap?.data(at, piece);
      this.received = at + BigInt(n);
      if (off + n === this.opts.segSize) {
        this.current = undefined;
        this.publish(seg, this.received);
      }
      pos += n;
    }
    this.openGates();
    this.checkPressure();
  }

  /** Bytes before this are proven by the record check (all that was accepted, without one). */
  private get checkedTo(): Lsn {
    if (!this.records) return this.received;
    const proven = this.records.checkedTo;
    return proven < this.received ? proven : this.received;
  }

  /** Renames wait for the record check to pass a finished segment's end. */
  private gate(end: Lsn, name: string): Promise<boolean> {
    if (this.checkedTo >= end) return Promise.resolve(true);
    return new Promise((open) => this.gates.push({ end, name, open }));
  }

  /**
   * The server ended the timeline at `at` (the end of what was received): a record running on
   * past a segment's end there was cut short by the promotion (PostgreSQL overwrites it on the new
   * timeline), so the finished segments before `at` are named as they are.
   */
  endOfTimeline(at: Lsn): void {
    while (this.gates.length > 0 && this.gates[0]!.end <= at) this.gates.shift()!.open(true);
  }

  private openGates(): void {
    if (this.gates.length === 0) return;
    const to = this.checkedTo;
    while (this.gates.length > 0 && this.gates[0]!.end <= to) this.gates.shift()!.open(true);
  }

  private openSegment(segNo: bigint): OpenSegment {
    const name = walFileName(this.tli, segNo, this.opts.segSize);
    const suffix = compressionSuffix(this.opts.compression);
    const partialPath = join(this.opts.dir, `${name}${suffix}.partial`);
    const finalPath = join(this.opts.dir, `${name}${suffix}`);
    let file: SegmentFile;
    let created: boolean;
    if (this.opts.compression === 'none') {
      const o = PlainSegmentFile.open(partialPath, this.opts.segSize);
      file = o.file;
      created = o.created;
    } else {
      file = CompressedSegmentFile.open(partialPath, this.opts.compression, this.opts.compressionLevel);
      created = true;
    }
    const seg: OpenSegment = {
      segNo,
      name,
      partialPath,
      finalPath,
      file,
      created,
      dirSynced: false,
      checker: new IncrementalPageChecker({
        segNo,
        segSize: this.opts.segSize,
        tli: this.tli,
        blockSize: this.opts.blockSize,
        systemId: this.opts.systemId,
        magic: this.opts.magic,
      }),
      hash: this.opts.digestSegments && this.opts.compression === 'none' ? crypto().createHash('sha256') : undefined,
      hashedTo: 0,
    };
    this.current = seg;
    return seg;
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    const done = (): void => {
      this.inFlight.delete(p);
    };
    p.then(done, done);
    return p;
  }

  /** Make everything accepted so far durable (fsync of the open file, and its name). */
  sync(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    const seg = this.current;
    // Bytes of a record whose CRC is not checked yet are written and synced, not reported.
    const job = this.addJob(this.checkedTo);
    const p = (async () => {
      if (seg && !this.opts.noSync) {
        await seg.file.sync();
        if (!seg.dirSynced && seg.created) await fsyncDir(this.opts.dir);
        seg.dirSynced = true;
      }
      this.settleJob(job);
    })();
    p.catch((err: Error) => this.fail(err));
    return this.track(p);
  }

  /**
   * End of a stream: fsync the open file (unless --no-sync) and close it under its .partial
   * name, and wait until every finished segment is published.
   */
  async endStream(): Promise<void> {
    if (!this.failure) await this.sync().catch(() => undefined);
    const seg = this.current;
    this.current = undefined;
    // A finished segment whose last record runs on into WAL that never came stays .partial: it is
    // streamed again from its start next time. Its durability job never settles.
    for (const g of this.gates.splice(0)) {
      this.unverified ??= g.name;
      this.opts.onUnverifiedSegment?.(g.name);
      g.open(false);
    }
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
    await seg?.file.close().catch(() => undefined);
    if (this.failure) throw this.failure;
  }

  /** Finish a complete segment beside the next one's writes; renames stay in LSN order. */
  private publish(seg: OpenSegment, end: Lsn): void {
    const written: SegmentDigest | undefined = seg.hash && seg.hashedTo === this.opts.segSize ? { sha256: seg.hash.digest('hex'), size: seg.hashedTo } : undefined;
    seg.hash = undefined;
    // While the record check has not passed the segment's end, what it proved of the segment
    // counts as durable once the file is synced; the rest only once the file has its name.
    const proven = this.checkedTo;
    const syncedJob = proven < end ? this.addJob(proven) : undefined;
    const job = this.addJob(end);
    const durableFile = (async () => {
      await seg.file.finish(this.opts.noSync);
      await seg.file.close();
      if (syncedJob) this.settleJob(syncedJob);
    })();
    const prev = this.publishChain;
    const verified = this.gate(end, seg.name);
    this.publishChain = Promise.all([durableFile, prev, verified]).then(async ([, , ok]) => {
      if (!ok) return;
      if (await exists(seg.finalPath)) {
        if (!(await sameContent(seg.finalPath, seg.partialPath))) {
          throw new WalValidationError(`segment ${seg.finalPath} already exists with different contents; not overwritten`);
        }
        await unlink(seg.partialPath);
      } else {
        await rename(seg.partialPath, seg.finalPath);
      }
      if (!this.opts.noSync) await fsyncDir(this.opts.dir);
      this.settleJob(job);
      this.opts.onSegmentDone?.(seg.name, end, written);
    });
    this.publishChain.catch((err: Error) => this.fail(err));
    this.track(this.publishChain).catch(() => undefined);
    this.track(durableFile).catch(() => undefined);
  }

  private checkPressure(): void {
    const pending = this.current?.file.pendingBytes ?? 0;
    if (!this.paused && pending > this.highWater) {
      this.paused = true;
      for (const l of this.listeners) l.pressure();
      const poll = setInterval(() => {
        const now = this.current?.file.pendingBytes ?? 0;
        if (now < this.highWater / 2 || this.failure) {
          clearInterval(poll);
          this.paused = false;
          for (const l of this.listeners) l.drain();
        }
      }, 5);
    }
  }

  private addJob(end: Lsn): DurabilityJob {
    const job = { end, settled: false };
    this.jobs.push(job);
    return job;
  }

  private settleJob(job: DurabilityJob): void {
    job.settled = true;
    let moved = false;
    while (this.jobs.length > 0 && this.jobs[0]!.settled) {
      const j = this.jobs.shift()!;
      if (j.end > this.durable) {
        this.durable = j.end;
        moved = true;
      }
    }
    if (moved) for (const l of this.listeners) l.durable(this.durable);
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const l of this.listeners) l.failed(err);
  }

  /** Does the directory hold this timeline history file already? */
  hasHistory(name: string): Promise<boolean> {
    return exists(join(this.opts.dir, name));
  }

  /** Write a timeline history file atomically (receivelog.c writeTimeLineHistoryFile). */
  writeHistory(name: string, content: Buffer): Promise<void> {
    return writeFileAtomic(join(this.opts.dir, name), content, this.opts.noSync);
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function unlinkQuiet(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}
