// walstream verify over synthetic archives in a MemoryStore: what passes, and that each kind of
// damage is reported naming the object.
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/storage/memory.js';
import { Keyring } from '../../src/storage/encryption.js';
import { StorageError } from '../../src/storage/types.js';
import { encodeIdentity } from '../../src/archive/identity.js';
import { IDENTITY_NAME } from '../../src/storage/types.js';
import { formatVerify, verifyArchive, type VerifyReport } from '../../src/ops/verify.js';
import { CountingStore, SEG, SYSID, historyText, lsnAt, makeSegment, putSegments, seg } from './ops-walgen.js';
import { WalBuilder } from '../support/walrecords.js';

const problemsOf = (r: VerifyReport): string[] => r.problems.map((p) => `${p.object} ${p.kind}`);

/** Timeline 1 from segment 2 to 5 (switch inside 5), timeline 2 from 5 to 8, as a promotion leaves them. */
async function twoTimelines(store: MemoryStore): Promise<void> {
  await putSegments(store, 1, 2, 4);
  await store.put(`${seg(1, 5)}.partial`, makeSegment({ tli: 1, segNo: 5 }));
  await store.put('00000002.history', historyText([[1, lsnAt(5, 0x23f8)]]));
  await putSegments(store, 2, 5, 8);
}

