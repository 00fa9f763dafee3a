// WAL segment naming and arithmetic for any valid segment size, as xlog_internal.h defines it
// (XLogFileName, XLogFromFileName, XLByteToSeg, IsValidWalSegSize). Pure: no I/O.
import type { Lsn } from './lsn.js';

export const MIN_SEG_SIZE = 1024 * 1024;
export const MAX_SEG_SIZE = 1024 * 1024 * 1024;
export const DEFAULT_BLOCK_SIZE = 8192;

export function isValidSegSize(size: number): boolean {
  return Number.isInteger(size) && size >= MIN_SEG_SIZE && size <= MAX_SEG_SIZE && (size & (size - 1)) === 0;
}

export function assertSegSize(size: number): void {
  if (!isValidSegSize(size)) {
    throw new RangeError(`invalid WAL segment size ${size}: must be a power of two between 1 MB and 1 GB`);
  }
}

/** Segments per "xlogid" (the middle name field): 2^32 / segment size. */
export function segmentsPerXLogId(segSize: number): bigint {
  return 0x100000000n / BigInt(segSize);
}

export function lsnToSegNo(lsn: Lsn, segSize: number): bigint {
  return lsn / BigInt(segSize);
}

export function segNoToLsn(segNo: bigint, segSize: number): Lsn {
  return segNo * BigInt(segSize);
}

/** Offset of an LSN inside its segment. */
export function segmentOffset(lsn: Lsn, segSize: number): number {
  return Number(lsn % BigInt(segSize));
}

/** Round an LSN down to the start of its segment. */
export function segmentStart(lsn: Lsn, segSize: number): Lsn {
  return lsn - (lsn % BigInt(segSize));
}

function hex8(n: number | bigint): string {
  return n.toString(16).toUpperCase().padStart(8, '0');
}

export function walFileName(tli: number, segNo: bigint, segSize: number): string {
  const per = segmentsPerXLogId(segSize);
  return hex8(tli) + hex8(segNo / per) + hex8(segNo % per);
}

export const WAL_NAME_RE = /^[0-9A-F]{24}$/;
export const HISTORY_NAME_RE = /^[0-9A-F]{8}\.history$/;
export const BACKUP_NAME_RE = /^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$/;
/** What PostgreSQL hands archive_command and asks restore_command for: segments, history, backup history and .partial files. */
export const POSTGRES_WAL_FILE_RE = /^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$/;
/** A segment, or the .partial a promotion leaves of one: both hold a whole segment's bytes. */
export const SEGMENT_FILE_RE = /^[0-9A-F]{24}(?:\.partial)?$/;

export function isWalFileName(name: string): boolean {
  return WAL_NAME_RE.test(name);
}

export interface ParsedWalName {
  tli: number;
  segNo: bigint;
}

/** Inverse of walFileName (XLogFromFileName); throws on names that are not segment names for this size. */
export function parseWalFileName(name: string, segSize: number): ParsedWalName {
  if (!WAL_NAME_RE.test(name)) throw new Error(`not a WAL segment file name: "${name}"`);
  const tli = parseInt(name.slice(0, 8), 16);
  const log = BigInt('0x' + name.slice(8, 16));
  const seg = BigInt('0x' + name.slice(16, 24));
  const per = segmentsPerXLogId(segSize);
  if (seg >= per) throw new Error(`WAL file name "${name}" is not valid for ${segSize}-byte segments`);
  if (tli === 0) throw new Error(`WAL file name "${name}" has timeline 0`);
  return { tli, segNo: log * per + seg };
}

export function historyFileName(tli: number): string {
  return `${hex8(tli)}.history`;
}

/** Parse "16MB", "1GB", "1024kB" as printed by SHOW wal_segment_size (streamutil.c RetrieveWalSegSize). */
export function parseSizeSetting(text: string): number {
  const m = /^(\d+)\s*(B|kB|MB|GB)?$/.exec(text.trim());
  if (!m) throw new Error(`cannot parse size setting "${text}"`);
  const mult = { B: 1, kB: 1024, MB: 1024 * 1024, GB: 1024 * 1024 * 1024 }[(m[2] ?? 'B') as 'B' | 'kB' | 'MB' | 'GB'];
  return Number(m[1]) * mult;
}
