// What an archive holds, by timeline: the listing (store.list()) sorted into complete segments,
// `.partial` files, pieces of a segment in progress, timeline history files and backup history
// files, with the timeline ancestry the history files define (timeline.c readTimeLineHistory:
// a timeline's history file names every ancestor and the LSN where each one ended).
// Positions are compared as the 16 hex digits after the timeline in a segment name, which order
// like segment numbers whatever the segment size; arithmetic on them needs the segment size,
// which only a segment's long page header tells (never inferred from names).
// Besides the WAL, what writers killed mid-write left behind (temporary files, incomplete S3
// multipart uploads: storage/leftovers.ts) is summed up here for status and verify alike.
import { formatLsn, type Lsn } from '../wal/lsn.js';
import { readLongPageHeader, LONG_PAGE_HEADER_SIZE } from '../wal/page.js';
import { historyFileName, isValidSegSize, walFileName } from '../wal/segment.js';
import { HistoryParseError, checkHistoryForTimeline, parseHistory, type TimelineHistoryEntry } from '../wal/timeline.js';
import { IDENTITY_NAME, IntegrityError, KeyUnavailableError, NotFoundError, StorageError, type ArchiveStore, type Leftover, type LeftoverState, type ObjectInfo } from '../storage/types.js';
import { removable } from '../storage/leftovers.js';
import { readIdentity } from '../archive/identity.js';

export type ArchivedKind = 'segment' | 'partial' | 'piece' | 'history' | 'backup';

export interface ArchivedFile {
  name: string;
  kind: ArchivedKind;
  /** Timeline: of the segment, or the one a history file describes. */
  tli: number;
  /** The 24-character segment name this file belongs to (undefined for history files). */
  segment: string | undefined;
  /** 16 hex digits: the segment's position, comparable as a string (undefined for history files). */
  position: string | undefined;
  /** For a piece: its offset within the segment. */
  offset: number | undefined;
  info: ObjectInfo;
}

export interface Inventory {
  /** Every WAL file listed, in name order. */
  files: ArchivedFile[];
  /** Complete segments per timeline, in position order. */
  segments: Map<number, ArchivedFile[]>;
  histories: Map<number, ArchivedFile>;
  partials: ArchivedFile[];
  pieces: ArchivedFile[];
  backups: ArchivedFile[];
}

const SEGMENT_RE = /^([0-9A-F]{8})([0-9A-F]{16})$/;
const PARTIAL_RE = /^([0-9A-F]{8})([0-9A-F]{16})\.partial$/;
const PIECE_RE = /^([0-9A-F]{8})([0-9A-F]{16})\.partial\.([0-9A-F]{8})$/;
const BACKUP_RE = /^([0-9A-F]{8})([0-9A-F]{16})\.[0-9A-F]{8}\.backup$/;
const HISTORY_RE = /^([0-9A-F]{8})\.history$/;

/** Classify one listed object; undefined for names that are not WAL files (quarantine copies, the identity record). */
export function classify(info: ObjectInfo): ArchivedFile | undefined {
  const name = info.name;
  const seg = (m: RegExpExecArray, kind: ArchivedKind, offset?: number): ArchivedFile | undefined => {
    const tli = parseInt(m[1]!, 16);
    if (tli === 0) return undefined;
    return { name, kind, tli, segment: m[1]! + m[2]!, position: m[2]!, offset, info };
  };
  let m: RegExpExecArray | null;
  if ((m = SEGMENT_RE.exec(name))) return seg(m, 'segment');
  if ((m = PARTIAL_RE.exec(name))) return seg(m, 'partial');
  if ((m = PIECE_RE.exec(name))) return seg(m, 'piece', parseInt(m[3]!, 16));
  if ((m = BACKUP_RE.exec(name))) return seg(m, 'backup');
  if ((m = HISTORY_RE.exec(name))) {
    const tli = parseInt(m[1]!, 16);
    return tli === 0 ? undefined : { name, kind: 'history', tli, segment: undefined, position: undefined, offset: undefined, info };
  }
  return undefined;
}

