import { describe, expect, it } from 'vitest';
import { constants as zc, createGzip, gzipSync } from 'node:zlib';
import { zstdAvailable } from '../../src/sink/segment-file.js';
import { assertCompressionAvailable, compress, decompress, isCompression, sha256Hex } from '../../src/storage/codec.js';
import { StorageError, type Compression } from '../../src/storage/types.js';

const data = Buffer.concat([Buffer.alloc(20_000, 7), Buffer.from('walstream '.repeat(500))]);

async function flushedGzip(input: Buffer): Promise<Buffer> {
  const z = createGzip();
  const out: Buffer[] = [];
  z.on('data', (b: Buffer) => out.push(b));
  z.write(input);
  await new Promise<void>((resolve) => z.flush(zc.Z_SYNC_FLUSH, () => resolve()));
  z.destroy();
  return Buffer.concat(out);
}

describe('sha256Hex', () => {
  it('is the hex SHA-256', () => {
    expect(sha256Hex(Buffer.from('abc'))).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(sha256Hex(Buffer.alloc(0))).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});

describe('compress / decompress', () => {
  it('none is the identity', async () => {
    expect((await compress(data, 'none')).equals(data)).toBe(true);
    expect((await decompress(data, 'none')).equals(data)).toBe(true);
  });

  it('gzip round-trips and writes a gzip stream', async () => {
    const z = await compress(data, 'gzip');
    expect(z.subarray(0, 2).toString('hex')).toBe('1f8b');
    expect(z.length).toBeLessThan(data.length / 10);
    expect((await decompress(z, 'gzip')).equals(data)).toBe(true);
    expect((await decompress(await compress(data, 'gzip', 1), 'gzip')).equals(data)).toBe(true);
    expect((await decompress(await compress(Buffer.alloc(0), 'gzip'), 'gzip')).length).toBe(0);
  });

  it('gzip: a corrupt stream rejects; a cut one only when not allowed', async () => {
    const z = gzipSync(data);
    const bad = Buffer.from(z);
    bad[bad.length - 6] = bad[bad.length - 6]! ^ 0xff; // CRC
    await expect(decompress(bad, 'gzip')).rejects.toThrow();
    const cut = await flushedGzip(data);
    await expect(decompress(cut, 'gzip')).rejects.toThrow(/unexpected end/);
    expect((await decompress(cut, 'gzip', { allowTruncated: true })).equals(data)).toBe(true);
  });

  if (zstdAvailable()) {
    it('zstd round-trips (this Node has it)', async () => {
      const z = await compress(data, 'zstd');
      expect(z.subarray(0, 4).toString('hex')).toBe('28b52ffd');
      expect((await decompress(z, 'zstd')).equals(data)).toBe(true);
      expect((await decompress(await compress(data, 'zstd', 19), 'zstd')).equals(data)).toBe(true);
      expect(() => assertCompressionAvailable('zstd')).not.toThrow();
    });
  } else {
    it('zstd: a clear, permanent error (this Node lacks it)', async () => {
      for (const p of [() => compress(data, 'zstd'), () => decompress(data, 'zstd')]) {
        const err = await p().catch((e: unknown) => e);
        expect(err).toBeInstanceOf(StorageError);
        expect((err as StorageError).transient).toBe(false);
        expect((err as Error).message).toMatch(/^zstd needs Node 22\.15\+/);
      }
      expect(() => assertCompressionAvailable('zstd')).toThrow(/zstd needs Node 22\.15\+/);
    });
  }

  it('refuses an unknown compression', async () => {
    expect(isCompression('lz4')).toBe(false);
    expect(isCompression('gzip')).toBe(true);
    await expect(compress(data, 'lz4' as Compression)).rejects.toBeInstanceOf(StorageError);
    expect(() => assertCompressionAvailable('lz4' as Compression)).toThrow(/unknown compression "lz4"/);
  });
});
