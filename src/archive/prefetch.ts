// Prefetch for restore_command. PostgreSQL asks for one WAL file at a time and replays it before
// asking for the next, so a standby catching up from a remote archive waits a full round trip per
// segment. When `walstream fetch` has served segment X, it records X as "wanted" in a spool
// directory and makes sure one background worker is running; the worker downloads X+1 ... X+N (on
// X's timeline) in parallel, each verified by the store (checksum, decompression) and written to
// the spool under a temporary name, fsynced, then renamed. The next fetch finds its file there and
// moves it to %p with one rename. Nothing in the spool is served unless it was complete and
// verified when the worker renamed it; a spool written for another archive is emptied first.
//
// Spool layout (one directory, private to the user):
//   <segment>          verified, complete files ready to serve
//   .<segment>.<writer>.tmp  a download in progress, named for the process writing it
//                      (storage/leftovers.ts): a worker removes those whose writer is gone, never
//                      one a live fetch or worker may still rename; a spool switched to another
//                      archive is emptied whole (a download of the old archive must not land)
//   .want              JSON: the newest segment served, the segment size, the window, the archive
//   .lock              the running worker's process id
//   .archive           the archive this spool holds files of
//   prefetch.log       the last worker's messages
import { copyFile, lstat, mkdir, open, readdir, readFile, rename, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { NotFoundError, type ArchiveStore } from '../storage/types.js';
import { judgeLeftover, parseTempName, removable, tempName } from '../storage/leftovers.js';
import { isValidSegSize, parseWalFileName, walFileName, WAL_NAME_RE } from '../wal/segment.js';
import { LONG_PAGE_HEADER_SIZE, readLongPageHeader } from '../wal/page.js';
import type { Logger } from '../util/log.js';
import { useHashThreads } from '../util/bulk.js';
import { objectToFile } from './to-file.js';
import { recordInspector } from './segment-records.js';
import { fs } from '../util/lazy.js';

const { closeSync, existsSync, openSync, readFileSync, readSync, statSync, unlinkSync, writeFileSync } = fs;

export interface PrefetchWant {
  /** The newest segment fetch has served. */
  name: string;
  segSize: number;
  /** How many segments after it to keep ready. */
  count: number;
}

const WANT = '.want';
const LOCK = '.lock';
const ARCHIVE_ID = '.archive';
export const PREFETCH_LOG = 'prefetch.log';
/** A lock older than this is taken over even if its process id is alive (a reused pid, a hung worker). */
const LOCK_STALE_MS = 10 * 60_000;

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

/**
 * Create the spool directory (0700) or check an existing one; empty it when it holds files of
 * another archive. Refuses a directory other users could write to: they could plant WAL there.
 */
export async function prepareSpool(dir: string, archive: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await stat(dir);
  if (!st.isDirectory()) throw new Error(`prefetch spool "${dir}" is not a directory`);
  if ((st.mode & 0o022) !== 0) throw new Error(`prefetch spool "${dir}" is writable by other users (mode ${(st.mode & 0o777).toString(8)}); use chmod 700 or another --spool`);
  let held: string | undefined;
  try {
    held = await readFile(join(dir, ARCHIVE_ID), 'utf8');
  } catch (err) {
    if (errno(err) !== 'ENOENT') throw err;
  }
  if (held === archive) return;
  // Emptied whole, temp files of live writers too: a download from the old archive must not be
  // renamed into a spool that now serves another one (its rename fails instead, and is reported).
  for (const f of await readdir(dir)) {
    if (WAL_NAME_RE.test(f) || parseTempName(f) !== undefined || f === WANT) await unlink(join(dir, f)).catch(() => undefined);
  }
  await writeFile(join(dir, ARCHIVE_ID), archive, { mode: 0o600 });
}

/** The segment size a complete segment file says it has, or undefined if the file is not one. */
async function completeSegmentSize(path: string): Promise<number | undefined> {
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(LONG_PAGE_HEADER_SIZE);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    if (bytesRead < head.length) return undefined;
    const segSize = readLongPageHeader(head).segSize;
    return isValidSegSize(segSize) && (await fh.stat()).size === segSize ? segSize : undefined;
  } finally {
    await fh.close();
  }
}

