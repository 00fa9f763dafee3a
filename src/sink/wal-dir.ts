// Turns a stream of XLogData into segment files in a directory, exactly as pg_receivewal lays
// them out (receivelog.c ProcessXLogDataMsg, open_walfile, close_walfile): `<name>.partial` while
// in progress, fsync + rename + directory fsync when complete. Unlike pg_receivewal, finishing a
// segment runs beside the writes of the next one; the durable position only moves over segments
// whose rename is durable, in order, so the flush we report never runs ahead of the disk.
import { rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { IncrementalPageChecker } from '../wal/page.js';
import { formatLsn, type Lsn } from '../wal/lsn.js';
import { segmentOffset, walFileName } from '../wal/segment.js';
import { CompressedSegmentFile, PlainSegmentFile, compressionSuffix, type Compression, type SegmentFile } from './segment-file.js';
import { exists, fsyncDir, sameContent, writeFileAtomic } from './fsutil.js';

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
  /** Queued, not yet written bytes above which the stream should pause (default 64 MiB). */
  highWaterBytes?: number;
  onSegmentDone?: (name: string, endLsn: Lsn) => void;
}

/** Mark a promise as handled (its failure is reported through fail()), keeping it awaitable. */
function quiet<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

export class WalValidationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WalValidationError';
  }
}

interface OpenSegment {
  segNo: bigint;
  tli: number;
  name: string;
  partialPath: string;
  finalPath: string;
  file: Promise<SegmentFile>;
  created: Promise<boolean>;
  dirSynced: boolean;
  checker: IncrementalPageChecker;
}

type Op =
  | { kind: 'data'; seg: OpenSegment; offset: number; bufs: Buffer[]; bytes: number; end: Lsn }
  | { kind: 'complete'; seg: OpenSegment; end: Lsn }
  | { kind: 'sync'; seg: OpenSegment | undefined; done: (err?: Error) => void };

/** Events of the sink, as the stream loop consumes them. */
export interface SinkListener {
  pressure(): void;
  drain(): void;
  durable(lsn: Lsn): void;
  failed(err: Error): void;
}

interface DurabilityJob {
  end: Lsn;
  settled: boolean;
}

export class WalDirSink {
  private readonly listeners = new Set<SinkListener>();
  private idleWaiters: (() => void)[] = [];
  private tli = 0;
  private current: OpenSegment | undefined;
  private readonly queue: Op[] = [];
  private pumping = false;
  private queuedBytes = 0;
  private paused = false;
  private failure: Error | undefined;
  private written: Lsn = 0n;
  private received: Lsn = 0n;
  private durable: Lsn = 0n;
  private readonly jobs: DurabilityJob[] = [];
  /** The rename chain: segment N+1 is only published after segment N. */
  private publishChain: Promise<void> = Promise.resolve();
  private readonly highWater: number;

  constructor(private readonly opts: WalDirSinkOptions) {
    this.highWater = opts.highWaterBytes ?? 64 * 1024 * 1024;
  }

  /** Position streaming will start from: everything before it counts as already handled. */
  begin(start: Lsn, tli: number): void {
    if (this.current) throw new Error('begin() while a segment is open');
    this.tli = tli;
    this.received = start;
    this.written = start;
    if (start > this.durable) this.durable = start;
    this.midSegmentStartAllowed = true;
  }

  get receivedLsn(): Lsn {
    return this.received;
  }
  get writtenLsn(): Lsn {
    return this.written;
  }
  get durableLsn(): Lsn {
    return this.durable;
  }
  get error(): Error | undefined {
    return this.failure;
  }
  get isPaused(): boolean {
    return this.paused;
  }

  /**
   * Accept WAL starting at `lsn`. Synchronous: the bytes are copied, checked and queued. Throws on
   * a gap, an overlap or a bad page header: nothing of such a message is written.
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
      const piece = Buffer.from(data.subarray(pos, pos + n));
      let seg = this.current;
      if (!seg || seg.segNo !== segNo) {
        if (seg) throw new Error('internal: segment switch without completion');
        if (off !== 0 && !this.midSegmentStartAllowed) {
          throw new WalValidationError(`WAL for a new segment starts at offset ${off}`);
        }
        seg = this.openSegment(segNo);
        this.midSegmentStartAllowed = false;
      }
      const problem = seg.checker.feed(off, piece);
      if (problem) throw new WalValidationError(`segment ${seg.name}: ${problem}`);
      const end = at + BigInt(n);
      this.enqueue({ kind: 'data', seg, offset: off, bufs: [piece], bytes: n, end });
      this.received = end;
      if (off + n === this.opts.segSize) {
        this.enqueue({ kind: 'complete', seg, end });
        this.current = undefined;
      }
      pos += n;
    }
  }

  /** The first segment of a stream may begin mid-segment when the start was not aligned. */
  private midSegmentStartAllowed = false;

