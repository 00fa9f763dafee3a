// A streamed body written into a local archive's temp file (storage/drivers/local.ts
// writeCoalesced): with `writeback`, a data sync is started every few megabytes while the writing
// goes on, at most three at once, and a failed one fails the write even though the caller's fsync at the
// end would succeed; with `blocking`, the same bytes are written with blocking system calls (push).
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { writeCoalesced } from '../../src/storage/drivers/local.js';
import { tempArchives } from '../support/temp-archive.js';

const { tmp, archive } = tempArchives('local-writeback');

/** 16 MB that differ from piece to piece, as `size`-byte pieces of one reused buffer (as push hands them over). */
async function* pieces(size: number, total = 16 * 1024 * 1024): AsyncGenerator<Buffer> {
  const buf = Buffer.alloc(size);
  for (let at = 0; at < total; at += size) {
    for (let i = 0; i < size; i += 4096) buf.writeUInt32LE((at + i) >>> 0, i);
    yield buf;
  }
}

function expected(total = 16 * 1024 * 1024): Buffer {
  const out = Buffer.alloc(total);
  for (let i = 0; i < total; i += 4096) out.writeUInt32LE(i >>> 0, i);
  return out;
}

/** The file handle with its datasync counted (and made to fail when `fail` is given). */
function counted(fh: FileHandle, fail?: Error): { fh: FileHandle; calls: () => number; most: () => number } {
  const real = fh.datasync.bind(fh);
  let calls = 0;
  let running = 0;
  let most = 0;
  fh.datasync = async (): Promise<void> => {
    calls++;
    running++;
    most = Math.max(most, running);
    try {
      await real();
      if (fail) throw fail;
    } finally {
      running--;
    }
  };
  return { fh, calls: () => calls, most: () => most };
}

describe('a streamed body written into a temp file', () => {
  for (const blocking of [false, true]) {
    it(`starts data syncs as it goes, at most three at once, and writes the same bytes (${blocking ? 'blocking' : 'thread pool'} writes)`, async () => {
      for (const size of [512 * 1024, 8 * 1024]) {
        const path = join(tmp(), 'f');
        const c = counted(await open(path, 'wx'));
        try {
          await writeCoalesced(c.fh, pieces(size), { blocking, writeback: true });
        } finally {
          await c.fh.close();
        }
        expect(readFileSync(path).equals(expected())).toBe(true);
        expect(c.calls()).toBeGreaterThanOrEqual(1);
        expect(c.calls()).toBeLessThanOrEqual(4);
        expect(c.most()).toBeLessThanOrEqual(3);
      }
    });
  }

  it('starts none without writeback (--no-sync)', async () => {
    const path = join(tmp(), 'f');
    const c = counted(await open(path, 'wx'));
    try {
      await writeCoalesced(c.fh, pieces(512 * 1024), { blocking: true, writeback: false });
    } finally {
      await c.fh.close();
    }
    expect(c.calls()).toBe(0);
    expect(readFileSync(path).equals(expected())).toBe(true);
  });

  it('fails when one of its data syncs fails, and reports a failure of the body itself first', async () => {
    const eio = Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
    const c = counted(await open(join(tmp(), 'f'), 'wx'), eio);
    try {
      await expect(writeCoalesced(c.fh, pieces(512 * 1024), { blocking: false, writeback: true })).rejects.toBe(eio);
    } finally {
      await c.fh.close();
    }
    const d = counted(await open(join(tmp(), 'g'), 'wx'), eio);
    const broken = async function* (): AsyncGenerator<Buffer> {
      yield* pieces(512 * 1024, 8 * 1024 * 1024);
      throw new Error('the source went away');
    };
    try {
      await expect(writeCoalesced(d.fh, broken(), { blocking: true, writeback: true })).rejects.toThrow('the source went away');
    } finally {
      await d.fh.close();
    }
    expect(d.calls()).toBeGreaterThanOrEqual(1);
  });

  it('stores the same object through putPieces with blocking writes as without', async () => {
    const a = archive();
    const b = archive();
    const ra = await a.store.putPieces('000000010000000000000001', pieces(512 * 1024), { blocking: true });
    const rb = await b.store.putPieces('000000010000000000000001', pieces(512 * 1024));
    expect(ra).toMatchObject({ status: 'created' });
    expect(rb).toMatchObject({ status: 'created' });
    if (ra === undefined || ra === 'taken' || rb === undefined || rb === 'taken') throw new Error('not stored');
    expect(ra.info.checksum).toBe(rb.info.checksum);
    expect(readFileSync(join(a.dir, '000000010000000000000001')).equals(expected())).toBe(true);
    expect(readFileSync(join(a.dir, '.walstream-meta', '000000010000000000000001.sha256'), 'utf8')).toBe(readFileSync(join(b.dir, '.walstream-meta', '000000010000000000000001.sha256'), 'utf8'));
  });
});