export function buildInventory(listing: readonly ObjectInfo[]): Inventory {
  const inv: Inventory = { files: [], segments: new Map(), histories: new Map(), partials: [], pieces: [], backups: [] };
  for (const info of listing) {
    const f = classify(info);
    if (!f) continue;
    inv.files.push(f);
    switch (f.kind) {
      case 'segment': {
        let list = inv.segments.get(f.tli);
        if (!list) inv.segments.set(f.tli, (list = []));
        list.push(f);
        break;
      }
      case 'history':
        inv.histories.set(f.tli, f);
        break;
      case 'partial':
        inv.partials.push(f);
        break;
      case 'piece':
        inv.pieces.push(f);
        break;
      case 'backup':
        inv.backups.push(f);
        break;
    }
  }
  inv.files.sort((a, b) => cmp(a.name, b.name));
  for (const list of inv.segments.values()) list.sort((a, b) => cmp(a.position!, b.position!));
  return inv;
}

export function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Timelines in increasing order: those with any file in the archive, and those named as ancestors by a history file. */
export function timelinesOf(inv: Inventory, histories?: HistoryMap): number[] {
  const set = new Set<number>();
  for (const f of inv.files) set.add(f.tli);
  for (const h of histories?.values() ?? []) if (h.entries) for (const e of h.entries) set.add(e.tli);
  return [...set].sort((a, b) => a - b);
}

/** The newest complete segment: highest position, then highest timeline (where receive resumes). */
export function newestSegment(inv: Inventory): ArchivedFile | undefined {
  let best: ArchivedFile | undefined;
  for (const list of inv.segments.values()) {
    const last = list[list.length - 1];
    if (last && (!best || last.position! > best.position! || (last.position === best.position && last.tli > best.tli))) best = last;
  }
  return best;
}

// --- segment positions (need the segment size) ---

export function positionToSegNo(position: string, segSize: number): bigint {
  const per = 0x100000000n / BigInt(segSize);
  return BigInt('0x' + position.slice(0, 8)) * per + BigInt('0x' + position.slice(8));
}

/** Whether a position is a valid segment position for this size (its low field below 2^32 / size). */
export function positionFits(position: string, segSize: number): boolean {
  return BigInt('0x' + position.slice(8)) < 0x100000000n / BigInt(segSize);
}

export function segNoToPosition(segNo: bigint, segSize: number): string {
  return walFileName(1, segNo, segSize).slice(8);
}

export function segmentName(tli: number, segNo: bigint, segSize: number): string {
  return walFileName(tli, segNo, segSize);
}

// --- geometry: the archive's segment size and database system ---

export interface Geometry {
  segSize: number;
  /** Page size, when a segment header told us (the identity record does not say). */
  blockSize: number | undefined;
  systemId: bigint;
  /** Where we learned it: the identity record or the segment whose header told us. */
  from: string;
}

/**
 * The archive's segment size and system identifier: from its identity record (written by the
 * first walstream writer, archive/identity.ts) when it has one, else from the long page header
 * of a segment: the newest complete segments first (then .partial files and first pieces), at
 * most `attempts` objects. Undefined when neither tells; a missing or corrupt object is skipped,
 * other storage errors are thrown.
 */
export async function probeGeometry(store: ArchiveStore, inv: Inventory, attempts = 3): Promise<Geometry | undefined> {
  const id = await readIdentity(store).catch((err: unknown) => {
    if (err instanceof StorageError && !err.transient) return undefined; // unreadable record: fall back to the segments
    throw err;
  });
  if (id) return { segSize: id.segmentSize, blockSize: undefined, systemId: id.systemIdentifier, from: IDENTITY_NAME };
  return probeSegmentHeaders(store, inv, attempts);
}

export async function probeSegmentHeaders(store: ArchiveStore, inv: Inventory, attempts = 3): Promise<Geometry | undefined> {
  const candidates: ArchivedFile[] = [];
  const all = [...inv.segments.values()].flat().sort((a, b) => cmp(b.position!, a.position!) || b.tli - a.tli);
  candidates.push(...all.slice(0, attempts));
  candidates.push(...inv.partials.slice(-1), ...inv.pieces.filter((p) => p.offset === 0).slice(-1));
  for (const c of candidates) {
    let data: Buffer;
    try {
      data = (await store.get(c.name)).data;
    } catch (err) {
      if (err instanceof NotFoundError || err instanceof IntegrityError || err instanceof KeyUnavailableError) continue;
      throw err;
    }
    const g = geometryOf(data, c.name);
    if (g) return g;
  }
  return undefined;
}

export function geometryOf(data: Buffer, name: string): (Geometry & { blockSize: number }) | undefined {
  if (data.length < LONG_PAGE_HEADER_SIZE) return undefined;
  const h = readLongPageHeader(data);
  if (!isValidSegSize(h.segSize) || h.blockSize < 1024 || (h.blockSize & (h.blockSize - 1)) !== 0) return undefined;
  return { segSize: h.segSize, blockSize: h.blockSize, systemId: h.systemId, from: name };
}

