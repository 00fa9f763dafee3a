// Replication command text (repl_gram.y) and the parsing of their text-format result rows
// (walsender.c IdentifySystem, SendTimeLineHistory, ReadReplicationSlot, StartReplication's
// end-of-timeline row). Pure: strings in, values out.
import { formatLsn, parseLsn, type Lsn } from '../wal/lsn.js';
import { ProtocolError } from './messages.js';

export const SLOT_NAME_RE = /^[a-z0-9_]{1,63}$/;

export function assertSlotName(name: string): void {
  if (!SLOT_NAME_RE.test(name)) {
    throw new Error(`invalid replication slot name "${name}": use 1-63 lower-case letters, digits and underscores`);
  }
}

export function identifySystemCommand(): string {
  return 'IDENTIFY_SYSTEM';
}

export function showCommand(name: string): string {
  if (!/^[a-z_]+$/.test(name)) throw new Error(`invalid setting name ${name}`);
  return `SHOW ${name}`;
}

export function timelineHistoryCommand(tli: number): string {
  if (!Number.isInteger(tli) || tli < 2) throw new Error(`TIMELINE_HISTORY needs a timeline above 1, got ${tli}`);
  return `TIMELINE_HISTORY ${tli}`;
}

export function createPhysicalSlotCommand(slot: string, serverVersionNum: number, reserveWal: boolean): string {
  assertSlotName(slot);
  if (serverVersionNum >= 150000) {
    return `CREATE_REPLICATION_SLOT "${slot}" PHYSICAL${reserveWal ? ' (RESERVE_WAL)' : ''}`;
  }
  return `CREATE_REPLICATION_SLOT "${slot}" PHYSICAL${reserveWal ? ' RESERVE_WAL' : ''}`;
}

export function dropSlotCommand(slot: string, wait: boolean): string {
  assertSlotName(slot);
  return `DROP_REPLICATION_SLOT "${slot}"${wait ? ' WAIT' : ''}`;
}

export function readSlotCommand(slot: string): string {
  assertSlotName(slot);
  return `READ_REPLICATION_SLOT ${slot}`;
}

export function startReplicationCommand(start: Lsn, tli: number, slot?: string): string {
  if (slot !== undefined) assertSlotName(slot);
  const slotPart = slot !== undefined ? `SLOT "${slot}" ` : '';
  return `START_REPLICATION ${slotPart}PHYSICAL ${formatLsn(start)} TIMELINE ${tli}`;
}

/** A result row as text values keyed by column name (null for SQL NULL). */
export type TextRow = Record<string, string | null>;

function field(row: TextRow, name: string, what: string): string {
  const v = row[name];
  if (v === undefined || v === null) throw new ProtocolError(`${what}: column "${name}" missing or null`);
  return v;
}

/** A server's LSN text: anything malformed is the server's protocol error, not a user's typo. */
function lsnValue(text: string, what: string): Lsn {
  try {
    return parseLsn(text);
  } catch {
    throw new ProtocolError(`${what}: bad LSN ${JSON.stringify(text.slice(0, 40))}`);
  }
}

/** A timeline ID: 1 to 2^32-1 (TimeLineID is uint32), in decimal. */
function tliValue(text: string, what: string): number {
  const tli = /^\d{1,10}$/.test(text) ? Number(text) : NaN;
  if (!(tli >= 1 && tli <= 0xffffffff)) throw new ProtocolError(`${what}: bad timeline ${JSON.stringify(text.slice(0, 40))}`);
  return tli;
}

export interface SystemIdentity {
  systemId: bigint;
  timeline: number;
  xlogPos: Lsn;
  dbName: string | null;
}

export function parseIdentifySystem(row: TextRow): SystemIdentity {
  const sys = field(row, 'systemid', 'IDENTIFY_SYSTEM');
  if (!/^\d{1,20}$/.test(sys) || BigInt(sys) > 0xffffffffffffffffn) throw new ProtocolError(`IDENTIFY_SYSTEM: bad systemid "${sys.slice(0, 40)}"`);
  return {
    systemId: BigInt(sys),
    timeline: tliValue(field(row, 'timeline', 'IDENTIFY_SYSTEM'), 'IDENTIFY_SYSTEM'),
    xlogPos: lsnValue(field(row, 'xlogpos', 'IDENTIFY_SYSTEM'), 'IDENTIFY_SYSTEM'),
    dbName: row['dbname'] ?? null,
  };
}

export interface SlotInfo {
  slotType: string | null;
  restartLsn: Lsn | null;
  restartTli: number | null;
}

export function parseReadReplicationSlot(row: TextRow): SlotInfo {
  const lsn = row['restart_lsn'];
  const tli = row['restart_tli'];
  return {
    slotType: row['slot_type'] ?? null,
    restartLsn: lsn == null ? null : lsnValue(lsn, 'READ_REPLICATION_SLOT'),
    restartTli: tli == null ? null : tliValue(tli, 'READ_REPLICATION_SLOT'),
  };
}

export interface EndOfTimeline {
  nextTli: number;
  nextStart: Lsn;
}

export function parseEndOfTimeline(row: TextRow): EndOfTimeline {
  const tli = tliValue(field(row, 'next_tli', 'end of timeline'), 'end of timeline');
  return { nextTli: tli, nextStart: lsnValue(field(row, 'next_tli_startpos', 'end of timeline'), 'end of timeline') };
}
