// walstream cleanup over synthetic archives: exactly what each rule removes, what it never
// removes, and that it refuses to act on an archive it cannot list.
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/storage/memory.js';
import { StorageError } from '../../src/storage/types.js';
import { CleanupError, cleanupArchive, cutoffSegment, parseDuration, type CleanupRule } from '../../src/ops/cleanup.js';
import { historyText, lsnAt, makeSegment, putSegments, seg } from './ops-walgen.js';

const names = async (store: MemoryStore): Promise<string[]> => (await store.list()).map((o) => o.name);
const before = (segment: string): CleanupRule => ({ kind: 'before', segment });
const DAY = 86_400_000;

/**
 * Timeline 1 segments 1-9 (it went on after the branch: 6-9), timeline 2 branched from it inside
 * segment 5 (a promotion's .partial of 1/5), segments 5-9; timeline 3 branched from timeline 1 at
 * segment 7 (a sibling of 2), segments 7-8. A backup history file on timeline 2 at segment 6.
 */
async function branches(): Promise<MemoryStore> {
  const store = new MemoryStore();
  await putSegments(store, 1, 1, 9);
  await store.put(`${seg(1, 5)}.partial`, makeSegment({ tli: 1, segNo: 5 }));
  await store.put('00000002.history', historyText([[1, lsnAt(5, 0x2000)]]));
  await putSegments(store, 2, 5, 9);
  await store.put(`${seg(2, 6)}.00000028.backup`, Buffer.from('START WAL LOCATION: 0/600028\n'));
  await store.put('00000003.history', historyText([[1, lsnAt(7)]]));
  await putSegments(store, 3, 7, 8);
  return store;
}