// --- timeline history ---

export interface TimelineHistory {
  tli: number;
  file: string;
  /** Parsed entries (ancestors with their end points), or undefined when missing or unreadable. */
  entries: TimelineHistoryEntry[] | undefined;
  /** Why there are no entries: 'missing', or the read / parse error. */
  problem: string | undefined;
  /**
   * What is wrong: not in the archive, failing its recorded checksum (or authentication), not a
   * valid history file, or encrypted with a key that was not given ('locked': not known to be bad).
   */
  state: 'ok' | 'missing' | 'corrupt' | 'invalid' | 'locked';
  /** With state 'locked': the id of the key the file is encrypted with. */
  keyId?: string;
}

export type HistoryMap = Map<number, TimelineHistory>;

/**
 * Read and parse the history file of every timeline above 1 in `tlis` (one small GET each).
 * Missing or corrupt files are recorded, not thrown; other storage errors are thrown.
 */
export async function readHistories(store: ArchiveStore, inv: Inventory, tlis: readonly number[]): Promise<HistoryMap> {
  const out: HistoryMap = new Map();
  for (const tli of tlis) {
    if (tli < 2) continue;
    const file = historyFileName(tli);
    if (!inv.histories.has(tli)) {
      out.set(tli, { tli, file, entries: undefined, problem: 'missing', state: 'missing' });
      continue;
    }
    try {
      const { data } = await store.get(file);
      out.set(tli, parsedHistory(tli, data));
    } catch (err) {
      if (err instanceof NotFoundError) out.set(tli, { tli, file, entries: undefined, problem: 'missing', state: 'missing' });
      else if (err instanceof IntegrityError) out.set(tli, { tli, file, entries: undefined, problem: err.message, state: 'corrupt' });
      else if (err instanceof KeyUnavailableError) out.set(tli, { tli, file, entries: undefined, problem: err.message, state: 'locked', keyId: err.keyId });
      else throw err;
    }
  }
  return out;
}

export function parsedHistory(tli: number, data: Buffer): TimelineHistory {
  const file = historyFileName(tli);
  try {
    const entries = parseHistory(data.toString('utf8'));
    checkHistoryForTimeline(entries, tli);
    return { tli, file, entries, problem: undefined, state: 'ok' };
  } catch (err) {
    if (err instanceof HistoryParseError) return { tli, file, entries: undefined, problem: err.message, state: 'invalid' };
    throw err;
  }
}

/** Where `tli` began (its parent's switch point) per its own history file, if readable. */
export function timelineBegin(histories: HistoryMap, tli: number): { parent: number; lsn: Lsn } | undefined {
  const entries = histories.get(tli)?.entries;
  const last = entries?.[entries.length - 1];
  return last ? { parent: last.tli, lsn: last.end } : undefined;
}

/**
 * The timelines provably in `tli`'s past: itself (no end) and each ancestor its history file
 * names, with the LSN where that ancestor ended. Without a readable history only `tli` itself.
 */
export function ancestry(histories: HistoryMap, tli: number): { tli: number; end: Lsn | undefined }[] {
  const out: { tli: number; end: Lsn | undefined }[] = [{ tli, end: undefined }];
  for (const e of histories.get(tli)?.entries ?? []) out.push({ tli: e.tli, end: e.end });
  return out;
}

export function lsnText(lsn: Lsn): string {
  return formatLsn(lsn);
}

// --- gaps ---

export interface SegmentRange {
  /** First missing segment name. */
  first: string;
  /** Last missing segment name (same as first for one segment). */
  last: string;
  count: number;
}

/**
 * The ranges of segment numbers in [from, to] that `present` (sorted, ascending) lacks, named on
 * timeline `tli`.
 */
export function missingRanges(tli: number, present: readonly bigint[], from: bigint, to: bigint, segSize: number): SegmentRange[] {
  const out: SegmentRange[] = [];
  if (to < from) return out;
  let expect = from;
  const push = (a: bigint, b: bigint): void => {
    out.push({ first: segmentName(tli, a, segSize), last: segmentName(tli, b, segSize), count: Number(b - a + 1n) });
  };
  for (const s of present) {
    if (s < expect) continue;
    if (s > to) break;
    if (s > expect) push(expect, s - 1n);
    expect = s + 1n;
  }
  if (expect <= to) push(expect, to);
  return out;
}

