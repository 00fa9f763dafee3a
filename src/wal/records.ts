// The WAL record stream, record by record, as xlogreader.c XLogDecodeNextRecord reads it: page
// headers (XLogReaderValidatePageHeader), record headers (ValidXLogRecordHeader, xlogrecord.h
// XLogRecord), records continued over pages and segments (XLP_FIRST_IS_CONTRECORD, xlp_rem_len),
// the CRC-32C of each record (ValidXLogRecord: over the data after the 24-byte header, then the
// header up to xl_crc), xl_prev pointing at the previous record, XLOG_SWITCH and the zeros after it
// to the segment's end (xlog.c CopyXLogRecordToWAL zeroes those pages, headers included, since
// PostgreSQL 13), a record cut short and overwritten (XLP_FIRST_IS_OVERWRITE_CONTRECORD), page
// timelines against the timeline history (xlogrecovery.c: no page of a timeline the history does
// not give that position), and where WAL ends.
// Pure and incremental: fed segment after segment in pieces of any size, it keeps only the page
// header and record header it is in the middle of (at most 64 bytes) and a running CRC, whatever
// the size of a record. It never throws on bad input: every finding is a problem naming the
// segment, the offset in it, the LSN and what is wrong.
import { NATIVE_CRC_MIN_BYTES, crc32cJsRange, crc32cJsView, crc32cJsView2, crc32cRangeView } from '../util/crc32c.js';
import { formatLsn } from './lsn.js';
import { LONG_PAGE_HEADER_SIZE, PAGE_MAGIC_BY_MAJOR, SHORT_PAGE_HEADER_SIZE, XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER } from './page.js';
import { walFileName } from './segment.js';
import { timelineOfPoint, type TimelineHistoryEntry } from './timeline.js';

/** SizeOfXLogRecord: xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid, 2 bytes of padding, xl_crc. */
export const XLOG_RECORD_HEADER_SIZE = 24;
/** offsetof(XLogRecord, xl_crc): the header bytes the CRC covers, after the data. */
const CRC_OFFSET = 20;
const XLP_ALL_FLAGS = 0x000f;
export const RM_XLOG_ID = 0;
/** xl_info bits the resource manager owns (the low four belong to xloginsert.c). */
const XLR_RMGR_INFO_MASK = 0xf0;
export const XLOG_SWITCH = 0x40;
/** RM_MAX_BUILTIN_ID: the built-in resource managers, 0 (XLOG) to 21 (LogicalMessage), 14 to 18. */
const RM_MAX_BUILTIN_ID = 21;
/** Custom resource managers (RM_MIN_CUSTOM_ID..RM_MAX_CUSTOM_ID) exist from PostgreSQL 15 on. */
const RM_MIN_CUSTOM_ID = 128;
/** MaxAllocSize: no server reads a longer record (16+ refuse above XLogRecordMaxSize, 1020 MB). */
const MAX_RECORD_LENGTH = 0x3fffffff;
const KNOWN_MAGICS = new Set(Object.values(PAGE_MAGIC_BY_MAJOR));
const TWO32 = 0x100000000;
const EMPTY_VIEW = new DataView(new ArrayBuffer(0));

export interface WalRecordHeader {
  lsn: bigint;
  totLen: number;
  xid: number;
  prev: bigint;
  info: number;
  rmid: number;
  crc: number;
}

export interface RecordProblem {
  /** The file the byte is in (its name in the archive). */
  segment: string;
  /** Offset in that file. */
  offset: number;
  /** The LSN: of the record concerned, else of the byte. */
  lsn: bigint;
  message: string;
}

export interface RecordDecoderOptions {
  segSize: number;
  /** XLOG_BLCKSZ (default: what the first long page header says, else 8192). */
  blockSize?: number;
  systemId?: bigint;
  /** XLOG_PAGE_MAGIC expected (default: any known one, the same on every page). */
  magic?: number;
  /** The history of the newest timeline read (its history file's entries) and that timeline. */
  history?: { tli: number; entries: readonly TimelineHistoryEntry[] };
  /** Called for every record whose CRC matched. */
  onRecord?: (r: WalRecordHeader) => void;
  /** Problems kept (default 100); the rest are counted. */
  maxProblems?: number;
}

