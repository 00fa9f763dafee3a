// walstream push of one plain segment into a local archive a piece at a time (commands/push.ts
// pushPieces, ArchiveStore.putPieces): the same object and record as the whole-file way, every
// page checked before anything is published, nothing left behind when a check fails, and the
// whole-file way (which compares copies) when the archive already holds the name.
import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { push, PushError } from '../../src/commands/push.js';
import { MemoryStore } from '../../src/storage/memory.js';
import { ConflictError, type ArchiveStore } from '../../src/storage/types.js';
import { silentLogger } from '../../src/util/log.js';
import { failure, tempArchives } from '../support/temp-archive.js';
import { FIXTURE_NAME, fixtureSegment } from './fixture.js';

const { tmp, archive } = tempArchives('push-pieces');

function pushTo(store: ArchiveStore, path: string): Promise<'created' | 'exists'> {
  return push({ path, openStore: async () => store, compression: 'none', noSync: false, log: silentLogger });
}

/** The files in a local archive, temp files included, but for its identity record (directories are not listed). */
function stored(dir: string, sub = ''): string[] {
  if (!existsSync(join(dir, sub))) return [];
  return readdirSync(join(dir, sub), { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? stored(dir, join(sub, e.name)) : [join(sub, e.name)]))
    .filter((f) => !f.includes('walstream.json'))
    .sort();
}

describe('push of one plain segment into a local archive', () => {
  it('stores the segment and its record a piece at a time, as the whole-file way stores them', async () => {
    const wal = tmp();
    const path = join(wal, FIXTURE_NAME);
    writeFileSync(path, fixtureSegment());
    const { store } = archive();
    let pieces = 0;
    const counting: ArchiveStore = Object.create(store, {
      putPieces: {
        value: (name: string, src: AsyncIterable<Buffer>, opts: { noSync?: boolean }) =>
          store.putPieces(
            name,
            (async function* () {
              for await (const p of src) {
                pieces++;
                yield p;
              }
            })(),
            opts,
          ),
      },
    });
    expect(await pushTo(counting, path)).toBe('created');
    expect(pieces).toBe(2);
    const got = await store.get(FIXTURE_NAME);
    expect(got.data.equals(fixtureSegment())).toBe(true);
    // The same record as a put of the whole file.
    const memory = new MemoryStore();
    await memory.put(FIXTURE_NAME, fixtureSegment());
    expect(got.info.checksum).toBe((await memory.head(FIXTURE_NAME))!.checksum);
    expect(got.info.size).toBe(fixtureSegment().length);
    // Again: the archive holds it, the whole-file way finds the same bytes.
    expect(await pushTo(store, path)).toBe('exists');
    // Other bytes under that name: refused and kept aside, as ever.
    const other = fixtureSegment();
    other[other.length - 1]! ^= 1;
    writeFileSync(path, other);
    expect(await failure(pushTo(store, path))).toBeInstanceOf(ConflictError);
  });

  it('publishes nothing when a page past the first piece is wrong, or the file is cut short', async () => {
    const wal = tmp();
    const path = join(wal, FIXTURE_NAME);
    const bad = fixtureSegment();
    bad.writeUInt16LE(0x1234, 600 * 1024); // the magic of a page in the second piece
    writeFileSync(path, bad);
    const { dir: local, store } = archive();
    const err = await failure(pushTo(store, path));
    expect(err).toBeInstanceOf(PushError);
    expect((err as Error).message).toMatch(new RegExp(`^${FIXTURE_NAME}: not a valid WAL segment: page at offset ${600 * 1024}`));
    expect(stored(local)).toEqual([]);
    expect(await store.head(FIXTURE_NAME)).toBeUndefined();

    writeFileSync(path, fixtureSegment().subarray(0, 700 * 1024));
    const short = await failure(pushTo(store, path));
    expect(short).toBeInstanceOf(PushError);
    expect((short as Error).message).toBe(`${FIXTURE_NAME}: file has ${700 * 1024} bytes, but its segment size is ${1024 * 1024}`);
    expect(stored(local)).toEqual([]);
  });
});

describe('push --parallel markers', () => {
  it('stand only for files in the archive they were left for: markers of another archive are removed, and the file is pushed', async () => {
    const wal = tmp();
    const path = join(wal, FIXTURE_NAME);
    writeFileSync(path, fixtureSegment());
    const markers = join(tmp(), 'markers');
    const { store } = archive();
    const pushWith = (archiveKey: string) => push({ path, openStore: async () => store, compression: 'none', noSync: true, parallel: 2, markers, archiveKey, log: silentLogger });
    // A marker left for this file while the directory served archive A.
    expect(await pushWith('/a ')).toBe('created');
    expect(readFileSync(join(markers, '.archive'), 'utf8')).toBe('/a ');
    writeFileSync(join(markers, `${FIXTURE_NAME}.pushed`), '');
    // Now archive_command names archive B: the marker does not answer, the file goes to B.
    await store.delete(FIXTURE_NAME);
    expect(await pushWith('/b ')).toBe('created');
    expect(existsSync(join(markers, `${FIXTURE_NAME}.pushed`))).toBe(false);
    expect(readFileSync(join(markers, '.archive'), 'utf8')).toBe('/b ');
    expect((await store.get(FIXTURE_NAME)).data.equals(fixtureSegment())).toBe(true);
    // For B's own marker the call is answered by it, without reading the archive.
    writeFileSync(join(markers, `${FIXTURE_NAME}.pushed`), '');
    await store.delete(FIXTURE_NAME);
    expect(await pushWith('/b ')).toBe('exists');
    expect(await store.head(FIXTURE_NAME)).toBeUndefined();
  });
});
