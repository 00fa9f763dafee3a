// walstream verify: proves that an archive can be replayed. Every object is read back through the
// store (get verifies the checksum recorded with it), every segment's page headers are checked
// against its name (xlogreader.c XLogReaderValidatePageHeader: magic, page addresses, timeline
// not above the file's; the long header's system identifier and sizes), and the segments of each
// timeline must be continuous over the range recovery reads them (xlogrecovery.c
// XLogFileReadAnyTLI: timeline N up to the segment before the one holding its switch point, the
// next timeline from that segment on, as the history files say).
// Memory stays bounded: objects are read one per worker of a small pool and dropped once
// examined; only a few numbers per segment are kept.
// What killed writers left behind (temp files, incomplete multipart uploads) is reported in a
// note, never as a problem: it is not WAL, and recovery never reads it.
import { LONG_PAGE_HEADER_SIZE, checkSegmentPages } from '../wal/page.js';
import { historyFileName } from '../wal/segment.js';
import { IDENTITY_NAME, IntegrityError, KeyUnavailableError, NotFoundError, StorageError, type ArchiveStore } from '../storage/types.js';
import { readIdentity, type ArchiveIdentity } from '../archive/identity.js';
import { silentLogger, type Logger } from '../util/log.js';
import { formatBytes, plural } from './format.js';
import {
  buildInventory,
  cmp,
  leftoverWhat,
  geometryOf,
  lsnText,
  missingRanges,
  positionFits,
  positionToSegNo,
  readAllHistories,
  segmentName,
  segNosOf,
  summariseLeftovers,
  timelineBegin,
  timelinesOf,
  type ArchivedFile,
  type HistoryMap,
  type Inventory,
  type LeftoverSummary,
} from './inventory.js';

export type ProblemKind = 'missing-segment' | 'missing-history' | 'checksum' | 'header' | 'system-identifier' | 'segment-size' | 'history' | 'timeline' | 'read' | 'empty' | 'unverified';

export interface VerifyProblem {
  /** The object (or missing object) the problem is about. */
  object: string;
  kind: ProblemKind;
  message: string;
  /** For a run of missing segments: the last one missing. */
  last?: string;
  /** For a run of missing segments: how many. */
  count?: number;
}

export interface VerifyTimeline {
  timeline: number;
  /** The timeline it branched from and where, per its history file. */
  parent: number | null;
  begin: string | null;
  firstSegment: string | null;
  lastSegment: string | null;
  segments: number;
  /** The range recovery reads from this timeline, which must be complete. */
  neededFirst: string | null;
  neededLast: string | null;
}

export interface VerifyReport {
  archive: string;
  ok: boolean;
  from: string | null;
  systemIdentifier: string | null;
  segmentSize: number | null;
  blockSize: number | null;
  /** Whether the archive has an identity record (walstream.json) naming its system and segment size. */
  identityRecord: boolean;
  checked: {
    objects: number;
    segments: number;
    partials: number;
    pieces: number;
    historyFiles: number;
    backups: number;
    /** Uncompressed bytes read and checked. */
    bytes: number;
    /** Objects stored without a checksum (written by other tools): read, but not verifiable. */
    withoutChecksum: number;
    /** Encrypted objects that were authenticated and decrypted with a key given. */
    encrypted: number;
    /** Encrypted objects whose key was not given: not read, not verified, not called bad. */
    encryptedWithoutKey: number;
  };
  timelines: VerifyTimeline[];
  problems: VerifyProblem[];
  notes: string[];
  /** Temp files and incomplete uploads of writers (null for a store that keeps none): not WAL, never a problem. */
  leftovers: LeftoverSummary | null;
}

export interface VerifyOptions {
  store: ArchiveStore;
  /** Start at this segment's position (a 24-character segment name): older objects are not read. */
  from?: string;
  /** Objects read in parallel (default 4). */
  parallel?: number;
  /** Bound on segment bytes held at once (default 512 MB): fewer reads in parallel for big segments. */
  maxBytesInFlight?: number;
  log?: Logger;
  /** Leftovers whose writer cannot be checked count as removable once older than this (default 1 hour). */
  leftoverAgeMs?: number;
  now?: Date;
}

