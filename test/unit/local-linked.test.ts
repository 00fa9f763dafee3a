// A receiver's finished spool file archived into a local directory on the same file system
// (ArchiveStore.putPieces with `file`, LocalDriver.createLinked): the object is a second name of
// the file, not a copy, with the same record as a copy would have. A file that is not private to
// its owner, or on another file system, is copied as before; a push from pg_wal never links (its
// files are reused by PostgreSQL).
import { describe, expect, it } from 'vitest';
import { chmodSync, readFileSync, readdirSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { push } from '../../src/commands/push.js';
import { MemoryStore } from '../../src/storage/memory.js';
import type { ArchiveStore } from '../../src/storage/types.js';
import { silentLogger } from '../../src/util/log.js';
import { tempArchives } from '../support/temp-archive.js';
import { FIXTURE_NAME, fixtureSegment } from './fixture.js';

const { tmp, archive } = tempArchives('local-linked');

async function* piecesOf(path: string, size = 256 * 1024): AsyncGenerator<Buffer> {
  const data = readFileSync(path);
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
}

function spoolFile(mode = 0o600, dir = tmp()): string {
  const path = join(dir, FIXTURE_NAME);
  writeFileSync(path, fixtureSegment(), { mode });
  chmodSync(path, mode);
  return path;
}

async function recordOf(bytes: Buffer): Promise<string> {
  const memory = new MemoryStore();
  await memory.put(FIXTURE_NAME, bytes);
  return (await memory.head(FIXTURE_NAME))!.checksum!;
}

describe('a spool file archived into a local directory', () => {
  it('becomes a second name of the file, with the record a copy would have, and outlives the spool name', async () => {
    const path = spoolFile();
    const { dir, store } = archive();
    const r = await store.putPieces(FIXTURE_NAME, piecesOf(path), { file: path });
    expect(r !== undefined && r !== 'taken' && r.status).toBe('created');
    const object = statSync(join(dir, FIXTURE_NAME));
    expect(object.ino).toBe(statSync(path).ino);
    expect(object.nlink).toBe(2);
    // No temp name is left linked to it.
    expect(readdirSync(join(dir, '.walstream-meta')).filter((n) => n !== 'tmp' && !n.endsWith('.sha256'))).toEqual([]);
    unlinkSync(path);
    const got = await store.get(FIXTURE_NAME);
    expect(got.data.equals(fixtureSegment())).toBe(true);
    expect(got.info.checksum).toBe(await recordOf(fixtureSegment()));
    expect(statSync(join(dir, FIXTURE_NAME)).nlink).toBe(1);
  });

  it('is copied when others may read it, or when it lies on another file system', async () => {
    const open = spoolFile(0o640);
    const a = archive();
    expect(await a.store.putPieces(FIXTURE_NAME, piecesOf(open), { file: open })).toMatchObject({ status: 'created' });
    expect(statSync(join(a.dir, FIXTURE_NAME)).ino).not.toBe(statSync(open).ino);
    expect(statSync(join(a.dir, FIXTURE_NAME)).mode & 0o777).toBe(0o600);

    const shm = mkdtempSync('/dev/shm/walstream-linked-');
    try {
      const elsewhere = spoolFile(0o600, shm);
      const b = archive();
      expect(statSync(elsewhere).dev).not.toBe(statSync(b.dir).dev);
      expect(await b.store.putPieces(FIXTURE_NAME, piecesOf(elsewhere), { file: elsewhere })).toMatchObject({ status: 'created' });
      const got = await b.store.get(FIXTURE_NAME);
      expect(got.data.equals(fixtureSegment())).toBe(true);
      expect(got.info.checksum).toBe(await recordOf(fixtureSegment()));
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  it('leaves the name to the copy already there, and stores nothing when the reading fails', async () => {
    const path = spoolFile();
    const { dir, store } = archive();
    await store.put(FIXTURE_NAME, fixtureSegment());
    const held = statSync(join(dir, FIXTURE_NAME)).ino;
    expect(await store.putPieces(FIXTURE_NAME, piecesOf(path), { file: path })).toBe('taken');
    expect(statSync(join(dir, FIXTURE_NAME)).ino).toBe(held);
    expect(statSync(path).nlink).toBe(1);

    const other = archive();
    const failing = async function* (): AsyncGenerator<Buffer> {
      yield fixtureSegment().subarray(0, 1024);
      throw new Error('read failed');
    };
    await expect(other.store.putPieces(FIXTURE_NAME, failing(), { file: path })).rejects.toThrow('read failed');
    expect(readdirSync(other.dir).filter((n) => n === FIXTURE_NAME)).toEqual([]);
    expect(statSync(path).nlink).toBe(1);
    expect(readFileSync(path).equals(fixtureSegment())).toBe(true);
  });

  it('takes a checksum the writer computed without reading the file, where it keeps a second name; a copy hashes what it reads', async () => {
    const path = spoolFile();
    const { dir, store } = archive();
    const sha256 = await recordOf(fixtureSegment());
    const unread: AsyncIterable<Buffer> = {
      [Symbol.asyncIterator]: () => {
        throw new Error('the file was read');
      },
    };
    const known = { sha256, size: fixtureSegment().length };
    const r = await store.putPieces(FIXTURE_NAME, unread, { file: path, known });
    expect(r).toMatchObject({ status: 'created', info: { checksum: sha256, size: known.size } });
    expect(statSync(join(dir, FIXTURE_NAME)).ino).toBe(statSync(path).ino);
    const got = await store.get(FIXTURE_NAME);
    expect(got.data.equals(fixtureSegment())).toBe(true);
    expect(got.info.checksum).toBe(sha256);

    // A copy (the file is not private to its owner) hashes what it reads: the same bytes are
    // stored, other bytes are not.
    const open = spoolFile(0o640, tmp());
    const other = archive();
    expect(await other.store.linksFrom(tmp())).toBe(true);
    expect(await other.store.putPieces(FIXTURE_NAME, piecesOf(open), { file: open, known })).toMatchObject({ status: 'created', info: { checksum: sha256 } });
    expect((await other.store.get(FIXTURE_NAME)).info.checksum).toBe(sha256);
    const third = archive();
    const wrong = { sha256: '0'.repeat(64), size: known.size };
    await expect(third.store.putPieces(FIXTURE_NAME, piecesOf(open), { file: open, known: wrong })).rejects.toThrow(/does not hold the bytes written to it/);
    expect(readdirSync(third.dir).filter((n) => n === FIXTURE_NAME)).toEqual([]);
    const shm = mkdtempSync('/dev/shm/walstream-linked-');
    try {
      expect(await third.store.linksFrom(shm)).toBe(false);
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  it('is never linked from pg_wal by push: PostgreSQL reuses those files', async () => {
    const path = spoolFile();
    const { dir, store } = archive();
    const s: ArchiveStore = store;
    expect(await push({ path, openStore: async () => s, compression: 'none', noSync: false, log: silentLogger })).toBe('created');
    expect(statSync(join(dir, FIXTURE_NAME)).ino).not.toBe(statSync(path).ino);
    expect(statSync(path).nlink).toBe(1);
  });
});
