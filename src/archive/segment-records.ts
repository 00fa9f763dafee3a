// The record check of one WAL segment on its own, for push and fetch --verify-records: every
// record that starts in the segment (src/wal/records.ts), its CRC-32C, its xl_prev, and what
// follows an XLOG_SWITCH. A record continued from the segment before is skipped (its start is not
// here), and one running on into the next segment is checked as far as it goes.
import { LONG_PAGE_HEADER_SIZE, readLongPageHeader } from '../wal/page.js';
import { WalRecordDecoder } from '../wal/records.js';
import { isValidSegSize, parseWalFileName } from '../wal/segment.js';
import { StorageError } from '../storage/types.js';
import type { ObjectInspector } from './to-file.js';

export class SegmentRecordCheck {
  private decoder: WalRecordDecoder | undefined;
  private head: Buffer[] = [];
  private headBytes = 0;
  private fed = 0;
  private segSize = 0;
  private refused: string | undefined;

  /** `name`: the segment's file name (24 hexadecimal digits). */
  constructor(private readonly name: string) {}

  /** The segment's next bytes. */
  write(piece: Uint8Array): void {
    if (this.refused !== undefined) return;
    this.fed += piece.length;
    if (this.decoder) {
      this.decoder.write(piece);
      return;
    }
    this.head.push(Buffer.from(piece));
    this.headBytes += piece.length;
    if (this.headBytes < LONG_PAGE_HEADER_SIZE) return;
    const start = Buffer.concat(this.head);
    this.head = [];
    const h = readLongPageHeader(start);
    if (!isValidSegSize(h.segSize)) {
      this.refused = `its first page names an invalid segment size ${h.segSize}`;
      return;
    }
    this.segSize = h.segSize;
    const { tli, segNo } = parseWalFileName(this.name, h.segSize);
    this.decoder = new WalRecordDecoder({ segSize: h.segSize, blockSize: h.blockSize, systemId: h.systemId });
    this.decoder.beginSegment(segNo, tli);
    this.decoder.write(start);
  }

  /** What is wrong with the segment's records, or undefined when they check out. */
  finish(): string | undefined {
    if (this.refused !== undefined) return this.refused;
    if (!this.decoder) return `${this.fed} bytes is not a WAL segment`;
    if (this.fed !== this.segSize) return `it has ${this.fed} bytes, but its segment size is ${this.segSize}`;
    const p = this.decoder.summary().problems[0];
    return p ? `${p.message} (offset ${p.offset})` : undefined;
  }
}

/** For objectToFile: refuses (a lasting storage error, never retried) a segment whose records do not check out. */
export function recordInspector(name: string): ObjectInspector {
  const check = new SegmentRecordCheck(name);
  return {
    write: (piece) => check.write(piece),
    finish: () => {
      const problem = check.finish();
      if (problem !== undefined) throw new StorageError(`${name}: its WAL records do not check out: ${problem}`, false);
    },
  };
}
