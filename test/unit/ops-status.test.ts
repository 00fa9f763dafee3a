// walstream status over synthetic archives: counts, gaps, the segment in progress, how far the
// archive reaches, and the lag behind a server and its slot.
import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/storage/memory.js';
import { archiveStatus, formatStatus, statusJson } from '../../src/ops/status.js';
import { buildInventory, missingRanges, positionToSegNo } from '../../src/ops/inventory.js';
import { SEG, SYSID, historyText, lsnAt, makeSegment, putSegments, seg } from './ops-walgen.js';

const NOW = new Date('2030-01-01T00:00:00Z');

describe('status', () => {
  it('per timeline: first, last, count, bytes and gaps; history files; the partial in progress', async () => {
    const store = new MemoryStore('memory:status');
    await putSegments(store, 1, 2, 4);
    await store.put(`${seg(1, 5)}.partial`, makeSegment({ tli: 1, segNo: 5 }));
    await store.put('00000002.history', historyText([[1, lsnAt(5, 0x23f8)]]));
    await putSegments(store, 2, 5, 10);
    await store.delete(seg(2, 7));
    await store.delete(seg(2, 8));
    await store.put(`${seg(2, 11)}.partial.00000000`, Buffer.alloc(8192, 1));
    await store.put(`${seg(2, 11)}.partial.00002000`, Buffer.alloc(4096, 2));
    await store.put(`${seg(2, 11)}.partial.00004000`, Buffer.alloc(100, 3)); // after a hole: not counted
    for (const o of await store.list()) store.setModified(o.name, new Date(NOW.getTime() - 3600_000));
    store.setModified(`${seg(2, 11)}.partial.00002000`, new Date(NOW.getTime() - 4000));

    const r = await archiveStatus({ store, now: NOW });
    expect(r).toMatchObject({ archive: 'memory:status', segmentSize: SEG, systemIdentifier: SYSID.toString(), historyFiles: 1, backupFiles: 0, objects: 12 });
    expect(r.timelines).toEqual([
      { timeline: 1, parent: null, begin: null, historyFile: null, firstSegment: seg(1, 2), lastSegment: seg(1, 4), segments: 3, bytes: 3 * SEG, gaps: [], pastFork: null },
      {
        timeline: 2,
        parent: 1,
        begin: '0/5023F8',
        historyFile: '00000002.history',
        firstSegment: seg(2, 5),
        lastSegment: seg(2, 10),
        segments: 4,
        bytes: 4 * SEG,
        gaps: [{ first: seg(2, 7), last: seg(2, 8), count: 2 }],
        pastFork: null,
      },
    ]);
    expect(r.partial).toEqual({ segment: seg(2, 11), timeline: 2, kind: 'pieces', pieces: 3, bytes: 12288, modified: new Date(NOW.getTime() - 4000).toISOString(), ageSeconds: 4 });
    expect(r.archivedUpTo).toEqual({ lsn: lsnAt(11, 12288), timeline: 2 });
    expect(r.newest).toEqual({ name: `${seg(2, 11)}.partial.00002000`, modified: new Date(NOW.getTime() - 4000).toISOString(), ageSeconds: 4 });
    expect(r.server).toBeNull();
    expect(r.warnings).toEqual([]);
    const text = formatStatus(r);
    expect(text).toMatch(new RegExp(`^timeline 2 +${seg(2, 5)} \\.\\. ${seg(2, 10)}  4 segments, 4\\.0 MB stored  \\(from timeline 1 at 0/5023F8\\)$`, 'm'));
    expect(text).toContain(`GAP: ${seg(2, 7)} .. ${seg(2, 8)} missing (2 segments)`);
    expect(text).toMatch(/^reaches +0\/B03000 on timeline 2$/m);
    expect(text).toMatch(/^partial +00000002000000000000000B: 3 pieces, 12\.0 kB, written 4 s ago$/m);
    expect(JSON.parse(statusJson(r))).toEqual(JSON.parse(JSON.stringify(r)));
  });

  it('the lag behind a server and what its slot keeps', async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 3);
    const r = await archiveStatus({
      store,
      now: NOW,
      server: {
        systemIdentifier: SYSID,
        timeline: 1,
        position: BigInt(5 * SEG + 100),
        segSize: SEG,
        slot: { name: 'walstream', exists: true, restartLsn: BigInt(4 * SEG), restartTimeline: 1 },
      },
    });
    expect(r.archivedUpTo).toEqual({ lsn: lsnAt(4), timeline: 1 });
    expect(r.server).toEqual({
      systemIdentifier: SYSID.toString(),
      timeline: 1,
      position: lsnAt(5, 100),
      lagBytes: SEG + 100,
      sameSystem: true,
      lagSeconds: null,
      receiver: null,
      archiver: null,
      sqlUnavailable: null,
      walstream: null,
    });
    expect(r.slot).toEqual({ name: 'walstream', exists: true, restartLsn: lsnAt(4), restartTimeline: 1, retainedBytes: SEG + 100, aheadOfArchiveBytes: 0, unavailable: null });
    expect(formatStatus(r)).toMatch(/^server +at 0\/500064 on timeline 1: archive 1\.0 MB behind$/m);
  });

  it("the lag in time: the receiver's flush lag as the server measures it, else the archiver's last success", async () => {
    const store = new MemoryStore();
    await putSegments(store, 1, 1, 3);
    const base = { systemIdentifier: SYSID, timeline: 1, position: BigInt(5 * SEG), segSize: SEG };
    const receiver = { applicationName: 'walstream', state: 'streaming', writeLsn: lsnAt(4, 16), writeLagSeconds: 0.5, flushLsn: lsnAt(4), flushLagSeconds: 2.5, replyAgeSeconds: 0.4 };
    const archiver = { lastArchived: seg(1, 3), lastArchivedAgeSeconds: 42, failedCount: 2, lastFailed: seg(1, 4) };
    const r = await archiveStatus({ store, now: NOW, server: { ...base, sql: { unavailable: null, receiver, archiver } } });
    expect(r.server).toMatchObject({ lagSeconds: 2.5, receiver, archiver, sqlUnavailable: null });
    expect(r.warnings).toContain(`the server's archiver has failed 2 times (last: ${seg(1, 4)})`);
    const text = formatStatus(r);
    expect(text).toMatch(/^server +at 0\/500000 on timeline 1: archive 1\.0 MB behind, 2\.5 s$/m);
    expect(text).toMatch(/^receiver +walstream streaming, received 0\/400010, write lag 0\.5 s, flushed 0\/400000, flush lag 2\.5 s \(as the server measures it\)$/m);
    // A receiver without a slot reports no flushes: its write lag is the lag.
    const noSlot = await archiveStatus({ store, now: NOW, server: { ...base, sql: { unavailable: null, receiver: { ...receiver, flushLsn: null, flushLagSeconds: null }, archiver: null } } });
    expect(noSlot.server!.lagSeconds).toBe(0.5);
    expect(formatStatus(noSlot)).toContain('write lag 0.5 s, reports no flushes (no slot)');
    // Caught up: the server reports no flush lag at all.
    const caughtUp = await archiveStatus({ store, now: NOW, server: { ...base, sql: { unavailable: null, receiver: { ...receiver, flushLagSeconds: null }, archiver: null } } });
    expect(caughtUp.server!.lagSeconds).toBe(0);
    // No receiver: how long since the server's archiver last archived.
    const pushOnly = await archiveStatus({ store, now: NOW, server: { ...base, sql: { unavailable: null, receiver: null, archiver } } });
    expect(pushOnly.server!.lagSeconds).toBe(42);
    const noSql = await archiveStatus({ store, now: NOW, server: { ...base, sql: { unavailable: 'no SQL connection: denied', receiver: null, archiver: null } } });
    expect(noSql.server!.lagSeconds).toBeNull();
    expect(formatStatus(noSql)).toContain('(lag in time unknown: no SQL connection: denied)');
  });

  it('warns about another system, a missing slot, and a history file it cannot find', async () => {
    const store = new MemoryStore();
    await putSegments(store, 2, 1, 2);
    const r = await archiveStatus({
      store,
      now: NOW,
      server: { systemIdentifier: 1n, timeline: 2, position: BigInt(3 * SEG), segSize: SEG, slot: { name: 'gone', exists: false, restartLsn: null, restartTimeline: null } },
    });
    expect(r.server!.sameSystem).toBe(false);
    expect(r.warnings).toEqual(['00000002.history is missing', `the server is database system 1, the archive holds WAL of system ${SYSID}`, 'replication slot "gone" does not exist on the server']);
  });

  it('an empty archive', async () => {
    const r = await archiveStatus({ store: new MemoryStore(), now: NOW });
    expect(r).toMatchObject({ objects: 0, timelines: [], partial: null, archivedUpTo: null, newest: null, segmentSize: null });
  });
});

