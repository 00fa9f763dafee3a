// One segment file being written, plain or compressed: the "write method" of pg_receivewal's
// walmethods.h (open for write with a temp suffix, pad to size, write, sync, close). Plain files
// are sized to the full segment at creation, as pg_receivewal pads them; compressed files grow.
import { open, type FileHandle } from 'node:fs/promises';
import zlib from 'node:zlib';
import type { Transform } from 'node:stream';

export type Compression = 'none' | 'gzip' | 'zstd';

export function compressionSuffix(c: Compression): string {
  return c === 'gzip' ? '.gz' : c === 'zstd' ? '.zst' : '';
}

export function zstdAvailable(): boolean {
  return typeof (zlib as unknown as { createZstdCompress?: unknown }).createZstdCompress === 'function';
}

export interface SegmentFile {
  /** Write `bufs` at `offset` within the segment (offsets arrive in increasing, contiguous order). */
  write(offset: number, bufs: Buffer[]): Promise<void>;
  /** Make everything written so far durable. */
  sync(): Promise<void>;
  /** All data is in: flush any compressor and fsync (unless noSync). The file stays open. */
  finish(noSync: boolean): Promise<void>;
  close(): Promise<void>;
}

export class PlainSegmentFile implements SegmentFile {
  private constructor(private readonly fh: FileHandle) {}

  /** Open `path`: an existing file must be empty or exactly `segSize` bytes (receivelog.c open_walfile). */
  static async open(path: string, segSize: number): Promise<{ file: PlainSegmentFile; created: boolean }> {
    let fh: FileHandle;
    let created = false;
    try {
      fh = await open(path, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      fh = await open(path, 'wx+', 0o600);
      created = true;
    }
    try {
      const { size } = await fh.stat();
      if (size !== 0 && size !== segSize) {
        throw new Error(`segment file "${path}" has incorrect size ${size}, expected 0 or ${segSize}`);
      }
      if (size === 0) await fh.truncate(segSize);
    } catch (err) {
      await fh.close();
      throw err;
    }
    return { file: new PlainSegmentFile(fh), created };
  }

  async write(offset: number, bufs: Buffer[]): Promise<void> {
    let pos = offset;
    let rest = bufs;
    while (rest.length > 0) {
      const total = rest.reduce((n, b) => n + b.length, 0);
      const { bytesWritten } = await this.fh.writev(rest, pos);
      if (bytesWritten === total) return;
      // Short write: continue with what is left.
      pos += bytesWritten;
      let skip = bytesWritten;
      const next: Buffer[] = [];
      for (const b of rest) {
        if (skip >= b.length) {
          skip -= b.length;
          continue;
        }
        next.push(skip > 0 ? b.subarray(skip) : b);
        skip = 0;
      }
      rest = next;
    }
  }

  sync(): Promise<void> {
    return this.fh.sync();
  }

  async finish(noSync: boolean): Promise<void> {
    if (!noSync) await this.fh.sync();
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/** A gzip or zstd stream appended to a file; the file always holds a valid prefix of the stream. */
export class CompressedSegmentFile implements SegmentFile {
  private chain: Promise<void> = Promise.resolve();
  private position = 0;
  private failed: Error | undefined;

  private constructor(
    private readonly fh: FileHandle,
    private readonly z: Transform & { flush(kind: number, cb: () => void): void },
    private readonly flushKind: number,
  ) {
    z.on('data', (chunk: Buffer) => {
      const at = this.position;
      this.position += chunk.length;
      this.chain = this.chain.then(async () => {
        await writeFully(this.fh, chunk, at);
      });
      this.chain.catch((err: Error) => {
        this.failed ??= err;
      });
    });
    z.on('error', (err: Error) => {
      this.failed ??= err;
    });
  }

  /** Always starts the file afresh: a compressed partial is re-streamed from its segment start. */
  static async open(path: string, compression: Exclude<Compression, 'none'>, level: number | undefined): Promise<CompressedSegmentFile> {
    const fh = await open(path, 'w', 0o600);
    if (compression === 'gzip') {
      const z = zlib.createGzip(level !== undefined ? { level } : {});
      return new CompressedSegmentFile(fh, z as unknown as Transform & { flush(kind: number, cb: () => void): void }, zlib.constants.Z_SYNC_FLUSH);
    }
    const zz = zlib as unknown as {
      createZstdCompress(o: object): Transform & { flush(kind: number, cb: () => void): void };
      constants: Record<string, number>;
    };
    const params: Record<number, number> = {};
    if (level !== undefined) params[zz.constants['ZSTD_c_compressionLevel']!] = level;
    const z = zz.createZstdCompress({ params });
    return new CompressedSegmentFile(fh, z, zz.constants['ZSTD_e_flush']!);
  }

  async write(_offset: number, bufs: Buffer[]): Promise<void> {
    for (const b of bufs) {
      if (!this.z.write(b)) await new Promise<void>((r) => this.z.once('drain', () => r()));
    }
    this.check();
  }

  async sync(): Promise<void> {
    await new Promise<void>((r) => this.z.flush(this.flushKind, () => r()));
    await this.chain;
    this.check();
    await this.fh.sync();
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
    if (!noSync) await this.fh.sync();
  }

  async close(): Promise<void> {
    if (!this.z.writableEnded) {
      await new Promise<void>((r) => this.z.flush(this.flushKind, () => r()));
    }
    await this.chain.catch(() => undefined);
    this.z.destroy();
    await this.fh.close();
  }

  private check(): void {
    if (this.failed) throw this.failed;
  }
}

async function writeFully(fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    done += bytesWritten;
  }
}
