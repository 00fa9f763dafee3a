// walstream push %p — archive_command (pgarch.c pgarch_archiveXlog; replication-protocol.md §6).
// Exit 0 only once the file is durable in the archive (or already there with identical bytes);
// every failure exits 1, so PostgreSQL retries: never a signal, never above 125.
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { checkSegmentPages, readLongPageHeader, LONG_PAGE_HEADER_SIZE } from '../wal/page.js';
import { POSTGRES_WAL_FILE_RE, SEGMENT_FILE_RE, isValidSegSize, parseWalFileName } from '../wal/segment.js';
import type { ArchiveStore, Compression } from '../storage/types.js';
import type { Logger } from '../util/log.js';

export interface PushOptions {
  /** The file PostgreSQL asks to archive (%p: pg_wal/<name>, relative to the data directory). */
  path: string;
  store: ArchiveStore;
  compression: Compression;
  noSync: boolean;
  log: Logger;
}

export class PushError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PushError';
  }
}

/** Check a segment (or a promotion's .partial) before it may enter the archive. */
export function checkSegmentFile(name: string, data: Buffer): void {
  const segName = name.slice(0, 24);
  if (data.length < LONG_PAGE_HEADER_SIZE) throw new PushError(`${name}: ${data.length} bytes is not a WAL segment`);
  const head = readLongPageHeader(data);
  if (!isValidSegSize(head.segSize)) throw new PushError(`${name}: its header names an invalid segment size ${head.segSize}`);
  if (data.length !== head.segSize) throw new PushError(`${name}: file has ${data.length} bytes, but its segment size is ${head.segSize}`);
  const { tli, segNo } = parseWalFileName(segName, head.segSize);
  // A .partial left by promotion may hold stale bytes past the switch point: check its first page only.
  const validLength = name.endsWith('.partial') ? LONG_PAGE_HEADER_SIZE : data.length;
  const check = checkSegmentPages(data, validLength, { segNo, segSize: head.segSize, tli, blockSize: head.blockSize });
  if (!check.ok) throw new PushError(`${name}: not a valid WAL segment: ${check.problems[0]}`);
}

export async function push(o: PushOptions): Promise<'created' | 'exists'> {
  const name = basename(o.path);
  if (!POSTGRES_WAL_FILE_RE.test(name)) {
    throw new PushError(`"${name.slice(0, 80)}" is not a WAL file name PostgreSQL archives`);
  }
  let data: Buffer;
  try {
    data = await readFile(o.path);
  } catch (err) {
    throw new PushError(`cannot read ${o.path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const segment = SEGMENT_FILE_RE.test(name);
  if (segment) checkSegmentFile(name, data);
  // History and backup files are small: keep them uncompressed, as PostgreSQL itself reads them.
  const compression = segment ? o.compression : 'none';
  const res = await o.store.put(name, data, { compression, noSync: o.noSync });
  if (res.replacedDamaged) o.log.warn(`the archive held a damaged copy of ${name}: kept as ${res.replacedDamaged} and replaced`);
  o.log.verbose(`${name}: ${res.status === 'exists' ? 'already archived with identical contents' : 'archived'}`);
  return res.status;
}