describe('cleanup', () => {
  it('before a segment: older segments, partials, pieces and backups of its timeline; history files stay', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 8);
    await store.put(`${seg(1, 2)}.partial.00000000`, Buffer.from('piece'));
    await store.put(`${seg(1, 3)}.00000028.backup`, Buffer.from('backup 3'));
    await store.put(`${seg(1, 6)}.00000028.backup`, Buffer.from('backup 6'));
    await store.put('00000002.history', historyText([[1, lsnAt(9)]]));
    const res = await cleanupArchive({ store, rule: before(seg(1, 5)), dryRun: false });
    expect(res.removed).toBe(6);
    expect(res.plan.remove.map((f) => f.name)).toEqual([seg(1, 1), seg(1, 2), `${seg(1, 2)}.partial.00000000`, seg(1, 3), `${seg(1, 3)}.00000028.backup`, seg(1, 4)]);
    expect(await names(store)).toEqual([seg(1, 5), seg(1, 6), `${seg(1, 6)}.00000028.backup`, seg(1, 7), seg(1, 8), '00000002.history'].sort());
  });

  it("on a later timeline: its own older WAL, and its ancestors' only up to their switch points", async () => {
    const store = await branches();
    const res = await cleanupArchive({ store, rule: before(seg(2, 8)), dryRun: false });
    expect(res.plan.remove.map((f) => f.name)).toEqual([seg(1, 1), seg(1, 2), seg(1, 3), seg(1, 4), seg(1, 5), `${seg(1, 5)}.partial`, seg(2, 5), seg(2, 6), `${seg(2, 6)}.00000028.backup`, seg(2, 7)]);
    const left = await names(store);
    // Timeline 1 after the branch (6-9) and the sibling timeline 3 are not timeline 2's past.
    expect(left).toEqual(['00000002.history', '00000003.history', seg(1, 6), seg(1, 7), seg(1, 8), seg(1, 9), seg(2, 8), seg(2, 9), seg(3, 7), seg(3, 8)].sort());
  });

  it("a switch point on a segment boundary keeps the parent's segment that starts there", async () => {
    const store = await branches();
    const res = await cleanupArchive({ store, rule: before(seg(3, 8)), dryRun: true });
    expect(res.plan.remove.map((f) => f.name)).toEqual([seg(1, 1), seg(1, 2), seg(1, 3), seg(1, 4), seg(1, 5), `${seg(1, 5)}.partial`, seg(1, 6), seg(3, 7)]);
  });

  it("without the timeline's history file only that timeline is cleaned, with a warning", async () => {
    const store = await branches();
    await store.delete('00000002.history');
    const warnings: string[] = [];
    const log = { info() {}, verbose() {}, error() {}, warn: (m: string) => warnings.push(m) };
    const res = await cleanupArchive({ store, rule: before(seg(2, 8)), dryRun: false, log });
    expect(res.plan.remove.map((f) => f.name)).toEqual([seg(2, 5), seg(2, 6), `${seg(2, 6)}.00000028.backup`, seg(2, 7)]);
    expect(warnings.join()).toMatch(/00000002\.history is not in the archive: only timeline 2 is cleaned/);
  });

  it('never removes the newest segment', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 3);
    await cleanupArchive({ store, rule: before(seg(1, 9)), dryRun: false });
    expect(await names(store)).toEqual([seg(1, 3)]);
  });

  it('a dry run removes nothing and says what would go', async () => {
    const store = await branches();
    const before_ = await names(store);
    const seen: string[] = [];
    const res = await cleanupArchive({ store, rule: before(seg(2, 8)), dryRun: true, onRemove: (f) => seen.push(f.name) });
    expect(res.removed).toBe(0);
    expect(seen).toHaveLength(10);
    expect(res.bytes).toBeGreaterThan(7 * 1024 * 1024);
    expect(await names(store)).toEqual(before_);
  });

  it('older than a duration: only below every recent segment, never recent backups or history files', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 7);
    await store.put(`${seg(1, 2)}.00000028.backup`, Buffer.from('old backup'));
    await store.put(`${seg(1, 3)}.00000028.backup`, Buffer.from('recent backup'));
    await store.put('00000002.history', historyText([[1, lsnAt(9)]]));
    const old = new Date(Date.now() - 10 * DAY);
    for (const n of [seg(1, 1), seg(1, 2), seg(1, 3), seg(1, 5), seg(1, 7), `${seg(1, 2)}.00000028.backup`, '00000002.history']) store.setModified(n, old);
    // Segment 4 is recent, so nothing from 4 on goes (5 is old but above it); 7 is the newest.
    const res = await cleanupArchive({ store, rule: { kind: 'older-than', cutoff: new Date(Date.now() - 7 * DAY) }, dryRun: false });
    expect(res.plan.remove.map((f) => f.name)).toEqual([seg(1, 1), seg(1, 2), `${seg(1, 2)}.00000028.backup`, seg(1, 3)]);
    expect(await names(store)).toEqual(['00000002.history', `${seg(1, 3)}.00000028.backup`, seg(1, 4), seg(1, 5), seg(1, 6), seg(1, 7)].sort());
  });

  it('older than a duration with everything old keeps the newest segment and what is above it', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 4);
    await store.put(`${seg(1, 5)}.partial.00000000`, Buffer.from('piece'));
    for (const o of await store.list()) store.setModified(o.name, new Date(Date.now() - 30 * DAY));
    await cleanupArchive({ store, rule: { kind: 'older-than', cutoff: new Date(Date.now() - DAY) }, dryRun: false });
    expect(await names(store)).toEqual([seg(1, 4), `${seg(1, 5)}.partial.00000000`]);
  });

  it('refuses to act on an archive it cannot list', async () => {
    const store = await branches();
    const all = await names(store);
    store.failNext(new StorageError('S3 LIST: truncated listing without a continuation token', true));
    await expect(cleanupArchive({ store, rule: before(seg(2, 8)), dryRun: false })).rejects.toThrow(
      /^cannot list the archive completely, so nothing was removed: S3 LIST: truncated listing without a continuation token$/,
    );
    expect(await names(store)).toEqual(all);
  });

  it('a failed delete stops with how far it got, oldest removed first', async () => {
    const store = new (class extends MemoryStore {
      override async delete(name: string): Promise<void> {
        if (name === seg(1, 4)) throw new StorageError('DELETE refused', false);
        return super.delete(name);
      }
    })();
    await putSegments(store, 1, 1, 8);
    const err = await cleanupArchive({ store, rule: before(seg(1, 8)), dryRun: false, parallel: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CleanupError);
    expect((err as Error).message).toBe(`removed 3 of 7 objects, then could not remove ${seg(1, 4)}: DELETE refused`);
    expect(await names(store)).toEqual([4, 5, 6, 7, 8].map((n) => seg(1, n)));
  });

  it('cutoff names: %r forms, the all-zero name, and garbage', () => {
    expect(cutoffSegment(seg(2, 7))).toBe(seg(2, 7));
    expect(cutoffSegment(`${seg(2, 7)}.partial`)).toBe(seg(2, 7));
    expect(cutoffSegment(`${seg(2, 7)}.00000028.backup`)).toBe(seg(2, 7));
    expect(cutoffSegment('000000000000000000000000')).toBeUndefined();
    expect(() => cutoffSegment('00000000000000000000000A')).toThrow(/timeline 0/);
    expect(() => cutoffSegment('pg_wal/000000010000000000000001')).toThrow(/not a WAL file name/);
    expect(() => cutoffSegment('00000002.history')).toThrow(CleanupError);
  });

  it('durations', () => {
    expect(parseDuration('7d')).toBe(7 * DAY);
    expect(parseDuration('12h')).toBe(12 * 3_600_000);
    expect(parseDuration('1w2d')).toBe(9 * DAY);
    expect(parseDuration('90m')).toBe(5_400_000);
    expect(parseDuration('30s')).toBe(30_000);
    for (const bad of ['', '7', 'd', '-1d', '1.5h', '0d', '7 days']) expect(() => parseDuration(bad), bad).toThrow(CleanupError);
  });
});
