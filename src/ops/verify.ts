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
import { WalRecordDecoder, type WalEnd } from '../wal/records.js';
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

export type ProblemKind = 'missing-segment' | 'missing-history' | 'checksum' | 'header' | 'system-identifier' | 'segment-size' | 'history' | 'timeline' | 'read' | 'empty' | 'unverified' | 'record';

export interface VerifyProblem {
  /** The object (or missing object) the problem is about. */
  object: string;
  kind: ProblemKind;
  message: string;
  /** For a run of missing segments: the last one missing. */
  last?: string;
  /** For a run of missing segments: how many. */
  count?: number;
  /** For a record problem: the offset in the segment. */
  offset?: number;
  /** For a record problem: the LSN. */
  lsn?: string;
}

/** What --records found: the records of the segments recovery reads, in order. */
export interface VerifyRecords {
  /** The newest timeline, whose history was followed. */
  timeline: number;
  firstSegment: string | null;
  lastSegment: string | null;
  /** Segments decoded. */
  segments: number;
  /** Records read whole with a matching CRC. */
  records: number;
  /** XLOG_SWITCH records. */
  switches: number;
  firstRecord: string | null;
  lastRecord: string | null;
  /** Where the record after the last one read starts. */
  end: string | null;
  /** How the WAL read ends: at a record boundary, inside a record that goes on past the range, or in zeros. */
  endKind: WalEnd;
  /** Bytes decoded. */
  bytes: number;
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
  /** With --records: the record check; null without it. */
  records: VerifyRecords | null;
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
  /** Also decode every record of the segments recovery reads (verify --records). */
  records?: boolean;
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
  if (o.from !== undefined) assertSegmentName(o.from, '--from');
  const v = new Verification(o, buildInventory(await o.store.list()));
  await v.readHistories();
  await v.readIdentity();
  await v.readObjects();
  v.settleGeometry();
  v.reportLockedObjects();
  v.checkTimelines();
  if (o.records) await v.checkRecords();
  await v.noteLeftovers();
  return v.finish();
}

/** One run of verify: what was found so far, and each step of the check. */
class Verification {
  private readonly store: ArchiveStore;
  private readonly log: Logger;
  private readonly width: number;
  private readonly maxBytes: number;
  private readonly fromPos: string | undefined;
  readonly report: VerifyReport;
  private readonly problems: VerifyProblem[] = [];
  private readonly notes: string[] = [];
  private histories: HistoryMap = new Map();
  /** Key ids of the encrypted objects that could not be read for want of their key. */
  private readonly lockedKeys = new Set<string>();
  private identity: ArchiveIdentity | undefined;
  /** The objects read (all but history files), in name order. */
  private readonly targets: ArchivedFile[];
  private readonly facts: HeaderFacts[] = [];
  private readonly unknownMagics = new Set<number>();
  private segSizeSeen = 0;
  private segSize: number | undefined;
  private systemId: bigint | undefined;

  constructor(
    private readonly o: VerifyOptions,
    private readonly inv: Inventory,
  ) {
    this.store = o.store;
    this.log = o.log ?? silentLogger;
    this.width = Math.max(1, o.parallel ?? 4);
    this.maxBytes = o.maxBytesInFlight ?? 512 * 1024 * 1024;
    this.fromPos = o.from?.slice(8);
    this.targets = inv.files.filter((f) => f.kind !== 'history' && (this.fromPos === undefined || f.position! >= this.fromPos));
    this.report = {
      archive: o.store.description,
      ok: false,
      from: o.from ?? null,
      systemIdentifier: null,
      segmentSize: null,
      blockSize: null,
      identityRecord: false,
      checked: { objects: 0, segments: 0, partials: 0, pieces: 0, historyFiles: 0, backups: 0, bytes: 0, withoutChecksum: 0, encrypted: 0, encryptedWithoutKey: 0 },
      timelines: [],
      records: null,
      problems: this.problems,
      notes: this.notes,
      leftovers: null,
    };
  }

  private readonly problem = (object: string, kind: ProblemKind, message: string, extra: Partial<VerifyProblem> = {}): void => {
    this.problems.push({ object, kind, message, ...extra });
    this.log.verbose(`${object}: ${message}`);
  };

