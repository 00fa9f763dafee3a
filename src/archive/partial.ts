// Ships the segment still being received to the archive while it grows, so that losing the
// receiver's host loses at most --partial-interval of WAL. Each shipment is an immutable piece
// "<segment>.partial.<offset>" holding the newly durable bytes from that offset on (never the
// whole segment again, never an overwrite); a reader concatenates the contiguous pieces. Only
// bytes already durable in the spool are shipped. Once the complete segment is archived, its
// pieces are deleted. Two receivers archiving into one archive may both ship pieces of the same
// segment: each adds a piece only at the end of the chain from offset 0, after reading back the
// pieces the other shipped and finding them equal to its own durable bytes, so a chain always
// holds one stream of WAL and a reader can take it as it is (PartialShipper.ship).
import { open, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError, NotFoundError, type ArchiveStore } from '../storage/types.js';
import { checkSegmentPages, LONG_PAGE_HEADER_SIZE, readLongPageHeader } from '../wal/page.js';
import { isValidSegSize, parseWalFileName } from '../wal/segment.js';
import type { Logger } from '../util/log.js';

const PIECE_RE = /^([0-9A-F]{24})\.partial\.([0-9A-F]{8})$/;

export function pieceName(segment: string, offset: number): string {
  return `${segment}.partial.${offset.toString(16).toUpperCase().padStart(8, '0')}`;
}

/**
 * The chain of pieces of `segment` in the archive: the piece at offset 0, the one at its end, and
 * so on, as far as they go (what a reader puts together). Where a listing reads every name in the
 * archive (a local directory, where it costs more the more the archive holds, and the shipper
 * and the server ask every few seconds), the chain is followed one name at a time instead.
 */
export async function listPieces(store: ArchiveStore, segment: string): Promise<{ name: string; offset: number; size: number }[]> {
  const chain: { name: string; offset: number; size: number }[] = [];
  if (store.listScans?.() === true) {
    for (let offset = 0; ; ) {
      const name = pieceName(segment, offset);
      const info = await store.head(name);
      if (info === undefined || info.size === 0) break;
      chain.push({ name, offset, size: info.size });
      offset += info.size;
    }
    return chain;
  }
  const found: { name: string; offset: number; size: number }[] = [];
  for (const o of await store.list(`${segment}.partial.`)) {
    const m = PIECE_RE.exec(o.name);
    if (m && m[1] === segment) found.push({ name: o.name, offset: parseInt(m[2]!, 16), size: o.size });
  }
  let end = 0;
  for (const p of found.sort((a, b) => a.offset - b.offset)) {
    if (p.offset > end) break;
    if (p.offset < end || p.size === 0) continue; // not on the chain
    chain.push(p);
    end += p.size;
  }
  return chain;
}

/** Put the pieces back together: the bytes from offset 0 for as long as the pieces are contiguous. */
export async function assemblePieces(store: ArchiveStore, segment: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let end = 0;
  for (const p of await listPieces(store, segment)) {
    if (p.offset !== end) break;
    const { data } = await store.get(p.name);
    parts.push(data);
    end += data.length;
  }
  return Buffer.concat(parts);
}

const MIB = 1024 * 1024;

/** Attempts of one shipment that met another writer's piece at the same offset. */
const SHIP_ROUNDS = 3;

export interface PartialShipperOptions {
  store: ArchiveStore;
  spoolDir: string;
  log: Logger;
  noSync?: boolean;
}

export class PartialShipper {
  private segment: string | undefined;
  /**
   * End of the chain of pieces of `segment` in the archive known to hold this receiver's own
   * bytes (shipped by it, or shipped by another writer and found equal to its spool).
   */
  private shipped = 0;
  /** The complete `segment` is in the archive already (another writer archived it): nothing to ship. */
  private whole = false;
  private broken = new Set<string>();
  private busy = false;
  /** Where pieces are read before they are stored (put keeps no reference once it settles). */
  private buffer: Buffer = Buffer.alloc(0);

  constructor(private readonly o: PartialShipperOptions) {}