interface HeaderFacts {
  file: ArchivedFile;
  systemId: bigint;
  segSize: number;
  blockSize: number;
}

const SEGMENT_NAME_RE = /^[0-9A-F]{24}$/;

export function assertSegmentName(name: string, what: string): void {
  if (!SEGMENT_NAME_RE.test(name)) throw new Error(`${what} "${name.slice(0, 80)}" is not a WAL segment name (24 hexadecimal digits)`);
}

/**
 * Run `fn` over `items` with at most `limit()` calls in flight. The first item runs alone (it
 * tells the segment size, on which the limit depends); the limit is read again before each item.
 */
async function pool<T>(items: readonly T[], width: number, limit: () => number, fn: (item: T) => Promise<void>): Promise<void> {
  if (items.length === 0) return;
  await fn(items[0]!);
  let next = 1;
  const worker = async (id: number): Promise<void> => {
    while (next < items.length) {
      if (id > 0 && id >= limit()) return;
      const item = items[next++]!;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(width, items.length - 1)) }, (_, i) => worker(i)));
}

function majority<T>(values: readonly T[]): T | undefined {
  const counts = new Map<T, number>();
  let best: T | undefined;
  let bestCount = 0;
  for (const v of values) {
    const c = (counts.get(v) ?? 0) + 1;
    counts.set(v, c);
    if (c > bestCount) {
      best = v;
      bestCount = c;
    }
  }
  return best;
}