  /** The objects recovery may read, a few at a time, within the bound on bytes held. */
  private readLimit(): number {
    return this.segSizeSeen > 0 ? Math.max(1, Math.min(this.width, Math.floor(this.maxBytes / this.segSizeSeen))) : this.width;
  }

  /** History files first: small, and they say what the segments must be. */
  async readHistories(): Promise<void> {
    this.histories = await readAllHistories(this.store, this.inv);
    for (const h of this.histories.values()) {
      if (h.state === 'ok' || h.state === 'invalid') {
        this.report.checked.objects++;
        this.report.checked.historyFiles++;
      } else if (h.state === 'locked') {
        this.report.checked.encryptedWithoutKey++;
        if (h.keyId !== undefined) this.lockedKeys.add(h.keyId);
      }
    }
  }

  /** The identity record, when the archive has one, names the system and segment size. */
  async readIdentity(): Promise<void> {
    try {
      this.identity = await readIdentity(this.store);
      if (this.identity) {
        this.report.checked.objects++;
        this.report.identityRecord = true;
      }
    } catch (err) {
      if (!(err instanceof StorageError) || err.transient) throw err;
      if (err instanceof KeyUnavailableError) {
        this.report.checked.encryptedWithoutKey++;
        this.lockedKeys.add(err.keyId);
      } else {
        this.problem(IDENTITY_NAME, err instanceof IntegrityError ? 'checksum' : 'read', err.message);
      }
    }
  }

  /** Every other object, in name order, a few at a time: its checksum, and a segment's page headers. */
  async readObjects(): Promise<void> {
    let done = 0;
    let nextReport = Date.now() + 5000;
    const checked = this.report.checked;
    await pool(
      this.targets,
      this.width,
      () => this.readLimit(),
      async (f) => {
        const data = await this.read(f).finally(() => {
          done++;
          if (Date.now() >= nextReport) {
            nextReport = Date.now() + 5000;
            this.log.verbose(`checked ${done} of ${this.targets.length} objects`);
          }
        });
        if (!data) return;
        checked.objects++;
        checked.bytes += data.data.length;
        if (data.checksum === undefined) checked.withoutChecksum++;
        switch (f.kind) {
          case 'segment':
            checked.segments++;
            this.examineHeader(f, data.data);
            break;
          case 'partial':
            checked.partials++;
            this.examineHeader(f, data.data);
            break;
          case 'piece':
            checked.pieces++;
            if (f.offset === 0) this.examineHeader(f, data.data);
            break;
          case 'backup':
            checked.backups++;
            break;
          default:
            break;
        }
      },
    );
  }

  /** One object through the store (which checks its recorded checksum); undefined, with the problem noted, when it cannot be read. */
  private async read(f: ArchivedFile): Promise<{ data: Buffer; checksum: string | undefined } | undefined> {
    try {
      const got = await this.store.get(f.name);
      if (got.info.keyId !== undefined) this.report.checked.encrypted++;
      return { data: got.data, checksum: got.info.checksum };
    } catch (err) {
      if (err instanceof KeyUnavailableError) {
        this.report.checked.encryptedWithoutKey++;
        this.lockedKeys.add(err.keyId);
        this.log.verbose(`${f.name}: encrypted with key "${err.keyId}", which was not given: not verified`);
      } else if (err instanceof IntegrityError) this.problem(f.name, 'checksum', err.message);
      else if (err instanceof NotFoundError) {
        // The receiver deletes the pieces of a segment once the segment is archived.
        if (f.kind === 'piece') this.notes.push(`${f.name} was removed while verifying (its segment was archived meanwhile)`);
        else this.problem(f.name, 'read', 'listed, but gone when read (removed while verifying?)');
      } else if (err instanceof StorageError) this.problem(f.name, 'read', err.message);
      else throw err;
      return undefined;
    }
  }