  /**
   * Ship the durable bytes of `segment` (a .partial in the spool) up to `durableEnd`, an offset
   * within it. Errors are logged and retried at the next call; they never stop the receiver.
   *
   * Another receiver may ship pieces of the same segment into the same archive (two receivers,
   * one archive). A piece is only ever added at the end of the chain read from offset 0, and only
   * after every piece of that chain this receiver did not ship itself was read back and found
   * equal to its own durable bytes: the chain then holds one stream of WAL, whoever shipped which
   * piece. A chain that holds other bytes (another history of this segment) is never continued.
   */
  async ship(segment: string, durableEnd: number): Promise<void> {
    if (this.busy || this.broken.has(segment)) return;
    this.busy = true;
    try {
      if (this.segment !== segment) {
        // A new segment, or a restart: continue after the pieces already archived (checked first).
        this.segment = segment;
        this.shipped = 0;
        this.whole = (await this.o.store.head(segment)) !== undefined;
      }
      if (this.whole) return;
      for (let round = 0; round < SHIP_ROUNDS; round++) {
        const seen = await this.adopt(segment, durableEnd);
        if (seen !== 'ok') {
          if (seen === 'different') this.refuse(segment, 'the pieces in the archive hold other bytes than this receiver received');
          return;
        }
        if (durableEnd <= this.shipped) return;
        const data = await this.readSpool(segment, this.shipped, durableEnd);
        if (data === undefined) return;
        const name = pieceName(segment, this.shipped);
        try {
          await this.o.store.put(name, data, { noSync: this.o.noSync });
        } catch (err) {
          if (!(err instanceof ConflictError) || err.objectName !== name) throw err;
          // Another writer put a piece at this offset meanwhile, of another length: equal bytes
          // as far as both go is a race, not a conflict (the copy put aside is ours, removed);
          // the next round reads that piece and goes on after it.
          const held = await this.compareAt(name, data);
          if (held === 'different') {
            this.refuse(segment, err.message);
            return;
          }
          if (err.quarantinedAs !== '') await this.o.store.delete(err.quarantinedAs).catch(() => undefined);
          continue;
        }
        this.shipped = durableEnd;
        this.o.log.verbose(`archived ${name} (${data.length} bytes of the segment in progress)`);
        return;
      }
    } catch (err) {
      if (err instanceof ConflictError) this.refuse(segment, err.message);
      else this.o.log.error(`could not archive the segment in progress ${segment}: ${(err as Error).message}; will retry`);
    } finally {
      this.busy = false;
    }
  }

  /** Different bytes at the same place: never mix them; the complete segment will still come. */
  private refuse(segment: string, why: string): void {
    this.broken.add(segment);
    this.o.log.error(`not shipping more of ${segment} in progress: ${why}`);
  }

  /**
   * Follow the chain of pieces from offset 0 past `shipped`, each piece another writer shipped
   * read back and compared with the spool (as far as `durableEnd`): 'ok' with `shipped` moved to
   * the end of what matched, 'different' when a piece holds other bytes, 'whole' when the
   * complete segment reached the archive meanwhile.
   */
  private async adopt(segment: string, durableEnd: number): Promise<'ok' | 'different' | 'whole'> {
    let end = 0;
    for (const p of await listPieces(this.o.store, segment)) {
      if (p.offset !== end) break;
      const pieceEnd = p.offset + p.size;
      if (pieceEnd > this.shipped) {
        // The chain reaches past what is durable here (the other writer is ahead): nothing to ship yet.
        if (this.shipped >= durableEnd) return 'ok';
        let data: Buffer;
        try {
          data = (await this.o.store.get(p.name)).data;
        } catch (err) {
          if (!(err instanceof NotFoundError)) throw err;
          // Removed meanwhile: the complete segment is archived, or will be.
          break;
        }
        const from = Math.max(p.offset, this.shipped);
        const to = Math.min(p.offset + data.length, durableEnd);
        const ours = await this.readSpool(segment, from, to);
        if (ours === undefined) return 'whole';
        if (!ours.equals(data.subarray(from - p.offset, to - p.offset))) return 'different';
        this.shipped = to;
        if (to < p.offset + data.length) return 'ok';
      }
      end = pieceEnd;
    }
    if (end < this.shipped) {
      // The chain is shorter than what this receiver knew of it: its pieces were removed, the
      // complete segment having been archived (by the other writer), or by an operator.
      if ((await this.o.store.head(segment)) !== undefined) {
        this.whole = true;
        return 'whole';
      }
      this.shipped = end;
    }
    return 'ok';
  }