/**
 * Move `name` from the spool to `dest` if the spool has it. Returns its segment size, or undefined
 * when the spool does not hold a complete copy (then the caller fetches from the archive).
 */
export async function takeFromSpool(dir: string, name: string, dest: string): Promise<number | undefined> {
  const path = join(dir, name);
  let segSize: number | undefined;
  try {
    segSize = await completeSegmentSize(path);
  } catch (err) {
    if (errno(err) === 'ENOENT') return undefined;
    throw err;
  }
  if (segSize === undefined) {
    await unlink(path).catch(() => undefined);
    return undefined;
  }
  try {
    await rename(path, dest);
  } catch (err) {
    if (errno(err) === 'ENOENT') return undefined;
    if (errno(err) !== 'EXDEV') throw err;
    // The spool is on another file system than %p: copy next to %p, then rename there (a temp
    // name fetch's own writes share, so the next fetch removes it if this process is killed).
    const tmp = join(dirname(dest), tempName(basename(dest)));
    try {
      await copyFile(path, tmp);
      await rename(tmp, dest);
    } catch (err) {
      await unlink(tmp).catch(() => undefined); // the error is the one to report
      throw err;
    }
    await unlink(path).catch(() => undefined);
  }
  return segSize;
}

/** The segments after `want.name` on its timeline that the worker keeps ready. */
export function windowNames(want: PrefetchWant): string[] {
  const { tli, segNo } = parseWalFileName(want.name, want.segSize);
  const out: string[] = [];
  for (let i = 1n; i <= BigInt(want.count); i++) out.push(walFileName(tli, segNo + i, want.segSize));
  return out;
}

function readWant(dir: string): PrefetchWant | undefined {
  try {
    const o = JSON.parse(readFileSync(join(dir, WANT), 'utf8')) as PrefetchWant;
    if (typeof o.name !== 'string' || !WAL_NAME_RE.test(o.name) || !isValidSegSize(o.segSize) || !Number.isInteger(o.count) || o.count < 1) return undefined;
    return o;
  } catch {
    return undefined;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errno(err) === 'EPERM';
  }
}

/** The process id holding the spool's lock, if a live one does. */
function lockHolder(dir: string): number | undefined {
  const path = join(dir, LOCK);
  try {
    const pid = Number(readFileSync(path, 'utf8').trim());
    if (Number.isInteger(pid) && pid > 0 && pidAlive(pid) && Date.now() - statSync(path).mtimeMs < LOCK_STALE_MS) return pid;
  } catch {
    // no lock, or unreadable: nobody holds it
  }
  return undefined;
}

function tryLock(dir: string): boolean {
  const path = join(dir, LOCK);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      try {
        writeFileSync(fd, `${process.pid}\n`);
      } finally {
        closeSync(fd);
      }
      return true;
    } catch (err) {
      if (errno(err) !== 'EEXIST') throw err;
      const holder = lockHolder(dir);
      if (holder === process.pid) return true; // taken for this worker by the fetch that started it
      if (holder !== undefined) return false;
      try {
        unlinkSync(path); // a dead worker's lock
      } catch {
        // someone else took it over first
      }
    }
  }
  return false;
}

/**
 * Take the lock for a worker just started (its process id): the fetches that follow while it is
 * still starting up then see a worker and do not start more. If the lock is there already, the
 * worker itself or another one has it.
 */
function lockFor(dir: string, pid: number): void {
  try {
    const fd = openSync(join(dir, LOCK), 'wx', 0o600);
    try {
      writeFileSync(fd, `${pid}\n`);
    } finally {
      closeSync(fd);
    }
  } catch {
    // held already, or the spool went away: the worker sorts it out
  }
}