/** Segment numbers of a timeline's complete segments (those whose names fit the segment size), ascending. */
export function segNosOf(files: readonly ArchivedFile[] | undefined, segSize: number): bigint[] {
  return (files ?? []).filter((f) => positionFits(f.position!, segSize)).map((f) => positionToSegNo(f.position!, segSize));
}

/** The history of every timeline in the archive and of every ancestor their history files name. */
export async function readAllHistories(store: ArchiveStore, inv: Inventory): Promise<HistoryMap> {
  const map = await readHistories(store, inv, timelinesOf(inv));
  for (;;) {
    const more = new Set<number>();
    for (const h of map.values()) for (const e of h.entries ?? []) if (e.tli > 1 && !map.has(e.tli)) more.add(e.tli);
    if (more.size === 0) return map;
    for (const [tli, h] of await readHistories(store, inv, [...more])) map.set(tli, h);
  }
}

// --- leftovers of writers ---

export interface LeftoverItem {
  /** Where it is, relative to the archive (a temp file's path, an upload's key). */
  name: string;
  kind: 'temp-file' | 'multipart-upload';
  /** null when the store cannot tell (the parts of an upload it cannot list). */
  bytes: number | null;
  modified: string;
  ageSeconds: number;
  /** 'dead' or 'stale': removable by cleanup; 'live' or 'recent': a writer may still be at work. */
  state: LeftoverState;
  /** The writing process, when the temp file's name records it. */
  writer: { pid: number; host: string } | null;
}

/** What status and verify report of the archive's leftovers. */
export interface LeftoverSummary {
  /** Temp files and incomplete multipart uploads found. */
  count: number;
  /** Their bytes (of those whose size is known). */
  bytes: number;
  /** Of them, those whose writer is gone (or, when it cannot be checked, older than the leftover age): what cleanup removes. */
  removable: number;
  removableBytes: number;
  /** Of them, those a writer may still be at work on (kept). */
  inUse: number;
  /** Of them, incomplete multipart uploads (S3). */
  uploads: number;
  items: LeftoverItem[];
  /** Why the archive could not be searched for them (or not all of it), else null. */
  unavailable: string | null;
}

export function leftoverItem(l: Leftover, now: Date): LeftoverItem {
  return {
    name: l.name,
    kind: l.kind,
    bytes: l.bytes ?? null,
    modified: l.modified.toISOString(),
    ageSeconds: Math.max(0, (now.getTime() - l.modified.getTime()) / 1000),
    state: l.state,
    writer: l.writer ?? null,
  };
}

/**
 * Look for the leftovers of writers in the archive. null for a store that keeps none; a failure to
 * look is reported in `unavailable`, never thrown (leftovers are not WAL: they never stop a report).
 */
export async function summariseLeftovers(store: ArchiveStore, opts: { now: Date; maxAgeMs?: number }): Promise<LeftoverSummary | null> {
  if (!store.scanLeftovers) return null;
  let found: Leftover[] = [];
  let unavailable: string | null = null;
  try {
    const scan = await store.scanLeftovers({ now: opts.now, ...(opts.maxAgeMs !== undefined ? { maxAgeMs: opts.maxAgeMs } : {}) });
    found = scan.leftovers;
    unavailable = scan.unavailable ?? null;
  } catch (err) {
    if (!(err instanceof StorageError)) throw err;
    unavailable = `cannot look for leftovers: ${err.message}`;
  }
  const gone = found.filter((l) => removable(l.state));
  const sum = (ls: Leftover[]): number => ls.reduce((n, l) => n + (l.bytes ?? 0), 0);
  return {
    count: found.length,
    bytes: sum(found),
    removable: gone.length,
    removableBytes: sum(gone),
    inUse: found.length - gone.length,
    uploads: found.filter((l) => l.kind === 'multipart-upload').length,
    items: found.map((l) => leftoverItem(l, opts.now)),
    unavailable,
  };
}

/** "2 temp files and 1 incomplete multipart upload" (what a summary counts). */
export function leftoverWhat(count: number, uploads: number): string {
  const files = count - uploads;
  const parts = [files > 0 || uploads === 0 ? `${files} temp file${files === 1 ? '' : 's'}` : '', uploads > 0 ? `${uploads} incomplete multipart upload${uploads === 1 ? '' : 's'}` : ''];
  return parts.filter((p) => p !== '').join(' and ');
}
