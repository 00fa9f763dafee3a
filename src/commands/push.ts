// walstream push %p — archive_command (pgarch.c pgarch_archiveXlog; replication-protocol.md §6).
// Exit 0 only once the file is durable in the archive (or already there with identical bytes);
// every failure exits 1, so PostgreSQL retries: never a signal, never above 125.
import { availableParallelism } from 'node:os';
import { mkdir, open, readdir, readFile, rename, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { checkSegmentPages, IncrementalPageChecker, readLongPageHeader, LONG_PAGE_HEADER_SIZE, type LongPageHeader } from '../wal/page.js';
import { HISTORY_NAME_RE, POSTGRES_WAL_FILE_RE, SEGMENT_FILE_RE, WAL_NAME_RE, isValidSegSize, parseWalFileName } from '../wal/segment.js';
import { shownName, type ArchiveStore, type Compression } from '../storage/types.js';
import { mapLimit } from '../storage/common.js';
import { checkWriter, claimArchive, type ArchiveIdentity, type WriterEncryption } from '../archive/identity.js';
import type { Logger } from '../util/log.js';
import { readWhole, sha256Owned, useHashThreads, type Hashed } from '../util/bulk.js';
import { SegmentRecordCheck } from '../archive/segment-records.js';
import { fs } from '../util/lazy.js';

const { readSync } = fs;

export interface PushOptions {
  /** The file PostgreSQL asks to archive (%p: pg_wal/<name>, relative to the data directory). */
  path: string;
  /** The archive, opened on first use (a call answered by a marker opens nothing). */
  openStore: () => Promise<ArchiveStore>;
  compression: Compression;
  noSync: boolean;
  log: Logger;
  /** Push up to this many files at once: the one asked for and the next ones ready in archive_status (default 1). */
  parallel?: number;
  /**
   * With parallel > 1: a private directory where a look-ahead push leaves `<name>.pushed` once the
   * archive has confirmed the file, so the call for it returns without reading the file or asking
   * the archive (and a shell can do the same: see the README).
   */
  markers?: string;
  /**
   * Names the archive for the marker directory (the location as given and the S3 endpoint, without
   * secrets, as fetch names it for its spool): a marker only stands for a file in this archive.
   */
  archiveKey?: string;
  /**
   * Whether the archive is written with a key (and --encryption-required): an archive whose
   * identity record says it is encrypted refuses a push without one, before anything is written.
   */
  encryption?: WriterEncryption;
  /** Check every record of a segment (CRC-32C, xl_prev) before it may enter the archive. */
  verifyRecords?: boolean;
}

export class PushError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PushError';
  }
}

/** The long page header of a segment file of `size` bytes that starts with `start`, checked against that size. */
function checkSegmentHead(name: string, start: Buffer, size: number): LongPageHeader {
  if (start.length < LONG_PAGE_HEADER_SIZE) throw new PushError(`${name}: ${size} bytes is not a WAL segment`);
  const head = readLongPageHeader(start);
  if (!isValidSegSize(head.segSize)) throw new PushError(`${name}: its header names an invalid segment size ${head.segSize}`);
  if (size !== head.segSize) throw new PushError(`${name}: file has ${size} bytes, but its segment size is ${head.segSize}`);
  return head;
}

/** Check a segment (or a promotion's .partial) before it may enter the archive. */
export function checkSegmentFile(name: string, data: Buffer): LongPageHeader {
  const segName = name.slice(0, 24);
  const head = checkSegmentHead(name, data, data.length);
  const { tli, segNo } = parseWalFileName(segName, head.segSize);
  // A .partial left by promotion may hold stale bytes past the switch point: check its first page only.
  const validLength = name.endsWith('.partial') ? LONG_PAGE_HEADER_SIZE : data.length;
  const check = checkSegmentPages(data, validLength, { segNo, segSize: head.segSize, tli, blockSize: head.blockSize });
  if (!check.ok) throw new PushError(`${name}: not a valid WAL segment: ${check.problems[0]}`);
  return head;
}

/** The records of a whole segment (not a promotion's .partial, whose end may hold stale bytes). */
export function checkSegmentRecords(name: string, data: Buffer): void {
  if (name.endsWith('.partial')) return;
  const check = new SegmentRecordCheck(name);
  check.write(data);
  const problem = check.finish();
  if (problem !== undefined) throw new PushError(`${name}: its WAL records do not check out: ${problem}`);
}

