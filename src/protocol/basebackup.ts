// BASE_BACKUP: the command text in both grammars (repl_gram.y: the parenthesized generic options of
// PostgreSQL 15+, the keyword list of 13 and 14; pg_basebackup.c BaseBackup builds the same) and
// the typed CopyData messages of 15+ (basebackup_copy.c: 'n' new archive, 'd' data, 'p' progress,
// 'm' manifest follows). Pure: values in, strings and values out.
import { parseLsn, type Lsn } from '../wal/lsn.js';
import { ProtocolError } from './messages.js';
import type { TextRow } from './commands.js';

/** MAX_RATE's bounds in kB/s (basebackup.c MAX_RATE_LOWER, MAX_RATE_UPPER). */
export const MAX_RATE_LOWER = 32;
export const MAX_RATE_UPPER = 1048576;

export interface BaseBackupCommandOptions {
  label: string;
  /** Ask the server for the size of each tablespace first (PROGRESS), and progress messages (15+). */
  progress: boolean;
  /** CHECKPOINT 'fast' (FAST before 15); else spread, the server's default. */
  fastCheckpoint: boolean;
  /** kB/s, MAX_RATE_LOWER..MAX_RATE_UPPER; undefined: unthrottled. */
  maxRateKb?: number;
  /** false: WAIT 0 (NOWAIT): the server does not wait for the end segment to be archived. */
  wait: boolean;
}

/** The label as a quoted string of the replication grammar (a quote doubled; nothing else is special). */
export function quoteReplString(s: string): string {
  if (s.includes('\0')) throw new Error('a backup label cannot hold a NUL character');
  return `'${s.replace(/'/g, "''")}'`;
}

/**
 * The BASE_BACKUP command for a server of this version: the tablespace_map file in base.tar and a
 * manifest with CRC-32C checksums (what pg_basebackup -Ft sends), never the WAL.
 */
export function baseBackupCommand(o: BaseBackupCommandOptions, serverVersionNum: number): string {
  if (serverVersionNum < 130000) throw new Error(`BASE_BACKUP with a backup manifest needs PostgreSQL 13 or newer (the server is ${serverVersionNum})`);
  if (o.maxRateKb !== undefined && (!Number.isInteger(o.maxRateKb) || o.maxRateKb < MAX_RATE_LOWER || o.maxRateKb > MAX_RATE_UPPER)) {
    throw new Error(`transfer rate ${o.maxRateKb} kB/s is out of range (${MAX_RATE_LOWER} to ${MAX_RATE_UPPER})`);
  }
  const label = quoteReplString(o.label);
  if (serverVersionNum >= 150000) {
    const opts = [`LABEL ${label}`];
    if (o.progress) opts.push('PROGRESS');
    if (o.fastCheckpoint) opts.push("CHECKPOINT 'fast'");
    if (!o.wait) opts.push('WAIT 0');
    if (o.maxRateKb !== undefined) opts.push(`MAX_RATE ${o.maxRateKb}`);
    opts.push('TABLESPACE_MAP', "MANIFEST 'yes'", "MANIFEST_CHECKSUMS 'CRC32C'");
    return `BASE_BACKUP (${opts.join(', ')})`;
  }
  const opts = [`LABEL ${label}`];
  if (o.progress) opts.push('PROGRESS');
  if (o.fastCheckpoint) opts.push('FAST');
  if (!o.wait) opts.push('NOWAIT');
  if (o.maxRateKb !== undefined) opts.push(`MAX_RATE ${o.maxRateKb}`);
  opts.push('TABLESPACE_MAP', "MANIFEST 'yes'", "MANIFEST_CHECKSUMS 'CRC32C'");
  return `BASE_BACKUP ${opts.join(' ')}`;
}

/** A position row of BASE_BACKUP (the start, then the end): recptr text, tli int8 (int4 in old servers). */
export interface BackupPosition {
  lsn: Lsn;
  timeline: number;
}

