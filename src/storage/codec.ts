// Whole-buffer compression for archive objects (the same formats pg_receivewal -Z writes: gzip;
// zstd where node:zlib has it) and the SHA-256 every object records of its uncompressed bytes.
// Guarantees: compress/decompress round-trip exactly; zstd on a Node without it is a clear,
// permanent StorageError rather than a TypeError.
import { builtin } from '../util/lazy.js';
import { zstdAvailable } from '../sink/segment-file.js';
import { StorageError, isCompression, type Compression } from './types.js';

/** node:zlib, loaded for the first compressed object; node:crypto for the first checksum. */
const zlib = builtin<typeof import('node:zlib')>('node:zlib');
const crypto = builtin<typeof import('node:crypto')>('node:crypto');

type BufferCallback = (err: Error | null, result: Buffer) => void;

/** The zstd half of node:zlib (Node 22.15+), absent from older @types/node. */
interface ZstdZlib {
  zstdCompress(data: Buffer, options: object, cb: BufferCallback): void;
  zstdDecompress(data: Buffer, options: object, cb: BufferCallback): void;
}

const ZSTD_MISSING = 'zstd needs Node 22.15+ (this is Node ' + process.versions.node + ')';

export const COMPRESSIONS: readonly Compression[] = ['none', 'gzip', 'zstd'];

export { isCompression };

/** Throws a permanent StorageError when this Node cannot handle `c`. */
export function assertCompressionAvailable(c: Compression): void {
  if (!isCompression(c)) throw new StorageError(`unknown compression "${String(c)}" (use none, gzip or zstd)`, false);
  if (c === 'zstd' && !zstdAvailable()) throw new StorageError(ZSTD_MISSING, false);
}

/** A zstd constant from node:zlib (typed loosely: older @types/node do not list them). */
function zstdConstant(name: 'ZSTD_c_compressionLevel' | 'ZSTD_e_flush'): number {
  const v = (zlib().constants as unknown as Record<string, number | undefined>)[name];
  if (v === undefined) throw new StorageError(ZSTD_MISSING, false);
  return v;
}

function zstd(): ZstdZlib {
  if (!zstdAvailable()) throw new StorageError(ZSTD_MISSING, false);
  return zlib() as unknown as ZstdZlib;
}

function run(fn: (cb: BufferCallback) => void): Promise<Buffer> {
  return new Promise((resolve, reject) => fn((err, out) => (err ? reject(err) : resolve(out))));
}

export function sha256Hex(data: Buffer): string {
  return crypto().createHash('sha256').update(data).digest('hex');
}

/** Compress a whole object. `level` is the format's own level (gzip 1-9, zstd 1-22); default when omitted. */
export async function compress(data: Buffer, c: Compression, level?: number): Promise<Buffer> {
  assertCompressionAvailable(c);
  switch (c) {
    case 'none':
      return data;
    case 'gzip':
      return run((cb) => zlib().gzip(data, level === undefined ? {} : { level }, cb));
    case 'zstd': {
      const params = level === undefined ? {} : { params: { [zstdConstant('ZSTD_c_compressionLevel')]: level } };
      return run((cb) => zstd().zstdCompress(data, params, cb));
    }
  }
}

export interface DecompressOptions {
  /**
   * Accept a stream that stops early and return what it decodes to. For in-progress files
   * (pg_receivewal's X.gz.partial), whose compressed stream has no end yet.
   */
  allowTruncated?: boolean;
}

/** Decompress a whole object; a corrupt stream rejects with zlib's error. */
export async function decompress(data: Buffer, c: Compression, opts: DecompressOptions = {}): Promise<Buffer> {
  assertCompressionAvailable(c);
  switch (c) {
    case 'none':
      return data;
    case 'gzip':
      return run((cb) => zlib().gunzip(data, opts.allowTruncated ? { finishFlush: zlib().constants.Z_SYNC_FLUSH } : {}, cb));
    case 'zstd':
      // ZSTD_e_flush lets a decompressor return what it has when input ends mid-frame.
      return run((cb) => zstd().zstdDecompress(data, opts.allowTruncated ? { finishFlush: zstdConstant('ZSTD_e_flush') } : {}, cb));
  }
}