  private examineHeader(f: ArchivedFile, data: Buffer): void {
    const g = geometryOf(data, f.name);
    if (!g) {
      // A piece, or a compressed .partial only just begun, may be shorter than a page header.
      if (f.kind === 'piece' || (f.kind === 'partial' && data.length < LONG_PAGE_HEADER_SIZE)) return;
      this.problem(f.name, 'header', data.length < LONG_PAGE_HEADER_SIZE ? `${data.length} bytes: too short for a WAL segment` : 'no valid long page header (the segment or block size in it is impossible)');
      return;
    }
    this.segSizeSeen = Math.max(this.segSizeSeen, g.segSize);
    this.facts.push({ file: f, systemId: g.systemId, segSize: g.segSize, blockSize: g.blockSize });
    if (!positionFits(f.position!, g.segSize)) {
      this.problem(f.name, 'header', `the name is not a valid segment name for the ${g.segSize}-byte segments its header names`);
      return;
    }
    if (f.kind === 'segment' && data.length !== g.segSize) {
      this.problem(f.name, 'segment-size', `holds ${data.length} bytes, but its header names ${g.segSize}-byte segments`);
    }
    // A .partial may hold stale bytes past its end (a promotion's) or zeros: its first page only.
    const validLength = f.kind === 'segment' ? data.length : LONG_PAGE_HEADER_SIZE;
    const segNo = positionToSegNo(f.position!, g.segSize);
    const chk = checkSegmentPages(data, Math.min(validLength, data.length), { segNo, segSize: g.segSize, tli: f.tli, blockSize: g.blockSize });
    if (!chk.ok) this.problem(f.name, 'header', `page headers do not fit the name: ${chk.problems.slice(0, 2).join('; ')}`);
    if (chk.unknownMagic !== undefined) this.unknownMagics.add(chk.unknownMagic);
  }

  /**
   * One system, one segment size: the archive's identity record says which (archive/identity.ts);
   * without one, what most of its segments say. Segments that disagree are problems.
   */
  settleGeometry(): void {
    const { facts, identity } = this;
    const segSize = identity?.segmentSize ?? majority(facts.filter((f) => f.file.kind === 'segment').map((f) => f.segSize)) ?? majority(facts.map((f) => f.segSize));
    const systemId = identity?.systemIdentifier ?? majority(facts.map((f) => f.systemId));
    const blockSize = majority(facts.map((f) => f.blockSize));
    const reference = identity ? `the archive's identity record (${IDENTITY_NAME}) names` : 'the rest of the archive is';
    for (const f of facts) {
      if (segSize !== undefined && f.segSize !== segSize) {
        this.problem(f.file.name, 'segment-size', `its header names ${f.segSize}-byte segments, but ${reference} ${segSize}-byte segments`);
      } else if (systemId !== undefined && f.systemId !== systemId) {
        this.problem(f.file.name, 'system-identifier', `WAL of database system ${f.systemId}, but ${reference} system ${systemId}`);
      } else if (blockSize !== undefined && f.blockSize !== blockSize) {
        this.problem(f.file.name, 'header', `its header names ${f.blockSize}-byte pages, the rest of the archive ${blockSize}-byte pages`);
      }
    }
    this.segSize = segSize;
    this.systemId = systemId;
    this.report.segmentSize = segSize ?? null;
    this.report.systemIdentifier = systemId?.toString() ?? null;
    this.report.blockSize = blockSize ?? null;
    for (const m of this.unknownMagics) this.notes.push(`page magic 0x${m.toString(16)} is not one this walstream knows (a newer PostgreSQL?): headers checked without it`);
    if (this.report.checked.withoutChecksum > 0) {
      this.notes.push(`${this.report.checked.withoutChecksum} objects carry no recorded checksum (written by another tool): their headers were checked, their bytes could not be`);
    }
  }

  /** Encrypted objects whose key was not given: not bad, just not checked, so the verdict cannot be "ok". */
  reportLockedObjects(): void {
    const n = this.report.checked.encryptedWithoutKey;
    if (n === 0) return;
    const ids = [...this.lockedKeys]
      .sort()
      .map((k) => `"${k}"`)
      .join(', ');
    this.problem(
      this.store.description,
      'unverified',
      `cannot verify ${n} encrypted object${n === 1 ? '' : 's'}: ${this.lockedKeys.size === 1 ? 'key' : 'keys'} ${ids} not given (use --encryption-key-file or WALSTREAM_ENCRYPTION_KEY)`,
    );
  }

