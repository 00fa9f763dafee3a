// Base backup names and records in the archive (backup/layout.ts), over the memory and directory drivers.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { backupName, baseTarName, decodeRecord, encodeRecord, findBackup, listBackups, manifestName, parseBackupObjectName, recordName, tablespaceTarName, type BackupRecord } from '../../src/backup/layout.js';
import { LocalStore } from '../../src/storage/local.js';
import { MemoryStore } from '../../src/storage/memory.js';
import type { ArchiveStore } from '../../src/storage/types.js';

function record(name: string): BackupRecord {
  return {
    format: 1,
    name,
    label: 'test',
    systemId: '7301234567890123456',
    serverVersion: 150010,
    walSegmentSize: 16 * 1024 * 1024,
    timeline: 1,
    startLsn: '0/2000028',
    endLsn: '0/2000100',
    startWal: '000000010000000000000002',
    endWal: '000000010000000000000002',
    startTime: '2026-12-04T08:30:00.000Z',
    endTime: '2026-12-04T08:30:05.000Z',
    walMethod: 'archive',
    size: 5,
    objects: [{ name: baseTarName(name), kind: 'base', size: 5, sha256: 'a'.repeat(64), storedSize: 5, compression: 'none' }],
  };
}

async function* pieces(...b: Buffer[]): AsyncGenerator<Buffer> {
  yield* b;
}

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('backup names', () => {
  it('are the start time in UTC, with a suffix for a second one in the same second', () => {
    const when = new Date('2026-12-04T08:30:01.123Z');
    expect(backupName(when)).toBe('20261204T083001Z');
    expect(backupName(when, 2)).toBe('20261204T083001Z-2');
    expect(baseTarName('20261204T083001Z')).toBe('backups/20261204T083001Z.base.tar');
    expect(tablespaceTarName('20261204T083001Z', 16385)).toBe('backups/20261204T083001Z.16385.tar');
    expect(manifestName('20261204T083001Z-2')).toBe('backups/20261204T083001Z-2.backup_manifest');
    expect(parseBackupObjectName('backups/20261204T083001Z-2.json')).toEqual({ backup: '20261204T083001Z-2', part: 'json' });
    expect(parseBackupObjectName('backups/20261204T083001Z.x.tar')).toBeUndefined();
    expect(parseBackupObjectName('000000010000000000000001')).toBeUndefined();
  });

  it('a record round-trips, and a damaged one is refused with its name', () => {
    const r = record('20261204T083000Z');
    expect(decodeRecord('x', encodeRecord(r))).toEqual(r);
    expect(() => decodeRecord('backups/x.json', Buffer.from('{'))).toThrow(/backup record "backups\/x.json" is invalid: not JSON/);
    expect(() => decodeRecord('x', encodeRecord({ ...r, objects: [] }))).toThrow(/lists no objects/);
    expect(() => decodeRecord('x', encodeRecord({ ...r, format: 2 as 1 }))).toThrow(/format 2/);
    expect(() => decodeRecord('x', encodeRecord({ ...r, objects: [{ ...r.objects[0]!, name: baseTarName('20261204T083001Z') }] }))).toThrow(/not named for this backup/);
  });
});

const stores: [string, () => Promise<ArchiveStore>][] = [
  ['memory', async () => new MemoryStore()],
  [
    'directory',
    async () => {
      const d = await mkdtemp(join(tmpdir(), 'ws-backup-layout-'));
      dirs.push(d);
      return new LocalStore(d);
    },
  ],
];

describe.each(stores)('backups in a %s archive', (_, open) => {
  it('a backup is listed as complete only once its record exists; WAL listings never show it', async () => {
    const s = await open();
    const a = '20261204T083000Z';
    const b = '20261204T083000Z-2';
    await s.putStream!(baseTarName(a), pieces(Buffer.from('hello')), { compression: 'gzip' });
    await s.put(manifestName(a), Buffer.from('{}'));
    await s.putStream!(baseTarName(b), pieces(Buffer.from('world')));
    await s.put('000000010000000000000001', Buffer.alloc(16));
    let inv = await listBackups(s);
    expect(inv.complete).toEqual([]);
    expect(inv.incomplete).toEqual([
      { backup: a, objects: [manifestName(a), baseTarName(a)] },
      { backup: b, objects: [baseTarName(b)] },
    ]);
    await expect(findBackup(s, a)).rejects.toThrow(/is incomplete/);
    await expect(findBackup(s, 'latest')).rejects.toThrow(/holds no complete backup/);
    await s.put(recordName(a), encodeRecord(record(a)));
    inv = await listBackups(s);
    expect(inv.complete.map((r) => r.name)).toEqual([a]);
    expect((await findBackup(s, 'latest')).name).toBe(a);
    await expect(findBackup(s, '20261204T093000Z')).rejects.toThrow(/is not in/);
    await expect(findBackup(s, '../x')).rejects.toThrow(/is not a backup name/);
    expect((await s.list()).map((o) => o.name)).toEqual(['000000010000000000000001']);
    const got = await s.getStream!(baseTarName(a));
    const parts: Buffer[] = [];
    for await (const p of got.stream) parts.push(p);
    expect(Buffer.concat(parts).toString()).toBe('hello');
  });
});
