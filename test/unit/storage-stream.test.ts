// Streamed objects (src/storage/stream.ts): chunked authenticated encryption that never hands out
// an unauthenticated byte, compression on the fly, the checksum as bytes go by, memory bounded by
// a chunk whatever the size.
import { describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { Digesting, rechunk, sealStream, transcode, unsealStream } from '../../src/storage/stream.js';
import { Keyring } from '../../src/storage/encryption.js';
import { IntegrityError, KeyUnavailableError } from '../../src/storage/types.js';

const keyring = new Keyring([{ id: 'k1', key: Buffer.alloc(32, 1) }], 'test');
const other = new Keyring([{ id: 'k2', key: Buffer.alloc(32, 2) }], 'test');
const C = 1024;

async function* from(...parts: Buffer[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield p;
}
async function collect(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const b of src) out.push(b);
  return Buffer.concat(out);
}
async function sealed(data: Buffer, name = '000000010000000000000001', chunk = C): Promise<Buffer> {
  return collect(sealStream(keyring, name, 'none', from(data), chunk));
}
async function failure(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('rechunk', () => {
  it('gives pieces of exactly the size asked, the last one shorter', async () => {
    const data = randomBytes(5000);
    const pieces: Buffer[] = [];
    for await (const p of rechunk(from(data.subarray(0, 7), data.subarray(7, 3000), data.subarray(3000)), 1024)) pieces.push(Buffer.from(p));
    expect(pieces.map((p) => p.length)).toEqual([1024, 1024, 1024, 1024, 904]);
    expect(Buffer.concat(pieces).equals(data)).toBe(true);
    expect(await collect(rechunk(from(), 1024))).toHaveLength(0);
  });
});

describe('sealStream and unsealStream', () => {
  for (const size of [0, 1, C - 1, C, C + 1, 3 * C + 500, 4 * C]) {
    it(`round-trips ${size} bytes in chunks of ${C}`, async () => {
      const data = randomBytes(size);
      const s = await sealed(data);
      const header = 11 + 2 + 8 + 4;
      expect(s.length).toBe(header + size + 16 * Math.max(1, Math.ceil(size / C)));
      expect((await collect(unsealStream(keyring, '000000010000000000000001', 'none', from(s)))).equals(data)).toBe(true);
    });
  }

  it('never yields a byte of a chunk that fails authentication: the chunks before it only', async () => {
    const data = randomBytes(4 * C);
    const s = await sealed(data);
    const header = 25;
    s[header + 2 * (C + 16) + 10]! ^= 1; // inside chunk 2
    const got: Buffer[] = [];
    const err = await failure(
      (async () => {
        for await (const b of unsealStream(keyring, '000000010000000000000001', 'none', from(s))) got.push(Buffer.from(b));
      })(),
    );
    expect(err).toBeInstanceOf(IntegrityError);
    expect((err as Error).message).toMatch(/chunk 2 fails authentication/);
    expect(Buffer.concat(got).equals(data.subarray(0, 2 * C))).toBe(true);
  });

  it('a stream cut at a chunk boundary, chunks reordered, or another name: IntegrityError', async () => {
    const data = randomBytes(3 * C);
    const s = await sealed(data);
    const header = 25;
    const w = C + 16;
    const cut = s.subarray(0, header + 2 * w);
    expect(await failure(collect(unsealStream(keyring, '000000010000000000000001', 'none', from(cut))))).toBeInstanceOf(IntegrityError);
    const swapped = Buffer.concat([s.subarray(0, header), s.subarray(header + w, header + 2 * w), s.subarray(header, header + w), s.subarray(header + 2 * w)]);
    expect(await failure(collect(unsealStream(keyring, '000000010000000000000001', 'none', from(swapped))))).toBeInstanceOf(IntegrityError);
    expect(await failure(collect(unsealStream(keyring, '000000010000000000000002', 'none', from(s))))).toBeInstanceOf(IntegrityError);
    expect(await failure(collect(unsealStream(keyring, '000000010000000000000001', 'gzip', from(s))))).toBeInstanceOf(IntegrityError);
    expect(await failure(collect(unsealStream(keyring, '000000010000000000000001', 'none', from(s.subarray(0, 20)))))).toBeInstanceOf(IntegrityError);
    // A quarantine copy is bound to the name it was written for.
    expect((await collect(unsealStream(keyring, 'quarantine/000000010000000000000001.20260101T000000Z', 'none', from(s)))).equals(data)).toBe(true);
  });

  it('a key that was not given: KeyUnavailableError, nothing yielded', async () => {
    const s = await sealed(randomBytes(2 * C));
    const err = await failure(collect(unsealStream(other, '000000010000000000000001', 'none', from(s))));
    expect(err).toBeInstanceOf(KeyUnavailableError);
  });
});

describe('compressed, sealed and hashed on the fly', () => {
  for (const c of ['none', 'gzip'] as const) {
    it(`${c}: the bytes back, and the SHA-256 of the uncompressed bytes as they went by`, async () => {
      const data = Buffer.concat([Buffer.alloc(200_000, 7), randomBytes(100_000)]);
      const d = new Digesting();
      const stored = await collect(sealStream(keyring, '000000010000000000000003', c, transcode(d.pass(rechunk(from(data), 4096)), c, 'compress'), 8192));
      expect(d.hex).toBe(createHash('sha256').update(data).digest('hex'));
      expect(d.size).toBe(data.length);
      if (c === 'gzip') expect(stored.length).toBeLessThan(data.length);
      const back = await collect(transcode(unsealStream(keyring, '000000010000000000000003', c, from(stored)), c, 'decompress'));
      expect(back.equals(data)).toBe(true);
    });
  }

  it('memory stays bounded by the chunk whatever the object size (256 MB through seal and unseal)', async () => {
    // Bounded memory is a pipeline that never reads ahead of its reader by more than a chunk or
    // two, whatever the size: counted in bytes produced against bytes handed out, which (unlike
    // RSS or a heap sample, whose garbage V8 returns when it likes) cannot vary by runtime or load.
    const total = 256 * 1024 * 1024;
    const piece = randomBytes(64 * 1024);
    let produced = 0;
    async function* source(): AsyncGenerator<Buffer> {
      for (; produced < total; ) {
        produced += piece.length;
        yield piece;
      }
    }
    let bytes = 0;
    let ahead = 0;
    const d = new Digesting();
    for await (const b of unsealStream(keyring, '000000010000000000000004', 'none', sealStream(keyring, '000000010000000000000004', 'none', d.pass(source())))) {
      bytes += b.length;
      ahead = Math.max(ahead, produced - bytes);
    }
    expect(bytes).toBe(total);
    expect(d.size).toBe(total);
    // the chunk being sealed (1 MiB), the one being opened, and a piece
    expect(ahead).toBeLessThanOrEqual(2 * 1024 * 1024 + piece.length);
  });

  it('a failing source fails the compressed stream', async () => {
    async function* broken(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(10);
      throw new Error('source broke');
    }
    await expect(collect(transcode(broken(), 'gzip', 'compress'))).rejects.toThrow(/source broke/);
  });
});