describe('verify', () => {
  it('passes a complete archive and reports what it checked', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 3, 9);
    const r = await verifyArchive({ store });
    expect(r.problems).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.segmentSize).toBe(SEG);
    expect(r.systemIdentifier).toBe(SYSID.toString());
    expect(r.checked).toMatchObject({ objects: 7, segments: 7, bytes: 7 * SEG, withoutChecksum: 0 });
    expect(r.timelines).toEqual([expect.objectContaining({ timeline: 1, firstSegment: seg(1, 3), lastSegment: seg(1, 9), segments: 7, neededFirst: seg(1, 3), neededLast: seg(1, 9) })]);
    expect(formatVerify(r)).toMatch(/^OK: /m);
  });

  it('names a missing segment, and a run of missing segments by its first and last', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 12);
    await store.delete(seg(1, 4));
    for (const n of [7, 8, 9]) await store.delete(seg(1, n));
    const r = await verifyArchive({ store });
    expect(r.ok).toBe(false);
    expect(r.problems).toEqual([
      expect.objectContaining({ object: seg(1, 4), kind: 'missing-segment', count: 1 }),
      expect.objectContaining({ object: seg(1, 7), kind: 'missing-segment', last: seg(1, 9), count: 3 }),
    ]);
    const text = formatVerify(r);
    expect(text).toContain(`${seg(1, 4)}  missing-segment`);
    expect(text).toMatch(/^FAILED/m);
  });

  it('names an object that fails its recorded checksum', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 5);
    store.corrupt(seg(1, 3));
    const r = await verifyArchive({ store });
    expect(problemsOf(r)).toEqual([`${seg(1, 3)} checksum`]);
    expect(r.problems[0]!.message).toContain(seg(1, 3));
  });

  it('names a segment of another database system', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 3);
    await store.put(seg(1, 4), makeSegment({ tli: 1, segNo: 4, sysid: 42n }));
    await putSegments(store, 1, 5, 6);
    const r = await verifyArchive({ store });
    expect(problemsOf(r)).toEqual([`${seg(1, 4)} system-identifier`]);
    expect(r.problems[0]!.message).toMatch(/system 42\b.*system 7300000000000000001/);
  });

  it('judges the system against the identity record when the archive has one', async () => {
    const store = new MemoryStore();
    await store.put(IDENTITY_NAME, encodeIdentity({ systemIdentifier: 42n, segmentSize: SEG }));
    await putSegments(store, 1, 1, 3);
    await store.put(seg(1, 4), makeSegment({ tli: 1, segNo: 4, sysid: 42n }));
    const r = await verifyArchive({ store });
    expect(r.identityRecord).toBe(true);
    expect(r.systemIdentifier).toBe('42');
    expect(problemsOf(r)).toEqual([1, 2, 3].map((n) => `${seg(1, n)} system-identifier`));
  });

  it('names a segment whose pages belong elsewhere, or that is cut short', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 2);
    await store.put(seg(1, 3), makeSegment({ tli: 1, segNo: 9 })); // another segment's bytes under this name
    await store.put(seg(1, 4), makeSegment({ tli: 1, segNo: 4 }).subarray(0, SEG / 2));
    await store.put(seg(1, 5), makeSegment({ tli: 1, segNo: 5, pageTli: 3 })); // pages of a later timeline
    await putSegments(store, 1, 6, 6);
    const r = await verifyArchive({ store });
    expect(problemsOf(r)).toEqual([`${seg(1, 3)} header`, `${seg(1, 4)} segment-size`, `${seg(1, 5)} header`]);
    expect(r.problems[0]!.message).toMatch(/address/);
  });

  it('follows the history files across a promotion', async () => {
    const store = new MemoryStore();
    await twoTimelines(store);
    const r = await verifyArchive({ store });
    expect(r.problems).toEqual([]);
    expect(r.timelines).toEqual([
      expect.objectContaining({ timeline: 1, neededFirst: seg(1, 2), neededLast: seg(1, 4), parent: null }),
      expect.objectContaining({ timeline: 2, neededFirst: seg(2, 5), neededLast: seg(2, 8), parent: 1, begin: lsnAt(5, 0x23f8) }),
    ]);
    expect(r.checked).toMatchObject({ historyFiles: 1, partials: 1, segments: 7 });
  });

  it('needs the parent timeline up to the segment before its switch point', async () => {
    const store = new MemoryStore();
    await twoTimelines(store);
    await store.delete(seg(1, 4));
    const r = await verifyArchive({ store });
    expect(problemsOf(r)).toEqual([`${seg(1, 4)} missing-segment`]);
    expect(r.problems[0]!.message).toContain('00000002.history says timeline 1 ended at 0/5023F8');
    // And the child from the segment holding the switch point.
    const s2 = new MemoryStore();
    await twoTimelines(s2);
    await s2.delete(seg(2, 5));
    expect(problemsOf(await verifyArchive({ store: s2 }))).toEqual([`${seg(2, 5)} missing-segment`]);
  });

  it('names a missing history file of a timeline with WAL, and one whose absence hides newer timelines', async () => {
    const store = new MemoryStore();
    await twoTimelines(store);
    await store.delete('00000002.history');
    const r = await verifyArchive({ store });
    expect(problemsOf(r)).toEqual(['00000002.history missing-history']);

    const s3 = new MemoryStore();
    await putSegments(s3, 1, 1, 3);
    await s3.put(
      '00000003.history',
      historyText([
        [1, lsnAt(4)],
        [2, lsnAt(6)],
      ]),
    );
    await putSegments(s3, 2, 4, 5);
    await putSegments(s3, 3, 6, 7);
    const r3 = await verifyArchive({ store: s3 });
    expect(problemsOf(r3)).toEqual(['00000002.history missing-history']);
  });

  it('reports history files that contradict each other, and segments before their timeline began', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 4);
    await store.put('00000002.history', historyText([[1, lsnAt(5)]]));
    await store.put(
      '00000003.history',
      historyText([
        [1, lsnAt(4)],
        [2, lsnAt(7)],
      ]),
    );
    await putSegments(store, 2, 3, 6); // 3 and 4 precede timeline 2's start at segment 5
    await putSegments(store, 3, 7, 8);
    const r = await verifyArchive({ store });
    expect(problemsOf(r)).toEqual([`${seg(2, 3)} timeline`, `${seg(2, 4)} timeline`, '00000003.history history']);
  });

  it('--from skips what is older', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 8);
    await store.delete(seg(1, 2));
    store.corrupt(seg(1, 3));
    expect((await verifyArchive({ store, from: seg(1, 4) })).ok).toBe(true);
    const r = await verifyArchive({ store, from: seg(1, 3) });
    expect(problemsOf(r)).toEqual([`${seg(1, 3)} checksum`]);
    await expect(verifyArchive({ store, from: 'nonsense' })).rejects.toThrow(/not a WAL segment name/);
  });

  it('an empty archive (or nothing from --from on) is not a complete one', async () => {
    const store = new MemoryStore('memory:empty');
    expect(problemsOf(await verifyArchive({ store }))).toEqual(['memory:empty empty']);
    await putSegments(store, 1, 1, 2);
    expect(problemsOf(await verifyArchive({ store, from: seg(1, 3) }))).toEqual([`${seg(1, 3)} empty`]);
  });

  it('reads a few objects at a time, fewer when segments are big', async () => {
    const store = new CountingStore();
    await putSegments(store, 1, 1, 24);
    expect((await verifyArchive({ store, parallel: 3 })).ok).toBe(true);
    expect(store.maxInFlight).toBe(3);
    store.maxInFlight = 0;
    // Two segments' worth of memory: at most two reads at once, whatever --parallel says.
    expect((await verifyArchive({ store, parallel: 8, maxBytesInFlight: 2 * SEG })).ok).toBe(true);
    expect(store.maxInFlight).toBe(2);
  });

  it('a listing error fails the verification; a read error is a problem naming the object', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 3);
    store.failNext(new StorageError('LIST refused', true));
    await expect(verifyArchive({ store })).rejects.toThrow(/LIST refused/);
    const flaky = new (class extends MemoryStore {
      override async get(name: string): ReturnType<MemoryStore['get']> {
        if (name === seg(1, 2)) throw new StorageError('GET timed out', true);
        return super.get(name);
      }
    })();
    await putSegments(flaky, 1, 1, 3);
    expect(problemsOf(await verifyArchive({ store: flaky }))).toEqual([`${seg(1, 2)} read`]);
  });
});