/** Remove the spool's lock if this process holds it (a worker that could not start gives it back). */
export function unlock(dir: string): void {
  try {
    const fd = openSync(join(dir, LOCK), 'r');
    const buf = Buffer.alloc(32);
    const n = readSync(fd, buf, 0, buf.length, 0);
    closeSync(fd);
    if (Number(buf.subarray(0, n).toString().trim()) === process.pid) unlinkSync(join(dir, LOCK));
  } catch {
    // already gone
  }
}

/**
 * Record what fetch has just served and make sure a worker will prefetch after it. The order
 * matters: the want is written before the lock is looked at, and a worker looks at the want again
 * after releasing the lock, so one of the two always sees the newest want.
 */
export async function requestPrefetch(dir: string, want: PrefetchWant, startWorker: () => number | undefined): Promise<void> {
  const tmp = join(dir, tempName(WANT));
  await writeFile(tmp, JSON.stringify(want), { mode: 0o600 });
  await rename(tmp, join(dir, WANT));
  if (lockHolder(dir) !== undefined) return;
  const pid = startWorker();
  if (pid !== undefined) lockFor(dir, pid);
}

/**
 * Remove what recovery has passed (every segment at or before the wanted one, on any timeline)
 * and the temp files of writers that are gone (storage/leftovers.ts: never a live one's).
 */
async function cleanup(dir: string, want: PrefetchWant): Promise<void> {
  const { segNo } = parseWalFileName(want.name, want.segSize);
  for (const f of await readdir(dir)) {
    const temp = parseTempName(f);
    if (temp) {
      const st = await lstat(join(dir, f)).catch(() => undefined);
      if (st?.isFile() && removable(judgeLeftover(temp.writer, st.mtime))) await unlink(join(dir, f)).catch(() => undefined);
      continue;
    }
    if (!WAL_NAME_RE.test(f)) continue;
    let passed = true;
    try {
      passed = parseWalFileName(f, want.segSize).segNo <= segNo;
    } catch {
      // not a name for this segment size: not ours to keep
    }
    if (passed) await unlink(join(dir, f)).catch(() => undefined);
  }
}

async function download(store: ArchiveStore, dir: string, name: string, verifyRecords: boolean): Promise<'stored' | 'missing'> {
  try {
    // Verified, fsynced, then renamed; its temp file is named for this process, so a fetch
    // filling the spool (prefetchFirst) never shares one with a worker.
    await objectToFile(store, name, join(dir, name), { sync: true, headBytes: 0, ...(verifyRecords ? { inspect: recordInspector(name) } : {}) });
  } catch (err) {
    if (err instanceof NotFoundError) return 'missing';
    throw err;
  }
  return 'stored';
}

/** Whether a live worker holds the spool (or was started for it and is still starting up). */
export function workerRunning(dir: string): boolean {
  return lockHolder(dir) !== undefined;
}

/**
 * What a fetch does before it starts a worker: download the first few segments after `want.name`
 * into the spool itself, at once. A worker needs a process start before its first download lands,
 * and recovery asks for the next segments meanwhile: each it missed would cost a full fetch.
 * Failures only mean those segments are fetched the usual way.
 */
export async function prefetchFirst(store: ArchiveStore, dir: string, want: PrefetchWant, log: Logger, verifyRecords = false): Promise<void> {
  await Promise.all(
    windowNames(want).map(async (n) => {
      if (existsSync(join(dir, n))) return;
      try {
        if ((await download(store, dir, n, verifyRecords)) === 'stored') log.verbose(`prefetched ${n}`);
      } catch (err) {
        log.verbose(`could not prefetch ${n}: ${(err as Error).message}`);
      }
    }),
  );
}

export interface PrefetchWorkerOptions {
  dir: string;
  store: ArchiveStore;
  log: Logger;
  /** Exit after this long without a new request or a file taken from the spool (default 20 s; 0: one pass). */
  idleMs?: number;
  /** How often to look at the spool (default 20 ms). */
  pollMs?: number;
  /** Check every record of a segment before it enters the spool. */
  verifyRecords?: boolean;
}

