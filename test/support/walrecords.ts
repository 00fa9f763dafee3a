// Synthetic WAL record streams for the decoder's tests (not a test file): records laid out as
// xlog.c CopyXLogRecordToWAL lays them out (MAXALIGNed starts, page headers with
// XLP_FIRST_IS_CONTRECORD and xlp_rem_len when a record continues, the long header on a segment's
// first page, zeros after an XLOG_SWITCH to the segment's end), each with its xl_prev and CRC-32C.
import { crc32cJs } from '../../src/util/crc32c.js';

export interface BuiltWal {
  segSize: number;
  blockSize: number;
  firstSegNo: number;
  /** The segments, whole (the last one zero-filled past the last record). */
  segments: Buffer[];
  /** Start LSN of every record, in order. */
  records: number[];
  /** Where the record after the last one would start. */
  end: number;
}

export interface BuildOptions {
  segSize?: number;
  blockSize?: number;
  firstSegNo?: number;
  tli?: number;
  systemId?: bigint;
  magic?: number;
}

const align8 = (n: number): number => n + ((8 - (n % 8)) % 8);

/** Builds WAL record by record. */
export class WalBuilder {
  readonly segSize: number;
  readonly blockSize: number;
  readonly firstSegNo: number;
  tli: number;
  readonly systemId: bigint;
  readonly magic: number;
  private readonly bytes: Buffer[] = [];
  /** Next write position (LSN). */
  pos: number;
  prev = 0;
  readonly records: number[] = [];

  constructor(o: BuildOptions = {}) {
    this.segSize = o.segSize ?? 64 * 1024;
    this.blockSize = o.blockSize ?? 8192;
    this.firstSegNo = o.firstSegNo ?? 1;
    this.tli = o.tli ?? 1;
    this.systemId = o.systemId ?? 7300000000000000001n;
    this.magic = o.magic ?? 0xd110;
    this.pos = this.firstSegNo * this.segSize;
    this.writePageHeader(this.pos, 0);
    this.pos += 40;
  }

  private segIndex(lsn: number): number {
    return Math.floor(lsn / this.segSize) - this.firstSegNo;
  }

  /** The segment buffer holding `lsn`, created (all zeros) when new. */
  private ensure(lsn: number): Buffer {
    const i = this.segIndex(lsn);
    while (this.bytes.length <= i) this.bytes.push(Buffer.alloc(this.segSize));
    return this.bytes[i]!;
  }

  private writePageHeader(pageAt: number, remLen: number): void {
    const seg = this.ensure(pageAt);
    const off = pageAt % this.segSize;
    const long = off === 0;
    seg.writeUInt16LE(this.magic, off);
    seg.writeUInt16LE((long ? 0x0002 : 0) | (remLen > 0 ? 0x0001 : 0), off + 2);
    seg.writeUInt32LE(this.tli, off + 4);
    seg.writeBigUInt64LE(BigInt(pageAt), off + 8);
    seg.writeUInt32LE(remLen, off + 16);
    if (long) {
      seg.writeBigUInt64LE(this.systemId, off + 24);
      seg.writeUInt32LE(this.segSize, off + 32);
      seg.writeUInt32LE(this.blockSize, off + 36);
    }
  }

  /** Write `data` at pos, with page headers where pages begin; `total` and `done` give xlp_rem_len. */
  private put(data: Buffer, total: number): void {
    let k = 0;
    while (k < data.length) {
      if (this.pos % this.blockSize === 0) {
        this.writePageHeader(this.pos, total - k);
        this.pos += this.pos % this.segSize === 0 ? 40 : 24;
      }
      const room = this.blockSize - (this.pos % this.blockSize);
      const n = Math.min(room, data.length - k);
      data.copy(this.ensure(this.pos), this.pos % this.segSize, k, k + n);
      this.pos += n;
      k += n;
    }
  }

  /** A record of resource manager `rmid` with `dataLen` bytes of data after its header (or `data`). */
  record(o: { rmid?: number; info?: number; dataLen?: number; data?: Buffer; xid?: number } = {}): number {
    const data = o.data ?? Buffer.alloc(o.dataLen ?? 40, 0xab);
    const rec = Buffer.alloc(24 + data.length);
    rec.writeUInt32LE(rec.length, 0);
    rec.writeUInt32LE(o.xid ?? 0, 4);
    rec.writeBigUInt64LE(BigInt(this.prev), 8);
    rec[16] = o.info ?? 0;
    rec[17] = o.rmid ?? 10;
    data.copy(rec, 24);
    const crc = crc32cJs(rec.subarray(0, 20), crc32cJs(rec.subarray(24)));
    rec.writeUInt32LE(crc, 20);
    if (this.pos % this.blockSize === 0) {
      // a record starting on a page boundary: the page header first (no continuation)
      this.writePageHeader(this.pos, 0);
      this.pos += this.pos % this.segSize === 0 ? 40 : 24;
    }
    const start = this.pos;
    this.put(rec, rec.length);
    this.pos = align8(this.pos);
    this.prev = start;
    this.records.push(start);
    return start;
  }

  /** XLOG_SWITCH: the rest of the segment stays zero; the next record starts on the next one. */
  switchSegment(): number {
    const at = this.record({ rmid: 0, info: 0x40, dataLen: 0 });
    this.pos = (Math.floor((this.pos - 1) / this.segSize) + 1) * this.segSize;
    this.ensure(this.pos);
    return at;
  }

  /** Fill with records until the position reaches `lsn` or beyond. */
  fillTo(lsn: number, dataLen = 100): void {
    while (this.pos < lsn) this.record({ dataLen });
  }

  /** Close the current page so that page headers past it exist (the whole last segment gets headers). */
  build(): BuiltWal {
    const end = this.pos;
    // Pages after the end in the last segment: zero (as a .partial padded by pg_receivewal).
    return { segSize: this.segSize, blockSize: this.blockSize, firstSegNo: this.firstSegNo, segments: this.bytes.map((b) => Buffer.from(b)), records: [...this.records], end };
  }
}
