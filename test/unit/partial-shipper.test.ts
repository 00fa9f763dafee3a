// archive/partial.ts: the pieces of the segment in progress, when the segment completes between
// the receiver's call and the read of its .partial file.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { assemblePieces, listPieces, PartialShipper } from '../../src/archive/partial.js';
import type { ArchiveStore } from '../../src/storage/types.js';
import { LocalStore } from '../../src/storage/local.js';
import { MemoryStore } from '../../src/storage/memory.js';
import type { Logger } from '../../src/util/log.js';

const SEG = '000000010000000000000003';

describe('PartialShipper', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const setup = (): { spool: string; store: LocalStore; log: Logger & { lines: string[] } } => {
    const spool = mkdtempSync(join(tmpdir(), 'walstream-ship-spool-'));
    const archive = mkdtempSync(join(tmpdir(), 'walstream-ship-archive-'));
    dirs.push(spool, archive);
    const lines: string[] = [];
    const log = {
      lines,
      info: (m: string) => lines.push(`info ${m}`),
      verbose: (m: string) => lines.push(`verbose ${m}`),
      warn: (m: string) => lines.push(`warn ${m}`),
      error: (m: string) => lines.push(`error ${m}`),
    };
    return { spool, store: new LocalStore(archive), log };
  };

  it('finds the chain of pieces in a directory one name at a time (no listing of the archive), as a listing finds it elsewhere', async () => {
    const { store } = setup();
    const memory = new MemoryStore();
    expect(store.listScans()).toBe(true);
    expect(memory.listScans()).toBe(false);
    const other = '000000010000000000000004';
    for (const s of [store, memory]) {
      await s.put(`${SEG}.partial.00000000`, Buffer.alloc(100, 1), { noSync: true });
      await s.put(`${SEG}.partial.00000064`, Buffer.alloc(50, 2), { noSync: true });
      // After a gap: not on the chain, as a reader would not take it.
      await s.put(`${SEG}.partial.00000190`, Buffer.alloc(10, 3), { noSync: true });
      await s.put(`${other}.partial.00000000`, Buffer.alloc(100, 4), { noSync: true });
      await s.put(SEG.replace(/3$/, '2'), Buffer.alloc(1, 5), { noSync: true });
    }
    // The directory's way must not read the whole archive.
    const noListing = new Proxy(store, {
      get: (target, prop, receiver) =>
        prop === 'list'
          ? () => {
              throw new Error('listed the archive');
            }
          : Reflect.get(target, prop, receiver),
    }) as ArchiveStore;
    const chain = [
      { name: `${SEG}.partial.00000000`, offset: 0, size: 100 },
      { name: `${SEG}.partial.00000064`, offset: 100, size: 50 },
    ];
    expect(await listPieces(noListing, SEG)).toEqual(chain);
    expect(await listPieces(memory, SEG)).toEqual(chain);
    expect(await listPieces(noListing, '000000010000000000000009')).toEqual([]);
    expect((await assemblePieces(noListing, SEG)).equals(Buffer.concat([Buffer.alloc(100, 1), Buffer.alloc(50, 2)]))).toBe(true);
  });

  it('ships the durable bytes of the .partial as a piece', async () => {
    const { spool, store, log } = setup();
    writeFileSync(join(spool, `${SEG}.partial`), Buffer.alloc(16384, 7));
    await new PartialShipper({ store, spoolDir: spool, log, noSync: true }).ship(SEG, 8192);
    expect(log.lines.filter((l) => l.startsWith('error'))).toEqual([]);
    expect((await listPieces(store, SEG)).map((p) => [p.offset, p.size])).toEqual([[0, 8192]]);
  });

  it('says nothing alarming when the segment was completed meanwhile, and still errs when the file is simply gone', async () => {
    const { spool, store, log } = setup();
    writeFileSync(join(spool, SEG), Buffer.alloc(16384, 7));
    const shipper = new PartialShipper({ store, spoolDir: spool, log, noSync: true });
    await shipper.ship(SEG, 8192);
    expect(log.lines.filter((l) => l.startsWith('error'))).toEqual([]);
    expect(log.lines.some((l) => l.startsWith('verbose') && l.includes('goes to the archive whole'))).toBe(true);
    expect(await listPieces(store, SEG)).toEqual([]);

    await shipper.ship('000000010000000000000004', 8192);
    expect(log.lines.filter((l) => l.startsWith('error')).join('\n')).toMatch(/could not archive the segment in progress 000000010000000000000004: ENOENT/);
  });
  describe('two receivers shipping the same segment into one archive', () => {
    const wal = Buffer.alloc(65536);
    for (let i = 0; i < wal.length; i++) wal[i] = (i * 31 + (i >> 8)) & 0xff;
    const spoolWith = (data: Buffer): string => {
      const spool = mkdtempSync(join(tmpdir(), 'walstream-ship-spool-'));
      dirs.push(spool);
      writeFileSync(join(spool, `${SEG}.partial`), data);
      return spool;
    };
    const errors = (log: { lines: string[] }): string[] => log.lines.filter((l) => l.startsWith('error'));

    it('each goes on after the pieces of the other (read back and found equal), never a conflict', async () => {
      const { spool, store, log } = setup();
      writeFileSync(join(spool, `${SEG}.partial`), wal);
      const other = spoolWith(wal);
      const a = new PartialShipper({ store, spoolDir: spool, log, noSync: true });
      const b = new PartialShipper({ store, spoolDir: other, log, noSync: true });
      await a.ship(SEG, 4096);
      await b.ship(SEG, 8192);
      await a.ship(SEG, 12288);
      await b.ship(SEG, 10000); // behind the chain: nothing to add
      await b.ship(SEG, 20000);
      await a.ship(SEG, 20000);
      expect(errors(log)).toEqual([]);
      expect((await listPieces(store, SEG)).map((p) => [p.offset, p.size])).toEqual([
        [0, 4096],
        [4096, 4096],
        [8192, 4096],
        [12288, 7712],
      ]);
      expect(await store.list('quarantine/')).toEqual([]);
      expect((await assemblePieces(store, SEG)).equals(wal.subarray(0, 20000))).toBe(true);
    });

    it("a piece put at the same offset by both, of different lengths, is a race: the loser reads the winner's and goes on after it", async () => {
      const { spool, store, log } = setup();
      writeFileSync(join(spool, `${SEG}.partial`), wal);
      const a = new PartialShipper({ store, spoolDir: spool, log, noSync: true });
      await a.ship(SEG, 4096);
      // The other receiver listed the archive before that piece was there.
      let stale = true;
      const racing: ArchiveStore = Object.create(store, {
        list: {
          value: async (prefix?: string) => {
            if (!stale || !prefix?.includes('.partial.')) return store.list(prefix);
            stale = false;
            return [];
          },
        },
      }) as ArchiveStore;
      const b = new PartialShipper({ store: racing, spoolDir: spoolWith(wal), log, noSync: true });
      await b.ship(SEG, 10000);
      expect(errors(log)).toEqual([]);
      expect((await listPieces(store, SEG)).map((p) => [p.offset, p.size])).toEqual([
        [0, 4096],
        [4096, 5904],
      ]);
      expect(await store.list('quarantine/')).toEqual([]);
      expect((await assemblePieces(store, SEG)).equals(wal.subarray(0, 10000))).toBe(true);
    });

    it('never continues a chain holding other bytes than it received', async () => {
      const { spool, store, log } = setup();
      writeFileSync(join(spool, `${SEG}.partial`), wal);
      const a = new PartialShipper({ store, spoolDir: spool, log, noSync: true });
      await a.ship(SEG, 4096);
      const forked = Buffer.from(wal);
      forked[3000] ^= 0xff;
      const b = new PartialShipper({ store, spoolDir: spoolWith(forked), log, noSync: true });
      await b.ship(SEG, 8192);
      await b.ship(SEG, 12288);
      expect(errors(log).join('\n')).toMatch(/not shipping more of 000000010000000000000003 in progress: the pieces in the archive hold other bytes/);
      expect(errors(log)).toHaveLength(1);
      await a.ship(SEG, 8192);
      expect((await listPieces(store, SEG)).map((p) => [p.offset, p.size])).toEqual([
        [0, 4096],
        [4096, 4096],
      ]);
      expect((await assemblePieces(store, SEG)).equals(wal.subarray(0, 8192))).toBe(true);
    });

    it('ships nothing of a segment the other receiver archived whole already', async () => {
      const { spool, store, log } = setup();
      writeFileSync(join(spool, `${SEG}.partial`), wal);
      await store.put(SEG, wal, { noSync: true });
      await new PartialShipper({ store, spoolDir: spool, log, noSync: true }).ship(SEG, 8192);
      expect(errors(log)).toEqual([]);
      expect(await listPieces(store, SEG)).toEqual([]);
    });
  });
});
