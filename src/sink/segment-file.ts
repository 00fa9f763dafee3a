// One segment file being written, plain or compressed: the "write method" of pg_receivewal's
// walmethods.h (open for write with a temp suffix, pad to size, write, sync, close).
// Plain files are written synchronously into the page cache (as pg_receivewal does: a write of
// a received chunk costs a memcpy), so the caller's buffer is consumed before write() returns;
// only fsync and close go to the thread pool. Compressed files feed a zlib stream whose output is
// appended asynchronously; write() copies what it is given.
import { close, closeSync, fstatSync, fsync, ftruncateSync, openSync, readFileSync, readSync, unlinkSync, write, writeSync } from 'node:fs';
import { rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fsyncDir as fsyncPath } from './fsutil.js';
import type { Transform } from 'node:stream';
import { builtin } from '../util/lazy.js';

/** node:zlib, loaded for the first compressed segment. */
const zlib = builtin<typeof import('node:zlib')>('node:zlib');

export type Compression = 'none' | 'gzip' | 'zstd';

export function compressionSuffix(c: Compression): string {
  return c === 'gzip' ? '.gz' : c === 'zstd' ? '.zst' : '';
}

export function zstdAvailable(): boolean {
  return typeof (zlib() as unknown as { createZstdCompress?: unknown }).createZstdCompress === 'function';
}

export interface SegmentFile {
  /** Take `data` for `offset` within the segment; offsets arrive in increasing, contiguous order. `data` may be reused after return. */
  write(offset: number, data: Buffer): void;
  /** Bytes accepted but not yet handed to the kernel (compressed files only). */
  readonly pendingBytes: number;
  /** Make everything written so far durable. */
  sync(): Promise<void>;
  /** All data is in: flush any compressor and fsync (unless noSync). The file stays open. */
  finish(noSync: boolean): Promise<void>;
  close(): Promise<void>;
}

function fsyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fsync(fd, (err) => (err ? reject(err) : resolve())));
}

function closeFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => close(fd, (err) => (err ? reject(err) : resolve())));
}

/** Whether the first `size` bytes of the file are all zero. */
function zerosOnly(fd: number, size: number): boolean {
  const buf = Buffer.alloc(Math.min(size, 1024 * 1024));
  for (let off = 0; off < size; ) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, size - off), off);
    if (n === 0) return false;
    for (let i = 0; i < n; i++) if (buf[i] !== 0) return false;
    off += n;
  }
  return true;
}

/**
 * Give the file its full size, the bytes past its end reading as zeros, without writing them
 * (ftruncate): what a reader sees is pg_receivewal's padding (walmethods.c dir_open_for_write
 * writes zeros up to the size and fsyncs them), as PostgreSQL's own WAL files with
 * wal_init_zero = off. The zeros cost no memcpy and no disk write; blocks are allocated as WAL
 * is written, so a full disk shows at a write instead of at the padding, and the stream fails
 * and is retried the same way. Durability is unchanged: what is reported flushed was fsynced
 * (file and, for a new file, its directory) after it was written.
 */
function padSync(fd: number, size: number): void {
  ftruncateSync(fd, size);
}

export class PlainSegmentFile implements SegmentFile {
  readonly pendingBytes = 0;
  private closed = false;

  private constructor(private readonly fd: number) {}

  /**
   * Open `path` for writing: an existing file must be empty or exactly `segSize` bytes
   * (receivelog.c open_walfile); an empty or new one is padded with zeros. Unlike
   * pg_receivewal, a shorter file holding only zeros is padded too: it is a padding cut short
   * (a full disk, a crash), which would otherwise stop every later attempt at this segment.
   * A file this call created is removed again when padding it fails.
   */
  static open(path: string, segSize: number): { file: PlainSegmentFile; created: boolean } {
    let fd: number;
    let created = false;
    try {
      fd = openSync(path, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      fd = openSync(path, 'wx+', 0o600);
      created = true;
    }
    try {
      const { size } = fstatSync(fd);
      if (size !== 0 && size !== segSize && (size > segSize || !zerosOnly(fd, size))) {
        throw new Error(`segment file "${path}" has incorrect size ${size}, expected 0 or ${segSize}`);
      }
      if (size !== segSize) padSync(fd, segSize);
    } catch (err) {
      closeSync(fd);
      if (created) {
        try {
          unlinkSync(path);
        } catch {
          // gone already
        }
      }
      throw err;
    }
    return { file: new PlainSegmentFile(fd), created };
  }

  write(offset: number, data: Buffer): void {
    for (let done = 0; done < data.length; ) {
      done += writeSync(this.fd, data, done, data.length - done, offset + done);
    }
  }

  sync(): Promise<void> {
    return fsyncFd(this.fd);
  }

  async finish(noSync: boolean): Promise<void> {
    if (!noSync) await fsyncFd(this.fd);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await closeFd(this.fd);
  }
}

type Compressor = Transform & { flush(kind: number, cb: () => void): void };

/** Suffix of the file a compressed segment is streamed into again beside the copy it replaces. */
export const REWRITE_SUFFIX = '.rewrite';

/** Uncompressed bytes an existing compressed in-progress file decodes to (0: none, empty or unreadable). */
function heldLength(path: string, compression: Exclude<Compression, 'none'>): number {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
  if (data.length === 0) return 0;
  try {
    if (compression === 'gzip') return zlib().gunzipSync(data, { finishFlush: zlib().constants.Z_SYNC_FLUSH }).length;
    const zz = zlib() as unknown as { zstdDecompressSync(b: Buffer, o: object): Buffer; constants: Record<string, number> };
    return zz.zstdDecompressSync(data, { finishFlush: zz.constants['ZSTD_e_flush'] }).length;
  } catch {
    return 0; // nothing readable to keep
  }
}

/**
 * A gzip or zstd stream appended to a file; the file always holds a valid prefix of the stream.
 * A compressed segment cannot be continued where it stopped, so a resumed one is streamed again
 * from its start. The copy already there holds WAL that may have been reported flushed: it
 * stays under its name while the new stream goes to `<name>.rewrite`, and is replaced (rename)
 * only once the new file durably holds as many bytes, so no moment has less on disk than before.
 */
export class CompressedSegmentFile implements SegmentFile {
  private chain: Promise<void> = Promise.resolve();
  private position = 0;
  private failed: Error | undefined;
  private pending = 0;
  private closed = false;
  /** Uncompressed bytes handed to the compressor. */
  private fed = 0;
  /** The rename of the new stream over the old copy, once started. */
  private replacement: Promise<void> | undefined;

