// walstream fetch %f %p — restore_command (xlogarchive.c RestoreArchivedFile;
// replication-protocol.md §7). Found: written to %p atomically, decompressed and verified, exit 0.
// Not in the archive: exit 1 at once, PostgreSQL's normal "not available".
// Anything else (an unreachable archive after retries, a corrupt object) depends on the recovery:
// in a standby (standby.signal in the data directory, the command's working directory) "not
// available" only means "try streaming, ask again later", so exit 1; in archive recovery or
// point-in-time recovery it would mean "end of WAL" and silently cut the recovery short, so
// walstream exits 126 instead, which makes PostgreSQL stop the recovery with a FATAL error.
// The file is written next to %p under a temp name naming this process (storage/leftovers.ts);
// each fetch first removes the temp files of %p that killed fetches left (only those: pg_wal is
// PostgreSQL's, nothing else in it is touched), so an interrupted recovery leaves no 16 MB
// temp files behind for good.
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { NotFoundError, StorageError, shownName, type ArchiveStore } from '../storage/types.js';
import { sweepDirectory, tempName } from '../storage/leftovers.js';
import { isValidSegSize, POSTGRES_WAL_FILE_RE, WAL_NAME_RE } from '../wal/segment.js';
import { LONG_PAGE_HEADER_SIZE, readLongPageHeader } from '../wal/page.js';
import { prefetchFirst, prepareSpool, requestPrefetch, takeFromSpool, workerRunning } from '../archive/prefetch.js';
import { readPartialSegment } from '../archive/partial.js';
import { objectToFile, TargetWriteError } from '../archive/to-file.js';
import { recordInspector } from '../archive/segment-records.js';
import type { Logger } from '../util/log.js';
import { fs } from '../util/lazy.js';

const { existsSync } = fs;

export interface FetchOptions {
  name: string;
  dest: string;
  /**
   * The archive, opened on first use: a file served from the prefetch spool needs no archive at
   * all (no S3 SDK to load, no connection).
   */
  openStore: () => Promise<ArchiveStore>;
  /** Names the archive for the prefetch spool (the location as given, without secrets). */
  archiveKey: string;
  log: Logger;
  /** Attempts for transient failures before giving up (default 5). */
  attempts?: number;
  retryMinMs?: number;
  /** Serve the newest partial copy of a segment the archive lacks (point-in-time recovery to the last byte received). */
  partial?: boolean;
  /** Keep the next segments ready in a spool directory (see archive/prefetch.ts). */
  prefetch?: { count: number; spool: string; startWorker: () => number | undefined };
  /**
   * Serve the segment only if the prefetch spool holds it (the command line's fast path,
   * cli/fetch-spool.ts): otherwise return 'missed', having written and said nothing, for a
   * full fetch to do everything again.
   */
  spoolOnly?: boolean;
  /** Check every record of a segment before it is handed to PostgreSQL (and to the prefetch spool). */
  verifyRecords?: boolean;
}

/** How many segments the fetch that starts a prefetch worker downloads into the spool itself. */
const FIRST_PREFETCH = 2;

/** Exit status meaning "not available" to PostgreSQL. */
export const EXIT_NOT_AVAILABLE = 1;
/** Exit status above 125: PostgreSQL stops the recovery (FATAL) rather than end it early. */
export const EXIT_ABORT_RECOVERY = 126;

export class FetchError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'FetchError';
  }
}

/** In a standby, "not available" is harmless; in any other recovery it ends the recovery. */
export function failureExitCode(cwd: string = process.cwd()): number {
  return existsSync(join(cwd, 'standby.signal')) ? EXIT_NOT_AVAILABLE : EXIT_ABORT_RECOVERY;
}