/** How the WAL that was fed ends. */
export type WalEnd =
  /** Nothing was fed. */
  | 'empty'
  /** The last byte fed ends a record (or the zeros after an XLOG_SWITCH). */
  | 'record-boundary'
  /** A record begins or continues past the last byte fed: WAL goes on beyond what was read. */
  | 'incomplete-record'
  /** A zero record header, then only zeros: WAL ends there (a .partial padded with zeros). */
  | 'zeros';

export interface RecordSummary {
  records: number;
  switches: number;
  /** Bytes fed. */
  bytes: number;
  /** Pages whose header was checked. */
  pages: number;
  firstRecord: bigint | null;
  lastRecord: bigint | null;
  /** Where the record after the last complete one starts (xlogreader's EndRecPtr). */
  end: bigint | null;
  endKind: WalEnd;
  problems: RecordProblem[];
  /** Problems found beyond maxProblems. */
  problemsNotKept: number;
  /** Records cut short and overwritten (XLP_FIRST_IS_OVERWRITE_CONTRECORD): not a problem. */
  overwritten: bigint[];
}

type Mode =
  /** Reading records. */
  | 'records'
  /** After an XLOG_SWITCH: zeros to the end of the segment. */
  | 'switch-zeros'
  /** After a zero record header: zeros from here on. */
  | 'ended'
  /** After a problem (or at the start): waiting for a page header to find the next record by. */
  | 'lost';

const align8 = (n: number): number => n + ((8 - (n % 8)) % 8);
const u32 = (b: Uint8Array, i: number): number => (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24)) >>> 0;
const lsnText = (n: number): string => formatLsn(BigInt(n));

/**
 * Decodes WAL fed as segments: beginSegment, write (any number of pieces), endSegment, and
 * summary at the end. Segments must come in the order recovery reads them (for each segment
 * number, the file of the timeline the history gives it).
 */
export class WalRecordDecoder {
  private readonly segSize: number;
  private blockSize: number;
  private readonly blockSizeGiven: boolean;
  private systemId: bigint | undefined;
  private magic: number | undefined;
  private readonly history: { tli: number; entries: readonly TimelineHistoryEntry[] } | undefined;
  private readonly switchPoints: number[];
  private readonly onRecord: ((r: WalRecordHeader) => void) | undefined;
  private readonly maxProblems: number;

  // where we are
  private segNo = -1;
  private segName = '';
  private fileTli = 0;
  private prevFileTli = 0;
  private segBase = 0;
  private segOff = 0;
  private inSegment = false;
  private lastSegmentShort = false;

  // the page header being read
  private readonly pageHdr = new Uint8Array(LONG_PAGE_HEADER_SIZE);
  private pageHdrSize = 0;
  private lastPageTli = 0;

  // the record being read
  private mode: Mode = 'lost';
  private inRecord = false;
  /** A continuation whose start was not read (at the start, or after a problem): skipped unchecked. */
  private blind = false;
  private readonly recHdr = new Uint8Array(XLOG_RECORD_HEADER_SIZE);
  /** The chunk being written, as a DataView (EMPTY_VIEW between writes: no chunk kept). */
  private view: DataView = EMPTY_VIEW;
  private recHdrGot = 0;
  private recStart = 0;
  private recTotLen = 0;
  private recGot = 0;
  private crc = 0;
  /** Padding bytes to skip before the next record (MAXALIGN). */
  private pad = 0;
  /** Start of the last record read whole (xl_prev of the next); -1 when unknown. */
  private prevRecord = -1;
  private endedAt = -1;
  /** Kept as numbers while decoding (exact below 2^53), made LSNs in summary(). */
  private firstRecord = -1;
  private lastRecord = -1;
  private end = -1;
  /** The segment in which a bad page header was reported while lost. */
  private quietSegment = -1;
  /** The segment in which a non-zero byte after an XLOG_SWITCH was reported. */
  private switchReported = -1;
  private endedReported = false;

  private readonly s: RecordSummary = {
    records: 0,
    switches: 0,
    bytes: 0,
    pages: 0,
    firstRecord: null,
    lastRecord: null,
    end: null,
    endKind: 'empty',
    problems: [],
    problemsNotKept: 0,
    overwritten: [],
  };

