import { describe, it, expect } from 'vitest';
import {
  assertSlotName,
  createPhysicalSlotCommand,
  dropSlotCommand,
  identifySystemCommand,
  parseEndOfTimeline,
  parseIdentifySystem,
  parseReadReplicationSlot,
  readSlotCommand,
  showCommand,
  startReplicationCommand,
  timelineHistoryCommand,
} from '../../src/protocol/commands.js';
import { ProtocolError } from '../../src/protocol/messages.js';

describe('command text', () => {
  it('CREATE_REPLICATION_SLOT: option list from 15, bare keyword before', () => {
    expect(createPhysicalSlotCommand('s', 150000, true)).toBe('CREATE_REPLICATION_SLOT "s" PHYSICAL (RESERVE_WAL)');
    expect(createPhysicalSlotCommand('s', 170002, true)).toBe('CREATE_REPLICATION_SLOT "s" PHYSICAL (RESERVE_WAL)');
    expect(createPhysicalSlotCommand('s', 149999, true)).toBe('CREATE_REPLICATION_SLOT "s" PHYSICAL RESERVE_WAL');
    expect(createPhysicalSlotCommand('s', 140011, true)).toBe('CREATE_REPLICATION_SLOT "s" PHYSICAL RESERVE_WAL');
    expect(createPhysicalSlotCommand('s', 150000, false)).toBe('CREATE_REPLICATION_SLOT "s" PHYSICAL');
    expect(createPhysicalSlotCommand('s', 140000, false)).toBe('CREATE_REPLICATION_SLOT "s" PHYSICAL');
  });

  it('START_REPLICATION with and without a slot', () => {
    expect(startReplicationCommand(0x3000000n, 1, 'slot')).toBe('START_REPLICATION SLOT "slot" PHYSICAL 0/3000000 TIMELINE 1');
    expect(startReplicationCommand(0x3000000n, 1)).toBe('START_REPLICATION PHYSICAL 0/3000000 TIMELINE 1');
    expect(startReplicationCommand(0x12c000000n, 12, 'walstream_1')).toBe('START_REPLICATION SLOT "walstream_1" PHYSICAL 1/2C000000 TIMELINE 12');
  });

  it('other commands', () => {
    expect(identifySystemCommand()).toBe('IDENTIFY_SYSTEM');
    expect(showCommand('wal_segment_size')).toBe('SHOW wal_segment_size');
    expect(timelineHistoryCommand(2)).toBe('TIMELINE_HISTORY 2');
    expect(dropSlotCommand('s1', false)).toBe('DROP_REPLICATION_SLOT "s1"');
    expect(dropSlotCommand('s1', true)).toBe('DROP_REPLICATION_SLOT "s1" WAIT');
    expect(readSlotCommand('s1')).toBe('READ_REPLICATION_SLOT s1');
  });

  it('refuses TIMELINE_HISTORY for timeline 1 or non-integers, SHOW of odd names', () => {
    expect(() => timelineHistoryCommand(1)).toThrow();
    expect(() => timelineHistoryCommand(0)).toThrow();
    expect(() => timelineHistoryCommand(2.5)).toThrow();
    expect(() => showCommand('wal_segment_size; DROP')).toThrow();
    expect(() => showCommand('')).toThrow();
  });
});

describe('slot names', () => {
  const bad = ['', 'Slot', 'SLOT', 'my-slot', 'my slot', 'a'.repeat(64), 'slot"', 'sl.ot', 'é'];
  const good = ['s', 'slot', 'walstream_1', '_', '0', 'a'.repeat(63)];

  it.each(good)('accepts %j', (name) => {
    expect(() => assertSlotName(name)).not.toThrow();
    expect(() => createPhysicalSlotCommand(name, 160000, true)).not.toThrow();
  });

  it.each(bad)('rejects %j in every command that takes a slot', (name) => {
    expect(() => assertSlotName(name)).toThrow(/invalid replication slot name/);
    expect(() => createPhysicalSlotCommand(name, 160000, true)).toThrow(/invalid replication slot name/);
    expect(() => createPhysicalSlotCommand(name, 140000, true)).toThrow(/invalid replication slot name/);
    expect(() => dropSlotCommand(name, false)).toThrow(/invalid replication slot name/);
    expect(() => readSlotCommand(name)).toThrow(/invalid replication slot name/);
    expect(() => startReplicationCommand(0n, 1, name)).toThrow(/invalid replication slot name/);
  });
});

