// Moves finished files from the receiver's spool directory (pg_receivewal layout) into the
// archive: history files and complete segments, in name order, several at a time. A file leaves
// the spool only after the archive confirmed it (created, or already there with identical bytes);
// the newest uploaded segment stays behind as the spool's resume marker. Transient failures are
// retried with capped, jittered backoff, each one logged; a conflict (different bytes under the
// same name) or corruption stops the receiver. Past --spool-max bytes waiting, it asks the stream
// to stop reading, so the server's slot holds the WAL instead. At start it removes the temp files
// that writers killed mid-write left in the spool (history files written atomically, see
// sink/fsutil.ts), by the rule every walstream directory follows (storage/leftovers.ts).
import { open, readdir, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { sweepDirectory } from '../storage/leftovers.js';
import { StorageError, type ArchiveStore, type Compression, type PutResult, type SegmentDigest } from '../storage/types.js';
import type { Logger } from '../util/log.js';
import { HISTORY_NAME_RE, WAL_NAME_RE } from '../wal/segment.js';

export interface UploaderOptions {
  spoolDir: string;
  store: ArchiveStore;
  /** Compression of the archived objects. */
  compression: Compression;
  concurrency: number;
  /** Bytes of finished, not yet archived segments above which the stream is asked to pause. */
  spoolMaxBytes: number;
  log: Logger;
  retryMinMs?: number;
  retryMaxMs?: number;
  noSync?: boolean;
  onUploaded?: (name: string) => void;
  /** An upload failed (it is retried if the failure is transient). */
  onUploadFailed?: (name: string, err: Error) => void;
}

export interface PressureListener {
  pressure(): void;
  drain(): void;
}

/** Upload order: history files first (a timeline's history must be there before its WAL), then by name. */
function uploadOrder(a: string, b: string): number {
  const ha = HISTORY_NAME_RE.test(a);
  const hb = HISTORY_NAME_RE.test(b);
  if (ha !== hb) return ha ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Bytes per read when a spool file goes to the archive a piece at a time. */
const PIECE_BYTES = 512 * 1024;

/** Buffers at least this large are kept for reuse by the next upload. */
const POOLED_MIN = 1024 * 1024;

/**
 * Read buffers reused from one upload to the next: the uploads hold at most `concurrency`
 * segment-sized buffers, and no 16 MB buffer per segment is left behind for the garbage
 * collector. Safe because a store keeps nothing of the buffer once put settles (storage/types.ts).
 */
class ReadBuffers {
  private readonly free: Buffer[] = [];

  constructor(private readonly keep: number) {}

  take(size: number): Buffer {
    const i = this.free.findIndex((b) => b.length >= size);
    if (i >= 0) return this.free.splice(i, 1)[0]!;
    return Buffer.allocUnsafeSlow(size);
  }

  give(buf: Buffer): void {
    if (buf.length >= POOLED_MIN && this.free.length < this.keep) this.free.push(buf);
  }
}

/** Segment number part of a name for ordering markers (timeline excluded). */
function segKey(name: string): string {
  return name.slice(8);
}

export class SpoolUploader {
  private readonly queued = new Set<string>();
  private readonly waiting: string[] = [];
  private readonly active = new Set<string>();
  private readonly sizes = new Map<string, number>();
  /** The SHA-256 and size of a segment as its writer computed them while writing it, by name. */
  private readonly digests = new Map<string, SegmentDigest>();
  private pendingBytes = 0;
  private paused = false;
  private stopped = false;
  private failure: Error | undefined;
  private marker: string | undefined;
  private readonly listeners = new Set<PressureListener>();
  private idleWaiters: (() => void)[] = [];
  private readonly failWaiters: ((err: Error) => void)[] = [];
  /** Uploads waiting to retry after a failure: woken early when another upload succeeds. */
  private readonly retries = new Map<NodeJS.Timeout, () => void>();
  private readonly retryNames = new Set<string>();
  uploadedCount = 0;
  /**
   * Whether a finished segment's SHA-256, computed as it was written, saves reading it again
   * (known once start() resolved): the archive keeps a plain segment as a second name of the spool
   * file (a local directory on the spool's file system) and then needs nothing but its checksum.
   */
  takesDigests = false;
  private readonly buffers: ReadBuffers;
  /** The buffers of piece-at-a-time uploads, reused. */
  private readonly pieceBuffers: Buffer[] = [];

  constructor(private readonly o: UploaderOptions) {
    this.buffers = new ReadBuffers(o.concurrency);
  }

  /** Queue everything finished that an earlier run left in the spool, after removing the temp files of dead writers. */
  async start(): Promise<void> {
    const swept = await sweepDirectory(this.o.spoolDir);
    for (const l of swept.removed) this.o.log.verbose(`removed ${l.name} from the spool: a temp file its writer left when it was stopped`);
    for (const f of swept.failed) this.o.log.warn(`cannot remove ${f.leftover.name} from the spool (a temp file its writer left): ${f.error}`);
    this.takesDigests = this.o.compression === 'none' && (await this.o.store.linksFrom?.(this.o.spoolDir)) === true;
    const names = (await readdir(this.o.spoolDir)).filter((n) => WAL_NAME_RE.test(n) || HISTORY_NAME_RE.test(n)).sort(uploadOrder);
    for (const n of names) await this.enqueue(n);
  }

  attach(l: PressureListener): () => void {
    this.listeners.add(l);
    if (this.paused) l.pressure();
    return () => {
      this.listeners.delete(l);
    };
  }

  /** Files waiting for upload or being uploaded. */
  get queueDepth(): number {
    return this.waiting.length + this.active.size;
  }

  get error(): Error | undefined {
    return this.failure;
  }

  /** Resolves with the first permanent failure. */
  failed(): Promise<Error> {
    if (this.failure) return Promise.resolve(this.failure);
    return new Promise((resolve) => this.failWaiters.push(resolve));
  }

  /** A finished file appeared in the spool (`written`: the SHA-256 and size of the bytes its writer wrote). */
  async enqueue(name: string, written?: SegmentDigest): Promise<void> {
    if (this.stopped || this.queued.has(name)) return;
    let size = 0;
    try {
      size = (await stat(join(this.o.spoolDir, name))).size;
    } catch {
      return;
    }
    this.queued.add(name);
    this.sizes.set(name, size);
    if (written !== undefined && written.size === size) this.digests.set(name, written);
    if (WAL_NAME_RE.test(name)) this.pendingBytes += size;
    this.waiting.push(name);
    this.waiting.sort(uploadOrder);
    this.checkPressure();
    this.pump();
  }

  /** Resolves when nothing is waiting or in flight (or the uploader failed). */
  drained(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.waiting.length === 0 && this.active.size === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.idleWaiters.push(() => (this.failure ? reject(this.failure) : resolve()));
    });
  }

  /** Stop starting uploads; in-flight ones finish. Files not archived stay in the spool. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.retries.keys()) clearTimeout(t);
    for (const name of this.retryNames) this.active.delete(name);
    this.retries.clear();
    this.retryNames.clear();
    // In-flight uploads finish (or fail) on their own; their files stay in the spool otherwise.
    while (this.active.size > 0) await new Promise((r) => setTimeout(r, 20));
  }

  private pump(): void {
    while (!this.stopped && !this.failure && this.active.size < this.o.concurrency && this.waiting.length > 0) {
      // A segment waits for the history files queued before it.
      const next = this.waiting[0]!;
      if (!HISTORY_NAME_RE.test(next) && [...this.active].some((a) => HISTORY_NAME_RE.test(a))) break;
      this.waiting.shift();
      this.active.add(next);
      void this.upload(next, this.o.retryMinMs ?? 500);
    }
    if (this.waiting.length === 0 && this.active.size === 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  private async upload(name: string, delay: number): Promise<void> {
    const path = join(this.o.spoolDir, name);
    try {
      const res = await this.putFile(name, path, HISTORY_NAME_RE.test(name) ? 'none' : this.o.compression);
      if (res.replacedDamaged) {
        this.o.log.warn(`archive held a copy of ${name} it cannot keep (damaged, or not encrypted in an encrypted archive): kept as ${res.replacedDamaged} and replaced`);
      }
      this.o.log.verbose(`archived ${name}${res.status === 'exists' ? ' (already there, identical)' : ''}`);
      this.uploadedCount++;
      // The archive answers again: retry what was waiting now, not after its backoff.
      if (this.retries.size > 0) {
        const wake = [...this.retries.entries()];
        this.retries.clear();
        for (const [t, fn] of wake) {
          clearTimeout(t);
          fn();
        }
      }
      await this.release(name);
      this.active.delete(name);
      this.o.onUploaded?.(name);
      this.pump();
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      const transient = !(e instanceof StorageError) || e.transient;
      this.o.onUploadFailed?.(name, e);
      if (!transient) {
        this.active.delete(name);
        this.fail(e);
        return;
      }
      if (this.stopped) {
        this.active.delete(name);
        return;
      }
      const max = this.o.retryMaxMs ?? 30_000;
      const wait = Math.round(delay * (0.7 + Math.random() * 0.6));
      this.o.log.error(`could not archive ${name}: ${e.message}; retrying in ${wait} ms`);
      this.retryNames.add(name);
      const retry = (next: number) => (): void => {
        this.retryNames.delete(name);
        if (this.stopped) {
          this.active.delete(name);
          this.pump();
          return;
        }
        void this.upload(name, next);
      };
      const t = setTimeout(() => {
        this.retries.delete(t);
        retry(Math.min(delay * 2, max))();
      }, wait);
      this.retries.set(t, retry(this.o.retryMinMs ?? 500));
    }
  }

  /**
   * Store a spool file under `name`: a piece at a time through one small buffer where the archive
   * writes pieces as they come (plain bytes into a local directory: ArchiveStore.putPieces), else
   * whole. When the archive already holds the name, the whole-file way judges the copy there.
   */
  private async putFile(name: string, path: string, compression: Compression): Promise<PutResult> {
    if (compression === 'none' && this.o.store.putPieces) {
      // A spool file is complete and durable before it is offered, and never written again: a
      // local archive on its file system may keep it as a second name instead of a copy.
      const known = this.digests.get(name);
      const r = await this.withPieces(path, (pieces) => this.o.store.putPieces!(name, pieces, { noSync: this.o.noSync, file: path, ...(known ? { known } : {}) }));
      if (r !== undefined && r !== 'taken') return r;
    }
    return this.withContents(path, (data) => this.o.store.put(name, data, { compression, noSync: this.o.noSync }));
  }

  /** Run `fn` on the pieces of a spool file, each read into one reused buffer once `fn` is done with the one before. */
  private async withPieces<T>(path: string, fn: (pieces: AsyncIterable<Buffer>) => Promise<T>): Promise<T> {
    const fh = await open(path, 'r');
    const buf = this.pieceBuffers.pop() ?? Buffer.allocUnsafeSlow(PIECE_BYTES);
    try {
      const { size } = await fh.stat();
      const pieces = async function* (): AsyncGenerator<Buffer> {
        let at = 0;
        while (at < size) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - at), at);
          if (bytesRead === 0) break;
          at += bytesRead;
          yield buf.subarray(0, bytesRead);
        }
        if (at !== size) throw new Error(`${path} changed size while being read (${at} of ${size} bytes)`);
      };
      return await fn(pieces());
    } finally {
      await fh.close();
      if (this.pieceBuffers.length < this.o.concurrency) this.pieceBuffers.push(buf);
    }
  }

  /** Run `fn` on the whole contents of a spool file, read into a reused buffer that is free again once `fn` settles. */
  private async withContents<T>(path: string, fn: (data: Buffer) => Promise<T>): Promise<T> {
    const fh = await open(path, 'r');
    let buf: Buffer | undefined;
    let data: Buffer;
    try {
      const { size } = await fh.stat();
      buf = this.buffers.take(size);
      let off = 0;
      while (off < size) {
        const { bytesRead } = await fh.read(buf, off, size - off, off);
        if (bytesRead === 0) break;
        off += bytesRead;
      }
      // A finished spool file never changes; one that shrank while read is not uploaded as it is.
      if (off !== size) throw new Error(`${path} changed size while being read (${off} of ${size} bytes)`);
      data = buf.subarray(0, size);
    } catch (err) {
      if (buf) this.buffers.give(buf);
      throw err;
    } finally {
      await fh.close();
    }
    try {
      return await fn(data);
    } finally {
      this.buffers.give(buf);
    }
  }

  /** The file is in the archive: remove it from the spool, except the newest segment (resume marker). */
  private async release(name: string): Promise<void> {
    const size = this.sizes.get(name) ?? 0;
    this.sizes.delete(name);
    this.digests.delete(name);
    this.queued.delete(name);
    if (!WAL_NAME_RE.test(name)) {
      // History files are small and tell a restarted receiver which timelines it has: keep them.
      return;
    }
    this.pendingBytes -= size;
    this.checkPressure();
    let remove: string | undefined = name;
    if (!this.marker || segKey(name) > segKey(this.marker) || (segKey(name) === segKey(this.marker) && name > this.marker)) {
      remove = this.marker;
      this.marker = name;
    }
    if (remove !== undefined) {
      await unlink(join(this.o.spoolDir, remove)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
  }

  private checkPressure(): void {
    if (!this.paused && this.pendingBytes > this.o.spoolMaxBytes) {
      this.paused = true;
      this.o.log.error(`spool holds ${this.pendingBytes} bytes not yet archived (--spool-max ${this.o.spoolMaxBytes}): pausing the stream`);
      for (const l of this.listeners) l.pressure();
    } else if (this.paused && this.pendingBytes <= this.o.spoolMaxBytes * 0.8) {
      this.paused = false;
      this.o.log.info('archive caught up: resuming the stream');
      for (const l of this.listeners) l.drain();
    }
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const f of this.failWaiters) f(err);
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const f of w) f();
  }
}
