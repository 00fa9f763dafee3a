// Reading WAL out of one store for the WAL source, verified before it is handed on: a complete
// segment must have its recorded checksum (the store checks it) and right page headers for its
// name, system and sizes (wal/page.ts checkSegmentPages); the segment in progress is read from a
// receiver's directory (`<name>.partial`, pg_receivewal's layout) or from the pieces a receiver
// ships to the archive (`<name>.partial.<offset>`, archive/partial.ts), and only the part whose
// pages are known complete is served.
import { listPieces } from '../archive/partial.js';
import { IntegrityError, KeyUnavailableError, NotFoundError, StorageError, type ArchiveStore, type ObjectInfo } from '../storage/types.js';
import { checkSegmentPages, LONG_PAGE_HEADER_SIZE, SHORT_PAGE_HEADER_SIZE } from '../wal/page.js';
import { historyFileName, walFileName } from '../wal/segment.js';
import { segmentCorrupt, SQLSTATE_IO_ERROR, WalSourceError, type SourceIdentity } from './types.js';

/**
 * A directory a receiver writes (its .partial is the segment in progress) or an archive (the
 * segment in progress arrives as pieces; a whole `.partial` object there is what a promotion
 * left of an old timeline's last segment, never served).
 */
export type StoreRole = 'directory' | 'archive';

/** The bytes of a segment in progress that may be served: data[0, valid). */
export interface PartialSegment {
  data: Buffer;
  valid: number;
}

/** A store error as the WAL source reports it: missing objects are undefined, never errors. */
function readFailure(name: string, err: unknown): WalSourceError {
  if (err instanceof IntegrityError) return segmentCorrupt(name, err.message);
  if (err instanceof KeyUnavailableError) return new WalSourceError(SQLSTATE_IO_ERROR, `could not read WAL segment ${name}: ${err.message}`);
  const transient = !(err instanceof StorageError) || err.transient;
  return new WalSourceError(SQLSTATE_IO_ERROR, `could not read ${name} from the archive: ${(err as Error).message}`, transient);
}

/**
 * How much of a pre-padded in-progress file (pg_receivewal's zero-filled .partial) is known
 * complete: every page before the last one that has a header. The page being written may be
 * partly filled with zeros still, and WAL does not say where its valid bytes end without decoding
 * records, so it waits until the next page begins.
 */
export function completePagesOfPadded(data: Buffer, blockSize: number): number {
  let lastWithHeader = -1;
  for (let off = 0; off + SHORT_PAGE_HEADER_SIZE <= data.length; off += blockSize) {
    let zero = true;
    for (let i = off; i < off + SHORT_PAGE_HEADER_SIZE; i++) {
      if (data[i] !== 0) {
        zero = false;
        break;
      }
    }
    if (zero) break;
    lastWithHeader = off;
  }
  return lastWithHeader < 0 ? 0 : lastWithHeader;
}

/** `valid` cut back so that no page is served whose header is not wholly there. */
export function wholeHeaders(valid: number, blockSize: number): number {
  const inPage = valid % blockSize;
  const need = valid - inPage === 0 ? LONG_PAGE_HEADER_SIZE : SHORT_PAGE_HEADER_SIZE;
  return inPage > 0 && inPage < need ? valid - inPage : valid;
}

export class StoreReader {
  /** The last in-progress segment read, kept to skip re-reading an unchanged file. */
  private lastPartial: { name: string; modified: number; size: number; result: PartialSegment } | undefined;
  /** Pieces already put together for the segment in progress. */
  private pieces: { name: string; data: Buffer } | undefined;

  constructor(
    readonly store: ArchiveStore,
    readonly role: StoreRole,
  ) {}

  get description(): string {
    return this.store.description;
  }

  async list(): Promise<ObjectInfo[]> {
    try {
      return await this.store.list();
    } catch (err) {
      throw readFailure(this.store.description, err);
    }
  }

  /** Whether the store holds `name` (one HEAD). */
  async has(name: string): Promise<boolean> {
    try {
      return (await this.store.head(name)) !== undefined;
    } catch (err) {
      throw readFailure(name, err);
    }
  }