  private openSegment(segNo: bigint): OpenSegment {
    const name = walFileName(this.tli, segNo, this.opts.segSize);
    const suffix = compressionSuffix(this.opts.compression);
    const partialPath = join(this.opts.dir, `${name}${suffix}.partial`);
    const finalPath = join(this.opts.dir, `${name}${suffix}`);
    let opened: Promise<{ file: SegmentFile; created: boolean }>;
    if (this.opts.compression === 'none') {
      opened = PlainSegmentFile.open(partialPath, this.opts.segSize);
    } else {
      opened = CompressedSegmentFile.open(partialPath, this.opts.compression, this.opts.compressionLevel).then((file) => ({ file, created: true }));
    }
    opened.catch((err: Error) => this.fail(err));
    const seg: OpenSegment = {
      segNo,
      tli: this.tli,
      name,
      partialPath,
      finalPath,
      file: quiet(opened.then((o) => o.file)),
      created: quiet(opened.then((o) => o.created)),
      dirSynced: false,
      checker: new IncrementalPageChecker({
        segNo,
        segSize: this.opts.segSize,
        tli: this.tli,
        blockSize: this.opts.blockSize,
        systemId: this.opts.systemId,
        magic: this.opts.magic,
      }),
    };
    this.current = seg;
    return seg;
  }

  /** Make everything accepted so far durable (fsync of the open partial file). */
  sync(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<void>((resolve, reject) => {
      this.enqueue({ kind: 'sync', seg: this.current, done: (err) => (err ? reject(err) : resolve()) });
    });
  }

  /**
   * End of a stream: write what is queued, fsync the open partial file (unless --no-sync), close
   * it under its .partial name, and wait until every finished segment is published.
   */
  async endStream(): Promise<void> {
    if (!this.failure) await this.sync().catch(() => undefined);
    const seg = this.current;
    this.current = undefined;
    await this.idle();
    await this.publishChain.catch(() => undefined);
    if (seg) {
      const file = await seg.file.catch(() => undefined);
      await file?.close().catch(() => undefined);
    }
    if (this.failure) throw this.failure;
  }

  /** Resolves when the queue is empty. */
  private idle(): Promise<void> {
    if (!this.pumping && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private enqueue(op: Op): void {
    if (op.kind === 'data') {
      const last = this.queue[this.queue.length - 1];
      if (last && last.kind === 'data' && last.seg === op.seg && last.offset + last.bytes === op.offset && last.bufs.length < 64) {
        last.bufs.push(...op.bufs);
        last.bytes += op.bytes;
        last.end = op.end;
      } else {
        this.queue.push(op);
      }
      this.queuedBytes += op.bytes;
      if (!this.paused && this.queuedBytes > this.highWater) {
        this.paused = true;
        for (const l of this.listeners) l.pressure();
      }
    } else {
      this.queue.push(op);
    }
    if (!this.pumping) void this.pump();
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      while (this.queue.length > 0) {
        const op = this.queue.shift()!;
        if (this.failure) {
          if (op.kind === 'sync') op.done(this.failure);
          continue;
        }
        try {
          await this.run(op);
        } catch (err) {
          this.fail(err as Error);
          if (op.kind === 'sync') op.done(err as Error);
        }
      }
    } finally {
      this.pumping = false;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  private async run(op: Op): Promise<void> {
    if (op.kind === 'data') {
      const file = await op.seg.file;
      await file.write(op.offset, op.bufs);
      this.written = op.end;
      this.queuedBytes -= op.bytes;
      if (this.paused && this.queuedBytes < this.highWater / 2) {
        this.paused = false;
        for (const l of this.listeners) l.drain();
      }
      return;
    }
    if (op.kind === 'complete') {
      this.publish(op.seg, op.end);
      return;
    }
    // sync: everything queued before it is written; make it durable.
    const target = this.written;
    const seg = op.seg;
    const job = this.addJob(target);
    try {
      if (seg && !this.opts.noSync) {
        const file = await seg.file;
        await file.sync();
        if (!seg.dirSynced && (await seg.created)) {
          await fsyncDir(this.opts.dir);
        }
        seg.dirSynced = true;
      }
      this.settleJob(job);
      op.done();
    } catch (err) {
      op.done(err as Error);
      throw err;
    }
  }

  /** Finish a complete segment beside the next one's writes; renames stay in LSN order. */
  private publish(seg: OpenSegment, end: Lsn): void {
    const job = this.addJob(end);
    const durableFile = (async () => {
      const file = await seg.file;
      await file.finish(this.opts.noSync);
      await file.close();
    })();
    const prev = this.publishChain;
    this.publishChain = Promise.all([durableFile, prev]).then(async () => {
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
      this.opts.onSegmentDone?.(seg.name, end);
    });
    this.publishChain.catch((err: Error) => this.fail(err));
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

  /** Register for the sink's events (pressure, drain, durable, failed); returns the detach function. */
  attach(l: SinkListener): () => void {
    this.listeners.add(l);
    return () => {
      this.listeners.delete(l);
    };
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