export async function verifyArchive(o: VerifyOptions): Promise<VerifyReport> {
  const { store } = o;
  const log = o.log ?? silentLogger;
  const width = Math.max(1, o.parallel ?? 4);
  const maxBytes = o.maxBytesInFlight ?? 512 * 1024 * 1024;
  if (o.from !== undefined) assertSegmentName(o.from, '--from');
  const fromPos = o.from?.slice(8);

  const inv = buildInventory(await store.list());
  const problems: VerifyProblem[] = [];
  const notes: string[] = [];
  const problem = (object: string, kind: ProblemKind, message: string, extra: Partial<VerifyProblem> = {}): void => {
    problems.push({ object, kind, message, ...extra });
    log.verbose(`${object}: ${message}`);
  };
  const report: VerifyReport = {
    archive: store.description,
    ok: false,
    from: o.from ?? null,
    systemIdentifier: null,
    segmentSize: null,
    blockSize: null,
    identityRecord: false,
    checked: { objects: 0, segments: 0, partials: 0, pieces: 0, historyFiles: 0, backups: 0, bytes: 0, withoutChecksum: 0, encrypted: 0, encryptedWithoutKey: 0 },
    timelines: [],
    problems,
    notes,
    leftovers: null,
  };

  // History files first: small, and they say what the segments must be.
  const histories = await readAllHistories(store, inv);
  /** Key ids of the encrypted objects that could not be read for want of their key. */
  const lockedKeys = new Set<string>();
  for (const h of histories.values()) {
    if (h.state === 'ok' || h.state === 'invalid') {
      report.checked.objects++;
      report.checked.historyFiles++;
    } else if (h.state === 'locked') {
      report.checked.encryptedWithoutKey++;
      if (h.keyId !== undefined) lockedKeys.add(h.keyId);
    }
  }

  // The identity record, when the archive has one, names the system and segment size.
  let identity: ArchiveIdentity | undefined;
  try {
    identity = await readIdentity(store);
    if (identity) {
      report.checked.objects++;
      report.identityRecord = true;
    }
  } catch (err) {
    if (!(err instanceof StorageError) || err.transient) throw err;
    if (err instanceof KeyUnavailableError) {
      report.checked.encryptedWithoutKey++;
      lockedKeys.add(err.keyId);
    } else {
      problem(IDENTITY_NAME, err instanceof IntegrityError ? 'checksum' : 'read', err.message);
    }
  }

  // Then every other object, in name order, a few at a time.
  const targets = inv.files.filter((f) => f.kind !== 'history' && (fromPos === undefined || f.position! >= fromPos));
  const facts: HeaderFacts[] = [];
  const unknownMagics = new Set<number>();
  let segSizeSeen = 0;
  const limit = (): number => (segSizeSeen > 0 ? Math.max(1, Math.min(width, Math.floor(maxBytes / segSizeSeen))) : width);
  let done = 0;
  let nextReport = Date.now() + 5000;

  const examineHeader = (f: ArchivedFile, data: Buffer): void => {
    const g = geometryOf(data, f.name);
    if (!g) {
      // A piece, or a compressed .partial only just begun, may be shorter than a page header.
      if (f.kind === 'piece' || (f.kind === 'partial' && data.length < LONG_PAGE_HEADER_SIZE)) return;
      problem(f.name, 'header', data.length < LONG_PAGE_HEADER_SIZE ? `${data.length} bytes: too short for a WAL segment` : 'no valid long page header (the segment or block size in it is impossible)');
      return;
    }
    segSizeSeen = Math.max(segSizeSeen, g.segSize);
    facts.push({ file: f, systemId: g.systemId, segSize: g.segSize, blockSize: g.blockSize });
    if (!positionFits(f.position!, g.segSize)) {
      problem(f.name, 'header', `the name is not a valid segment name for the ${g.segSize}-byte segments its header names`);
      return;
    }
    if (f.kind === 'segment' && data.length !== g.segSize) {
      problem(f.name, 'segment-size', `holds ${data.length} bytes, but its header names ${g.segSize}-byte segments`);
    }
    // A .partial may hold stale bytes past its end (a promotion's) or zeros: its first page only.
    const validLength = f.kind === 'segment' ? data.length : LONG_PAGE_HEADER_SIZE;
    const segNo = positionToSegNo(f.position!, g.segSize);
    const chk = checkSegmentPages(data, Math.min(validLength, data.length), { segNo, segSize: g.segSize, tli: f.tli, blockSize: g.blockSize });
    if (!chk.ok) problem(f.name, 'header', `page headers do not fit the name: ${chk.problems.slice(0, 2).join('; ')}`);
    if (chk.unknownMagic !== undefined) unknownMagics.add(chk.unknownMagic);
  };

  await pool(targets, width, limit, async (f) => {
    let data: Buffer;
    let checksum: string | undefined;
    try {
      const got = await store.get(f.name);
      data = got.data;
      checksum = got.info.checksum;
      if (got.info.keyId !== undefined) report.checked.encrypted++;
    } catch (err) {
      if (err instanceof KeyUnavailableError) {
        report.checked.encryptedWithoutKey++;
        lockedKeys.add(err.keyId);
        log.verbose(`${f.name}: encrypted with key "${err.keyId}", which was not given: not verified`);
      } else if (err instanceof IntegrityError) problem(f.name, 'checksum', err.message);
      else if (err instanceof NotFoundError) {
        // The receiver deletes the pieces of a segment once the segment is archived.
        if (f.kind === 'piece') notes.push(`${f.name} was removed while verifying (its segment was archived meanwhile)`);
        else problem(f.name, 'read', 'listed, but gone when read (removed while verifying?)');
      } else if (err instanceof StorageError) problem(f.name, 'read', err.message);
      else throw err;
      return;
    } finally {
      done++;
      if (Date.now() >= nextReport) {
        nextReport = Date.now() + 5000;
        log.verbose(`checked ${done} of ${targets.length} objects`);
      }
    }
    report.checked.objects++;
    report.checked.bytes += data.length;
    if (checksum === undefined) report.checked.withoutChecksum++;
    switch (f.kind) {
      case 'segment':
        report.checked.segments++;
        examineHeader(f, data);
        break;
      case 'partial':
        report.checked.partials++;
        examineHeader(f, data);
        break;
      case 'piece':
        report.checked.pieces++;
        if (f.offset === 0) examineHeader(f, data);
        break;
      case 'backup':
        report.checked.backups++;
        break;
      default:
        break;
    }
  });

  // One system, one segment size: the archive's identity record says which (archive/identity.ts);
  // without one, what most of its segments say.
  const segSize = identity?.segmentSize ?? majority(facts.filter((f) => f.file.kind === 'segment').map((f) => f.segSize)) ?? majority(facts.map((f) => f.segSize));
  const systemId = identity?.systemIdentifier ?? majority(facts.map((f) => f.systemId));
  const blockSize = majority(facts.map((f) => f.blockSize));
  const reference = identity ? `the archive's identity record (${IDENTITY_NAME}) names` : 'the rest of the archive is';
  for (const f of facts) {
    if (segSize !== undefined && f.segSize !== segSize) {
      problem(f.file.name, 'segment-size', `its header names ${f.segSize}-byte segments, but ${reference} ${segSize}-byte segments`);
    } else if (systemId !== undefined && f.systemId !== systemId) {
      problem(f.file.name, 'system-identifier', `WAL of database system ${f.systemId}, but ${reference} system ${systemId}`);
    } else if (blockSize !== undefined && f.blockSize !== blockSize) {
      problem(f.file.name, 'header', `its header names ${f.blockSize}-byte pages, the rest of the archive ${blockSize}-byte pages`);
    }
  }
  report.segmentSize = segSize ?? null;
  report.systemIdentifier = systemId?.toString() ?? null;
  report.blockSize = blockSize ?? null;
  for (const m of unknownMagics) notes.push(`page magic 0x${m.toString(16)} is not one this walstream knows (a newer PostgreSQL?): headers checked without it`);
  if (report.checked.withoutChecksum > 0) {
    notes.push(`${report.checked.withoutChecksum} objects carry no recorded checksum (written by another tool): their headers were checked, their bytes could not be`);
  }

  if (report.checked.encryptedWithoutKey > 0) {
    // Not bad, just not checked: verification is incomplete, so the verdict cannot be "ok".
    const ids = [...lockedKeys]
      .sort()
      .map((k) => `"${k}"`)
      .join(', ');
    problem(
      store.description,
      'unverified',
      `cannot verify ${report.checked.encryptedWithoutKey} encrypted object${report.checked.encryptedWithoutKey === 1 ? '' : 's'}: ${lockedKeys.size === 1 ? 'key' : 'keys'} ${ids} not given (use --encryption-key-file or WALSTREAM_ENCRYPTION_KEY)`,
    );
  }

  const inRange = [...inv.segments.values()].some((list) => list.some((f) => fromPos === undefined || f.position! >= fromPos));
  if (!inRange) {
    if (o.from !== undefined) problem(o.from, 'empty', 'the archive holds no complete WAL segment from this position on');
    else problem(store.description, 'empty', 'the archive holds no complete WAL segment (is the location right?)');
  }
  checkHistories(inv, histories, problem);
  if (segSize !== undefined) report.timelines = checkContinuity(inv, histories, segSize, fromPos, problem);
  else if (inRange && facts.length === 0 && report.checked.encryptedWithoutKey > 0) notes.push('the segment size is unknown without the encryption key: continuity was not checked');
  else if (inRange) problem(targets[0]!.name, 'header', 'no segment in the archive has a readable long page header: cannot tell the segment size');

  report.leftovers = await summariseLeftovers(store, { now: o.now ?? new Date(), ...(o.leftoverAgeMs !== undefined ? { maxAgeMs: o.leftoverAgeMs } : {}) });
  const left = report.leftovers;
  if (left && left.count > 0) {
    const gone = left.removable > 0 ? `; ${left.removable} of writers that are gone (${formatBytes(left.removableBytes)}), which walstream cleanup removes` : '';
    const kept = left.inUse > 0 ? `; ${left.inUse} kept (a writer may still be at work)` : '';
    notes.push(`${leftoverWhat(left.count, left.uploads)} (${formatBytes(left.bytes)}) left by writers, not WAL and not checked${gone}${kept}`);
  }
  if (left?.unavailable) notes.push(left.unavailable);

  problems.sort((a, b) => cmp(a.object, b.object) || cmp(a.kind, b.kind));
  report.ok = problems.length === 0;
  return report;
}