  /** A history file's bytes, or undefined. */
  async history(tli: number): Promise<Buffer | undefined> {
    const name = historyFileName(tli);
    try {
      return (await this.store.get(name)).data;
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw readFailure(name, err);
    }
  }

  /** A whole object as stored (verified by the store), or undefined. */
  private async get(name: string): Promise<{ data: Buffer; info: ObjectInfo } | undefined> {
    try {
      return await this.store.get(name);
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw readFailure(name, err);
    }
  }

  /** A complete segment, verified; undefined when this store does not hold it. */
  async segment(tli: number, segNo: bigint, id: SourceIdentity): Promise<Buffer | undefined> {
    const name = walFileName(tli, segNo, id.segSize);
    const got = await this.get(name);
    if (!got) return undefined;
    const data = got.data;
    if (data.length !== id.segSize) throw segmentCorrupt(name, `it holds ${data.length} bytes, a segment ${id.segSize}`);
    verifyPages(name, data, data.length, tli, segNo, id);
    return data;
  }

  /**
   * The segment in progress: what of it may be served (its pages verified), or undefined when
   * this store has nothing of it.
   */
  async partial(tli: number, segNo: bigint, id: SourceIdentity): Promise<PartialSegment | undefined> {
    const name = walFileName(tli, segNo, id.segSize);
    if (this.role === 'archive') return this.fromPieces(name, tli, segNo, id);
    const partialName = `${name}.partial`;
    let info: ObjectInfo | undefined;
    try {
      info = await this.store.head(partialName);
    } catch (err) {
      throw readFailure(partialName, err);
    }
    if (!info) return undefined;
    const seen = this.lastPartial;
    if (seen && seen.name === partialName && seen.modified === info.modified.getTime() && seen.size === info.storedSize) return seen.result;
    const got = await this.get(partialName);
    if (!got) return undefined;
    const data = got.data;
    if (data.length > id.segSize) throw segmentCorrupt(partialName, `it holds ${data.length} bytes, more than a segment`);
    // A plain in-progress file is created at full size and zero-filled; a compressed one holds
    // exactly the bytes received.
    const valid = data.length === id.segSize ? completePagesOfPadded(data, id.blockSize) : wholeHeaders(data.length, id.blockSize);
    verifyPages(partialName, data, valid, tli, segNo, id);
    const result = { data, valid };
    this.lastPartial = { name: partialName, modified: got.info.modified.getTime(), size: got.info.storedSize, result };
    return result;
  }

  /**
   * The pieces of a segment in progress shipped to the archive, contiguous from its start. Pieces
   * are immutable and only added: those read before are kept, only new ones are fetched.
   */
  private async fromPieces(name: string, tli: number, segNo: bigint, id: SourceIdentity): Promise<PartialSegment | undefined> {
    const held = this.pieces?.name === name ? this.pieces.data : Buffer.alloc(0);
    let data = held;
    try {
      const parts: Buffer[] = [];
      let end = held.length;
      for (const p of await listPieces(this.store, name)) {
        if (p.offset < end) continue;
        if (p.offset !== end) break;
        const got = (await this.store.get(p.name)).data;
        parts.push(got);
        end += got.length;
      }
      if (parts.length > 0) data = Buffer.concat([held, ...parts]);
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw readFailure(`${name}.partial`, err);
      // A piece removed meanwhile: the whole segment is in the archive now; serve what was read.
    }
    if (data.length === 0) return undefined;
    if (data.length > id.segSize) throw segmentCorrupt(`${name}.partial`, `its pieces hold ${data.length} bytes, more than a segment`);
    const valid = wholeHeaders(data.length, id.blockSize);
    if (data !== held) {
      verifyPages(`${name}.partial`, data, valid, tli, segNo, id);
      this.pieces = { name, data };
    }
    return { data, valid };
  }
}

function verifyPages(name: string, data: Buffer, valid: number, tli: number, segNo: bigint, id: SourceIdentity): void {
  if (valid === 0) return;
  const check = checkSegmentPages(data, valid, { segNo, segSize: id.segSize, tli, blockSize: id.blockSize, systemId: id.systemId, magic: id.magic });
  if (!check.ok) throw segmentCorrupt(name, check.problems[0] ?? 'bad page headers');
}
