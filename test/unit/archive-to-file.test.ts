// An archived object into a file of its own (archive/to-file.ts, ArchiveStore.getTo): the bytes of
// get(), read a piece at a time into one buffer, verified as they go by, and nothing under the
// target's name (nor a temp file) unless every byte matched the recorded checksum.
import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { MemoryStore } from '../../src/storage/memory.js';
import { Keyring } from '../../src/storage/encryption.js';
import { IntegrityError, NotFoundError, type ArchiveStore } from '../../src/storage/types.js';
import { objectToFile, TargetWriteError } from '../../src/archive/to-file.js';
import { failure, tempArchives } from '../support/temp-archive.js';

const { tmp, archive } = tempArchives('to-file');

const SEG = '000000010000000000000001';

describe('getTo', () => {
  it('hands a local object over in pieces of one reused buffer, the same bytes and info as get', async () => {
    const { store } = archive();
    const data = randomBytes(1536 * 1024 + 7); // three pieces, the last one short
    await store.put(SEG, data, { noSync: true });
    const pieces: Buffer[] = [];
    const buffers = new Set<ArrayBufferLike>();
    const info = await store.getTo(SEG, async (piece) => {
      buffers.add(piece.buffer);
      pieces.push(Buffer.from(piece));
    });
    expect(pieces.length).toBeGreaterThan(1);
    expect(buffers.size).toBe(1);
    expect(Buffer.concat(pieces).equals(data)).toBe(true);
    const got = await store.get(SEG);
    expect(info).toEqual({ ...got.info, modified: info.modified });
  });

  it('checks the recorded checksum: IntegrityError after the last piece, naming the file', async () => {
    const { dir, store } = archive();
    const data = randomBytes(700 * 1024);
    await store.put(SEG, data, { noSync: true });
    data[600 * 1024] ^= 1;
    writeFileSync(join(dir, SEG), data);
    let bytes = 0;
    const err = await failure(store.getTo(SEG, async (p) => void (bytes += p.length)));
    expect(err).toBeInstanceOf(IntegrityError);
    expect((err as Error).message).toContain(`SHA-256 of ${SEG}`);
    expect(bytes).toBe(data.length);
    expect(await failure(store.getTo('000000010000000000000002', async () => undefined))).toBeInstanceOf(NotFoundError);
  });

  it('compressed and encrypted objects come whole, as get gives them', async () => {
    const keyring = new Keyring([{ id: 'k1', key: Buffer.alloc(32, 1) }], 'test');
    for (const [store, compression] of [
      [archive().store, 'gzip'],
      [archive({ keyring }).store, 'none'],
      [new MemoryStore(), 'none'],
    ] as const) {
      const data = randomBytes(900 * 1024);
      await store.put(SEG, data, { noSync: true, compression });
      const pieces: Buffer[] = [];
      await store.getTo!(SEG, async (p) => void pieces.push(Buffer.from(p)));
      expect(pieces.length).toBe(1);
      expect(pieces[0]!.equals(data)).toBe(true);
    }
  });
});

describe('objectToFile', () => {
  it('writes the object under the target name and returns its first bytes; nothing else is left', async () => {
    const out = tmp();
    const { store } = archive();
    const data = randomBytes(1200 * 1024);
    await store.put(SEG, data, { noSync: true });
    const head = await objectToFile(store, SEG, join(out, 'RECOVERYXLOG'), { sync: true, headBytes: 40 });
    expect(head.equals(data.subarray(0, 40))).toBe(true);
    expect(readFileSync(join(out, 'RECOVERYXLOG')).equals(data)).toBe(true);
    expect(readdirSync(out)).toEqual(['RECOVERYXLOG']);
  });

  it('a store without getTo, an empty object, a corrupt one, a missing one, an unwritable target', async () => {
    const out = tmp();
    const plain: ArchiveStore = new MemoryStore();
    await plain.put(SEG, Buffer.from('abc'), {});
    const bare: ArchiveStore = { ...plain, get: (n) => plain.get(n), put: (n, d, o) => plain.put(n, d, o) };
    delete (bare as { getTo?: unknown }).getTo;
    await objectToFile(bare, SEG, join(out, 'A'), { sync: false, headBytes: 40 });
    expect(readFileSync(join(out, 'A'), 'utf8')).toBe('abc');

    const { dir, store } = archive();
    await store.put('00000002.history', Buffer.alloc(0), { noSync: true });
    await objectToFile(store, '00000002.history', join(out, 'B'), { sync: false, headBytes: 40 });
    expect(readFileSync(join(out, 'B')).length).toBe(0);

    await store.put(SEG, randomBytes(1000), { noSync: true });
    writeFileSync(join(dir, SEG), randomBytes(1000));
    expect(await failure(objectToFile(store, SEG, join(out, 'C'), { sync: false, headBytes: 40 }))).toBeInstanceOf(IntegrityError);
    expect(await failure(objectToFile(store, '000000010000000000000009', join(out, 'D'), { sync: false, headBytes: 40 }))).toBeInstanceOf(NotFoundError);
    expect(readdirSync(out).sort()).toEqual(['A', 'B']);
    const err = await failure(objectToFile(store, '00000002.history', join(out, 'missing', 'E'), { sync: false, headBytes: 40 }));
    expect(err).toBeInstanceOf(TargetWriteError);
    expect((err as TargetWriteError).cause.code).toBe('ENOENT');
  });
});