  constructor(o: RecordDecoderOptions) {
    this.segSize = o.segSize;
    this.blockSize = o.blockSize ?? 8192;
    this.blockSizeGiven = o.blockSize !== undefined;
    this.systemId = o.systemId;
    this.magic = o.magic;
    this.history = o.history;
    this.switchPoints = (o.history?.entries ?? []).map((e) => Number(e.end));
    this.onRecord = o.onRecord;
    this.maxProblems = o.maxProblems ?? 100;
  }

  /** A problem at `lsn`: named by the file that holds that byte (this segment's, or the one before). */
  private problem(lsn: number, message: string): void {
    if (this.s.problems.length >= this.maxProblems) {
      this.s.problemsNotKept++;
      return;
    }
    const segNo = Math.floor(lsn / this.segSize);
    const tli = segNo === this.segNo ? this.fileTli : this.prevFileTli;
    this.s.problems.push({ segment: walFileName(tli, BigInt(segNo), this.segSize), offset: lsn - segNo * this.segSize, lsn: BigInt(lsn), message });
  }

  /** Lose the thread: the next record is found again from a page header. */
  private lose(): void {
    this.mode = 'lost';
    this.inRecord = false;
    this.blind = false;
    this.pad = 0;
    this.prevRecord = -1;
  }

  /** The next segment: `segNo` read from the file of timeline `fileTli`. */
  beginSegment(segNo: bigint, fileTli: number): void {
    if (this.inSegment) this.endSegment();
    const previous = this.segNo;
    const prevName = this.segName;
    this.prevFileTli = this.fileTli;
    this.segNo = Number(segNo);
    this.fileTli = fileTli;
    this.segName = walFileName(fileTli, segNo, this.segSize);
    this.segBase = this.segNo * this.segSize;
    this.segOff = 0;
    this.inSegment = true;
    if (previous < 0) return;
    if (this.segNo !== previous + 1) {
      this.problem(this.segBase, `segment ${this.segName} follows ${prevName}: the segments between are missing`);
      this.lose();
    } else if (this.lastSegmentShort) {
      this.problem(this.segBase, `segment ${this.segName} follows ${prevName}, which was not complete`);
      this.lose();
    } else if (this.mode === 'ended') {
      if (!this.endedReported) this.problem(this.segBase, `WAL ended at ${lsnText(this.endedAt)} (a zero record header), but segment ${this.segName} follows`);
      this.lose();
    }
  }

  /**
   * A segment that cannot be fed (unreadable: its problem is reported elsewhere): its records go
   * unchecked, and the next segment is read from its first page header on, without a gap reported.
   */
  skipSegment(segNo: bigint, fileTli: number): void {
    if (this.inSegment) this.endSegment();
    this.prevFileTli = this.fileTli;
    this.segNo = Number(segNo);
    this.fileTli = fileTli;
    this.segName = walFileName(fileTli, segNo, this.segSize);
    this.segBase = this.segNo * this.segSize;
    this.segOff = this.segSize;
    this.lastSegmentShort = false;
    this.lose();
  }

  /** The end of the current segment (a segment fed short is allowed only as the last one). */
  endSegment(): void {
    if (!this.inSegment) return;
    this.inSegment = false;
    this.lastSegmentShort = this.segOff < this.segSize;
    if (this.mode === 'switch-zeros' && !this.lastSegmentShort) this.mode = 'records';
  }

  /** The next bytes of the current segment. */
  write(chunk: Uint8Array): void {
    if (!this.inSegment) throw new Error('WalRecordDecoder.write outside a segment');
    this.view = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    try {
      this.writeChunk(chunk);
    } finally {
      this.view = EMPTY_VIEW;
    }
  }