describe('parseIdentifySystem', () => {
  it('parses a text row', () => {
    expect(parseIdentifySystem({ systemid: '7710857609574752955', timeline: '1', xlogpos: '0/DB2210', dbname: null })).toEqual({
      systemId: 7710857609574752955n,
      timeline: 1,
      xlogPos: 0xdb2210n,
      dbName: null,
    });
  });

  it('keeps a database name and large values exactly', () => {
    expect(parseIdentifySystem({ systemid: '18446744073709551615', timeline: '4294967295', xlogpos: 'FFFFFFFF/0', dbname: 'postgres' })).toEqual({
      systemId: 18446744073709551615n,
      timeline: 4294967295,
      xlogPos: 0xffffffff00000000n,
      dbName: 'postgres',
    });
  });

  it('a missing dbname column counts as null', () => {
    expect(parseIdentifySystem({ systemid: '1', timeline: '2', xlogpos: '0/0' }).dbName).toBeNull();
  });

  it.each([
    ['null systemid', { systemid: null, timeline: '1', xlogpos: '0/DB2210', dbname: null }],
    ['missing systemid', { timeline: '1', xlogpos: '0/DB2210' }],
    ['non-numeric systemid', { systemid: '77108576095747529x5', timeline: '1', xlogpos: '0/DB2210' }],
    ['negative systemid', { systemid: '-1', timeline: '1', xlogpos: '0/DB2210' }],
    ['timeline 0', { systemid: '1', timeline: '0', xlogpos: '0/DB2210' }],
    ['non-numeric timeline', { systemid: '1', timeline: 'one', xlogpos: '0/DB2210' }],
    ['fractional timeline', { systemid: '1', timeline: '1.5', xlogpos: '0/DB2210' }],
    ['null xlogpos', { systemid: '1', timeline: '1', xlogpos: null }],
  ])('rejects %s with ProtocolError', (_label, row) => {
    expect(() => parseIdentifySystem(row)).toThrow(ProtocolError);
  });

  it("rejects a bad xlogpos as the server's protocol error", () => {
    expect(() => parseIdentifySystem({ systemid: '1', timeline: '1', xlogpos: 'DB2210' })).toThrow(ProtocolError);
    expect(() => parseIdentifySystem({ systemid: '1', timeline: '1', xlogpos: 'DB2210' })).toThrow(/IDENTIFY_SYSTEM: bad LSN "DB2210"/);
  });

  it('rejects a systemid or timeline beyond their unsigned ranges', () => {
    expect(parseIdentifySystem({ systemid: '18446744073709551615', timeline: '4294967295', xlogpos: '0/1' })).toMatchObject({
      systemId: 0xffffffffffffffffn,
      timeline: 0xffffffff,
    });
    expect(() => parseIdentifySystem({ systemid: '18446744073709551616', timeline: '1', xlogpos: '0/1' })).toThrow(ProtocolError);
    expect(() => parseIdentifySystem({ systemid: '1', timeline: '4294967296', xlogpos: '0/1' })).toThrow(ProtocolError);
  });
});

describe('parseEndOfTimeline', () => {
  it('parses the row sent after the end of a timeline', () => {
    expect(parseEndOfTimeline({ next_tli: '2', next_tli_startpos: '0/B023F8' })).toEqual({ nextTli: 2, nextStart: 0xb023f8n });
    expect(parseEndOfTimeline({ next_tli: '17', next_tli_startpos: '1/2C000000' })).toEqual({ nextTli: 17, nextStart: 0x12c000000n });
  });

  it('rejects missing, null or invalid fields', () => {
    expect(() => parseEndOfTimeline({ next_tli: null, next_tli_startpos: '0/B023F8' })).toThrow(ProtocolError);
    expect(() => parseEndOfTimeline({ next_tli_startpos: '0/B023F8' })).toThrow(ProtocolError);
    expect(() => parseEndOfTimeline({ next_tli: '2', next_tli_startpos: null })).toThrow(ProtocolError);
    expect(() => parseEndOfTimeline({ next_tli: '0', next_tli_startpos: '0/B023F8' })).toThrow(ProtocolError);
    expect(() => parseEndOfTimeline({ next_tli: 'x', next_tli_startpos: '0/B023F8' })).toThrow(ProtocolError);
    expect(() => parseEndOfTimeline({ next_tli: '2', next_tli_startpos: 'B023F8' })).toThrow(ProtocolError);
  });
});

describe('parseReadReplicationSlot', () => {
  it('an existing physical slot', () => {
    expect(parseReadReplicationSlot({ slot_type: 'physical', restart_lsn: '0/3000000', restart_tli: '1' })).toEqual({
      slotType: 'physical',
      restartLsn: 0x3000000n,
      restartTli: 1,
    });
  });

  it('a slot that has not reserved WAL yet: nulls', () => {
    expect(parseReadReplicationSlot({ slot_type: 'physical', restart_lsn: null, restart_tli: null })).toEqual({
      slotType: 'physical',
      restartLsn: null,
      restartTli: null,
    });
  });

  it('a slot that does not exist: all nulls', () => {
    expect(parseReadReplicationSlot({ slot_type: null, restart_lsn: null, restart_tli: null })).toEqual({
      slotType: null,
      restartLsn: null,
      restartTli: null,
    });
    expect(parseReadReplicationSlot({})).toEqual({ slotType: null, restartLsn: null, restartTli: null });
  });

  it("a malformed position or timeline is the server's protocol error", () => {
    expect(() => parseReadReplicationSlot({ slot_type: 'physical', restart_lsn: '3000000', restart_tli: '1' })).toThrow(ProtocolError);
    expect(() => parseReadReplicationSlot({ slot_type: 'physical', restart_lsn: '0/3000000', restart_tli: 'one' })).toThrow(ProtocolError);
    expect(() => parseReadReplicationSlot({ slot_type: 'physical', restart_lsn: '0/3000000', restart_tli: '0' })).toThrow(ProtocolError);
  });
});
