// cleanup --retain-backups / --retain-days (ops/cleanup.ts cleanupBackups) over a memory archive:
// old backups go record first, then their objects; the WAL only they needed goes, never what the
// oldest kept backup needs, never a history file; interrupted backups go once their writer is gone.
import { describe, expect, it } from 'vitest';
import { baseTarName, encodeRecord, manifestName, recordName, type BackupRecord } from '../../src/backup/layout.js';
import { CleanupError, cleanupBackups } from '../../src/ops/cleanup.js';
import { MemoryStore } from '../../src/storage/memory.js';
import { historyText, lsnAt, putSegments, seg } from './ops-walgen.js';

const DAY = 86_400_000;

function record(name: string, startSeg: number, endTime: Date): BackupRecord {
  return {
    format: 1,
    name,
    label: 'test',
    systemId: '7300000000000000001',
    serverVersion: 150010,
    walSegmentSize: 1024 * 1024,
    timeline: 1,
    startLsn: lsnAt(startSeg, 0x28),
    endLsn: lsnAt(startSeg, 0x100),
    startWal: seg(1, startSeg),
    endWal: seg(1, startSeg),
    startTime: endTime.toISOString(),
    endTime: endTime.toISOString(),
    walMethod: 'archive',
    size: 5,
    objects: [
      { name: baseTarName(name), kind: 'base', size: 5, sha256: 'a'.repeat(64), storedSize: 5, compression: 'none' },
      { name: manifestName(name), kind: 'manifest', size: 5, sha256: 'b'.repeat(64), storedSize: 5, compression: 'none' },
    ],
  };
}

async function putBackup(store: MemoryStore, name: string, startSeg: number, endTime: Date, complete = true): Promise<void> {
  await store.put(baseTarName(name), Buffer.from('base'));
  await store.put(manifestName(name), Buffer.from('manifest'));
  if (complete) await store.put(recordName(name), encodeRecord(record(name, startSeg, endTime)));
}

const names = async (store: MemoryStore, prefix?: string): Promise<string[]> => (await store.list(prefix)).map((o) => o.name);

describe('cleanup of backups by retention', () => {
  const now = new Date('2026-12-10T00:00:00Z');

  async function archive(): Promise<MemoryStore> {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 12);
    await store.put('00000002.history', historyText([[1, lsnAt(13)]]));
    await putBackup(store, '20261201T000000Z', 2, new Date(now.getTime() - 9 * DAY));
    await putBackup(store, '20261205T000000Z', 5, new Date(now.getTime() - 5 * DAY));
    await putBackup(store, '20261209T000000Z', 9, new Date(now.getTime() - 1 * DAY));
    return store;
  }

  it('keeps the newest N: the others go record first, then the WAL before the oldest kept one', async () => {
    const store = await archive();
    const order: string[] = [];
    const origDelete = store.delete.bind(store);
    store.delete = async (n: string) => {
      order.push(n);
      return origDelete(n);
    };
    const r = await cleanupBackups({ store, retain: { backups: 2 }, dryRun: false, now });
    expect(r.removed).toEqual(['20261201T000000Z']);
    expect(r.kept).toEqual(['20261205T000000Z', '20261209T000000Z']);
    expect(order[0]).toBe(recordName('20261201T000000Z'));
    expect(order.slice(1, 3).sort()).toEqual([manifestName('20261201T000000Z'), baseTarName('20261201T000000Z')].sort());
    expect(r.walBefore).toBe(seg(1, 5));
    const left = await names(store);
    for (let i = 1; i < 5; i++) expect(left).not.toContain(seg(1, i));
    for (let i = 5; i <= 12; i++) expect(left).toContain(seg(1, i));
    expect(left).toContain('00000002.history');
    expect(await names(store, 'backups/')).toEqual(
      [
        baseTarName('20261205T000000Z'),
        manifestName('20261205T000000Z'),
        recordName('20261205T000000Z'),
        baseTarName('20261209T000000Z'),
        manifestName('20261209T000000Z'),
        recordName('20261209T000000Z'),
      ].sort(),
    );
  });

  it('keeps those that ended within D days, and always the newest; a dry run removes nothing', async () => {
    const store = await archive();
    const before = await names(store);
    const dry = await cleanupBackups({ store, retain: { days: 3 }, dryRun: true, now });
    expect(dry.removed).toEqual(['20261201T000000Z', '20261205T000000Z']);
    expect(dry.wal?.plan.remove.map((f) => f.name)).toEqual([1, 2, 3, 4, 5, 6, 7, 8].map((n) => seg(1, n)));
    expect(await names(store)).toEqual(before);
    const r = await cleanupBackups({ store, retain: { days: 0 }, dryRun: false, now });
    expect(r.kept).toEqual(['20261209T000000Z']);
    // Both rules: a backup stays when either keeps it.
    const store2 = await archive();
    const both = await cleanupBackups({ store: store2, retain: { backups: 1, days: 6 }, dryRun: false, now });
    expect(both.kept).toEqual(['20261205T000000Z', '20261209T000000Z']);
  });

  it('removes an interrupted backup only once a later backup completed and its objects are old', async () => {
    const store = await archive();
    await putBackup(store, '20261208T000000Z', 8, now, false); // older than the newest complete one
    await putBackup(store, '20261209T120000Z', 10, now, false); // newer than every complete one: maybe running
    let r = await cleanupBackups({ store, retain: { backups: 3 }, dryRun: false, now: new Date() });
    expect(r.interrupted).toEqual([]); // just written: its writer may be at work
    r = await cleanupBackups({ store, retain: { backups: 3 }, dryRun: false, now: new Date(Date.now() + 2 * 3_600_000) });
    expect(r.interrupted).toEqual(['20261208T000000Z']);
    expect(await names(store, 'backups/20261208T000000Z.')).toEqual([]);
    expect(await names(store, 'backups/20261209T120000Z.')).toHaveLength(2);
  });

  it('refuses no rule or a zero count, and removes no WAL from an archive without backups', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 3);
    await expect(cleanupBackups({ store, retain: {}, dryRun: false })).rejects.toThrow(CleanupError);
    await expect(cleanupBackups({ store, retain: { backups: 0 }, dryRun: false })).rejects.toThrow(/at least 1/);
    const r = await cleanupBackups({ store, retain: { backups: 1 }, dryRun: false });
    expect(r.wal).toBeUndefined();
    expect(await names(store)).toHaveLength(3);
  });
});