/** Every timeline above 1 needs its history file, and the history files must agree with each other. */
function checkHistories(inv: Inventory, histories: HistoryMap, problem: (object: string, kind: ProblemKind, message: string) => void): void {
  const tlis = timelinesOf(inv, histories);
  const present = new Set(inv.files.filter((f) => f.kind !== 'history').map((f) => f.tli));
  for (const tli of tlis) {
    if (tli < 2) continue;
    const h = histories.get(tli)!;
    if (h.state === 'missing') {
      if (present.has(tli)) {
        problem(h.file, 'missing-history', `missing: timeline ${tli} has WAL in the archive, and recovery cannot follow it without this file`);
      } else {
        const child = [...histories.values()].find((c) => c.entries?.some((e) => e.tli === tli));
        problem(h.file, 'missing-history', `missing: timeline ${tli} is an ancestor of timeline ${child?.tli ?? '?'} (${child?.file ?? '?'}), and recovery reads its history`);
      }
    } else if (h.state === 'corrupt') {
      problem(h.file, 'checksum', h.problem!);
    } else if (h.state === 'locked') {
      // encrypted without its key: counted and reported once as 'unverified'
    } else if (h.state === 'invalid') {
      problem(h.file, 'history', `not a valid history file for timeline ${tli}: ${h.problem!}`);
    }
  }
  // recovery_target_timeline = 'latest' probes N+1.history, N+2.history, ... and stops at the first miss.
  const max = tlis[tlis.length - 1] ?? 1;
  for (let t = 2; t < max; t++) {
    if (histories.has(t)) continue;
    problem(historyFileName(t), 'missing-history', `missing: recovery_target_timeline = 'latest' probes history files in order and stops at the first one missing, so it would not find timeline ${max}`);
  }
  // An ancestor's own history must be the start of its descendants'.
  for (const h of histories.values()) {
    for (const e of h.entries ?? []) {
      const anc = histories.get(e.tli)?.entries;
      if (!anc) continue;
      const mine = h.entries!.slice(0, h.entries!.indexOf(e));
      const same = anc.length === mine.length && anc.every((a, i) => a.tli === mine[i]!.tli && a.end === mine[i]!.end);
      if (!same) problem(h.file, 'history', `disagrees with ${historyFileName(e.tli)} about the history before timeline ${e.tli}`);
    }
  }
}

