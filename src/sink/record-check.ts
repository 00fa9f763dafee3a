// The record check of a stream being received: every byte accepted goes through the WAL record
// decoder (src/wal/records.ts) before it is written, so a record whose CRC-32C fails, an xl_prev
// that does not point at the record before, or bytes dropped and shifted inside a page stop the
// stream before they are stored. It also says how far the stream is proven: the start of the
// record in progress. The sink gives a finished segment its final name, and reports bytes as
// flushed, only up to there, so nothing the records have not vouched for is published or
// acknowledged to the server.
import { WalRecordDecoder, type RecordProblem } from '../wal/records.js';
import type { Lsn } from '../wal/lsn.js';

export interface RecordCheckOptions {
  segSize: number;
  blockSize: number;
  systemId: bigint;
  magic?: number;
}

export class StreamRecordCheck {
  private decoder: WalRecordDecoder | undefined;
  private segNo = -1n;
  /** The stream began inside a segment: that segment's records cannot be read from its start. */
  private skipUntilSegment = -1n;
  private end: Lsn = 0n;
  private tli = 0;
  /** Where the proven WAL ended when a piece was refused. */
  private refusedAt: Lsn | undefined;

  constructor(private readonly o: RecordCheckOptions) {}

  /** A stream starting at `start` on timeline `tli`; what came before is not looked at. */
  begin(start: Lsn, tli: number): void {
    this.decoder = new WalRecordDecoder({ segSize: this.o.segSize, blockSize: this.o.blockSize, systemId: this.o.systemId, ...(this.o.magic !== undefined ? { magic: this.o.magic } : {}) });
    this.tli = tli;
    const size = BigInt(this.o.segSize);
    this.segNo = -1n;
    this.skipUntilSegment = start % size === 0n ? -1n : start / size + 1n;
    this.end = start;
    this.refusedAt = undefined;
  }

  /**
   * `piece` of segment `segNo` at offset `off` (pieces come in order, none crosses a segment).
   * Returns the first thing wrong with the WAL, or undefined.
   */
  feed(segNo: bigint, off: number, piece: Uint8Array): RecordProblem | undefined {
    const d = this.decoder;
    if (!d) throw new Error('StreamRecordCheck.feed before begin');
    this.end = segNo * BigInt(this.o.segSize) + BigInt(off + piece.length);
    if (segNo < this.skipUntilSegment) return undefined;
    if (segNo !== this.segNo) {
      if (off !== 0) throw new Error(`StreamRecordCheck: segment ${segNo} fed from offset ${off}`);
      if (this.segNo >= 0n) d.endSegment();
      d.beginSegment(segNo, this.tli);
      this.segNo = segNo;
    }
    const problems = d.problemCount;
    const proven = d.checkedTo;
    d.write(piece);
    if (d.problemCount === problems) return undefined;
    // Nothing of this piece, or after it, is proven now, whatever the decoder reads next.
    this.refusedAt = BigInt(proven);
    return d.firstProblem ?? { segment: '', offset: off, lsn: this.end, message: 'the WAL records do not check out' };
  }

  /** Everything before this LSN is proven (records whole and their CRCs matched). */
  get checkedTo(): Lsn {
    if (this.refusedAt !== undefined) return this.refusedAt;
    const d = this.decoder;
    if (!d || this.segNo < 0n) return this.end;
    const at = BigInt(d.checkedTo);
    return at < this.end ? at : this.end;
  }
}