async function getWithRetries<T>(o: FetchOptions, what: string, get: () => Promise<T>): Promise<T | undefined> {
  const attempts = o.attempts ?? 5;
  let delay = o.retryMinMs ?? 200;
  for (let attempt = 1; ; attempt++) {
    try {
      return await get();
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      if (err instanceof TargetWriteError) throw writeFailure(o.dest, err.cause);
      const e = err as Error;
      const transient = !(err instanceof StorageError) || err.transient;
      if (!transient || attempt >= attempts) {
        const code = failureExitCode();
        const how = code === EXIT_ABORT_RECOVERY ? 'stopping the recovery rather than ending it early' : 'the standby will stream instead and ask again';
        throw new FetchError(`cannot fetch ${what}: ${e.message} (${how})`, code);
      }
      o.log.warn(`cannot fetch ${what} (attempt ${attempt} of ${attempts}): ${e.message}; retrying`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}

/**
 * Remove the temp files of %p whose writer is gone (a fetch killed mid-write, by any version). A
 * failure here only costs disk space: logged, never failing the fetch.
 */
async function sweepDest(dest: string, log: Logger): Promise<void> {
  try {
    const r = await sweepDirectory(dirname(dest), { target: basename(dest) });
    for (const l of r.removed) log.verbose(`removed ${l.name}, left by a fetch that did not finish`);
    for (const f of r.failed) log.warn(`cannot remove ${f.leftover.name}, left by a fetch that did not finish: ${f.error}`);
  } catch (err) {
    log.warn(`cannot look for temp files left next to ${dest}: ${(err as Error).message}`);
  }
}

/**
 * Not "not in the archive": the file is there but cannot be handed over (a wrong %p, a full
 * disk), so a recovery that is not a standby stops rather than ends here.
 */
function writeFailure(dest: string, err: NodeJS.ErrnoException): FetchError {
  const code = err.code;
  const why = code === 'ENOENT' ? 'its directory does not exist' : code === 'ENOTDIR' ? 'a part of its path is not a directory' : (code ?? err.message);
  return new FetchError(`cannot write ${JSON.stringify(dest)}: ${why}`, failureExitCode());
}

/** Write next to %p under a temporary name, then rename: PostgreSQL never sees half a file. */
async function writeDest(dest: string, data: Buffer): Promise<void> {
  const tmp = join(dirname(dest), tempName(basename(dest)));
  try {
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(data);
    } finally {
      await fh.close();
    }
    await rename(tmp, dest);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw writeFailure(dest, err as NodeJS.ErrnoException);
  }
}

export async function fetch(o: FetchOptions): Promise<'archive' | 'spool' | 'partial' | 'missed'> {
  if (!POSTGRES_WAL_FILE_RE.test(o.name)) {
    if (o.spoolOnly) return 'missed';
    throw new FetchError(`${shownName(o.name)} is not a WAL file name`, EXIT_NOT_AVAILABLE);
  }
  const segment = WAL_NAME_RE.test(o.name);
  const pf = segment ? o.prefetch : undefined;
  if (o.spoolOnly && !pf) return 'missed';
  if (!o.spoolOnly) await sweepDest(o.dest, o.log);
  let source: 'archive' | 'spool' | 'partial' = 'archive';
  let segSize: number | undefined;
  let store: ArchiveStore | undefined;
  if (pf) {
    try {
      await prepareSpool(pf.spool, o.archiveKey);
      segSize = await takeFromSpool(pf.spool, o.name, o.dest);
    } catch (err) {
      if (o.spoolOnly) return 'missed'; // the full fetch says why
      // The spool is only a cache: without it, fetch from the archive (and say why).
      o.log.warn(`prefetch spool ${pf.spool}: ${(err as Error).message}`);
    }
    if (segSize !== undefined) source = 'spool';
  }
  if (source === 'spool' && o.spoolOnly) await sweepDest(o.dest, o.log);
  if (source === 'archive') {
    if (o.spoolOnly) return 'missed';
    store = await o.openStore();
    const archive = store;
    // Verified as it is written, through one small buffer (archive/to-file.ts); renamed to %p only then.
    const inspect = () => (segment && o.verifyRecords ? { inspect: recordInspector(o.name) } : {});
    let head = await getWithRetries(o, o.name, () => objectToFile(archive, o.name, o.dest, { sync: false, headBytes: LONG_PAGE_HEADER_SIZE, ...inspect() }));
    if (head === undefined && o.partial && segment) {
      const data = await getWithRetries(o, `the partial copy of ${o.name}`, () => readPartialSegment(archive, o.name));
      if (data !== undefined) {
        source = 'partial';
        await writeDest(o.dest, data);
        head = data;
      }
    }
    if (head === undefined) throw new FetchError(`${o.name} is not in the archive`, EXIT_NOT_AVAILABLE);
    if (segment && head.length >= LONG_PAGE_HEADER_SIZE) segSize = readLongPageHeader(head).segSize;
  }
  o.log.verbose(`restored ${o.name}${source === 'spool' ? ' from the prefetch spool' : source === 'partial' ? ' from its partial copy (the newest WAL the archive has of it)' : ''}`);
  if (pf && source !== 'partial' && segSize !== undefined && isValidSegSize(segSize)) {
    try {
      const want = { name: o.name, segSize, count: pf.count };
      // No worker yet (the first call of a recovery, or after a pause): the next two come with this call.
      if (store && !workerRunning(pf.spool)) await prefetchFirst(store, pf.spool, { ...want, count: Math.min(FIRST_PREFETCH, pf.count) }, o.log, o.verifyRecords === true);
      await requestPrefetch(pf.spool, want, pf.startWorker);
    } catch (err) {
      o.log.warn(`cannot start prefetching after ${o.name}: ${(err as Error).message}`);
    }
  }
  return source;
}