/** How long a segment the archive did not have is not asked for again. */
const MISSING_RETRY_MS = 1000;

function sameTimeline(a: string, b: string): boolean {
  return a.slice(0, 8) === b.slice(0, 8);
}

/**
 * The background worker: keeps the window after the newest segment recovery has taken full. It
 * learns what recovery took from fetch's requests and from its own files leaving the spool (taken
 * by fetch, or by a plain rename in restore_command, see the README), so it follows a recovery
 * without a request per segment. Exits after `idleMs` without either; the next fetch starts a new one.
 */
export async function runPrefetchWorker(o: PrefetchWorkerOptions): Promise<void> {
  const idleMs = o.idleMs ?? 20_000;
  const pollMs = o.pollMs ?? 20;
  // Several downloads verify their checksums at once: on other cores than the one doing the I/O.
  useHashThreads(availableParallelism());
  let seen = '';
  while (tryLock(o.dir)) {
    // Downloads run as a pipeline: up to the window's count at once, a new one as soon as one
    // ends or recovery takes a file, so a slow download never holds up the others.
    const inflight = new Map<string, Promise<void>>();
    let wake: (() => void) | undefined;
    try {
      let want = readWant(o.dir);
      if (!want) return;
      seen = JSON.stringify(want);
      const stored = new Set<string>();
      const missingUntil = new Map<string, number>();
      let lastActivity = Date.now();
      let lastTouch = Date.now();
      for (;;) {
        const asked = readWant(o.dir);
        if (asked && JSON.stringify(asked) !== seen) {
          seen = JSON.stringify(asked);
          want = asked;
          lastActivity = Date.now();
        }
        for (const n of stored) {
          if (existsSync(join(o.dir, n))) continue;
          stored.delete(n);
          if (sameTimeline(n, want.name) && n > want.name) want = { ...want, name: n };
          lastActivity = Date.now();
        }
        await cleanup(o.dir, want);
        const now = Date.now();
        // A file stored by this worker and gone again was taken: the check above notices that on
        // the next turn and moves past it. Recovery can take it while cleanup is awaited, so
        // without `stored` here it would be downloaded a second time and never taken again.
        const names = windowNames(want).filter((n) => !inflight.has(n) && !stored.has(n) && !existsSync(join(o.dir, n)) && (missingUntil.get(n) ?? 0) <= now);
        for (const n of names) {
          if (inflight.size >= want.count) break;
          const job = download(o.store, o.dir, n, o.verifyRecords === true)
            .then(
              (r) => {
                if (r === 'missing') {
                  missingUntil.set(n, Date.now() + MISSING_RETRY_MS);
                } else {
                  stored.add(n);
                  o.log.verbose(`prefetched ${n}`);
                }
              },
              (err: unknown) => {
                missingUntil.set(n, Date.now() + MISSING_RETRY_MS);
                o.log.warn(`could not prefetch ${n}: ${(err as Error).message}`);
              },
            )
            .finally(() => {
              inflight.delete(n);
              wake?.();
            });
          inflight.set(n, job);
        }
        if (inflight.size === 0 && Date.now() - lastActivity >= idleMs) break;
        if (Date.now() - lastTouch > 10_000) {
          // A live worker's lock stays fresh (an old lock is taken over).
          const t = new Date();
          await utimes(join(o.dir, LOCK), t, t).catch(() => undefined);
          lastTouch = Date.now();
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, pollMs);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
      }
    } finally {
      // Nothing of this worker's may still be writing into the spool once the lock is released.
      await Promise.allSettled([...inflight.values()]);
      unlock(o.dir);
    }
    // A fetch may have written a newer request while it saw the lock still held.
    if (JSON.stringify(readWant(o.dir) ?? null) === seen) break;
  }
}