describe('verify an encrypted archive', () => {
  const key = new Keyring([{ id: 'k1', key: Buffer.alloc(32, 7) }], 'test');

  it('with the key: authenticates every object, and names one that fails', async () => {
    const enc = new MemoryStore('memory:', { keyring: key });
    await twoTimelines(enc);
    await enc.put(IDENTITY_NAME, encodeIdentity({ systemIdentifier: SYSID, segmentSize: SEG }));
    const r = await verifyArchive({ store: enc });
    expect(r.problems).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.checked.encrypted).toBeGreaterThan(0);
    expect(r.checked.encryptedWithoutKey).toBe(0);
    expect(formatVerify(r)).toMatch(/encrypted objects? authenticated/);
    enc.corrupt(seg(2, 6));
    const bad = await verifyArchive({ store: enc });
    expect(problemsOf(bad)).toEqual([`${seg(2, 6)} checksum`]);
    expect(bad.problems[0]!.message).toMatch(/fails authentication/);
  });

  it('without the key: says it cannot verify them, calls none of them bad', async () => {
    const enc = new MemoryStore('memory:', { keyring: key });
    await twoTimelines(enc);
    await enc.put(IDENTITY_NAME, encodeIdentity({ systemIdentifier: SYSID, segmentSize: SEG }));
    const r = await verifyArchive({ store: enc.withKeyring(undefined) });
    expect(r.ok).toBe(false);
    expect(problemsOf(r)).toEqual(['memory: unverified']);
    expect(r.problems[0]!.message).toMatch(/^cannot verify \d+ encrypted objects: key "k1" not given/);
    expect(r.checked.encryptedWithoutKey).toBeGreaterThan(5);
    expect(r.checked.objects).toBe(0);
  });

  it('plain objects alongside encrypted ones are checked; the encrypted ones only with the key', async () => {
    const plain = new MemoryStore();
    await putSegments(plain, 1, 1, 3);
    const enc = plain.withKeyring(key);
    await putSegments(enc, 1, 4, 6);
    const withKey = await verifyArchive({ store: enc });
    expect(withKey.ok).toBe(true);
    expect(withKey.checked).toMatchObject({ segments: 6, encrypted: 3, encryptedWithoutKey: 0 });
    const without = await verifyArchive({ store: plain });
    expect(without.checked).toMatchObject({ segments: 3, encryptedWithoutKey: 3 });
    expect(problemsOf(without)).toEqual(['memory: unverified']);
  });
});

