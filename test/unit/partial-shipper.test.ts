// archive/partial.ts: the pieces of the segment in progress, when the segment completes between
// the receiver's call and the read of its .partial file.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { listPieces, PartialShipper } from '../../src/archive/partial.js';
import { LocalStore } from '../../src/storage/local.js';
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
});
