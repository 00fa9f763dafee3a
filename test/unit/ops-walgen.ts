// Synthetic WAL for the operations unit tests (not a test file): segments whose every page carries
// a header as PostgreSQL writes it (XLogPageHeaderData, the long header on the first page), so
// checkSegmentPages accepts them, and archives of them in a MemoryStore.
import { MemoryStore } from '../../src/storage/memory.js';

export const SEG = 1024 * 1024;
export const BLOCK = 8192;
export const SYSID = 7300000000000000001n;
export const MAGIC = 0xd110;

const hex8 = (n: number | bigint): string => n.toString(16).toUpperCase().padStart(8, '0');

/** Segment name for a segment number with 1 MB segments. */
export function seg(tli: number, segNo: number): string {
  return hex8(tli) + hex8(Math.floor(segNo / 4096)) + hex8(segNo % 4096);
}

export interface SegmentSpec {
  tli: number;
  segNo: number;
  sysid?: bigint;
  segSize?: number;
  /** Timeline written in the page headers (default tli). */
  pageTli?: number;
}

export function makeSegment(s: SegmentSpec): Buffer {
  const segSize = s.segSize ?? SEG;
  const buf = Buffer.alloc(segSize);
  const start = BigInt(s.segNo) * BigInt(segSize);
  for (let off = 0; off < segSize; off += BLOCK) {
    buf.writeUInt16LE(MAGIC, off);
    buf.writeUInt16LE(off === 0 ? 0x0002 : 0x0000, off + 2);
    buf.writeUInt32LE(s.pageTli ?? s.tli, off + 4);
    buf.writeBigUInt64LE(start + BigInt(off), off + 8);
    buf.writeUInt32LE(0, off + 16);
    if (off === 0) {
      buf.writeBigUInt64LE(s.sysid ?? SYSID, 24);
      buf.writeUInt32LE(segSize, 32);
      buf.writeUInt32LE(BLOCK, 36);
    }
    // Some record bytes after the header, different per segment and page.
    buf.writeUInt32LE((s.segNo * 7919 + off) >>> 0, off + 48);
  }
  return buf;
}

/** History file text: one line per ancestor [tli, "X/Y"]. */
export function historyText(entries: [number, string][]): Buffer {
  return Buffer.from(entries.map(([tli, lsn]) => `${tli}\t${lsn}\tno recovery target specified\n`).join(''));
}

/** LSN text of a segment start plus an offset (1 MB segments). */
export function lsnAt(segNo: number, offset = 0): string {
  const v = BigInt(segNo) * BigInt(SEG) + BigInt(offset);
  return `${(v >> 32n).toString(16).toUpperCase()}/${(v & 0xffffffffn).toString(16).toUpperCase()}`;
}

export async function putSegments(store: MemoryStore, tli: number, from: number, to: number, opts: Partial<SegmentSpec> = {}): Promise<string[]> {
  const names: string[] = [];
  for (let n = from; n <= to; n++) {
    await store.put(seg(tli, n), makeSegment({ tli, segNo: n, ...opts }));
    names.push(seg(tli, n));
  }
  return names;
}

/** A store that counts gets in flight (for the parallelism bound) and can fail the listing. */
export class CountingStore extends MemoryStore {
  inFlight = 0;
  maxInFlight = 0;
  override async get(name: string): ReturnType<MemoryStore['get']> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      await new Promise((r) => setTimeout(r, 2));
      return await super.get(name);
    } finally {
      this.inFlight--;
    }
  }
}
