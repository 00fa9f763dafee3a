// WAL page header checks (xlog_internal.h XLogPageHeaderData / XLogLongPageHeaderData, and the
// checks of xlogreader.c XLogReaderValidatePageHeader). Headers are in the server's native byte
// order; every platform PostgreSQL ships on today is little-endian, which is what we read.
// Pure: Buffer in, verdict out.
import { formatLsn } from './lsn.js';

export const XLP_FIRST_IS_CONTRECORD = 0x0001;
export const XLP_LONG_HEADER = 0x0002;
export const XLP_BKP_REMOVABLE = 0x0004;
export const XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x0008;
const XLP_ALL_FLAGS = 0x000f;

export const SHORT_PAGE_HEADER_SIZE = 24;
export const LONG_PAGE_HEADER_SIZE = 40;

/** XLOG_PAGE_MAGIC by server major version. */
export const PAGE_MAGIC_BY_MAJOR: Readonly<Record<number, number>> = {
  13: 0xd106,
  14: 0xd10d,
  15: 0xd110,
  16: 0xd113,
  17: 0xd116,
  18: 0xd118,
};

export function magicForServerVersion(serverVersionNum: number): number | undefined {
  return PAGE_MAGIC_BY_MAJOR[Math.floor(serverVersionNum / 10000)];
}

export interface PageHeader {
  magic: number;
  info: number;
  tli: number;
  pageAddr: bigint;
  remLen: number;
}

export interface LongPageHeader extends PageHeader {
  systemId: bigint;
  segSize: number;
  blockSize: number;
}

export function readPageHeader(buf: Buffer, offset = 0): PageHeader {
  return {
    magic: buf.readUInt16LE(offset),
    info: buf.readUInt16LE(offset + 2),
    tli: buf.readUInt32LE(offset + 4),
    pageAddr: buf.readBigUInt64LE(offset + 8),
    remLen: buf.readUInt32LE(offset + 16),
  };
}

export function readLongPageHeader(buf: Buffer): LongPageHeader {
  if (buf.length < LONG_PAGE_HEADER_SIZE) throw new Error('buffer too short for a long WAL page header');
  return {
    ...readPageHeader(buf, 0),
    systemId: buf.readBigUInt64LE(24),
    segSize: buf.readUInt32LE(32),
    blockSize: buf.readUInt32LE(36),
  };
}

export interface SegmentExpectation {
  segNo: bigint;
  segSize: number;
  /** Timeline in the file name: pages may carry this or an ancestor timeline. */
  tli: number;
  blockSize: number;
  /** Expected system identifier, when known. */
  systemId?: bigint;
  /** Expected XLOG_PAGE_MAGIC, when the server version is known. */
  magic?: number;
}

export interface SegmentCheck {
  ok: boolean;
  problems: string[];
  /** Page magic was not one of the known values (a newer server): reported, not fatal. */
  unknownMagic?: number;
  /** Number of pages examined (pages of all zeros past the written end are not examined). */
  pages: number;
}

