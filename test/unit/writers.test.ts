// archive/writers.ts: each receiver's record in the archive (two receivers, one archive), and
// how status shows them.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readWriters, WriterRecorder, writerName } from '../../src/archive/writers.js';
import { LocalStore } from '../../src/storage/local.js';
import { MemoryStore } from '../../src/storage/memory.js';
import { Keyring } from '../../src/storage/encryption.js';
import { archiveStatus, formatStatus } from '../../src/ops/status.js';
import { silentLogger } from '../../src/util/log.js';

describe('writer records', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const archive = (): LocalStore => {
    const d = mkdtempSync(join(tmpdir(), 'walstream-writers-'));
    dirs.push(d);
    return new LocalStore(d);
  };

  it('names a writer by its slot, else its host, in the characters a record name allows', () => {
    expect(writerName('ws1')).toBe('ws1');
    expect(writerName(undefined, 'Host-A.example.com')).toBe('host-a_example_com');
  });

  it('keeps one record per writer, the newest, left out of WAL listings; status lists both and which is ahead', async () => {
    const store = archive();
    const a = new WriterRecorder({ store, slot: 'ws1', log: silentLogger, intervalMs: 0, encrypted: false });
    const b = new WriterRecorder({ store, slot: 'ws2', log: silentLogger, intervalMs: 0, encrypted: false });
    a.progress(1, 0x3000000n);
    a.archived('000000010000000000000002');
    await a.flush();
    b.progress(1, 0x2ff0000n);
    await b.flush();
    a.progress(1, 0x3100000n);
    await a.flush();
    await Promise.all([a.close(), b.close()]);

    expect((await store.list('walstream.writer.')).map((o) => o.name.replace(/\.[0-9a-f]{12}$/, ''))).toEqual(['walstream.writer.ws1', 'walstream.writer.ws2']);
    expect(await store.list()).toEqual([]);
    const { writers } = await readWriters(store);
    expect(writers.map((w) => [w.writer, w.slot, w.flushLsn, w.lastArchived])).toEqual([
      ['ws1', 'ws1', 0x3100000n, '000000010000000000000002'],
      ['ws2', 'ws2', 0x2ff0000n, null],
    ]);

    const report = await archiveStatus({ store });
    expect(report.writers.map((w) => [w.writer, w.ahead, w.behindBytes])).toEqual([
      ['ws1', true, 0],
      ['ws2', false, 0x110000],
    ]);
    const text = formatStatus(report);
    expect(text).toMatch(/^writer {6}ws1 on .* \(slot ws1\): flushed 0\/3100000 on timeline 1, archived 000000010000000000000002, updated .* ago; ahead$/m);
    expect(text).toMatch(/^writer {6}ws2 on .* \(slot ws2\): flushed 0\/2FF0000 on timeline 1, updated .* ago; 1\.1 MB behind ws1$/m);
  });

  it('writes at most once per interval however often the position moves', async () => {
    const store = archive();
    const r = new WriterRecorder({ store, slot: 'ws1', log: silentLogger, intervalMs: 60_000, encrypted: false });
    for (let i = 1; i <= 50; i++) r.progress(1, BigInt(i) * 8192n);
    await new Promise((res) => setTimeout(res, 50));
    await r.close();
    const { writers } = await readWriters(store);
    expect(writers).toHaveLength(1);
    expect(await store.list('walstream.writer.')).toHaveLength(1);
  });
  it('a receiver that encrypts stores its record encrypted: status without the key counts it, with the key lists it', async () => {
    const key = new Keyring([{ id: 'k1', key: Buffer.alloc(32, 7) }], 'test');
    const enc = new MemoryStore('memory:', { keyring: key });
    const r = new WriterRecorder({ store: enc, slot: 'ws1', log: silentLogger, intervalMs: 0, encrypted: true });
    r.progress(1, 0x1000000n);
    await r.flush();
    await r.close();
    const keyless = new MemoryStore('memory:', { sharedWith: enc });
    const without = await archiveStatus({ store: keyless });
    expect([without.writers, without.writersEncrypted, without.warnings]).toEqual([[], 1, []]);
    expect(formatStatus(without)).toMatch(/^writers {5}1 receiver's record encrypted: give --encryption-key-file to read$/m);
    const withKey = await archiveStatus({ store: enc });
    expect(withKey.writers.map((w) => [w.writer, w.flushLsn])).toEqual([['ws1', '0/1000000']]);
    expect(withKey.writersEncrypted).toBe(0);
  });
});