/**
 * The segments each timeline must hold, from where the check starts (--from, else the archive's
 * oldest segment) or where the timeline began, to its newest segment or the segment before the one
 * where a descendant branched off, whichever is later.
 */
function checkContinuity(
  inv: Inventory,
  histories: HistoryMap,
  segSize: number,
  fromPos: string | undefined,
  problem: (object: string, kind: ProblemKind, message: string, extra?: Partial<VerifyProblem>) => void,
): VerifyTimeline[] {
  const seg = BigInt(segSize);
  const inRange = (f: ArchivedFile): boolean => fromPos === undefined || f.position! >= fromPos;
  const segNos = new Map<number, bigint[]>();
  for (const [tli, files] of inv.segments) segNos.set(tli, segNosOf(files.filter(inRange), segSize));
  let start: bigint | undefined;
  if (fromPos !== undefined) {
    if (!positionFits(fromPos, segSize)) throw new Error(`--from: not a valid segment name for the archive's ${segSize}-byte segments`);
    start = positionToSegNo(fromPos, segSize);
  } else {
    for (const list of segNos.values()) if (list.length && (start === undefined || list[0]! < start)) start = list[0]!;
  }
  const out: VerifyTimeline[] = [];
  for (const tli of timelinesOf(inv, histories)) {
    const present = segNos.get(tli) ?? [];
    const files = inv.segments.get(tli) ?? [];
    let begin = timelineBegin(histories, tli);
    let beginSource = historyFileName(tli);
    if (!begin) {
      // Its own history file is missing: another timeline's history may still say where it began.
      for (const h of histories.values()) {
        const i = h.entries?.findIndex((e) => e.tli === tli) ?? -1;
        if (i > 0) {
          begin = { parent: h.entries![i - 1]!.tli, lsn: h.entries![i - 1]!.end };
          beginSource = h.file;
        }
      }
    }
    const beginSeg = begin ? begin.lsn / seg : undefined;
    // Where descendants branched off: this timeline must reach the segment before.
    let lastNeeded: bigint | undefined;
    let neededBy: string | undefined;
    for (const h of histories.values()) {
      for (const e of h.entries ?? []) {
        if (e.tli !== tli) continue;
        const last = e.end / seg - 1n;
        if (lastNeeded === undefined || last > lastNeeded) {
          lastNeeded = last;
          neededBy = `${h.file} says timeline ${tli} ended at ${lsnText(e.end)}`;
        }
      }
    }
    // Where this timeline's WAL starts: its switch point; without a history saying so (timeline 1,
    // or a missing history file, reported apart), the archive's start or its own first segment.
    const own = beginSeg ?? (tli > 1 ? present[0] : undefined);
    const first = [start, own].filter((x): x is bigint => x !== undefined).reduce((a, b) => (a > b ? a : b), -1n);
    const newest = present[present.length - 1];
    const last = [newest, lastNeeded].filter((x): x is bigint => x !== undefined).reduce((a, b) => (a > b ? a : b), -1n);
    const row: VerifyTimeline = {
      timeline: tli,
      parent: begin?.parent ?? null,
      begin: begin ? lsnText(begin.lsn) : null,
      firstSegment: files[0]?.name ?? null,
      lastSegment: files[files.length - 1]?.name ?? null,
      segments: files.length,
      neededFirst: null,
      neededLast: null,
    };
    if (first >= 0n && last >= first) {
      row.neededFirst = segmentName(tli, first, segSize);
      row.neededLast = segmentName(tli, last, segSize);
      for (const gap of missingRanges(tli, present, first, last, segSize)) {
        const pastNewest = newest === undefined || positionToSegNo(gap.last.slice(8), segSize) > newest;
        const why = pastNewest && neededBy !== undefined ? `; ${neededBy}` : `; timeline ${tli} must be complete from ${row.neededFirst} to ${row.neededLast}`;
        const what = gap.count === 1 ? 'missing' : `missing, through ${gap.last} (${gap.count} segments)`;
        problem(gap.first, 'missing-segment', `${what}${why}`, { last: gap.last, count: gap.count });
      }
    }
    if (beginSeg !== undefined) {
      for (const f of files) {
        if (positionFits(f.position!, segSize) && positionToSegNo(f.position!, segSize) < beginSeg) {
          problem(f.name, 'timeline', `timeline ${tli} began at ${lsnText(begin!.lsn)} (${beginSource}), after this segment: it cannot be WAL of that timeline`);
        }
      }
    }
    out.push(row);
  }
  return out;
}