/** Read a file PostgreSQL hands over; a one-line error when it cannot. */
async function readWalFile(path: string, into?: Buffer): Promise<Buffer> {
  try {
    return await readWhole(path, { into });
  } catch (err) {
    throw new PushError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/**
 * The files after `asked` that PostgreSQL has marked ready for archiving (pg_wal/archive_status/*.ready),
 * in the order its archiver takes them: history files first, then by name (pgarch.c).
 */
export async function readyFiles(walDir: string, asked: string, count: number): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(join(walDir, 'archive_status'));
  } catch {
    return []; // not a pg_wal directory: nothing to look ahead at
  }
  const ready = entries
    .filter((e) => e.endsWith('.ready'))
    .map((e) => e.slice(0, -'.ready'.length))
    .filter((n) => n !== asked && POSTGRES_WAL_FILE_RE.test(n));
  const history = ready.filter((n) => HISTORY_NAME_RE.test(n)).sort();
  const rest = ready.filter((n) => !HISTORY_NAME_RE.test(n) && n > asked).sort();
  return [...history, ...rest].slice(0, count);
}

const MARKER_SUFFIX = '.pushed';
/** How many ready files one --parallel call looks ahead at, per file pushed at a time. */
const LOOKAHEAD_PER_WORKER = 32;
/**
 * And at most: PostgreSQL marks nothing done (and so recycles nothing in pg_wal) until the call
 * returns, so a large backlog is taken a bounded batch at a time.
 */
const LOOKAHEAD_MAX = 256;

/** The marker directory's record of the archive its markers stand for (bin/walstream.sh reads it too). */
const MARKERS_ARCHIVE = '.archive';

/**
 * Create the marker directory (0700), refusing one other users can write to (a planted marker
 * would make PostgreSQL drop a segment that was never archived). Markers left for another archive
 * (archive_command changed, or the directory copied into a standby's data directory by a base
 * backup) are all removed, and the directory is recorded as this archive's. Then the markers of
 * files older than `asked` go: PostgreSQL archives in order, so it will not ask for those again.
 */