function isAllZero(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

const KNOWN_MAGICS = new Set(Object.values(PAGE_MAGIC_BY_MAJOR));

/**
 * Check the headers of the pages in `data`, which holds the segment from its first byte up to
 * `validLength` (the rest, if any, is not looked at). Every page that starts before
 * `validLength` must carry a proper header: right magic, address matching its place in this
 * segment, timeline not above the file's.
 */
export function checkSegmentPages(data: Buffer, validLength: number, exp: SegmentExpectation): SegmentCheck {
  const problems: string[] = [];
  let unknownMagic: number | undefined;
  const segStart = exp.segNo * BigInt(exp.segSize);
  if (validLength < LONG_PAGE_HEADER_SIZE) {
    return { ok: validLength === 0, problems: validLength === 0 ? [] : ['segment shorter than its long page header'], pages: 0 };
  }
  const long = readLongPageHeader(data);
  const magicOk = (m: number): boolean => (exp.magic !== undefined ? m === exp.magic : KNOWN_MAGICS.has(m));
  if (!magicOk(long.magic)) {
    if (exp.magic === undefined) unknownMagic = long.magic;
    else problems.push(`page magic 0x${long.magic.toString(16)} where 0x${exp.magic.toString(16)} was expected`);
  }
  if ((long.info & XLP_LONG_HEADER) === 0) problems.push('first page lacks the long header flag');
  if (exp.systemId !== undefined && long.systemId !== exp.systemId) {
    problems.push(`system identifier ${long.systemId} differs from the server's ${exp.systemId}`);
  }
  if (long.segSize !== exp.segSize) problems.push(`segment size ${long.segSize} in header, ${exp.segSize} expected`);
  if (long.blockSize !== exp.blockSize) problems.push(`block size ${long.blockSize} in header, ${exp.blockSize} expected`);
  let pages = 0;
  let zeroTail = false;
  for (let off = 0; off < validLength && off + SHORT_PAGE_HEADER_SIZE <= data.length; off += exp.blockSize) {
    const end = Math.min(off + exp.blockSize, validLength);
    const zero = off > 0 && isAllZero(data, off, Math.min(off + SHORT_PAGE_HEADER_SIZE, end));
    // After an XLOG_SWITCH record the rest of the segment is zero-filled: no headers from there on.
    if (zero) {
      zeroTail = true;
      continue;
    }
    if (zeroTail) {
      problems.push(`page at offset ${off} has a header after zero-filled pages`);
      break;
    }
    const h = off === 0 ? long : readPageHeader(data, off);
    pages++;
    if (off > 0 && h.magic !== long.magic) {
      problems.push(`page at offset ${off}: magic 0x${h.magic.toString(16)} differs from the first page's`);
      break;
    }
    const want = segStart + BigInt(off);
    if (h.pageAddr !== want) {
      problems.push(`page at offset ${off}: address ${formatLsn(h.pageAddr)} where ${formatLsn(want)} was expected`);
      break;
    }
    if (h.tli > exp.tli || h.tli === 0) {
      problems.push(`page at offset ${off}: timeline ${h.tli} is not an ancestor of file timeline ${exp.tli}`);
      break;
    }
    if ((h.info & ~XLP_ALL_FLAGS) !== 0) {
      problems.push(`page at offset ${off}: unknown info flags 0x${h.info.toString(16)}`);
      break;
    }
    if (off > 0 && (h.info & XLP_LONG_HEADER) !== 0) {
      problems.push(`page at offset ${off}: long header flag on a page that is not first`);
      break;
    }
  }
  return { ok: problems.length === 0, problems, unknownMagic, pages };
}

/**
 * Checks page headers as WAL arrives, so a segment is known good before it is given its final
 * name without reading it back. Feed it each piece of the segment in order; it keeps the few
 * header bytes that may straddle two pieces.
 */
export class IncrementalPageChecker {
  private readonly head = Buffer.alloc(LONG_PAGE_HEADER_SIZE);
  private longSeen = false;
  private magic: number | undefined;
  private pending: Buffer | undefined;
  private pendingOffset = 0;
  private zeroTail = false;
  unknownMagic: number | undefined;
  /** The segment's start as two 32-bit halves: page addresses are compared without BigInt. */
  private readonly segStartLo: number;
  private readonly segStartHi: number;

  constructor(private readonly exp: SegmentExpectation) {
    const start = exp.segNo * BigInt(exp.segSize);
    this.segStartLo = Number(start & 0xffffffffn);
    this.segStartHi = Number(start >> 32n);
  }

  /** Returns a problem description, or undefined when every header seen so far is right. */
  feed(offset: number, data: Buffer): string | undefined {
    let buf = data;
    let base = offset;
    if (this.pending) {
      if (this.pendingOffset + this.pending.length !== offset) return 'page checker fed out of order';
      buf = Buffer.concat([this.pending, data]);
      base = this.pendingOffset;
      this.pending = undefined;
    }
    const bs = this.exp.blockSize;
    let page = Math.ceil(base / bs) * bs;
    for (; page < base + buf.length; page += bs) {
      const need = page === 0 ? LONG_PAGE_HEADER_SIZE : SHORT_PAGE_HEADER_SIZE;
      const rel = page - base;
      if (rel + need > buf.length) {
        this.pending = Buffer.from(buf.subarray(rel));
        this.pendingOffset = page;
        return undefined;
      }
      const problem = this.checkPage(page, buf.subarray(rel, rel + need));
      if (problem) return problem;
    }
    return undefined;
  }

  /**
   * The common case, cheaply: a short header that is right (known magic, no zero header, the
   * address of this page, a timeline not above the file's, only known flags and no long-header
   * flag). Anything else goes to checkPage, which says what is wrong.
   */
  private pageIsRight(offset: number, hdr: Buffer): boolean {
    if (offset === 0 || this.magic === undefined || this.zeroTail) return false;
    const info = hdr.readUInt16LE(2);
    const tli = hdr.readUInt32LE(4);
    // The segment's low half plus an offset inside it never carries (segment sizes divide 2^32).
    return (
      hdr.readUInt16LE(0) === this.magic &&
      hdr.readUInt32LE(8) === this.segStartLo + offset &&
      hdr.readUInt32LE(12) === this.segStartHi &&
      tli !== 0 &&
      tli <= this.exp.tli &&
      (info & ~XLP_ALL_FLAGS & 0xffff) === 0 &&
      (info & XLP_LONG_HEADER) === 0
    );
  }

  private checkPage(offset: number, hdr: Buffer): string | undefined {
    if (this.pageIsRight(offset, hdr)) return undefined;
    const e = this.exp;
    if (offset === 0) {
      hdr.copy(this.head, 0, 0, LONG_PAGE_HEADER_SIZE);
      const chk = checkSegmentPages(this.head, LONG_PAGE_HEADER_SIZE, e);
      this.longSeen = true;
      this.magic = readPageHeader(hdr).magic;
      this.unknownMagic = chk.unknownMagic;
      return chk.ok ? undefined : chk.problems.join('; ');
    }
    // After an XLOG_SWITCH record the rest of the segment is zero-filled: no headers from there on.
    if (isAllZero(hdr, 0, SHORT_PAGE_HEADER_SIZE)) {
      this.zeroTail = true;
      return undefined;
    }
    if (this.zeroTail) return `page at offset ${offset} has a header after zero-filled pages`;
    const h = readPageHeader(hdr);
    if (this.magic === undefined) {
      const known = e.magic !== undefined ? h.magic === e.magic : KNOWN_MAGICS.has(h.magic);
      if (!known && e.magic !== undefined) return `page at offset ${offset}: magic 0x${h.magic.toString(16)} where 0x${e.magic.toString(16)} was expected`;
      this.magic = h.magic;
    } else if (h.magic !== this.magic) {
      return `page at offset ${offset}: magic 0x${h.magic.toString(16)} differs from 0x${this.magic.toString(16)}`;
    }
    const want = e.segNo * BigInt(e.segSize) + BigInt(offset);
    if (h.pageAddr !== want) return `page at offset ${offset}: address ${formatLsn(h.pageAddr)} where ${formatLsn(want)} was expected`;
    if (h.tli === 0 || h.tli > e.tli) return `page at offset ${offset}: timeline ${h.tli} is not an ancestor of file timeline ${e.tli}`;
    if ((h.info & ~XLP_ALL_FLAGS) !== 0) return `page at offset ${offset}: unknown info flags 0x${h.info.toString(16)}`;
    if ((h.info & XLP_LONG_HEADER) !== 0) return `page at offset ${offset}: long header flag on a page that is not first`;
    return undefined;
  }

  get sawLongHeader(): boolean {
    return this.longSeen;
  }
}