describe('inventory', () => {
  it('classifies names and leaves out what is not WAL', () => {
    const info = (name: string) => ({ name, size: 1, storedSize: 1, checksum: undefined, compression: undefined, modified: NOW });
    const inv = buildInventory([seg(1, 1), `${seg(1, 1)}.partial`, `${seg(1, 2)}.partial.00001000`, `${seg(1, 1)}.00000028.backup`, '00000002.history', 'quarantine/x', 'walstream.json'].map(info));
    expect(inv.files.map((f) => [f.name, f.kind, f.tli, f.position ?? null, f.offset ?? null])).toEqual([
      [seg(1, 1), 'segment', 1, seg(1, 1).slice(8), null],
      [`${seg(1, 1)}.00000028.backup`, 'backup', 1, seg(1, 1).slice(8), null],
      [`${seg(1, 1)}.partial`, 'partial', 1, seg(1, 1).slice(8), null],
      [`${seg(1, 2)}.partial.00001000`, 'piece', 1, seg(1, 2).slice(8), 0x1000],
      ['00000002.history', 'history', 2, null, null],
    ]);
  });

  it('positions and gaps for any segment size', () => {
    // 16 MB segments: 256 per xlogid, so ...000000FF is followed by ...0100000000.
    const S16 = 16 * 1024 * 1024;
    expect(positionToSegNo('00000001000000FF', S16)).toBe(511n);
    expect(missingRanges(1, [254n, 258n], 254n, 258n, S16)).toEqual([{ first: '0000000100000000000000FF', last: '000000010000000100000001', count: 3 }]);
    expect(missingRanges(1, [5n], 3n, 7n, SEG).map((g) => g.count)).toEqual([2, 2]);
  });
});