  private constructor(
    private readonly fd: number,
    private readonly z: Compressor,
    private readonly flushKind: number,
    private readonly path: string,
    /** The copy being replaced: its length and the file written instead until then. */
    private replacing: { held: number; temp: string } | undefined,
  ) {
    z.on('data', (chunk: Buffer) => {
      const at = this.position;
      this.position += chunk.length;
      this.chain = this.chain.then(() => writeFdFully(this.fd, chunk, at));
      this.chain.catch((err: Error) => {
        this.failed ??= err;
      });
    });
    z.on('error', (err: Error) => {
      this.failed ??= err;
    });
  }

  /** Start the segment's compressed stream afresh (beside an existing copy, which it replaces once it holds as much). */
  static open(path: string, compression: Exclude<Compression, 'none'>, level: number | undefined): CompressedSegmentFile {
    const held = heldLength(path, compression);
    const replacing = held > 0 ? { held, temp: `${path}${REWRITE_SUFFIX}` } : undefined;
    const fd = openSync(replacing?.temp ?? path, 'w', 0o600);
    if (compression === 'gzip') {
      const z = zlib().createGzip(level !== undefined ? { level } : {}) as unknown as Compressor;
      return new CompressedSegmentFile(fd, z, zlib().constants.Z_SYNC_FLUSH, path, replacing);
    }
    const zz = zlib() as unknown as { createZstdCompress(o: object): Compressor; constants: Record<string, number> };
    const params: Record<number, number> = {};
    if (level !== undefined) params[zz.constants['ZSTD_c_compressionLevel']!] = level;
    return new CompressedSegmentFile(fd, zz.createZstdCompress({ params }), zz.constants['ZSTD_e_flush']!, path, replacing);
  }

  /**
   * The new stream is durable up to `upto` bytes: replace the old copy once that is all it held.
   * Overlapping calls (a sync per batch, one for a keepalive's reply, the segment's end) share one
   * replacement, and each returns only once the rename is durable: what a caller then reports
   * flushed may be past what the old copy held.
   */
  private replaceIfCaughtUp(upto: number, noSync: boolean): Promise<void> {
    if (this.replacement) return this.replacement;
    const r = this.replacing;
    if (!r || upto < r.held) return Promise.resolve();
    this.replacement = (async () => {
      await rename(r.temp, this.path);
      if (!noSync) await fsyncPath(dirname(this.path));
      this.replacing = undefined;
    })();
    return this.replacement;
  }

  get pendingBytes(): number {
    return this.pending;
  }

  write(_offset: number, data: Buffer): void {
    this.check();
    const copy = Buffer.from(data);
    this.pending += copy.length;
    this.fed += copy.length;
    this.z.write(copy, () => {
      this.pending -= copy.length;
    });
  }

  async sync(): Promise<void> {
    const upto = this.fed;
    await new Promise<void>((r) => this.z.flush(this.flushKind, () => r()));
    await this.chain;
    this.check();
    await fsyncFd(this.fd);
    await this.replaceIfCaughtUp(upto, false);
  }

  async finish(noSync: boolean): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.z.once('end', () => resolve());
      this.z.once('error', reject);
      this.z.end();
      this.z.resume();
    });
    await this.chain;
    this.check();
    if (!noSync) await fsyncFd(this.fd);
    await this.replaceIfCaughtUp(this.fed, noSync);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const upto = this.fed;
    if (!this.z.writableEnded) await new Promise<void>((r) => this.z.flush(this.flushKind, () => r()));
    await this.chain.catch(() => undefined);
    this.z.destroy();
    try {
      // Ended before a sync replaced the old copy: the new stream replaces it if it holds as much
      // (made durable first), else the old copy stays and the new one goes.
      const r = this.replacing;
      if (r && !this.failed && upto >= r.held) {
        await fsyncFd(this.fd);
        await this.replaceIfCaughtUp(upto, false);
      } else if (r) {
        await unlink(r.temp).catch(() => undefined);
      }
    } finally {
      await closeFd(this.fd);
    }
  }

  private check(): void {
    if (this.failed) throw this.failed;
  }
}

function writeFd(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => write(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

async function writeFdFully(fd: number, buf: Buffer, position: number): Promise<void> {
  for (let done = 0; done < buf.length; ) {
    done += await writeFd(fd, buf, done, buf.length - done, position + done);
  }
}