  /** Compare the piece `name` with this receiver's bytes from the same offset (`data`), as far as both go. */
  private async compareAt(name: string, data: Buffer): Promise<'same' | 'different'> {
    let held: Buffer;
    try {
      held = (await this.o.store.get(name)).data;
    } catch (err) {
      if (err instanceof NotFoundError) return 'same';
      throw err;
    }
    const n = Math.min(held.length, data.length);
    return held.subarray(0, n).equals(data.subarray(0, n)) ? 'same' : 'different';
  }

  /** Bytes [from, to) of the segment's .partial in the spool, or undefined when it was completed meanwhile. */
  private async readSpool(segment: string, from: number, to: number): Promise<Buffer | undefined> {
    // One buffer for every piece, grown to the largest (at most a segment): a piece every few
    // seconds of a new size each time would leave the allocator with ever more fragments.
    const length = to - from;
    if (this.buffer.length < length) this.buffer = Buffer.allocUnsafeSlow(Math.ceil(length / MIB) * MIB);
    const data = this.buffer.subarray(0, length);
    let fh: FileHandle;
    try {
      fh = await open(join(this.o.spoolDir, `${segment}.partial`), 'r');
    } catch (err) {
      // Completed meanwhile (renamed to its final name): the uploader archives it whole.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && (await stat(join(this.o.spoolDir, segment)).catch(() => undefined))) {
        this.o.log.verbose(`${segment} was completed before its newest bytes were shipped as a piece: it goes to the archive whole`);
        return undefined;
      }
      throw err;
    }
    try {
      let got = 0;
      while (got < data.length) {
        const { bytesRead } = await fh.read(data, got, data.length - got, from + got);
        if (bytesRead === 0) throw new Error(`spool file ${segment}.partial is shorter than expected`);
        got += bytesRead;
      }
    } finally {
      await fh.close();
    }
    return data;
  }

  /** The complete segment is archived: its pieces are no longer needed. */
  async segmentArchived(segment: string): Promise<void> {
    try {
      for (const p of await listPieces(this.o.store, segment)) await this.o.store.delete(p.name);
    } catch (err) {
      this.o.log.error(`could not remove the pieces of ${segment} from the archive: ${(err as Error).message}`);
    }
    if (this.segment === segment) this.segment = undefined;
    this.broken.delete(segment);
  }
}

/**
 * The newest WAL the archive holds of a segment that never arrived whole, as a full-size segment
 * PostgreSQL can restore (fetch --partial): the segment's `.partial` object (pg_receivewal's
 * layout, or what a promotion archived), else the contiguous pieces of the receiver's segment in
 * progress, zero-padded to the segment size as PostgreSQL requires of a restored file. Undefined
 * when the archive has neither. The first page must be a valid long header for this segment;
 * pieces are checked page by page up to their end.
 */
export async function readPartialSegment(store: ArchiveStore, segment: string): Promise<Buffer | undefined> {
  let data: Buffer;
  let validLength: number;
  try {
    data = (await store.get(`${segment}.partial`)).data;
    validLength = LONG_PAGE_HEADER_SIZE; // bytes after the last record may be stale: PostgreSQL stops at them
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
    data = await assemblePieces(store, segment);
    if (data.length === 0) return undefined;
    validLength = data.length;
  }
  if (data.length < LONG_PAGE_HEADER_SIZE) throw new Error(`the archive's partial copy of ${segment} is too short to hold a WAL page header`);
  const head = readLongPageHeader(data);
  if (!isValidSegSize(head.segSize) || data.length > head.segSize) throw new Error(`the archive's partial copy of ${segment} does not hold a valid segment header`);
  const { tli, segNo } = parseWalFileName(segment, head.segSize);
  const check = checkSegmentPages(data, Math.min(validLength, data.length), { segNo, segSize: head.segSize, tli, blockSize: head.blockSize });
  if (!check.ok) throw new Error(`the archive's partial copy of ${segment} is not valid WAL: ${check.problems[0]}`);
  if (data.length === head.segSize) return data;
  const full = Buffer.alloc(head.segSize);
  data.copy(full);
  return full;
}