describe('verify --records', () => {
  /** Timeline 1 to 0/250000 (in segment 2), then timeline 2, as a promotion leaves them. */
  async function promoted(): Promise<{ store: MemoryStore; records: number; switchAt: number }> {
    const b = new WalBuilder({ segSize: SEG, firstSegNo: 1, systemId: SYSID });
    b.fillTo(SEG * 2 + 0x50000, 300);
    const switchAt = b.pos;
    const tl1 = b.build();
    b.tli = 2;
    b.fillTo(SEG * 3 + 1000, 300);
    const tl2 = b.build();
    const store = new MemoryStore();
    await store.put(seg(1, 1), tl1.segments[0]!);
    await store.put(seg(1, 2), tl1.segments[1]!); // the old timeline's copy of the switch segment
    await store.put(seg(2, 2), tl2.segments[1]!);
    await store.put(seg(2, 3), tl2.segments[2]!);
    await store.put('00000002.history', historyText([[1, lsnAt(2, switchAt - 2 * SEG)]]));
    return { store, records: tl2.records.length, switchAt };
  }

  it('decodes the records along the newest timeline and says where WAL ends', async () => {
    const { store, records } = await promoted();
    const r = await verifyArchive({ store, records: true });
    expect(r.problems).toEqual([]);
    expect(r.records).toMatchObject({ timeline: 2, firstSegment: seg(1, 1), lastSegment: seg(2, 3), segments: 3, records, endKind: 'zeros' });
    expect(formatVerify(r)).toMatch(/^records: \d+ records in 3 segments/m);
    expect(formatVerify(r)).toMatch(/^OK: .*its records replay/m);
    expect((await verifyArchive({ store })).records).toBeNull();
  });

  it('names the segment, offset and LSN of a damaged record', async () => {
    const { store } = await promoted();
    const data = (await store.get(seg(2, 3))).data;
    data[500] ^= 0x10;
    await store.delete(seg(2, 3));
    await store.put(seg(2, 3), data);
    const r = await verifyArchive({ store, records: true });
    expect(r.ok).toBe(false);
    const p = r.problems.find((x) => x.kind === 'record')!;
    expect(p.object).toBe(seg(2, 3));
    expect(p.offset).toBeLessThanOrEqual(500);
    expect(p.lsn).toBe(lsnAt(3, p.offset!));
    expect(p.message).toMatch(/CRC-32C/);
  });

  it('a page of the old timeline past the switch point is named', async () => {
    const { store, switchAt } = await promoted();
    // pages after the switch point that say timeline 1
    const data = (await store.get(seg(2, 2))).data;
    for (let off = Math.ceil((switchAt - 2 * SEG) / 8192) * 8192; off < SEG; off += 8192) data.writeUInt32LE(1, off + 4);
    await store.delete(seg(2, 2));
    await store.put(seg(2, 2), data);
    const r = await verifyArchive({ store, records: true });
    expect(r.problems.some((p) => p.kind === 'record' && p.object === seg(2, 2) && /history of timeline 2 puts/.test(p.message))).toBe(true);
  });
});

describe('verify --records past an unreadable segment', () => {
  it('names the segment once (checksum) and checks the records after it', async () => {
    const b = new WalBuilder({ segSize: SEG, firstSegNo: 1, systemId: SYSID });
    b.fillTo(SEG * 4 + 1000, 300);
    const w = b.build();
    const store = new MemoryStore();
    for (let i = 0; i < w.segments.length; i++) await store.put(seg(1, i + 1), w.segments[i]!);
    store.corrupt(seg(1, 2));
    const r = await verifyArchive({ store, records: true });
    expect(problemsOf(r)).toEqual([`${seg(1, 2)} checksum`]);
    expect(r.records).toMatchObject({ segments: 3, lastSegment: seg(1, 4) });
    // the records of segments 3 and 4 (but for the one continued from segment 2) were read
    const after = w.records.filter((l) => l >= 3 * SEG + 40).length;
    const inFirst = w.records.filter((l) => l < 2 * SEG).length;
    expect(r.records!.records).toBeGreaterThanOrEqual(inFirst - 1 + after - 1);
    expect(r.notes.join('\n')).toMatch(/1 segment could not be read for the record check/);
  });
});