/** The report as text a person reads: what was checked, then each problem on its own line. */
export function formatVerify(r: VerifyReport): string {
  const lines: string[] = [];
  const geometry = r.segmentSize !== null ? `${formatBytes(r.segmentSize)} segments, system ${r.systemIdentifier}` : 'no readable segment';
  lines.push(`archive ${r.archive}: ${geometry}${r.from ? `, from ${r.from}` : ''}`);
  for (const t of r.timelines) {
    const range = t.firstSegment ? `${t.firstSegment} .. ${t.lastSegment}  ${plural(t.segments, 'segment')}` : 'no segments';
    const branch = t.parent !== null ? `  (branched from timeline ${t.parent} at ${t.begin})` : '';
    lines.push(`timeline ${t.timeline}  ${range}${branch}`);
  }
  const c = r.checked;
  lines.push(
    `checked ${plural(c.objects, 'object')} (${plural(c.segments, 'segment')}, ${plural(c.historyFiles, 'history file')}, ` +
      `${plural(c.partials, 'partial file')}, ${plural(c.pieces, 'piece')}, ${plural(c.backups, 'backup file')}): ${formatBytes(c.bytes)}` +
      (c.encrypted > 0 ? `; ${plural(c.encrypted, 'encrypted object')} authenticated` : ''),
  );
  for (const n of r.notes) lines.push(`note: ${n}`);
  if (r.ok) {
    lines.push('OK: every segment recovery needs is present and intact');
  } else {
    lines.push(`${plural(r.problems.length, 'problem')}:`);
    for (const p of r.problems) lines.push(`  ${p.object}  ${p.kind}: ${p.message}`);
    lines.push(`FAILED: the archive cannot be trusted for recovery (${plural(r.problems.length, 'problem')})`);
  }
  return `${lines.join('\n')}\n`;
}

/** The report as JSON (field names documented in the README). */
export function verifyJson(r: VerifyReport): string {
  return `${JSON.stringify(r, null, 2)}\n`;
}