async function prepareMarkers(dir: string, asked: string, archiveKey: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await stat(dir);
  if (!st.isDirectory() || (st.mode & 0o022) !== 0) throw new PushError(`push marker directory "${dir}" is not a directory private to its owner; use chmod 700 or another --spool`);
  let held: string | undefined;
  try {
    held = await readFile(join(dir, MARKERS_ARCHIVE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const otherArchive = held !== archiveKey;
  for (const f of await readdir(dir)) {
    if (!f.endsWith(MARKER_SUFFIX)) continue;
    const n = f.slice(0, -MARKER_SUFFIX.length);
    if (otherArchive || (WAL_NAME_RE.test(n) && n < asked && WAL_NAME_RE.test(asked))) await unlink(join(dir, f)).catch(() => undefined);
  }
  if (otherArchive) {
    // Written whole, then renamed: a torn record never names an archive. One fixed temp name (a
    // leftover is overwritten by the next call).
    const tmp = join(dir, `${MARKERS_ARCHIVE}.tmp`);
    await writeFile(tmp, archiveKey, { mode: 0o600 });
    await rename(tmp, join(dir, MARKERS_ARCHIVE));
  }
}

/** Consume the marker an earlier look-ahead left for `name`, if any. */
async function takeMarker(dir: string, name: string): Promise<boolean> {
  try {
    await unlink(join(dir, `${name}${MARKER_SUFFIX}`));
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** Bytes of a segment read at a time by pushPieces. */
const PIECE_BYTES = 512 * 1024;

/**
 * Push one segment a piece at a time through one buffer, each piece checked (page headers) and
 * handed to the archive as it is read, where the archive writes pieces as they come (a local
 * directory: ArchiveStore.putPieces). A segment-sized buffer is fresh memory, which on a virtual
 * machine costs more than reading, hashing and writing the segment. Undefined when the archive
 * cannot take pieces or already holds the name (nothing was stored: push() takes the whole-file
 * way, which compares the copies); the same errors as that way otherwise.
 */
async function pushPieces(o: PushOptions, name: string, store: ArchiveStore): Promise<'created' | undefined> {
  if (!store.putPieces) return undefined;
  const cannotRead = (err: unknown): PushError => new PushError(`cannot read ${o.path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  let fh: FileHandle;
  try {
    fh = await open(o.path, 'r');
  } catch (err) {
    throw cannotRead(err);
  }
  try {
    const buf = Buffer.allocUnsafeSlow(PIECE_BYTES);
    // Read and written with blocking system calls: this process has nothing else to do meanwhile,
    // and a trip through the thread pool for each of a segment's 64 reads and writes cost about
    // 10 ms of a call (docs/benchmarks.md).
    const read = async (at: number): Promise<number> => {
      try {
        return readSync(fh.fd, buf, 0, buf.length, at);
      } catch (err) {
        throw cannotRead(err);
      }
    };
    let size: number;
    try {
      size = (await fh.stat()).size;
    } catch (err) {
      throw cannotRead(err);
    }
    const first = await read(0);
    const head = checkSegmentHead(name, buf.subarray(0, first), size);
    const { tli, segNo } = parseWalFileName(name, head.segSize);
    const checker = new IncrementalPageChecker({ segNo, segSize: head.segSize, tli, blockSize: head.blockSize });
    const check = (at: number, piece: Buffer): void => {
      const problem = checker.feed(at, piece);
      if (problem !== undefined) throw new PushError(`${name}: not a valid WAL segment: ${problem}`);
    };
    // The first piece (its header page and those after it) is checked before the archive is claimed.
    check(0, buf.subarray(0, first));
    await claimArchive(store, { systemIdentifier: head.systemId, segmentSize: head.segSize }, name, o.encryption ?? { encrypts: false });
    const records = o.verifyRecords ? new SegmentRecordCheck(name) : undefined;
    const pieces = async function* (): AsyncGenerator<Buffer> {
      let at = 0;
      for (let n = first; n > 0; n = await read(at)) {
        const piece = buf.subarray(0, n);
        if (at > 0) check(at, piece);
        records?.write(piece);
        yield piece; // written before the buffer is read into again
        at += n;
      }
      // Changed size since it was looked at: not the file PostgreSQL handed over.
      if (at !== head.segSize) throw new PushError(`${name}: file has ${at} bytes, but its segment size is ${head.segSize}`);
      // Thrown before the archive gives the object its name.
      const problem = records?.finish();
      if (problem !== undefined) throw new PushError(`${name}: its WAL records do not check out: ${problem}`);
    };
    const res = await store.putPieces(name, pieces(), { noSync: o.noSync, blocking: true });
    if (res === undefined || res === 'taken') return undefined;
    o.log.verbose(`${name}: archived`);
    return 'created';
  } finally {
    await fh.close();
  }
}

/** True when the archive already holds exactly these bytes under `name` (one HEAD, no upload). */
async function alreadyArchived(store: ArchiveStore, name: string, file: Hashed): Promise<boolean> {
  const info = await store.head(name);
  return info?.checksum !== undefined && info.checksum === file.hex;
}

export async function push(o: PushOptions): Promise<'created' | 'exists'> {
  const name = basename(o.path);
  if (!POSTGRES_WAL_FILE_RE.test(name)) {
    throw new PushError(`${shownName(name)} is not a WAL file name PostgreSQL archives`);
  }
  const parallel = o.parallel ?? 1;
  const markers = parallel > 1 ? o.markers : undefined;
  // Several segments at once: hash them on other cores than the one issuing the I/O.
  if (parallel > 1) useHashThreads(Math.min(parallel, availableParallelism()));
  if (markers !== undefined) {
    await prepareMarkers(markers, name, o.archiveKey ?? '');
    if (await takeMarker(markers, name)) {
      o.log.verbose(`${name}: archived by an earlier call's look-ahead`);
      return 'exists';
    }
  }
  // One plain segment: through one buffer, where the archive takes pieces.
  if (parallel <= 1 && o.compression === 'none' && o.encryption?.encrypts !== true && WAL_NAME_RE.test(name)) {
    const pushed = await pushPieces(o, name, await o.openStore());
    if (pushed !== undefined) return pushed;
  }
  // This call read the file: its memory may go to a hashing thread and back.
  const file = await sha256Owned(await readWalFile(o.path));
  // With --parallel an earlier call may have pushed this file already: the archive says so.
  const store = await o.openStore();
  const writer = o.encryption ?? { encrypts: false };
  // Not with a key: the checksum does not tell an encrypted copy from a plain one, which an
  // encrypted archive must not keep (the put below replaces it).
  if (parallel > 1 && !writer.encrypts && (await alreadyArchived(store, name, file))) {
    o.log.verbose(`${name}: already archived with identical contents`);
    return 'exists';
  }
  // The first segment claims the archive (or checks its identity); the others wait for that and
  // compare with it rather than each reading the identity record again.
  let claimed: { identity: ArchiveIdentity; done: Promise<unknown> } | undefined;
  let writerChecked: Promise<unknown> | undefined;
  const pushOne = async (n: string, { data: bytes, hex }: Hashed): Promise<'created' | 'exists'> => {
    const segment = SEGMENT_FILE_RE.test(n);
    if (segment) {
      const head = checkSegmentFile(n, bytes);
      if (o.verifyRecords) checkSegmentRecords(n, bytes);
      const ours = { systemIdentifier: head.systemId, segmentSize: head.segSize };
      if (!claimed) {
        claimed = { identity: ours, done: claimArchive(store, ours, n, writer) };
        claimed.done.catch(() => undefined); // each waiter reports it
      } else if (claimed.identity.systemIdentifier !== ours.systemIdentifier || claimed.identity.segmentSize !== ours.segmentSize) {
        throw new PushError(`${n}: from another database system than ${name}`);
      }
      await claimed.done;
    } else {
      // History and backup files name no system to claim the archive with; an encrypted archive
      // still refuses them from a push without a key (a claim checks that too).
      if (!writerChecked) {
        writerChecked = claimed?.done ?? checkWriter(store, writer);
        writerChecked.catch(() => undefined); // each waiter reports it
      }
      await writerChecked;
    }
    // History and backup files are small: keep them uncompressed, as PostgreSQL itself reads them.
    const res = await store.put(n, bytes, { compression: segment ? o.compression : 'none', noSync: o.noSync, sha256: hex });
    if (res.replacedDamaged) o.log.warn(`the archive held a copy of ${n} it cannot keep (damaged, or not encrypted in an encrypted archive): kept as ${res.replacedDamaged} and replaced`);
    o.log.verbose(`${n}: ${res.status === 'exists' ? 'already archived with identical contents' : 'archived'}`);
    return res.status;
  };
  if (parallel <= 1) return pushOne(name, file);
  // Look ahead: with the file asked for, push the next ready files, `parallel` at a time, so that
  // PostgreSQL's later calls for them find them archived and return at once. A look-ahead failure
  // is only logged: the call for that file pushes it again and reports the error to PostgreSQL.
  const walDir = dirname(o.path);
  const ahead = await readyFiles(walDir, name, Math.min(parallel * LOOKAHEAD_PER_WORKER, LOOKAHEAD_MAX));
  let status: 'created' | 'exists' | undefined;
  let failure: unknown;
  // Read buffers for the look-ahead, reused once a push is done with one (a fresh 16 MB buffer per
  // file costs page faults and garbage collection).
  const spare: Buffer[] = [];
  // Reading and hashing run ahead of the pushes: while `parallel` files are being written and
  // fsynced, the next ones (up to four) are read, so the disk and the cores are both kept busy.
  const readDepth = Math.min(parallel, 4);
  const files = [name, ...ahead];
  const reads = new Map<number, Promise<Hashed>>();
  const readAhead = (i: number): Promise<Hashed> | undefined => {
    if (i < 1 || i >= files.length) return undefined;
    let r = reads.get(i);
    if (!r) {
      r = readWalFile(join(walDir, files[i]!), spare.pop()).then((b) => sha256Owned(b));
      r.catch(() => undefined); // reported when awaited
      reads.set(i, r);
    }
    return r;
  };
  await mapLimit(
    files.map((n, i) => ({ n, i })),
    parallel,
    async ({ n, i }) => {
      readAhead(i + readDepth);
      if (i === 0) {
        try {
          status = await pushOne(name, file);
        } catch (err) {
          failure = err;
        }
        return;
      }
      let read: Hashed | undefined;
      try {
        read = await readAhead(i)!;
        reads.delete(i);
        await pushOne(n, read);
        if (markers !== undefined) await writeFile(join(markers, `${n}${MARKER_SUFFIX}`), '', { mode: 0o600 });
      } catch (err) {
        o.log.verbose(`look-ahead push of ${n} failed: ${(err as Error).message}`);
      } finally {
        // Nothing holds on to the bytes once pushOne has settled (stores copy what they keep). Only
        // a segment-sized buffer of its own is kept: a small one may be a slice of Node's pool.
        const mem = read?.data.buffer;
        if (mem instanceof ArrayBuffer && mem.byteLength >= 1024 * 1024) spare.push(Buffer.from(mem));
      }
    },
  );
  if (status === undefined) throw failure;
  return status;
}
