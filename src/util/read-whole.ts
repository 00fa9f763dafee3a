// Whole files in memory with one system call where the kernel allows (fs.readFile goes 512 kB at
// a time, one thread-pool round trip per piece, into a fresh buffer): what reading a 16 MB WAL
// segment costs least. Guarantees the bytes the file holds when read, also if it changed size.
import { open } from 'node:fs/promises';
import { fs } from './lazy.js';

const { constants: fsConstants } = fs;

export interface ReadWholeOptions {
  /** Refuse a symbolic link (ELOOP) instead of following it. */
  noFollow?: boolean;
  /** Reuse this buffer when it is large enough (the result is then a view of it). */
  into?: Buffer;
}

/** Read a whole file with as few reads as the kernel allows. */
export async function readWhole(path: string, opts: ReadWholeOptions = {}): Promise<Buffer> {
  const fh = await open(path, fsConstants.O_RDONLY | (opts.noFollow ? fsConstants.O_NOFOLLOW : 0));
  try {
    const size = (await fh.stat()).size;
    const buf = opts.into && opts.into.length >= size ? opts.into : Buffer.allocUnsafeSlow(size);
    let n = 0;
    while (n < size) {
      const { bytesRead } = await fh.read(buf, n, size - n, n);
      if (bytesRead === 0) return buf.subarray(0, n); // shorter than fstat said
      n += bytesRead;
    }
    // Longer than fstat said (it grew meanwhile): the rest too, in a plain buffer.
    const more: Buffer[] = [];
    for (;;) {
      const chunk = Buffer.allocUnsafe(64 * 1024);
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, n);
      if (bytesRead === 0) break;
      more.push(chunk.subarray(0, bytesRead));
      n += bytesRead;
    }
    return more.length === 0 ? buf.subarray(0, size) : Buffer.concat([buf.subarray(0, size), ...more]);
  } finally {
    await fh.close();
  }
}
