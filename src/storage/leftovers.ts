// Leftovers of writers that died: the temporary files a writer killed mid-write leaves beside what
// it was writing (PostgreSQL's durable_rename() leaves "<file>.tmp" the same way, pgBackRest its
// "<file>.pgbackrest.tmp"), and the one rule that says when such a file may go. The local archive,
// the receiver's spool, the prefetch spool, fetch's file in pg_wal and the operations commands all
// name their temporary files and judge them here.
//
// Guarantees:
// - a temporary file walstream writes is named `.<target>.<pid>[+<start>]@<host>-<space>.<random>.tmp`:
//   dot-prefixed (never listed), naming the process that writes it (its pid, and on Linux its start
//   time in clock ticks since boot, which tells a reused pid apart), the host name (readable, cut to
//   32 characters of [A-Za-z0-9-]) and a hash of the pid space it runs in (host name, boot id and pid
//   namespace), so that two containers or two hosts with one host name are never taken for one;
// - a file whose writer ran in this pid space is removed only once that process is gone (pid not
//   alive, or alive but started at another time: reused). While a process with that pid and start
//   time lives it is never touched, however old: with the start time recorded that process is the
//   writer itself; where no start time could be recorded (not Linux), a reused pid keeps the file
//   until that process ends, which costs disk space, never data;
// - a file from another pid space, or whose name records no writer (older walstream versions,
//   other tools), is removed only once it was last written longer ago than the leftover age (an
//   hour by default): no walstream write leaves its temporary file untouched that long;
// - nothing here follows a symbolic link or removes anything but regular files with temp names.
import { lstat, readdir, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { builtin, fs } from '../util/lazy.js';
import { sha256HexOfText } from '../util/sha256.js';
import type { Leftover, LeftoverOptions, LeftoverRemoval, LeftoverState } from './types.js';

const { closeSync, openSync, readFileSync, readSync, readlinkSync } = fs;

/** node:crypto, only where /dev/urandom cannot be read. */
const crypto = builtin<typeof import('node:crypto')>('node:crypto');

/** Leftovers whose writer cannot be checked are removed once last written longer ago than this. */
export const DEFAULT_LEFTOVER_AGE_MS = 60 * 60_000;

/** The process that wrote a temporary file, as its name records it. */
export interface WriterId {
  pid: number;
  /** Start time of the process in clock ticks since boot (Linux), telling a reused pid apart. */
  start: string | undefined;
  /** The host name, as recorded (readable, possibly cut). */
  host: string;
  /** Host name, boot and pid namespace, hashed: equal only within one pid space. */
  space: string;
}

function readOrUndefined(read: () => string): string | undefined {
  try {
    return read();
  } catch {
    return undefined;
  }
}

/** Start time of process `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat), if readable. */
export function processStart(pid: number): string | undefined {
  const stat = readOrUndefined(() => readFileSync(`/proc/${pid}/stat`, 'latin1'));
  if (stat === undefined) return undefined;
  // The command name (field 2) is in parentheses and may hold anything: count after the last ")".
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const start = rest[19];
  return start !== undefined && /^\d+$/.test(start) ? start : undefined;
}

function identify(): WriterId {
  const name = hostname();
  const boot = readOrUndefined(() => readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim()) ?? '';
  const pidNamespace = readOrUndefined(() => readlinkSync('/proc/self/ns/pid')) ?? '';
  // In JavaScript, not node:crypto: a fetch served from the prefetch spool names one temp file and
  // loads node:crypto for nothing else (util/sha256.ts). The same digest either way.
  const space = sha256HexOfText(`${name}\0${boot}\0${pidNamespace}`).slice(0, 8);
  return { pid: process.pid, start: processStart(process.pid), host: name.replace(/[^A-Za-z0-9-]/g, '-').slice(0, 32), space };
}

let thisWriter: Readonly<WriterId> | undefined;

/** This process, as the temporary files it writes name it: worked out on first use, then fixed for the life of the process. */
function me(): Readonly<WriterId> {
  thisWriter ??= Object.freeze(identify());
  return thisWriter;
}

/** This process, as the temporary files it writes name it (fixed for the life of the process). */
export const THIS_WRITER: Readonly<WriterId> = Object.freeze({
  get pid() {
    return me().pid;
  },
  get start() {
    return me().start;
  },
  get host() {
    return me().host;
  },
  get space() {
    return me().space;
  },
});

/** `n` random bytes in hex, from /dev/urandom (node:crypto where there is none). */
function randomHex(n: number): string {
  const bytes = Buffer.alloc(n);
  try {
    const fd = openSync('/dev/urandom', 'r');
    try {
      if (readSync(fd, bytes, 0, n, null) === n) return bytes.toString('hex');
    } finally {
      closeSync(fd);
    }
  } catch {
    // no /dev/urandom here
  }
  return crypto().randomBytes(n).toString('hex');
}

/** The name of a new temporary file for `target` (a file name, no directory), written by this process. */
export function tempName(target: string, writer: WriterId = THIS_WRITER): string {
  const who = `${writer.pid}${writer.start !== undefined ? `+${writer.start}` : ''}@${writer.host}-${writer.space}`;
  return `.${target}.${who}.${randomHex(4)}.tmp`;
}

const TEMP_RE = /^\.(.+)\.([1-9]\d{0,9})(?:\+(\d{1,20}))?@([A-Za-z0-9-]{0,32})-([0-9a-f]{8})\.[0-9a-f]{8}\.tmp$/;
/** Names of older walstream versions and other tools: no writer to check, so the age decides. */
const OLD_TEMP_RES = [
  /^\.(.+)\.\d+\.[0-9a-f]{8}\.tmp$/, // archive writes of earlier versions: .<name>.<pid>.<random>.tmp
  /^\.(.+)\.\d+\.tmp$/, // prefetch downloads: .<name>.<pid>.tmp
  /^\.(.+)\.tmp$/, // atomic small files: .<name>.tmp
  /^\.(.+)\.walstream-tmp$/, // fetch: .<%p>.walstream-tmp
  /^(.+)\.walstream-tmp$/, // fetch from a spool on another file system: <%p>.walstream-tmp
];

export interface ParsedTempName {
  /** The file the temporary file was to become (its name), when the name tells. */
  target: string;
  /** The writer, when the name records one. */
  writer: WriterId | undefined;
}

/** What a temporary file's name says, or undefined when it is not a temporary file's name. */
export function parseTempName(file: string): ParsedTempName | undefined {
  const m = TEMP_RE.exec(file);
  if (m) return { target: m[1]!, writer: { pid: Number(m[2]), start: m[3], host: m[4]!, space: m[5]! } };
  for (const re of OLD_TEMP_RES) {
    const o = re.exec(file);
    if (o) return { target: o[1]!, writer: undefined };
  }
  return undefined;
}

/** Whether the process that wrote a file of this pid space still runs (conservative: true when unsure). */
function writerAlive(w: WriterId): boolean {
  if (w.pid === process.pid) return w.start === undefined || THIS_WRITER.start === undefined || w.start === THIS_WRITER.start;
  try {
    process.kill(w.pid, 0);
  } catch (err) {
    // EPERM: it exists, as another user's process.
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
  if (w.start === undefined) return true;
  const start = processStart(w.pid);
  // Unreadable (another user's process under hidepid, or it ended just now): cannot tell, so alive.
  return start === undefined || start === w.start;
}

/**
 * The state of a temporary file written by `writer` (undefined: the name records none), last
 * written at `modified`:
 * - 'live': its writer runs in this pid space: never removed;
 * - 'dead': its writer ran in this pid space and is gone: removable now;
 * - 'stale': the writer cannot be checked, and the file is older than the leftover age: removable;
 * - 'recent': the writer cannot be checked, and the file is younger: kept for now.
 */
export function judgeLeftover(writer: WriterId | undefined, modified: Date, opts: LeftoverOptions = {}): LeftoverState {
  if (writer !== undefined && writer.space === THIS_WRITER.space) return writerAlive(writer) ? 'live' : 'dead';
  const now = (opts.now ?? new Date()).getTime();
  return now - modified.getTime() >= (opts.maxAgeMs ?? DEFAULT_LEFTOVER_AGE_MS) ? 'stale' : 'recent';
}

/** Whether a leftover in this state may be removed: its writer is gone, or it is past the age. */
export function removable(state: LeftoverState): boolean {
  return state === 'dead' || state === 'stale';
}

export interface ScanDirectoryOptions extends LeftoverOptions {
  /** How the names are reported: this, then the file name (e.g. ".walstream-meta/tmp/"). */
  shownAs?: string;
  /** Only the temporary files of this target (a file name). */
  target?: string;
  /** Every regular file counts as a temporary file (a directory that holds nothing else). */
  all?: boolean;
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** The temporary files in `dir` (not below it), judged. A missing directory holds none. */
export async function scanDirectory(dir: string, opts: ScanDirectoryOptions = {}): Promise<Leftover[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return [];
    throw err;
  }
  const out: Leftover[] = [];
  for (const file of names) {
    const parsed = parseTempName(file);
    if (!parsed && !opts.all) continue;
    if (opts.target !== undefined && parsed?.target !== opts.target) continue;
    let st;
    try {
      st = await lstat(join(dir, file));
    } catch (err) {
      if (errno(err) === 'ENOENT') continue; // published or removed meanwhile
      throw err;
    }
    if (!st.isFile()) continue;
    const w = parsed?.writer;
    out.push({
      name: `${opts.shownAs ?? ''}${file}`,
      kind: 'temp-file',
      bytes: st.size,
      modified: st.mtime,
      writer: w ? { pid: w.pid, host: w.host } : undefined,
      state: judgeLeftover(w, st.mtime, opts),
      path: join(dir, file),
    });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * Remove the removable leftovers among `found` (files with a `path`); with `dryRun`, only say
 * which. A file gone meanwhile counts as removed; one that cannot be removed is reported in `failed`.
 */
export async function removeFound(found: Leftover[], opts: { dryRun?: boolean } = {}): Promise<LeftoverRemoval> {
  const result: LeftoverRemoval = { leftovers: found, unavailable: undefined, removed: [], failed: [] };
  for (const l of found) {
    if (!removable(l.state) || l.path === undefined) continue;
    if (!opts.dryRun) {
      try {
        await unlink(l.path);
      } catch (err) {
        if (errno(err) !== 'ENOENT') {
          result.failed.push({ leftover: l, error: (err as Error).message });
          continue;
        }
      }
    }
    result.removed.push(l);
  }
  return result;
}

/** Scan `dir` and remove the temporary files whose writer is gone (see scanDirectory, removeFound). */
export async function sweepDirectory(dir: string, opts: ScanDirectoryOptions & { dryRun?: boolean } = {}): Promise<LeftoverRemoval> {
  return removeFound(await scanDirectory(dir, opts), opts);
}
