// The one WAL source (design.md): "give me WAL from LSN X on timeline T, as it becomes available",
// over the archive (local or S3), a receiver's directory (complete segments and the .partial in
// progress) and the durable tail of a running receiver. Serving, and later verification and
// prefetch, read through it; none of them knows where the bytes live. Errors carry the SQLSTATE a
// walsender would use for the same condition (walsender.c WalSndSegmentOpen, WALReadRaiseError).
import type { Lsn } from '../wal/lsn.js';
import type { TimelineHistoryEntry } from '../wal/timeline.js';

/** What every byte served must belong to: one database system, one segment and block size. */
export interface SourceIdentity {
  systemId: bigint;
  segSize: number;
  blockSize: number;
  /** XLOG_PAGE_MAGIC of the WAL held, and the major version it stands for (undefined when unknown). */
  magic: number | undefined;
  major: number | undefined;
}

/** The timelines as the newest history tells them. */
export interface TimelineState {
  /** The newest timeline walstream holds (a walsender's current timeline). */
  current: number;
  /** The current timeline's ancestry (its history file; empty for timeline 1). */
  history: TimelineHistoryEntry[];
  /** End of the WAL held on the current timeline: IDENTIFY_SYSTEM's xlogpos, the "flush position". */
  end: Lsn;
}

/** Where a timeline's WAL may be read up to, for a client asking for it. */
export type TimelinePlan = { kind: 'current' } | { kind: 'historic'; switchpoint: Lsn; nextTli: number } | { kind: 'unknown' };

/** A piece of WAL: `data` starts at the position asked for. The buffer is never changed afterwards. */
export type ReadResult = { kind: 'data'; data: Buffer } | { kind: 'wait' } | { kind: 'end'; switchpoint: Lsn; nextTli: number };

export class WalSourceError extends Error {
  constructor(
    /** The SQLSTATE a walsender would report. */
    readonly sqlstate: string,
    message: string,
    /** Whether asking again later may succeed (a store that did not answer). */
    readonly transient = false,
  ) {
    super(message);
    this.name = 'WalSourceError';
  }
}

/** SQLSTATEs used: undefined_file, io_error, data_corrupted. */
export const SQLSTATE_UNDEFINED_FILE = '58P01';
export const SQLSTATE_IO_ERROR = '58030';
export const SQLSTATE_DATA_CORRUPTED = 'XX001';

/** The segment is gone (or never was) although later WAL exists: the walsender's "already been removed". */
export function segmentRemoved(name: string): WalSourceError {
  return new WalSourceError(SQLSTATE_UNDEFINED_FILE, `requested WAL segment ${name} has already been removed`);
}

/** A stored copy that failed its checksum or page-header checks: never sent. */
export function segmentCorrupt(name: string, why: string): WalSourceError {
  return new WalSourceError(SQLSTATE_DATA_CORRUPTED, `archived WAL segment ${name} failed verification and is not sent: ${why}`);
}