export function parseBackupPosition(row: TextRow, what: string): BackupPosition {
  const lsnText = row['recptr'];
  const tliText = row['tli'];
  if (lsnText == null || tliText == null) throw new ProtocolError(`BASE_BACKUP's ${what} position row lacks recptr or tli`);
  let lsn: Lsn;
  try {
    lsn = parseLsn(lsnText);
  } catch {
    throw new ProtocolError(`BASE_BACKUP's ${what} position "${lsnText}" is not an LSN`);
  }
  const timeline = Number(tliText);
  if (!/^\d+$/.test(tliText) || !Number.isSafeInteger(timeline) || timeline < 1 || timeline > 0xffffffff) throw new ProtocolError(`BASE_BACKUP's ${what} timeline "${tliText}" is invalid`);
  return { lsn, timeline };
}

/** One row of the tablespace list: the OID and location of a tablespace (both undefined: the data directory), its size in kB with PROGRESS. */
export interface TablespaceInfo {
  oid: number | undefined;
  location: string | undefined;
  sizeKb: number | undefined;
}

export function parseTablespaceRow(row: TextRow): TablespaceInfo {
  const oidText = row['spcoid'];
  const loc = row['spclocation'];
  const size = row['size'];
  let oid: number | undefined;
  if (oidText != null) {
    oid = Number(oidText);
    if (!/^\d{1,10}$/.test(oidText) || oid < 1 || oid > 0xffffffff) throw new ProtocolError(`BASE_BACKUP sent tablespace OID "${oidText}"`);
    if (loc == null) throw new ProtocolError(`BASE_BACKUP sent tablespace ${oidText} without a location`);
  }
  let sizeKb: number | undefined;
  if (size != null) {
    sizeKb = Number(size);
    if (!/^\d+$/.test(size) || !Number.isSafeInteger(sizeKb)) throw new ProtocolError(`BASE_BACKUP sent tablespace size "${size}"`);
  }
  return { oid, location: oid === undefined ? undefined : (loc ?? undefined), sizeKb };
}

/** The archive name of a tablespace as the server names it (base.tar, <oid>.tar). */
export function tablespaceArchiveName(t: TablespaceInfo): string {
  return t.oid === undefined ? 'base.tar' : `${t.oid}.tar`;
}

/** CopyData message types of the single COPY of 15+ (basebackup_copy.c). */
export const BB_NEW_ARCHIVE = 0x6e; // 'n'
export const BB_DATA = 0x64; // 'd'
export const BB_PROGRESS = 0x70; // 'p'
export const BB_MANIFEST = 0x6d; // 'm'

/** An 'n' message: the archive's name and its tablespace's location ("" for the data directory). */
export function parseNewArchive(payload: Buffer): { name: string; location: string } {
  if (payload[0] !== BB_NEW_ARCHIVE) throw new ProtocolError('not a new-archive message');
  const end1 = payload.indexOf(0, 1);
  const end2 = end1 < 0 ? -1 : payload.indexOf(0, end1 + 1);
  if (end1 < 0 || end2 < 0 || end2 !== payload.length - 1) throw new ProtocolError('malformed new-archive message from BASE_BACKUP');
  const name = payload.toString('utf8', 1, end1);
  const location = payload.toString('utf8', end1 + 1, end2);
  if (!/^[A-Za-z0-9_.-]{1,100}$/.test(name) || name.startsWith('.')) throw new ProtocolError(`BASE_BACKUP named an archive ${JSON.stringify(name.slice(0, 100))}`);
  return { name, location };
}

/** A 'p' message: the bytes of archive data done so far. */
export function parseProgress(payload: Buffer): bigint {
  if (payload[0] !== BB_PROGRESS || payload.length !== 9) throw new ProtocolError('malformed progress message from BASE_BACKUP');
  return payload.readBigInt64BE(1);
}