  /** Something to check at all, history files that agree, and every segment recovery needs present. */
  checkTimelines(): void {
    const { inv, histories, fromPos, o } = this;
    const inRange = [...inv.segments.values()].some((list) => list.some((f) => fromPos === undefined || f.position! >= fromPos));
    if (!inRange) {
      if (o.from !== undefined) this.problem(o.from, 'empty', 'the archive holds no complete WAL segment from this position on');
      else this.problem(this.store.description, 'empty', 'the archive holds no complete WAL segment (is the location right?)');
    }
    checkHistories(inv, histories, this.problem);
    if (this.segSize !== undefined) this.report.timelines = checkContinuity(inv, histories, this.segSize, fromPos, this.problem);
    else if (inRange && this.facts.length === 0 && this.report.checked.encryptedWithoutKey > 0) this.notes.push('the segment size is unknown without the encryption key: continuity was not checked');
    else if (inRange) this.problem(this.targets[0]!.name, 'header', 'no segment in the archive has a readable long page header: cannot tell the segment size');
  }

  /**
   * --records: the segments recovery reads (for each segment number, the file of the newest
   * timeline that holds it per the newest timeline's history, as xlogrecovery.c
   * XLogFileReadAnyTLI picks it), read again in order and decoded record by record.
   */
  async checkRecords(): Promise<void> {
    const { inv, histories, segSize } = this;
    if (segSize === undefined) return;
    const chain = recoveryChain(inv, histories, segSize, this.fromPos);
    const newest = chain.tli;
    const history = newest > 1 ? histories.get(newest)?.entries : [];
    if (history === undefined) this.notes.push(`the history of timeline ${newest} is not readable: page timelines were checked without it`);
    const decoder = new WalRecordDecoder({
      segSize,
      ...(this.report.blockSize !== null ? { blockSize: this.report.blockSize } : {}),
      ...(this.systemId !== undefined ? { systemId: this.systemId } : {}),
      ...(history !== undefined ? { history: { tli: newest, entries: history } } : {}),
    });
    // Read ahead in order, a few segments at a time.
    const reads: Promise<Buffer | undefined>[] = [];
    let next = 0;
    const start = (): void => {
      while (next < chain.files.length && reads.length < this.readLimit()) {
        const f = chain.files[next++]!;
        reads.push(
          this.store.get(f.name).then(
            (g) => g.data,
            (err: unknown) => {
              // Already a problem when readObjects could not read it either; else one now.
              if (!this.problems.some((p) => p.object === f.name)) this.problem(f.name, 'read', `could not be read for the record check: ${err instanceof Error ? err.message : String(err)}`);
              return undefined;
            },
          ),
        );
      }
    };
    let unread = 0;
    for (const f of chain.files) {
      start();
      const data = await reads.shift()!;
      if (!data) {
        // its problem (checksum, read) is reported by readObjects; the check resumes after it
        unread++;
        decoder.skipSegment(positionToSegNo(f.position!, segSize), f.tli);
        continue;
      }
      decoder.beginSegment(positionToSegNo(f.position!, segSize), f.tli);
      decoder.write(data);
      decoder.endSegment();
    }
    const s = decoder.summary();
    for (const p of s.problems) this.problem(p.segment, 'record', `offset ${p.offset} (${lsnText(p.lsn)}): ${p.message}`, { offset: p.offset, lsn: lsnText(p.lsn) });
    if (s.problemsNotKept > 0) this.problem(chain.files[chain.files.length - 1]?.name ?? this.store.description, 'record', `${s.problemsNotKept} more record problems not listed`);
    if (unread > 0)
      this.notes.push(`${plural(unread, 'segment')} could not be read for the record check (see the problems): their records were not checked, and the check went on from the next segment's first page`);
    for (const lsn of s.overwritten) this.notes.push(`the record at ${lsnText(lsn)} was cut short and overwritten (XLOG_OVERWRITE_CONTRECORD): recovery skips it too`);
    this.report.records = {
      timeline: newest,
      firstSegment: chain.files[0]?.name ?? null,
      lastSegment: chain.files[chain.files.length - 1]?.name ?? null,
      segments: chain.files.length - unread,
      records: s.records,
      switches: s.switches,
      firstRecord: s.firstRecord !== null ? lsnText(s.firstRecord) : null,
      lastRecord: s.lastRecord !== null ? lsnText(s.lastRecord) : null,
      end: s.end !== null ? lsnText(s.end) : null,
      endKind: s.endKind,
      bytes: s.bytes,
    };
  }