  private writeChunk(chunk: Uint8Array): void {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.segOff >= this.segSize) {
        this.problem(this.segBase + this.segSize - 1, `more than ${this.segSize} bytes fed for one segment`);
        this.s.bytes += n - i;
        return;
      }
      const pageOff = this.segOff % this.blockSize;
      const pageLeft = this.blockSize - pageOff;
      const take = Math.min(pageLeft, n - i);
      if (this.mode === 'switch-zeros' || this.mode === 'ended') {
        // No page header is read on this page (its bytes are zeros too): were a non-zero byte to
        // lose the thread in its first bytes, the rest of the page is skipped, not taken as one.
        if (pageOff === 0) this.pageHdrSize = 0;
        this.expectZeros(chunk, i, i + take, this.segOff);
      } else if (pageOff === 0 || pageOff < this.pageHdrSize) {
        const used = this.readPageHeader(chunk, i, pageOff, take);
        this.segOff += used;
        this.s.bytes += used;
        i += used;
        continue;
      } else {
        this.body(chunk, i, i + take);
      }
      this.segOff += take;
      this.s.bytes += take;
      i += take;
    }
  }

  /** Every byte must be zero (after an XLOG_SWITCH, or after the end of WAL). */
  private expectZeros(b: Uint8Array, from: number, to: number, segOffAtFrom: number): void {
    // four bytes at a time (b is this.view) up to the first four that are not all zero
    const v = this.view;
    let j = from;
    while (to - j >= 4 && v.getInt32(j, true) === 0) j += 4;
    for (; j < to; j++) {
      if (b[j] === 0) continue;
      const off = segOffAtFrom + (j - from);
      if (this.mode === 'switch-zeros') {
        // Reported once; the segment's end is still where the next record starts.
        if (this.switchReported !== this.segNo)
          this.problem(this.segBase + off, `non-zero byte 0x${b[j]!.toString(16)} in the zeros after the XLOG_SWITCH record at ${lsnText(this.prevRecord)}, which must reach the end of the segment`);
        this.switchReported = this.segNo;
      } else {
        if (!this.endedReported) this.problem(this.segBase + off, `WAL ended at ${lsnText(this.endedAt)} (a zero record header), but non-zero bytes follow`);
        this.endedReported = true;
        this.lose();
      }
      return;
    }
  }

  /** Gather the page header; once whole, check it and set up the page. Returns bytes used. */
  private readPageHeader(b: Uint8Array, i: number, pageOff: number, take: number): number {
    if (pageOff === 0) this.pageHdrSize = this.segOff === 0 ? LONG_PAGE_HEADER_SIZE : SHORT_PAGE_HEADER_SIZE;
    const want = this.pageHdrSize - pageOff;
    const used = Math.min(want, take);
    this.pageHdr.set(b.subarray(i, i + used), pageOff);
    if (used === want) this.checkPageHeader();
    return used;
  }

  private checkPageHeader(): void {
    const h = this.pageHdr;
    // Called before segOff moves past the header's last piece: the page starts at or before it.
    const off = this.segOff - (this.segOff % this.blockSize);
    const pageAt = this.segBase + off;
    this.s.pages++;
    const magic = h[0]! | (h[1]! << 8);
    const info = h[2]! | (h[3]! << 8);
    const tli = u32(h, 4);
    const addr = u32(h, 8) + u32(h, 12) * TWO32;
    const remLen = u32(h, 16);
    const bad = (what: string): void => {
      // Once lost, one bad header a segment is enough (bytes shifted put every header after it wrong).
      if (this.mode !== 'lost' || this.quietSegment !== this.segNo) this.problem(pageAt, `page header: ${what}`);
      this.quietSegment = this.segNo;
      this.lose();
      // the rest of the page is skipped: a header that does not fit says nothing of the page
    };
    const wasLost = this.mode === 'lost';
    if (magic === 0 && info === 0 && tli === 0 && addr === 0 && remLen === 0) {
      // A page never written: WAL ends here (in the middle of a record, if one was in progress).
      this.endOfWal(this.inRecord ? this.recStart : pageAt);
      return;
    }
    if (this.magic === undefined) {
      if (!KNOWN_MAGICS.has(magic)) return bad(`magic 0x${magic.toString(16)} is not the magic of a PostgreSQL version this walstream knows`);
      this.magic = magic;
    } else if (magic !== this.magic) return bad(`magic 0x${magic.toString(16)} where 0x${this.magic.toString(16)} was expected`);
    if ((info & ~XLP_ALL_FLAGS) !== 0) return bad(`invalid info bits 0x${info.toString(16)}`);
    if (off === 0) {
      if ((info & XLP_LONG_HEADER) === 0) return bad('the first page of a segment lacks the long header');
      const sysid = BigInt(u32(h, 24)) + (BigInt(u32(h, 28)) << 32n);
      const segSize = u32(h, 32);
      const blockSize = u32(h, 36);
      if (this.systemId === undefined) this.systemId = sysid;
      else if (sysid !== this.systemId) return bad(`WAL of database system ${sysid}, the WAL before is of system ${this.systemId}`);
      if (segSize !== this.segSize) return bad(`segment size ${segSize} where ${this.segSize} was expected`);
      if (blockSize !== this.blockSize) {
        if (this.s.pages === 1 && !this.blockSizeGiven && blockSize >= 1024 && blockSize <= 65536 && (blockSize & (blockSize - 1)) === 0 && this.segSize % blockSize === 0) this.blockSize = blockSize;
        else return bad(`block size ${blockSize} where ${this.blockSize} was expected`);
      }
    } else if ((info & XLP_LONG_HEADER) !== 0) return bad('a long header on a page that does not start a segment');
    if (addr !== pageAt) return bad(`page address ${lsnText(addr)} where ${lsnText(pageAt)} was expected (bytes lost or shifted?)`);
    if (tli === 0 || tli > this.fileTli) return bad(`timeline ${tli} in a file of timeline ${this.fileTli}`);
    if (tli < this.lastPageTli) return bad(`timeline ${tli} after a page of timeline ${this.lastPageTli}: timelines only go up`);
    if (this.history !== undefined) {
      const want = timelineOfPoint(this.history.entries as TimelineHistoryEntry[], this.history.tli, BigInt(pageAt));
      if (tli !== want) return bad(`timeline ${tli}, but the history of timeline ${this.history.tli} puts ${lsnText(pageAt)} on timeline ${want}`);
    }
    this.lastPageTli = tli;
    // What the page's first bytes are.
    if (this.inRecord) {
      const left = this.recTotLen - this.recGot;
      if ((info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) !== 0 && !this.blind) {
        // The record was cut short (a crash, or a promotion with the end lost): the server wrote an
        // XLOG_OVERWRITE_CONTRECORD here and went on; its xl_prev is the record before.
        this.s.overwritten.push(BigInt(this.recStart));
        this.inRecord = false;
        this.pad = 0;
        return;
      }
      if ((info & XLP_FIRST_IS_CONTRECORD) === 0 || remLen !== left) {
        if (this.blind) {
          this.lose();
          return this.resync(info, remLen);
        }
        const what = (info & XLP_FIRST_IS_CONTRECORD) === 0 ? 'there is no contrecord flag' : `xlp_rem_len ${remLen}`;
        this.problem(this.recStart, `record at ${lsnText(this.recStart)} continues on page ${lsnText(pageAt)} with ${left} bytes left, but ${what} (bytes lost or shifted?)`);
        this.lose();
        return this.resync(info, remLen);
      }
      return;
    }
    if (this.mode === 'lost' || wasLost) return this.resync(info, remLen);
    if ((info & XLP_FIRST_IS_CONTRECORD) !== 0 && this.pad === 0) {
      this.problem(pageAt, `the page says a record continues on it (contrecord flag, xlp_rem_len ${remLen}), but no record was left unfinished on the page before`);
      this.lose();
      return this.resync(info, remLen);
    }
    // padding left to skip ends with the page before: the next record starts after this header
    this.pad = 0;
  }

  /** Find the next record from this page: skip the continuation of a record not read from its start. */
  private resync(info: number, remLen: number): void {
    this.mode = 'records';
    this.pad = 0;
    if ((info & XLP_FIRST_IS_CONTRECORD) !== 0 && remLen > 0) {
      this.inRecord = true;
      this.blind = true;
      this.recTotLen = remLen;
      this.recGot = 0;
      this.recHdrGot = XLOG_RECORD_HEADER_SIZE;
    }
  }

  /** Bytes of a page after its header. */
  private body(b: Uint8Array, from: number, to: number): void {
    let i = from;
    while (i < to) {
      if (this.mode !== 'records') {
        if (this.mode === 'lost') return; // the rest of the page: wait for the next header
        this.expectZeros(b, i, to, this.segOff + (i - from));
        return;
      }
      if (this.pad > 0) {
        const k = Math.min(this.pad, to - i);
        this.pad -= k;
        i += k;
        continue;
      }
      if (this.inRecord) {
        i = this.continueRecord(b, i, to, from);
        continue;
      }
      if (this.prevRecord >= 0 && this.firstRecord >= 0) {
        const j = this.wholeRecords(b, i, to, from);
        if (j !== i) {
          i = j;
          continue;
        }
      }
      // A record starts here.
      const at = this.segBase + this.segOff + (i - from);
      if (to - i >= XLOG_RECORD_HEADER_SIZE) {
        // Fast path: the whole header is on this page.
        const totLen = u32(b, i);
        this.recStart = at;
        if (!this.checkHeader(b, i, at)) continue;
        this.recTotLen = totLen;
        this.blind = false;
        if (totLen <= to - i) {
          // The whole record is here: its header is read where it lies, not copied.
          this.crc = crc32cRangeView(this.view, i + XLOG_RECORD_HEADER_SIZE, i + totLen, 0);
          this.recGot = totLen;
          this.finishRecord(b, i, i + totLen - from + this.segOff);
          i += totLen;
          continue;
        }
        for (let k = 0; k < XLOG_RECORD_HEADER_SIZE; k++) this.recHdr[k] = b[i + k]!;
        this.recHdrGot = XLOG_RECORD_HEADER_SIZE;
        this.inRecord = true;
        this.crc = crc32cRangeView(this.view, i + XLOG_RECORD_HEADER_SIZE, to, 0);
        this.recGot = to - i;
        i = to;
        continue;
      }
      this.recStart = at;
      this.inRecord = true;
      this.blind = false;
      this.recHdrGot = 0;
      this.recGot = 0;
      this.recTotLen = 0;
      this.crc = 0;
    }
  }

  /**
   * The common case, read where it lies: records wholly in b[i, to) (b being this.view) with a
   * valid header, xl_prev the record before, the right CRC, no XLOG_SWITCH, across no switch point
   * of the history. Does for each what the general path does for it, and returns where the first
   * record it leaves to the general path starts (that path reads it from its first byte again, and
   * names what is wrong with it), or where its padding ends (this.pad holds what lies past `to`).
   * None is in progress when it returns: the fields of the record in progress are not set.
   */
  private wholeRecords(b: Uint8Array, i: number, to: number, from: number): number {
    const v = this.view;
    /** The LSN of b[0]. */
    const base = this.segBase + this.segOff - from;
    const customOk = this.magic !== undefined && this.magic >= 0xd110;
    const switchPoints = this.switchPoints;
    const onRecord = this.onRecord;
    let prevRecord = this.prevRecord;
    let records = 0;
    let next = -1;
    while (to - i >= XLOG_RECORD_HEADER_SIZE) {
      const totLen = v.getUint32(i, true);
      // (at most a page: never above MAX_RECORD_LENGTH)
      if (totLen < XLOG_RECORD_HEADER_SIZE || totLen > to - i) break;
      const rmid = b[i + 17]!;
      if (rmid > RM_MAX_BUILTIN_ID && !(customOk && rmid >= RM_MIN_CUSTOM_ID)) break;
      const info = b[i + 16]!;
      if (rmid === RM_XLOG_ID && (info & XLR_RMGR_INFO_MASK) === XLOG_SWITCH) break;
      const start = base + i;
      if (v.getUint32(i + 8, true) + v.getUint32(i + 12, true) * TWO32 !== prevRecord) break;
      const endLsn = start + totLen;
      let across = false;
      for (let k = 0; k < switchPoints.length; k++) {
        const e = switchPoints[k]!;
        if (start < e && endLsn > e) across = true;
      }
      if (across) break;
      const want = v.getUint32(i + CRC_OFFSET, true);
      const crc =
        totLen - XLOG_RECORD_HEADER_SIZE >= NATIVE_CRC_MIN_BYTES
          ? crc32cJsView(v, i, i + CRC_OFFSET, crc32cRangeView(v, i + XLOG_RECORD_HEADER_SIZE, i + totLen, 0))
          : crc32cJsView2(v, i + XLOG_RECORD_HEADER_SIZE, i + totLen, i, i + CRC_OFFSET);
      if (crc !== want) break;
      prevRecord = start;
      records++;
      next = align8(endLsn);
      if (onRecord) {
        // the state the general path has when it calls onRecord
        this.s.records += records;
        records = 0;
        this.prevRecord = this.lastRecord = start;
        this.pad = next - endLsn;
        onRecord({
          lsn: BigInt(start),
          totLen,
          xid: v.getUint32(i + 4, true),
          prev: BigInt(v.getUint32(i + 8, true)) + (BigInt(v.getUint32(i + 12, true)) << 32n),
          info,
          rmid,
          crc: want,
        });
        this.pad = 0;
      }
      if (next - base > to) {
        i = to;
        this.pad = next - base - to;
        break;
      }
      i = next - base;
    }
    if (next >= 0) {
      this.s.records += records;
      this.prevRecord = this.lastRecord = prevRecord;
      this.end = next;
    }
    return i;
  }

  /** Bytes of the record in progress; returns where its bytes on this piece end. */
  private continueRecord(b: Uint8Array, i: number, to: number, from: number): number {
    if (this.recHdrGot < XLOG_RECORD_HEADER_SIZE) {
      const k = Math.min(XLOG_RECORD_HEADER_SIZE - this.recHdrGot, to - i);
      const before = this.recHdrGot;
      this.recHdr.set(b.subarray(i, i + k), this.recHdrGot);
      this.recHdrGot += k;
      this.recGot += k;
      if (before < 4 && this.recHdrGot >= 4) {
        const totLen = u32(this.recHdr, 0);
        if (totLen === 0) {
          // the rest of this header, and all after it, must be zeros
          this.endOfWal(this.recStart);
          return i;
        }
        if (!this.checkTotLen(totLen, this.recStart)) return to;
        this.recTotLen = totLen;
      }
      if (this.recHdrGot === XLOG_RECORD_HEADER_SIZE) {
        if (!this.checkHeader(this.recHdr, 0, this.recStart)) return to;
        this.crc = 0;
      }
      i += k;
      if (this.recGot === this.recTotLen && this.recHdrGot === XLOG_RECORD_HEADER_SIZE) this.finishRecord(this.recHdr, 0, i - from + this.segOff);
      return i;
    }
    const k = Math.min(this.recTotLen - this.recGot, to - i);
    if (!this.blind) this.crc = crc32cRangeView(this.view, i, i + k, this.crc);
    this.recGot += k;
    i += k;
    if (this.recGot === this.recTotLen) {
      if (this.blind) {
        this.inRecord = false;
        this.blind = false;
        this.pad = align8(i - from + this.segOff) - (i - from + this.segOff);
      } else this.finishRecord(this.recHdr, 0, i - from + this.segOff);
    }
    return i;
  }

  private endOfWal(at: number): void {
    this.mode = 'ended';
    this.endedAt = at;
    this.inRecord = false;
  }

  /** ValidXLogRecordHeader. False (with the problem reported) when the header is not valid. */
  private recordFails(at: number, what: string): false {
    this.problem(at, `record at ${lsnText(at)}: ${what}`);
    this.lose();
    return false;
  }

  /** The first check of a header: its length (xl_tot_len). A zero one is where WAL ends. */
  private checkTotLen(totLen: number, at: number): boolean {
    if (totLen === 0) {
      this.endOfWal(at);
      return false;
    }
    if (totLen < XLOG_RECORD_HEADER_SIZE) return this.recordFails(at, `invalid record length ${totLen} (at least ${XLOG_RECORD_HEADER_SIZE})`);
    if (totLen > MAX_RECORD_LENGTH) return this.recordFails(at, `record length ${totLen} is too long`);
    return true;
  }

  /** The whole header at h[j, j + 24), of the record at `at`. */
  private checkHeader(h: Uint8Array, j: number, at: number): boolean {
    if (!this.checkTotLen(u32(h, j), at)) return false;
    const rmid = h[j + 17]!;
    const customOk = this.magic !== undefined && this.magic >= 0xd110;
    if (rmid > RM_MAX_BUILTIN_ID && !(customOk && rmid >= RM_MIN_CUSTOM_ID)) return this.recordFails(at, `invalid resource manager ID ${rmid}`);
    const prev = u32(h, j + 8) + u32(h, j + 12) * TWO32;
    if (this.prevRecord >= 0) {
      if (prev !== this.prevRecord) return this.recordFails(at, `xl_prev ${lsnText(prev)}, but the previous record starts at ${lsnText(this.prevRecord)} (a record lost or bytes shifted?)`);
    } else if (prev >= at) return this.recordFails(at, `xl_prev ${lsnText(prev)} does not point back`);
    return true;
  }

  /**
   * The record's last byte was read: its CRC (the header at h[j, j + 24) last), then what follows
   * it. `endOff` is its end in the segment.
   */
  private finishRecord(h: Uint8Array, j: number, endOff: number): void {
    const crc = crc32cJsRange(h, j, j + CRC_OFFSET, this.crc);
    const want = u32(h, j + CRC_OFFSET);
    const rmid = h[j + 17]!;
    const info = h[j + 16]!;
    const start = this.recStart;
    const endLsn = this.segBase + endOff;
    this.inRecord = false;
    const next = align8(endLsn);
    this.pad = next - endLsn;
    if (crc !== want) {
      this.problem(
        start,
        `record at ${lsnText(start)} (${this.recTotLen} bytes, resource manager ${rmid}): CRC-32C 0x${crc.toString(16).padStart(8, '0')} where its header says 0x${want.toString(16).padStart(8, '0')}`,
      );
    }
    for (let k = 0; k < this.switchPoints.length; k++) {
      const e = this.switchPoints[k]!;
      if (start < e && endLsn > e) {
        this.problem(start, `record at ${lsnText(start)} runs to ${lsnText(endLsn)}, across the switch point ${lsnText(e)} of the timeline history`);
      }
    }
    this.prevRecord = start;
    if (crc === want) {
      this.s.records++;
      if (this.firstRecord < 0) this.firstRecord = start;
      this.lastRecord = start;
      if (this.onRecord) {
        this.onRecord({
          lsn: BigInt(start),
          totLen: this.recTotLen,
          xid: u32(h, j + 4),
          prev: BigInt(u32(h, j + 8)) + (BigInt(u32(h, j + 12)) << 32n),
          info,
          rmid,
          crc: want,
        });
      }
    }
    if (rmid === RM_XLOG_ID && (info & XLR_RMGR_INFO_MASK) === XLOG_SWITCH) {
      this.s.switches++;
      this.mode = 'switch-zeros';
      this.pad = 0;
      this.end = this.segBase + this.segSize;
      if (endOff >= this.segSize) this.mode = 'records';
    } else {
      this.end = next;
    }
  }

  /** Problems found so far, kept or not. */
  get problemCount(): number {
    return this.s.problems.length + this.s.problemsNotKept;
  }

  /** The first problem found, if any. */
  get firstProblem(): RecordProblem | undefined {
    return this.s.problems[0];
  }

  /**
   * The LSN (as a number) up to which everything fed is accounted for: the start of the record in
   * progress, whose CRC is not checked yet, else the end of what was fed. A continuation skipped
   * unchecked (the stream began inside a record) counts as accounted for. Meaningful while no
   * problem was found.
   */
  get checkedTo(): number {
    const fed = this.segBase + this.segOff;
    return this.inRecord && !this.blind ? Math.min(this.recStart, fed) : fed;
  }

  /** What was read, how WAL ends, and every problem found. */
  summary(): RecordSummary {
    if (this.inSegment) this.endSegment();
    const s = { ...this.s, problems: [...this.s.problems], overwritten: [...this.s.overwritten] };
    s.firstRecord = this.firstRecord >= 0 ? BigInt(this.firstRecord) : null;
    s.lastRecord = this.lastRecord >= 0 ? BigInt(this.lastRecord) : null;
    s.end = this.end >= 0 ? BigInt(this.end) : null;
    if (s.bytes === 0) s.endKind = 'empty';
    else if (this.mode === 'ended') s.endKind = 'zeros';
    else if (this.inRecord) s.endKind = 'incomplete-record';
    else s.endKind = 'record-boundary';
    return s;
  }
}
