// util/piece-hash.ts: the SHA-256 of pieces read into its own buffers, on a worker thread or here.
import { describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { PieceHash } from '../../src/util/piece-hash.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Feed `data` through `h` as a reader would: read into h's buffers, `cut` bytes at most a piece. */
async function feed(h: PieceHash, data: Buffer, cut: number): Promise<string> {
  for (let at = 0; at < data.length; ) {
    const buf = await h.buffer();
    const n = Math.min(cut, buf.length, data.length - at);
    data.copy(buf, 0, at, at + n);
    at += n;
    h.update(buf.subarray(0, n));
  }
  return h.digest();
}

describe('PieceHash', () => {
  for (const thread of [true, false]) {
    it(`${thread ? 'on a thread' : 'here'}: the digest of the pieces in order, whatever their sizes`, async () => {
      const data = randomBytes(3 * 65536 + 777);
      expect(await feed(new PieceHash({ pieceBytes: 65536, thread }), data, 65536)).toBe(sha(data));
      expect(await feed(new PieceHash({ pieceBytes: 65536, thread }), data, 1000)).toBe(sha(data));
      expect(await feed(new PieceHash({ pieceBytes: 4096, pieces: 2, thread }), data, 4096)).toBe(sha(data));
      expect(await new PieceHash({ thread }).digest()).toBe(sha(Buffer.alloc(0)));
    });
  }

  it('hands out at most `pieces` buffers: the next waits for one to come back from the thread', async () => {
    const h = new PieceHash({ pieceBytes: 1024, pieces: 2 });
    const a = await h.buffer();
    const b = await h.buffer();
    let third: Buffer | undefined;
    const waiting = h.buffer().then((x) => (third = x));
    await new Promise((r) => setTimeout(r, 20));
    expect(third).toBeUndefined();
    a.fill(1);
    h.update(a);
    // Its memory went to the thread, and comes back as the third buffer.
    expect(a.buffer.byteLength).toBe(0);
    await waiting;
    expect(third!.length).toBe(1024);
    b.fill(2);
    h.update(b);
    expect(await h.digest()).toBe(sha(Buffer.concat([Buffer.alloc(1024, 1), Buffer.alloc(1024, 2)])));
  });

  it('closed (a stream given up): a reader waiting for a buffer fails instead of hanging, and so does every later call', async () => {
    const h = new PieceHash({ pieceBytes: 1024, pieces: 2 });
    await h.buffer();
    await h.buffer();
    const waiting = h.buffer();
    h.close();
    await expect(waiting).rejects.toThrow(/closed/);
    await expect(h.digest()).rejects.toThrow(/closed/);
    expect(() => h.update(Buffer.allocUnsafeSlow(10))).toThrow(/closed/);
  });
});