  /** What killed writers left behind: reported in a note, never as a problem. */
  async noteLeftovers(): Promise<void> {
    const o = this.o;
    this.report.leftovers = await summariseLeftovers(this.store, { now: o.now ?? new Date(), ...(o.leftoverAgeMs !== undefined ? { maxAgeMs: o.leftoverAgeMs } : {}) });
    const left = this.report.leftovers;
    if (left && left.count > 0) {
      const gone = left.removable > 0 ? `; ${left.removable} of writers that are gone (${formatBytes(left.removableBytes)}), which walstream cleanup removes` : '';
      const kept = left.inUse > 0 ? `; ${left.inUse} kept (a writer may still be at work)` : '';
      this.notes.push(`${leftoverWhat(left.count, left.uploads)} (${formatBytes(left.bytes)}) left by writers, not WAL and not checked${gone}${kept}`);
    }
    if (left?.unavailable) this.notes.push(left.unavailable);
  }

  finish(): VerifyReport {
    this.problems.sort((a, b) => cmp(a.object, b.object) || cmp(a.kind, b.kind) || (a.offset ?? 0) - (b.offset ?? 0));
    this.report.ok = this.problems.length === 0;
    return this.report;
  }
}

/**
 * The complete segments recovery reads, in order, following the newest timeline: for each
 * segment number from the start of the range to the newest segment, the file of the newest
 * timeline in that history that began at or before the segment and has it.
 */
function recoveryChain(inv: Inventory, histories: HistoryMap, segSize: number, fromPos: string | undefined): { tli: number; files: ArchivedFile[] } {
  const tlis = timelinesOf(inv, histories).filter((t) => (inv.segments.get(t)?.length ?? 0) > 0);
  const newest = tlis[tlis.length - 1] ?? 1;
  const seg = BigInt(segSize);
  // The line of timelines, newest first, each with the segment it began in (its parent's end).
  const entries = histories.get(newest)?.entries ?? [];
  const line = [{ tli: newest, beginSeg: entries.length > 0 ? entries[entries.length - 1]!.end / seg : 0n }];
  for (let i = entries.length - 1; i >= 0; i--) line.push({ tli: entries[i]!.tli, beginSeg: i > 0 ? entries[i - 1]!.end / seg : 0n });
  const bySeg = new Map<number, Map<bigint, ArchivedFile>>();
  for (const { tli } of line) {
    const m = new Map<bigint, ArchivedFile>();
    for (const f of inv.segments.get(tli) ?? []) if (positionFits(f.position!, segSize) && (fromPos === undefined || f.position! >= fromPos)) m.set(positionToSegNo(f.position!, segSize), f);
    bySeg.set(tli, m);
  }
  let lo: bigint | undefined;
  let hi: bigint | undefined;
  for (const m of bySeg.values()) {
    for (const n of m.keys()) {
      if (lo === undefined || n < lo) lo = n;
      if (hi === undefined || n > hi) hi = n;
    }
  }
  const files: ArchivedFile[] = [];
  if (lo === undefined || hi === undefined) return { tli: newest, files };
  for (let n = lo; n <= hi; n++) {
    for (const { tli, beginSeg } of line) {
      if (n < beginSeg) continue;
      const f = bySeg.get(tli)!.get(n);
      if (f) {
        files.push(f);
        break;
      }
    }
  }
  return { tli: newest, files };
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
  const rec = r.records;
  if (rec) {
    const range = rec.firstSegment ? `${rec.firstSegment} .. ${rec.lastSegment}` : 'no segments';
    const span = rec.firstRecord ? `, ${rec.firstRecord} .. ${rec.lastRecord}` : '';
    const ends = { empty: 'nothing to read', 'record-boundary': 'at a record boundary', 'incomplete-record': 'inside a record that goes on past the last segment', zeros: 'in zeros (the end of WAL)' }[
      rec.endKind
    ];
    lines.push(
      `records: ${plural(rec.records, 'record')} in ${plural(rec.segments, 'segment')} (${range}${span}; ${plural(rec.switches, 'segment switch', 'segment switches')}), following timeline ${rec.timeline}; WAL ends ${rec.end ? `at ${rec.end}, ` : ''}${ends}`,
    );
  }
  for (const n of r.notes) lines.push(`note: ${n}`);
  if (r.ok) {
    lines.push(rec ? 'OK: every segment recovery needs is present and intact, and its records replay' : 'OK: every segment recovery needs is present and intact');
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
